"""The study's numbers: metrics, intervals and tests, the grid's result table, choosing over replicates."""

"""The floor every layer stands on: atomic writes, one-line errors, fault points, Ctrl-C, process liveness, the import graph."""

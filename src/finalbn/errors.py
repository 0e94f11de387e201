"""The errors `finalbn` turns into one line and an exit status, in one light module (no torch, no
MLflow) so that the command line can catch them without importing any stage.

    raise UsageError("--shard 3 is not I/N (e.g. 0/4)")

Exit 2, the user's input: `UsageError` (the command line), `DataError` (images and splits),
`WeightsError` (weights files), `StoreError` (the MLflow store as it is), and `config.ConfigError`
(params), which lives with the schema.
Exit 1, a run that failed on good input: `TrainingDiverged`. Each is re-exported where it is
raised (`splits.DataError`, `models.WeightsError`, `engine.TrainingDiverged`).
"""


class UsageError(ValueError):
    """A problem with what the user asked for on the command line; printed as one line, exit 2."""


class DataError(ValueError):
    """Bad or insufficient input data; the message is one line."""


class WeightsError(RuntimeError):
    """Pretrained weights that cannot be had; the message is one line saying what to do."""


class StoreError(RuntimeError):
    """The tracking store cannot be used as it is (an experiment in MLflow's trash, runs it does not
    show): one line saying what to do."""


class TrainingDiverged(RuntimeError):
    """The loss became NaN/inf; the message names the epoch and step."""

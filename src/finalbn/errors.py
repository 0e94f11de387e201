"""The errors a user can cause, which `finalbn` prints as one line and exits 2 on.

    raise UsageError("--shard 3 is not I/N (e.g. 0/4)")

The others of that kind live beside what raises them: `config.ConfigError` (params),
`splits.DataError` (images and splits), `models.WeightsError` (weights files).
"""


class UsageError(ValueError):
    """A problem with what the user asked for on the command line; printed as one line, exit 2."""

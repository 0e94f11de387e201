"""The errors `finalbn` turns into one line and an exit status, in one light module (no torch, no
MLflow) so that the command line can catch them without importing any stage.

    raise UsageError("--shard 3 is not I/N (e.g. 0/4)")

Exit 2, the user's input: `UsageError` (the command line), `DataError` (images and splits),
`WeightsError` (weights files), `StoreError` (the MLflow store as it is), and `config.ConfigError`
(params), which lives with the schema.
Exit 1, a run that failed on good input: `TrainingDiverged`, and storage that refused a write
(`storage_full`: a full disk, a quota, a read-only file system, a file-size limit), wherever it
happened. Each is re-exported where it is raised (`splits.DataError`, `models.WeightsError`,
`engine.TrainingDiverged`).
"""
from __future__ import annotations

import errno

# errno -> what the one line calls it
STORAGE_ERRNOS = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EFBIG: "file too large for this file system or the process's file-size limit",
}
DISK_IO = "disk I/O error (a full disk, a quota, a file-size limit or a failing device)"
# The same failures where a library reports them as text (SQLite: "database or disk is full", "attempt
# to write a readonly database", and "disk I/O error" when a write past a file-size limit or quota fails;
# torch.save: "file write failed" only says so through its errno text).
_STORAGE_TEXT = (("database or disk is full", STORAGE_ERRNOS[errno.ENOSPC]),
                 ("no space left on device", STORAGE_ERRNOS[errno.ENOSPC]),
                 ("disk quota exceeded", STORAGE_ERRNOS[errno.EDQUOT]),
                 ("read-only file system", STORAGE_ERRNOS[errno.EROFS]),
                 ("readonly database", STORAGE_ERRNOS[errno.EROFS]),
                 ("file too large", STORAGE_ERRNOS[errno.EFBIG]), ("disk i/o error", DISK_IO))
WRITING = "writing "  # the note `io.atomic_path` adds to a failed write: "writing <path>"


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


def storage_full(exc: BaseException) -> tuple[str, str | None] | None:
    """(what happened, the path being written or None) when `exc` or an exception in its chain
    (`__cause__`, `__context__`) is storage refusing a write: an OSError whose errno is in
    STORAGE_ERRNOS, or a library's text for one (SQLite's "database or disk is full"). The path is
    the OSError's filename or the "writing <path>" note `finalbn.io` adds. None for anything else."""
    found: tuple[str, str | None] | None = None
    path = None
    stack, seen = [exc], set()
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        path = path or getattr(e, "filename", None) or next(
            (n[len(WRITING):] for n in getattr(e, "__notes__", ()) if n.startswith(WRITING)), None)
        if found is None:
            if isinstance(e, OSError) and e.errno in STORAGE_ERRNOS:
                found = (STORAGE_ERRNOS[e.errno], None)
            else:
                text = str(e).lower()
                what = next((w for key, w in _STORAGE_TEXT if key in text), None)
                if what is not None:
                    found = (what, None)
        stack += [e.__cause__, e.__context__]
    return None if found is None else (found[0], None if path is None else str(path))

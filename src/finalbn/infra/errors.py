"""The errors `finalbn` turns into one line and an exit status, in one light module (no torch, no
MLflow) so that the command line can catch them without importing any stage.

    raise UsageError("--shard 3 is not I/N (e.g. 0/4)")

Exit 2, the user's input: `UsageError` (the command line), `DataError` (images and splits),
`WeightsError` (weights files), `StoreError` (the MLflow store as it is), and `config.ConfigError`
(params), which lives with the schema.
Exit 1, a run that failed on good input: `TrainingDiverged`, storage that refused a write
(`storage_full`: a full disk, a quota, a read-only file system, a file-size limit), wherever it
happened, and a tracking server that did not answer through MLflow's retries
(`server_unreachable`). Each is re-exported where it is raised (`splits.DataError`,
`models.WeightsError`, `engine.TrainingDiverged`).
"""

from __future__ import annotations

import errno
import os
from typing import Any, cast

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
_STORAGE_TEXT = (
    ("database or disk is full", STORAGE_ERRNOS[errno.ENOSPC]),
    ("no space left on device", STORAGE_ERRNOS[errno.ENOSPC]),
    ("disk quota exceeded", STORAGE_ERRNOS[errno.EDQUOT]),
    ("read-only file system", STORAGE_ERRNOS[errno.EROFS]),
    ("readonly database", STORAGE_ERRNOS[errno.EROFS]),
    ("file too large", STORAGE_ERRNOS[errno.EFBIG]),
    ("disk i/o error", DISK_IO),
)
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
    the OSError's filename or the "writing <path>" note `finalbn.infra.io` adds. None for anything else."""
    found: tuple[str, str | None] | None = None
    path = None
    stack: list[BaseException | None] = [exc]
    seen: set[int] = set()
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        path = (
            path
            or getattr(e, "filename", None)
            or next((n[len(WRITING) :] for n in getattr(e, "__notes__", ()) if n.startswith(WRITING)), None)
        )
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


# The tracking server out of reach, told by class names (module-qualified, anywhere in an exception's
# MRO) so that this module imports neither MLflow nor requests: once its retries are spent, MLflow's
# REST client raises an MlflowException whose chain holds requests' ConnectionError or Timeout (over
# urllib3's MaxRetryError, whose `pool` is the server and `reason` the last try's error).
_MLFLOW_ERROR = "mlflow.exceptions.MlflowException"
# (not urllib3's MaxRetryError by itself: it also ends the retries of a server that answered 5xx)
_NO_ANSWER = {"requests.exceptions.ConnectionError", "requests.exceptions.Timeout"}
# the first of these found in the chain names why; else "connection failed"
_WHY = (
    ({"builtins.ConnectionRefusedError"}, "connection refused"),
    ({"builtins.TimeoutError", "urllib3.exceptions.TimeoutError", "requests.exceptions.Timeout"}, "timed out"),
    ({"socket.gaierror", "urllib3.exceptions.NameResolutionError"}, "host name not resolved"),
    (
        {"builtins.ConnectionResetError", "http.client.RemoteDisconnected", "urllib3.exceptions.ProtocolError"},
        "connection dropped",
    ),
)
RETRIES_VAR, MLFLOW_DEFAULT_RETRIES = "MLFLOW_HTTP_REQUEST_MAX_RETRIES", 7  # MLflow 3's default


def _names(e: BaseException) -> set[str]:
    return {f"{c.__module__}.{c.__qualname__}" for c in type(e).__mro__}


def _chain(exc: BaseException) -> list[BaseException]:
    """`exc` and every exception it leads to (`__cause__`, `__context__`, urllib3's `reason`), once each."""
    out: list[BaseException] = []
    stack: list[BaseException | None] = [exc]
    seen: set[int] = set()
    while stack:
        e = stack.pop()
        if not isinstance(e, BaseException) or id(e) in seen:
            continue
        seen.add(id(e))
        out.append(e)
        stack += [getattr(e, "reason", None), e.__context__, e.__cause__]
    return out


def server_unreachable(exc: BaseException) -> str | None:
    """ "the tracking server <url> did not answer (<why>; <n> tries, MLFLOW_HTTP_REQUEST_MAX_RETRIES=<r>)"
    when `exc` or its chain is MLflow's REST client giving up on a server that refused, dropped or
    timed out every try: an MlflowException over requests' ConnectionError or Timeout. The url is
    urllib3's pool's (left out where there is none); the tries are what the setting allows. None for
    anything else, a server that answered with an error included. Raises nothing."""
    chain = _chain(exc)
    names = [_names(e) for e in chain]
    if not any(_MLFLOW_ERROR in n for n in names) or not any(_NO_ANSWER & n for n in names):
        return None
    why = next((w for keys, w in _WHY if any(keys & n for n in names)), "connection failed")
    # urllib3's MaxRetryError carries `pool`; the getattr checks say which exceptions have one
    pool = next(
        (
            cast(Any, e).pool
            for e in chain
            if getattr(e, "pool", None) is not None and getattr(cast(Any, e).pool, "host", None)
        ),
        None,
    )
    where = f" {pool.scheme}://{pool.host}:{pool.port}" if pool is not None else ""
    try:
        retries = int(os.environ.get(RETRIES_VAR, MLFLOW_DEFAULT_RETRIES))
    except ValueError:
        retries = MLFLOW_DEFAULT_RETRIES
    tries = f"{retries + 1} {'try' if retries == 0 else 'tries'}"
    return f"the tracking server{where} did not answer ({why}; {tries}, {RETRIES_VAR}={retries})"

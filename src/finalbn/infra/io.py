"""Writing files so that a reader never sees half of one — the project's one atomic-write helper.

    write_text(path, "a,b\\n1,2\\n")          # folders created; utf-8
    write_json(path, {"auroc": 0.91})          # indent 2, one trailing newline
    with atomic_path(path) as tmp:             # anything that writes to a path (torch.save, PNG)
        torch.save(obj, tmp)
    with temporary_dir(Path("models/export")) as tmp:   # a folder of files, moved into place by the caller
        ...
    with temporary_dir(Path("data/splits/x")) as tmp:   # a whole folder: write it, then
        replace_dir(tmp, Path("data/splits/x"))          # swap it in (the old one removed)

The content goes to a hidden temporary file beside `path` (same folder, so the rename never
crosses a file system), which `os.replace` then moves over `path` in one step: a concurrent
reader sees the old file or the whole new one, and a run killed half-way leaves `path` as it
was. On an exception the temporary file is removed and the exception propagates. A process
killed with SIGKILL cannot remove its temporary: the next write to the same path (or the next
`temporary_dir` there) removes the ones whose process is gone (`sweep`).
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import re
import resource
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from finalbn.infra.errors import WRITING

TMP_SUFFIX = ".tmp"
_TMP = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.[0-9a-f]{8}(?P<aside>\.aside)?\.tmp$")
ASIDE = ".aside"  # `replace_dir`'s old folder while the new one is renamed in


def temporary_name(path: Path, aside: bool = False) -> Path:
    """`.<name>.<pid>.<random>.tmp` beside `path` (`.<name>.<pid>.<random>.aside.tmp` for the
    folder `replace_dir` moves aside): unique across processes and threads."""
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}{ASIDE if aside else ''}{TMP_SUFFIX}")


def _alive(pid: int) -> bool:
    """Whether process `pid` runs: not when there is none, nor when it is a zombie (ended, not yet
    reaped: a killed writer whose parent was killed too waits for init)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:  # another user's live process
        return True


def sweep(path: Path) -> list[Path]:
    """Remove the temporaries of `path` (`temporary_name`) that a process now gone left beside it
    (a SIGKILL mid-write); returns them. A live process's are left alone. A folder `replace_dir`
    had moved aside when it was killed, before the new one was in, is moved back to `path` when
    nothing is there: the old whole folder, not none."""
    gone = []
    with contextlib.suppress(FileNotFoundError):
        for entry in sorted(path.parent.iterdir(), key=lambda e: not e.name.endswith(ASIDE + TMP_SUFFIX)):
            m = _TMP.match(entry.name)
            if m and m["name"] == path.name and int(m["pid"]) != os.getpid() and not _alive(int(m["pid"])):
                if m["aside"] and not path.exists():
                    os.rename(entry, path)  # killed between replace_dir's two renames: the old folder back
                    continue
                shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)
                gone.append(entry)
    return gone


def _refused_by_storage(tmp: Path) -> int | None:
    """The errno of storage that refused the write of `tmp`, when the writer reported something
    else: no room left on its file system (under 1 MiB), a read-only one, or a file that reached
    the process's file-size limit (RLIMIT_FSIZE). None when storage looks fine."""
    try:
        st = os.statvfs(tmp.parent)
        if st.f_flag & os.ST_RDONLY:
            return errno.EROFS
        if st.f_bavail * st.f_frsize < 1 << 20:
            return errno.ENOSPC
        soft = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
        if soft != resource.RLIM_INFINITY and tmp.exists() and tmp.stat().st_size >= soft:
            return errno.EFBIG
    except OSError:
        return None
    return None


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces `path` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep(path)
    tmp = temporary_name(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException as exc:
        code = None if isinstance(exc, (OSError, KeyboardInterrupt)) else _refused_by_storage(tmp)
        tmp.unlink(missing_ok=True)
        if code is not None:  # a library that hid the errno (torch.save: "unexpected pos 704 vs 598")
            raise OSError(code, os.strerror(code), str(path)) from exc
        if isinstance(exc, OSError):  # a full disk's one line names the file (`errors.storage_full`)
            exc.add_note(f"{WRITING}{path}")
        raise


@contextlib.contextmanager
def temporary_dir(path: str | os.PathLike) -> Iterator[Path]:
    """A hidden folder `temporary_name(path)` for files the caller moves into place; removed with
    what is left in it when the block ends (a dead process's, at the next call)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep(path)
    tmp = temporary_name(path)
    tmp.mkdir()
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def replace_dir(new: str | os.PathLike, dest: str | os.PathLike) -> None:
    """Move the folder `new` (a `temporary_dir` beside `dest`) over the folder `dest`: the old one is
    renamed aside under a temporary name, the new one renamed in, the old one removed. A reader sees
    the old folder or the whole new one (or, killed with SIGKILL between the two renames, none until
    the next `temporary_dir(dest)` or write there moves the old one back: `sweep`), never a mix. An
    exception between them (a Ctrl-C's KeyboardInterrupt, a failed rename) renames the old one back
    before it propagates."""
    new, dest = Path(new), Path(dest)
    old = temporary_name(dest, aside=True) if dest.exists() else None
    try:
        if old is not None:
            os.rename(dest, old)
        os.rename(new, dest)
    except BaseException:
        if old is not None and old.exists() and not dest.exists():
            os.rename(old, dest)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    """`text` as utf-8, newlines written as given (a CSV's own line ends are kept)."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)


def json_safe(obj: Any) -> Any:
    """Plain JSON types; NaN and infinities become null."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if obj is None or type(obj).__name__ == "NAType":  # pandas.NA, without importing pandas here
        return None
    return obj


def write_json(path: str | os.PathLike, obj: Any, default: Any = None) -> None:
    """`obj` as indented JSON with a trailing newline (`default` as in `json.dumps`)."""
    write_text(path, json.dumps(obj, indent=2, default=default) + "\n")


def write_csv(path: str | os.PathLike, table: Any, **to_csv: Any) -> None:
    """A pandas DataFrame as CSV without its index (`to_csv`'s other options as given)."""
    write_text(path, table.to_csv(index=False, **to_csv))


def save_figure(fig: Any, path: str | os.PathLike, **savefig: Any) -> None:
    """A matplotlib figure, in the format its file name's suffix says (`savefig`'s options as given)."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=Path(path).suffix.lstrip(".") or "png", **savefig)

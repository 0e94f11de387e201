"""Writing files so that a reader never sees half of one — the project's one atomic-write helper.

    write_text(path, "a,b\\n1,2\\n")          # folders created; utf-8
    write_json(path, {"auroc": 0.91})          # indent 2, one trailing newline
    with atomic_path(path) as tmp:             # anything that writes to a path (torch.save, PNG)
        torch.save(obj, tmp)

The content goes to a hidden temporary file beside `path` (same folder, so the rename never
crosses a file system), which `os.replace` then moves over `path` in one step: a concurrent
reader sees the old file or the whole new one, and a run killed half-way leaves `path` as it
was. On an exception the temporary file is removed and the exception propagates.
"""
from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

TMP_SUFFIX = ".tmp"


def temporary_name(path: Path) -> Path:
    """`.<name>.<pid>.<random>.tmp` beside `path`: unique across processes and threads."""
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}{TMP_SUFFIX}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces `path` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    """`text` as utf-8, newlines written as given (a CSV's own line ends are kept)."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)


def write_json(path: str | os.PathLike, obj: Any, default: Any = None) -> None:
    """`obj` as indented JSON with a trailing newline (`default` as in `json.dumps`)."""
    write_text(path, json.dumps(obj, indent=2, default=default) + "\n")

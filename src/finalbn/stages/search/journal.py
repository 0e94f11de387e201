"""A search journal that a killed worker left torn, mended before Optuna opens it.

    note = mend_journal(Path("results/search/journal.log"))   # None when it was whole

Optuna's journal file holds one JSON record per line, appended under its lock
(`JournalFileSymlinkLock`: `<journal>.lock`). A worker killed mid-write leaves a partial last
line. Optuna skips it on reading, but the next record appended lands on the same line, and from
then on every read raises JSONDecodeError: the study can never be opened again. So, under the
same lock, before the storage opens: a partial last line is cut, and a line where a partial
record runs into a whole one keeps the whole one (a record begins `{"op_code":`). What is cut is
kept aside in `<journal>.torn-<UTC time>`, and the returned line says so.

`Backend` is Optuna's journal file whose every append (under that lock) holds a Ctrl-C back until
it is done (`interrupt.deferred`): Optuna's lock, interrupted inside, fails the trial with a
FileNotFoundError or breaks another worker's lock.
"""

from __future__ import annotations

import datetime
import json
import os
from pathlib import Path

from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock

from finalbn.infra import interrupt

RECORD_START = b'{"op_code":'


def _whole(line: bytes) -> bool:
    try:
        json.loads(line)
    except ValueError:  # JSONDecodeError and UnicodeDecodeError
        return False
    return True


def mend(data: bytes) -> tuple[bytes, bytes]:
    """(the journal with torn records cut, what was cut). Each line that is not one JSON record
    keeps the last whole record it ends with, if any; a last line without its newline is cut."""
    *lines, tail = data.split(b"\n")
    kept, cut = [], [tail] if tail else []
    for line in lines:
        if _whole(line):
            kept.append(line)
            continue
        at = line.rfind(RECORD_START)
        if at > 0 and _whole(line[at:]):
            kept.append(line[at:])
            cut.append(line[:at])
        else:
            cut.append(line)
    return b"".join(k + b"\n" for k in kept), b"\n".join(cut) + (b"\n" if cut else b"")


class Backend(JournalFileBackend):
    """`JournalFileBackend` whose appends a Ctrl-C does not cut (it is raised once the record is
    written and the lock released)."""

    def append_logs(self, logs: list[dict]) -> None:
        with interrupt.deferred():
            super().append_logs(logs)


def mend_journal(path: Path) -> str | None:
    """Mend `path` in place under Optuna's journal lock; None when it was whole (or absent), else
    one line naming what was cut and where it was kept. Raises OSError when the file cannot be
    read or written."""
    if not path.is_file():
        return None
    lock = JournalFileSymlinkLock(str(path))
    with interrupt.deferred():
        lock.acquire()
    try:
        data = path.read_bytes()
        if not data or (data.endswith(b"\n") and all(_whole(x) for x in data.split(b"\n")[:-1])):
            return None
        good, cut = mend(data)
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%S%fZ")
        aside = path.with_name(f"{path.name}.torn-{stamp}")
        aside.write_bytes(cut)
        tmp = path.with_name(f".{path.name}.mending")
        tmp.write_bytes(good)
        os.replace(tmp, path)
    finally:
        with interrupt.deferred():
            lock.release()
    records = cut.count(b"\n")
    return (
        f"search journal {path}: cut {len(cut)} bytes of {records} torn record(s) a killed worker left; "
        f"kept aside in {aside.name}"
    )

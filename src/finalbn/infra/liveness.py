"""Whether the process that started something is still alive: liveness, not age.

    me = identity()                    # {"host", "pid", "started"}
    gone({"host": "vm", "pid": 2855, "started": 1764547200.5})   # True / False; None if unknown

A process is named by its host, pid and start time (`psutil.Process.create_time`), so a pid
the system gave to another process since is told apart. Only a process on this host can be
checked; for one elsewhere `gone` says None (the caller decides: a lease, a heartbeat).
Used by the search's trials (`stages/search/lease.py`) and by the tracking store's runs
(a RUNNING run whose process is gone is marked KILLED: `tracking.store.reap`).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from typing import Any

import psutil

SAME_START_S = 1.0  # create_time is read to ~10 ms; a reused pid starts seconds later at the least


def identity() -> dict[str, Any]:
    """This process: {"host", "pid", "started" (Unix seconds)}."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "started": psutil.Process().create_time()}


def gone(who: Mapping[str, Any]) -> bool | None:
    """Whether the process `who` names ({"host", "pid"[, "started"]}) has ended: True when, on this
    host, no process has its pid, another one does (a different start time), or it is a zombie
    (ended; its parent, or init for an orphan, has not reaped it yet: a command resumed at once
    after its process group was killed meets its workers so); None for a process on another host,
    or when `who` names no pid."""
    if "pid" not in who or who.get("host") != socket.gethostname():
        return None
    try:
        proc = psutil.Process(int(who["pid"]))
        started = proc.create_time()
        if proc.status() == psutil.STATUS_ZOMBIE:  # ended, not yet reaped (an orphan waits for init's next sweep)
            return True
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return True
    except psutil.AccessDenied:  # someone else's live process under that pid
        return False
    return who.get("started") is not None and abs(started - float(who["started"])) > SAME_START_S

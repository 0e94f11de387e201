"""Who runs a trial, and whether that worker is still alive: liveness, not age.

    with lease(study, trial, every_s=60):      # the worker's identity, and its lease renewed
        ...                                    # the trial's replicates
    dead = is_dead(trial.user_attrs)           # True / False, None when the trial says nothing

A journal storage has no heartbeat (Optuna's are RDB-only), so each trial records its worker —
host, pid and the process's start time (`finalbn.infra.liveness.identity`, so a reused pid is told
apart) — and renews a lease (`lease_until`, a Unix time three intervals ahead) every `every_s`
seconds while it runs. On a restart a RUNNING trial is a dead worker's when, on this host, its
process is gone or is another process under the same pid; on another host, when its lease has
expired. A live worker on another machine keeps its trials.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any

import optuna

from finalbn.infra.liveness import gone, identity

WORKER, LEASE = "worker", "lease_until"  # trial user attributes
MISSED = 3  # a lease runs this many renewal intervals ahead


def is_dead(attrs: Mapping[str, Any], now: float | None = None) -> bool | None:
    """Whether the worker a trial's user attributes name is gone; None when they name none (a trial
    of an older version: the caller falls back on its age)."""
    who = attrs.get(WORKER)
    if not isinstance(who, Mapping) or "pid" not in who:
        return None
    here = gone(who)
    if here is not None:
        return here
    lease = attrs.get(LEASE)
    return lease is not None and float(lease) < (time.time() if now is None else now)


@contextlib.contextmanager
def lease(study: optuna.Study, trial: optuna.Trial, every_s: float) -> Iterator[None]:
    """Record this worker on `trial` and renew its lease every `every_s` s until the block ends."""
    storage, trial_id = study._storage, trial._trial_id
    trial.set_user_attr(WORKER, identity())
    trial.set_user_attr(LEASE, time.time() + MISSED * every_s)
    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(every_s):
            try:
                storage.set_trial_user_attr(trial_id, LEASE, time.time() + MISSED * every_s)
            except optuna.exceptions.UpdateFinishedTrialError:
                return  # the trial ended (or was failed by another process) meanwhile
            except Exception:  # a transient storage error: the next renewal tries again
                continue

    thread = threading.Thread(target=renew, name=f"lease-trial-{trial.number}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=every_s + 5)

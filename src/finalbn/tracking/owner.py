"""Which command owns a stage's work in the tracking store: one live owner per stage and shard.

    with owned(cfg, "grid", shard=(3, 8), command="grid"):   # or StoreError naming the live owner
        ...                                                    # the shard's cells
    take_over(cfg, "grid", running)    # RUNNING runs of cells about to be redone: KILLED, or StoreError

Two commands on one store (`finalbn grid` started twice, two machines on one tracking server)
would train the same cells twice, and the second would mark the first's runs KILLED. So each
top-level grid and search command records itself in the store, as a tag of its stage's
experiment: `finalbn.owner.<I>-<N>` (`0-1` for a whole stage, `3-8` for `--shard 3/8`), JSON
{host, pid, started (the process's start time, `liveness.identity`), lease_until (Unix s),
shard "I/N", command, since}. Kept in the store, it works alike for sqlite, PostgreSQL and a
tracking server.

Acquiring reads every record of the experiment: one that is not this process's, whose shard
overlaps ours (the same N and the same I; another N, or a whole stage, overlaps everything) and
whose process is alive (on this host `liveness.gone` is False; on another host its lease has not
expired) makes the command refuse with one line naming it (StoreError). A dead owner's record is
taken over. On a sqlite store the read and the write happen under the store's file lock (the one
`store.setup` takes). On any other store there is no lock to take: the command writes, waits
SETTLE_S, reads back, and backs off (StoreError) when its record was overwritten or an overlapping
live record with an earlier claim (`since`) appeared. The window left: a command whose read came
before our write and whose write comes after our read-back (a request stalled over SETTLE_S)
is not seen by us, nor we by it.

A daemon thread renews the lease every `every_s` (RENEW_S, the lease MISSED intervals ahead); on
exit (normal, an exception, Ctrl-C) the record is removed if it is still ours. A SIGKILLed owner
leaves its record: on this host the next command finds its process gone, elsewhere its lease
expires. A command's own worker processes (FINALBN_CHILD, set by `workers.run_commands`: grid
shards, search workers, the sensitivity stage's levels) and Ray tasks work under their driver's
record and take none.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from filelock import FileLock

from finalbn.config import Config
from finalbn.infra import liveness
from finalbn.infra.errors import StoreError
from finalbn.tracking.records import STAGE, RunRecord
from finalbn.tracking.runs import mark_killed
from finalbn.tracking.store import (
    STAGES,
    client,
    experiment_id,
    experiment_name,
    process_gone,
    run_process,
    setup,
    sqlite_path,
    tracking_uri,
)

OWNER = "finalbn.owner"  # experiment tag prefix: finalbn.owner.<I>-<N>
CHILD_ENV = "FINALBN_CHILD"  # set in a command's worker processes (`workers.run_commands`): their driver owns
RENEW_S = 60.0  # the lease is renewed this often
MISSED = 3  # and runs this many renewal intervals ahead
SETTLE_S = 1.0  # write-then-verify: how long a claim on a store without a file lock waits before reading back
LOCK_S = 30.0  # the longest a renewal or a release waits for the sqlite store's file lock


def tag_key(shard: tuple[int, int]) -> str:
    """The experiment tag of shard (I, N)'s owner: `finalbn.owner.I-N`."""
    return f"{OWNER}.{shard[0]}-{shard[1]}"


def overlaps(a: tuple[int, int], b: tuple[int, int]) -> bool:
    """Whether shards (I, N) and (J, M) may hold the same cells: the same N and I, or another N."""
    return a[1] != b[1] or a[0] == b[0]


def _shard(record: Mapping[str, Any]) -> tuple[int, int]:
    i, _, n = str(record.get("shard", "0/1")).partition("/")
    return (int(i), int(n)) if i.isdigit() and n.isdigit() else (0, 1)


def records(exp_id: str) -> dict[str, dict]:
    """The owner records of experiment `exp_id` by tag (unreadable ones left out)."""
    out = {}
    for key, value in client().get_experiment(exp_id).tags.items():
        if key.startswith(f"{OWNER}."):
            try:
                rec = json.loads(value)
            except ValueError:
                continue
            if isinstance(rec, dict) and isinstance(rec.get("pid"), int):
                out[key] = rec
    return out


def alive(record: Mapping[str, Any], now: float | None = None) -> bool:
    """Whether the owner `record` names is alive: on this host its process; elsewhere its lease."""
    here = liveness.gone(record)
    if here is not None:
        return not here
    return float(record.get("lease_until", 0)) >= (time.time() if now is None else now)


def mine(record: Mapping[str, Any]) -> bool:
    """Whether `record` names this process."""
    me = liveness.identity()
    return (record.get("host"), record.get("pid")) == (me["host"], me["pid"]) and abs(
        float(record.get("started", 0)) - me["started"]
    ) <= liveness.SAME_START_S


def live_owners(exp_id: str, shard: tuple[int, int] = (0, 1)) -> list[dict]:
    """The live records of experiment `exp_id`, not this process's, whose shard overlaps `shard`,
    the earliest claim first."""
    found = [r for r in records(exp_id).values() if not mine(r) and overlaps(_shard(r), shard) and alive(r)]
    return sorted(found, key=lambda r: (float(r.get("since", 0)), str(r.get("host")), int(r.get("pid", 0))))


def _when(t: float) -> str:
    return datetime.datetime.fromtimestamp(float(t), datetime.UTC).strftime("%H:%M UTC")


def refusal(record: Mapping[str, Any], name: str) -> str:
    """The one line that names the live owner `record` of experiment `name`, and what to do."""
    pid, host = record.get("pid"), record.get("host")
    here = liveness.gone(record) is not None
    stop = (
        f"wait for it to end or stop it (kill {pid}), then run this again"
        if here
        else f"wait for it to end or stop it (kill {pid} on {host}), then run this again (a record its "
        f"process could not remove lapses at {_when(record.get('lease_until', 0))})"
    )
    return (
        f"another {record.get('command', 'finalbn command')} owns experiment {name} of this store: pid {pid} on "
        f"host {host}, started {_when(record.get('started', 0))} ({tracking_uri()}); {stop}"
    )


def _record(shard: tuple[int, int], command: str, every_s: float) -> dict:
    label = f"finalbn {command}" + (f" --shard {shard[0]}/{shard[1]}" if shard != (0, 1) else "")
    return {
        **liveness.identity(),
        "lease_until": time.time() + MISSED * every_s,
        "shard": f"{shard[0]}/{shard[1]}",
        "command": label,
        "since": time.time(),
    }


def _store_lock(timeout: float = LOCK_S) -> contextlib.AbstractContextManager:
    """The sqlite store's file lock (`store.setup`'s; `timeout` s at most, -1: no limit), or
    nothing for another store."""
    db = sqlite_path(tracking_uri())
    return FileLock(f"{db}.lock", timeout=timeout) if db is not None else contextlib.nullcontext()


def _claim(exp_id: str, key: str, record: dict, shard: tuple[int, int], name: str) -> None:
    """Write `record` under `key` unless a live overlapping owner holds the stage (StoreError)."""
    db = sqlite_path(tracking_uri())
    with _store_lock(timeout=-1):  # as `store.setup` waits for it
        others = live_owners(exp_id, shard)
        if others:
            raise StoreError(refusal(others[0], name))
        client().set_experiment_tag(exp_id, key, json.dumps(record))
    if db is not None:
        return
    time.sleep(SETTLE_S)  # write then verify: a claim written at the same time shows by now
    now, first = records(exp_id).get(key), live_owners(exp_id, shard)
    if now is not None and mine(now) and not (first and float(first[0].get("since", 0)) <= record["since"]):
        return
    _release(exp_id, key)
    blocker = now if now is not None and not mine(now) else (first[0] if first else None)
    raise StoreError(
        refusal(blocker, name)
        if blocker
        else f"the owner record {key} of experiment {name} vanished as this command wrote it "
        f"({tracking_uri()}): another command is starting on the same store; run this again"
    )


def _release(exp_id: str, key: str) -> None:
    """Remove the record under `key` if it is still this process's."""
    with _store_lock():
        now = records(exp_id).get(key)
        if now is not None and mine(now):
            client().delete_experiment_tag(exp_id, key)


def _renew(exp_id: str, key: str, record: dict, every_s: float, stop: threading.Event, guard: threading.Lock) -> None:
    """Push the lease MISSED intervals ahead every `every_s` s until `stop`, while the record is ours."""
    while not stop.wait(every_s):
        try:
            with guard, _store_lock():
                if stop.is_set():
                    return
                now = records(exp_id).get(key)
                if now is None or not mine(now):
                    return  # taken over (this process was thought dead): it owns nothing any more
                record["lease_until"] = time.time() + MISSED * every_s
                client().set_experiment_tag(exp_id, key, json.dumps(record))
        except Exception:  # a transient store error, or its lock held long: the next renewal tries again
            continue


@contextlib.contextmanager
def owned(
    cfg: Config, stage: str, shard: tuple[int, int] = (0, 1), command: str = "", every_s: float = RENEW_S
) -> Iterator[dict | None]:
    """Own `stage`'s experiment (shard (I, N) of it) in the store for the block; yields the record
    (None in a command's worker process, FINALBN_CHILD: its driver owns). Raises StoreError, one
    line naming host and pid, when a live command owns an overlapping shard."""
    if os.environ.get(CHILD_ENV):
        yield None
        return
    exp_id, name, key = setup(cfg, stage), experiment_name(cfg, stage), tag_key(shard)
    record = _record(shard, command or stage, every_s)
    _claim(exp_id, key, record, shard, name)
    stop, guard = threading.Event(), threading.Lock()
    thread = threading.Thread(
        target=_renew, args=(exp_id, key, record, every_s, stop, guard), name=f"lease-{key}", daemon=True
    )
    thread.start()
    try:
        yield record
    finally:
        stop.set()
        if guard.acquire(timeout=LOCK_S):  # not while a renewal writes (a stalled store: the lease lapses)
            try:
                _release(exp_id, key)
            except Exception:  # the store is out of reach: the record lapses (this process ends)
                pass
            finally:
                guard.release()


def take_over(cfg: Config, stage: str, runs: Iterable[RunRecord]) -> list[str]:
    """End KILLED the RUNNING `runs` of cells this command (owner of `stage`'s experiment) is about
    to redo, and return their ids. A run whose process is alive on this host is another command's
    at work: StoreError naming its host and pid, and no run is marked. A run whose process is gone
    is KILLED; one made on another host (or naming no process) too, as this command's owner record
    guarantees no other live command owns these cells, unless it is in another stage's experiment
    (a sensitivity level finds the grid's cells) that a live command owns: StoreError naming it."""
    doomed: list[str] = []
    owners: dict[str, list[dict]] = {}  # another stage -> its live owners (asked once)
    for run in runs:
        gone = process_gone(run.tags)
        if gone is False:
            who = run_process(run.tags) or {}
            raise StoreError(
                f"cell run {run.name!r} ({run.run_id}) is RUNNING in process pid {who.get('pid')} on host "
                f"{who.get('host')}, which is alive ({tracking_uri()}): another finalbn command trains "
                f"this cell; wait for it to end or stop it (kill {who.get('pid')}), then run this again"
            )
        other = run.tags.get(STAGE, stage)
        if gone is None and other != stage and other in STAGES:
            if other not in owners:
                exp_id = experiment_id(experiment_name(cfg, other))
                owners[other] = live_owners(exp_id) if exp_id else []
            if owners[other]:
                raise StoreError(refusal(owners[other][0], experiment_name(cfg, other)))
        doomed.append(run.run_id)
    for run_id in doomed:
        mark_killed(run_id)
    return doomed

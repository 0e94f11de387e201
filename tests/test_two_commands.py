"""Two commands, one store: a second grid or search started while the first is alive refuses with
one line naming it (host and pid) and never marks its runs KILLED; once the first is dead, the
second takes over. The owner record (`finalbn.tracking.owner`) and the grid's decision on a
RUNNING run of a cell it is about to redo (`tracking.owner.take_over`)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import mlflow
import psutil
import pytest

from conftest import ROOT
from finalbn import tracking
from finalbn.cli import main
from finalbn.infra import faults
from finalbn.infra.errors import StoreError
from finalbn.stages import grid
from finalbn.stages.grid.plan import all_cells, cell_key
from finalbn.stages.grid.shard import existing_cells
from finalbn.tracking import owner, store
from finalbn.tracking.records import CELL, CELL_KEY, STAGE, WORKER, WORKER_STARTED

SPLITS = Path("data/splits")
ELSEWHERE = "node-that-is-not-this-one"
ONE_CELL = ["grid.configs=[31]", "grid.headline.configs=[]", "grid.replicates=1", "train.epochs=1"]


@pytest.fixture(scope="module")
def empty_store(tmp_path_factory) -> Path:
    """An empty sqlite MLflow store, made once: a copy of it is a fresh store at once (making one,
    its tables and migrations, takes seconds)."""
    db = tmp_path_factory.mktemp("store") / "mlflow.db"
    mlflow.MlflowClient(f"sqlite:///{db}").search_experiments()
    return db


@pytest.fixture
def store_cfg(tmp_path, monkeypatch, load, empty_store):
    """A Config on a fresh sqlite store in tmp_path (MLFLOW_TRACKING_URI)."""
    shutil.copy(empty_store, tmp_path / "mlflow.db")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.delenv(owner.CHILD_ENV, raising=False)
    before = mlflow.get_tracking_uri()
    yield load()
    mlflow.set_tracking_uri(before)  # `setup` pointed MLflow at this store


def _record(who: dict, shard: str = "0/1", lease_s: float = 180.0, command: str = "finalbn grid") -> dict:
    return {**who, "lease_until": time.time() + lease_s, "shard": shard, "command": command, "since": time.time()}


def _write(cfg, stage: str, record: dict) -> str:
    exp_id = tracking.setup(cfg, stage)
    i, _, n = record["shard"].partition("/")
    store.client().set_experiment_tag(exp_id, owner.tag_key((int(i), int(n))), json.dumps(record))
    return exp_id


def _dead() -> dict:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    who = {"host": socket.gethostname(), "pid": proc.pid, "started": psutil.Process(proc.pid).create_time()}
    proc.wait()
    return who


def _live() -> dict:
    """A live process of this host that is not this one: the one that started the tests."""
    parent = psutil.Process(os.getppid())
    return {"host": socket.gethostname(), "pid": parent.pid, "started": parent.create_time()}


def test_a_dead_owners_record_is_taken_over_and_ours_removed_on_exit(store_cfg):
    exp_id = _write(store_cfg, "grid", _record(_dead()))
    with tracking.owned(store_cfg, "grid", command="grid") as mine:
        (rec,) = owner.records(exp_id).values()
        assert rec["pid"] == os.getpid() == mine["pid"] and rec["command"] == "finalbn grid"
    assert owner.records(exp_id) == {}
    with pytest.raises(KeyboardInterrupt):  # Ctrl-C, or any exception: removed all the same
        with tracking.owned(store_cfg, "grid", command="grid"):
            raise KeyboardInterrupt
    assert owner.records(exp_id) == {}


def test_a_live_owner_refuses_with_one_line_naming_it(store_cfg):
    who = _live()
    exp_id = _write(store_cfg, "grid", _record(who, lease_s=-60))  # on this host the process decides, not the lease
    with pytest.raises(StoreError) as err:
        with tracking.owned(store_cfg, "grid", command="grid"):
            pytest.fail("a second owner")
    line = str(err.value)
    assert len(line.splitlines()) == 1 and f"pid {who['pid']} on host {who['host']}" in line, line
    assert line.startswith("another finalbn grid owns experiment finalbn/grid") and f"kill {who['pid']}" in line
    assert [r["pid"] for r in owner.records(exp_id).values()] == [who["pid"]]  # its record untouched


def test_another_hosts_owner_lives_until_its_lease_lapses(store_cfg):
    elsewhere = {"host": ELSEWHERE, "pid": 4242, "started": time.time() - 60}
    exp_id = _write(store_cfg, "search", _record(elsewhere, lease_s=120, command="finalbn search"))
    with pytest.raises(StoreError, match=f"pid 4242 on host {ELSEWHERE}.*kill 4242 on {ELSEWHERE}"):
        with tracking.owned(store_cfg, "search", command="search"):
            pass
    _write(store_cfg, "search", _record(elsewhere, lease_s=-1, command="finalbn search"))  # lapsed: a dead owner's
    with tracking.owned(store_cfg, "search", command="search"):
        assert [r["pid"] for r in owner.records(exp_id).values()] == [os.getpid()]


def test_overlapping_shards_refuse_and_disjoint_ones_share(store_cfg):
    assert owner.overlaps((1, 4), (1, 4)) and owner.overlaps((1, 4), (0, 2)) and owner.overlaps((0, 1), (3, 8))
    assert not owner.overlaps((1, 4), (2, 4))
    exp_id = _write(store_cfg, "grid", _record(_live(), shard="1/4"))
    with tracking.owned(store_cfg, "grid", shard=(2, 4), command="grid"):  # another quarter: both at once
        assert set(owner.records(exp_id)) == {owner.tag_key((1, 4)), owner.tag_key((2, 4))}
    for shard in [(1, 4), (0, 2), (0, 1)]:  # the same quarter, a half, the whole grid
        with pytest.raises(StoreError, match="owns experiment finalbn/grid"):
            with tracking.owned(store_cfg, "grid", shard=shard, command="grid"):
                pass
    with tracking.owned(store_cfg, "sensitivity", command="grid"):  # another stage's experiment: its own record
        pass


def test_the_lease_is_renewed_while_owned_and_a_worker_process_takes_none(store_cfg, monkeypatch):
    with tracking.owned(store_cfg, "grid", command="grid", every_s=0.1) as mine:
        exp_id = store.experiment_id("finalbn/grid")
        first = owner.records(exp_id)[owner.tag_key((0, 1))]["lease_until"]
        time.sleep(0.6)
        assert owner.records(exp_id)[owner.tag_key((0, 1))]["lease_until"] > first
        assert mine["lease_until"] - time.time() == pytest.approx(owner.MISSED * 0.1, abs=0.25)
    assert owner.records(exp_id) == {}
    monkeypatch.setenv(owner.CHILD_ENV, "1")  # a shard process `finalbn grid --workers 2` started: its driver owns
    _write(store_cfg, "grid", _record(_live()))
    with tracking.owned(store_cfg, "grid", shard=(0, 2), command="grid") as mine:
        assert mine is None and [r["pid"] for r in owner.records(exp_id).values()] == [_live()["pid"]]


def test_without_a_file_lock_a_claim_is_verified_and_the_earlier_claim_wins(store_cfg, monkeypatch):
    """A server or PostgreSQL store (no file lock): write, wait, read back. A rival's claim that
    lands meanwhile wins when it was made first (this command backs off, its record removed) and
    loses when made later (the rival backs off on its own read-back)."""
    monkeypatch.setattr(owner, "sqlite_path", lambda uri: None)
    exp_id = tracking.setup(store_cfg, "grid")
    rival = _live()

    def racing(since_s: float):
        def sleep(seconds: float) -> None:  # the settle wait: the rival's claim lands now
            assert seconds == owner.SETTLE_S
            _write(store_cfg, "grid", {**_record(rival, shard="0/2"), "since": time.time() + since_s})

        return sleep

    monkeypatch.setattr(owner.time, "sleep", racing(-5))
    with pytest.raises(StoreError, match=f"another finalbn grid owns experiment finalbn/grid .*pid {rival['pid']}"):
        with tracking.owned(store_cfg, "grid", command="grid"):
            pytest.fail("both claims kept")
    assert [r["pid"] for r in owner.records(exp_id).values()] == [rival["pid"]]
    store.client().delete_experiment_tag(exp_id, owner.tag_key((0, 2)))  # the rival is done
    monkeypatch.setattr(owner.time, "sleep", racing(+5))
    with tracking.owned(store_cfg, "grid", command="grid"):  # claimed before the rival's: ours
        assert {r["pid"] for r in owner.records(exp_id).values()} == {rival["pid"], os.getpid()}


def _running_cell_run(cfg, stage: str, worker: str, started: str = "") -> tuple[str, str]:
    """A RUNNING run of the one cell of ONE_CELL in `stage`'s experiment, made by process `worker`."""
    (cell,) = all_cells(cfg)
    key = cell_key(cfg, cell, SPLITS)
    tags = {CELL: "true", CELL_KEY: key, STAGE: stage, WORKER: worker, **({WORKER_STARTED: started} if started else {})}
    return store.client().create_run(tracking.setup(cfg, stage), run_name="left RUNNING", tags=tags).info.run_id, key


def _statuses(cfg, key: str) -> Counter:
    return Counter(r.status for r in existing_cells(cfg).get(key, []))


def test_a_live_processs_running_cell_is_refused_and_another_hosts_killed(prepared, empty_store, tmp_path):
    load, _ = prepared
    shutil.copy(empty_store, tmp_path / "mlflow.db")
    cfg = load(ONE_CELL)
    who = _live()
    run_id, key = _running_cell_run(cfg, "grid", f"{who['host']}:{who['pid']}", f"{who['started']:.3f}")
    with pytest.raises(StoreError) as err:
        grid.run_shard(cfg, SPLITS, log=lambda m: None)
    assert f"pid {who['pid']} on host {who['host']}, which is alive" in str(err.value)
    assert len(str(err.value).splitlines()) == 1
    assert _statuses(cfg, key) == {"RUNNING": 1}  # left as it is, and nothing trained
    # made on another host: another stage's experiment a live command owns (a sensitivity level
    # meets a grid cell in training) is refused; under this command's own record it is KILLED
    store.client().set_tag(run_id, WORKER, f"{ELSEWHERE}:77")
    store.client().delete_tag(run_id, WORKER_STARTED)
    exp_id = _write(cfg, "grid", _record({"host": ELSEWHERE, "pid": 77, "started": time.time()}))
    with pytest.raises(
        StoreError, match=f"another finalbn grid owns experiment finalbn/grid .*pid 77 on host {ELSEWHERE}"
    ):
        grid.run_shard(cfg, SPLITS, log=lambda m: None, stage="sensitivity")
    assert _statuses(cfg, key) == {"RUNNING": 1}
    store.client().delete_experiment_tag(exp_id, owner.tag_key((0, 1)))
    stats = grid.run_shard(cfg, SPLITS, log=lambda m: None)
    assert stats["ran"] == 1 and _statuses(cfg, key) == {"KILLED": 1, "FINISHED": 1}
    assert mlflow.MlflowClient().get_run(run_id).info.status == "KILLED"


def _finalbn(command: str, overrides, *extra) -> list[str]:
    return [command, "--params", str(ROOT / "params.yaml"), *[x for o in overrides for x in ("--set", o)], *extra]


def _stopped(argv: list[str], point: str, ready: Path) -> tuple[subprocess.Popen, int]:
    """`finalbn <argv>` started as a process in a session of its own, stopped at fault `point`
    (inside a cell, its run RUNNING); returns it and the pid that wrote `ready`."""
    env = {**os.environ, faults.ENV: point, faults.READY: str(ready)}
    env.pop(owner.CHILD_ENV, None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "finalbn", *argv],
        env=env,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 240
    while not ready.exists() or not ready.read_text().endswith("\n"):
        if proc.poll() is not None or time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail(f"{point} not reached: {proc.communicate()[0][-3000:]}")
        time.sleep(0.1)
    return proc, int(ready.read_text())


def _refused(argv: list[str], capsys, command: str, stage: str, pid: int) -> None:
    """The same command in this process (the second of two): exit 2 and one line on stderr naming
    the first's host and pid."""
    capsys.readouterr()
    code = main(argv)
    out, err = capsys.readouterr()
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1, out[-2000:] + err[-3000:]
    assert lines[0].startswith(
        f"finalbn {command}: error: another finalbn {command} owns experiment finalbn/{stage} "
    ), lines
    assert f"pid {pid} on host {socket.gethostname()}" in lines[0] and f"kill {pid}" in lines[0], lines


def _kill(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)


def _runs(experiment: str, flag: str) -> list:
    return mlflow.search_runs(
        experiment_names=[experiment], output_format="list", filter_string=f"tags.`{flag}` = 'true'"
    )


@pytest.mark.slow
def test_a_second_grid_refuses_while_the_first_lives_then_takes_over(prepared, empty_store, tmp_path, capsys):
    _, overrides = prepared
    shutil.copy(empty_store, tmp_path / "mlflow.db")
    argv = _finalbn("grid", overrides + ONE_CELL + ["train.epochs=2"], "--workers", "1")
    first, pid = _stopped(argv, "grid.cell", tmp_path / "ready")
    try:
        (running,) = _runs("finalbn/grid", CELL)
        _refused(argv, capsys, "grid", "grid", pid)
        assert mlflow.get_run(running.info.run_id).info.status == "RUNNING"  # the live one's run left alone
    finally:
        _kill(first)
    assert main(argv) == 0  # the first is dead: its record and its run are taken over
    assert mlflow.get_run(running.info.run_id).info.status == "KILLED"
    runs = _runs("finalbn/grid", CELL)
    assert Counter(r.info.status for r in runs) == {"KILLED": 1, "FINISHED": 1}  # the cell run once more
    assert owner.records(store.experiment_id("finalbn/grid")) == {}  # and the record removed


@pytest.mark.slow
def test_a_second_search_refuses_while_the_first_lives_then_takes_over(prepared, empty_store, tmp_path, capsys):
    _, overrides = prepared
    shutil.copy(empty_store, tmp_path / "mlflow.db")
    small = [
        "search.space.switches=[bn, wl]",
        "search.space.hidden=[16, 32]",
        "search.space.final=null",
        "search.space.final_bn_affine=null",
        "search.space.final_bias=null",
        "search.space.batch_size=null",
        "search.space.mixup_alpha=null",
        "search.space.final_bn_momentum=null",
        "search.space.label_smoothing=null",
        "search.space.dropout_0=null",
        "search.space.dropout_1=null",
    ]
    over = (
        overrides
        + small
        + [
            f"search.storage={tmp_path / 'search' / 'journal.log'}",
            "search.n_trials=1",
            "search.pruner=none",
            "train.epochs=2",
            "grid.headline.replicates=2",
            "selection.replicates=1",
            "search.workers=1",
        ]
    )
    argv = _finalbn("search", over, "--out", str(tmp_path / "search.json"))
    first, pid = _stopped(argv, "search.cell", tmp_path / "ready")
    try:
        (running,) = _runs("finalbn/search", "finalbn.trial")
        _refused(argv, capsys, "search", "search", pid)
        assert mlflow.get_run(running.info.run_id).info.status == "RUNNING"
    finally:
        _kill(first)
    assert main(argv) == 0
    assert mlflow.get_run(running.info.run_id).info.status == "KILLED"
    trials = _runs("finalbn/search", "finalbn.trial")
    assert Counter(r.info.status for r in trials) == {"KILLED": 1, "FINISHED": 1}  # the trial retried once
    assert json.loads((tmp_path / "search.json").read_text())["states"]["complete"] == 1

"""A search trial names its worker and renews its lease; a restart tells a dead worker's trial from
a live one by the process (this host) or the lease (another host), not by the trial's age."""

from __future__ import annotations

import gc
import os
import socket
import subprocess
import sys
import time

import mlflow
import optuna
import psutil
import pytest

from conftest import ROOT
from finalbn import cli
from finalbn.infra import interrupt, io
from finalbn.stages import cellrun
from finalbn.stages.search.lease import LEASE, WORKER, identity, is_dead, lease
from finalbn.tracking import store


def test_this_process_is_alive_and_a_finished_one_is_dead():
    assert is_dead({WORKER: identity()}) is False
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    who = {"host": socket.gethostname(), "pid": proc.pid, "started": psutil.Process(proc.pid).create_time()}
    proc.wait()
    assert is_dead({WORKER: who}) is True


def test_a_reused_pid_is_another_process():
    me = identity()
    assert is_dead({WORKER: {**me, "started": me["started"] - 3600}}) is True  # same pid, started an hour apart


def test_another_hosts_worker_lives_while_its_lease_does():
    other = {"host": "node-that-is-not-this-one", "pid": os.getpid(), "started": 0.0}
    assert is_dead({WORKER: other, LEASE: time.time() + 60}) is False
    assert is_dead({WORKER: other, LEASE: time.time() - 1}) is True
    assert is_dead({}) is None and is_dead({WORKER: "?"}) is None  # an older trial: its age decides


def test_the_lease_is_renewed_while_the_trial_runs_and_stops_with_it():
    study = optuna.create_study()
    trial = study.ask()
    with lease(study, trial, every_s=0.05):
        first = study.trials[0].user_attrs[LEASE]
        assert study.trials[0].user_attrs[WORKER]["pid"] == os.getpid()
        time.sleep(0.3)
        renewed = study.trials[0].user_attrs[LEASE]
    assert renewed > first
    time.sleep(0.2)
    assert study.trials[0].user_attrs[LEASE] == renewed  # no renewal after the block


def _dead_process() -> dict:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    who = {"host": socket.gethostname(), "pid": proc.pid, "started": psutil.Process(proc.pid).create_time()}
    proc.wait()
    return who


def test_a_dead_writers_temporary_is_swept_at_the_next_write_and_a_live_ones_kept(tmp_path):
    dead, target = _dead_process(), tmp_path / "grid.csv"
    stale = tmp_path / f".grid.csv.{dead['pid']}.0123abcd.tmp"  # a SIGKILL mid-write left it
    stale.write_text("half")
    live = tmp_path / f".grid.csv.{os.getppid()}.0123abcd.tmp"  # a live process is writing it
    live.write_text("in progress")
    other = tmp_path / f".report.md.{dead['pid']}.0123abcd.tmp"  # another file's: its own write sweeps it
    other.write_text("half")
    io.write_text(target, "a,b\n")
    assert target.read_text() == "a,b\n" and not stale.exists() and live.exists() and other.exists()
    with io.temporary_dir(tmp_path / "export") as tmp:  # a folder is swept the same way
        (tmp / "model.onnx").write_bytes(b"x")
        os.rename(tmp, tmp_path / f".export.{dead['pid']}.89abcdef.tmp")  # as a killed export leaves it
        tmp.mkdir()
    with io.temporary_dir(tmp_path / "export"):
        assert not (tmp_path / f".export.{dead['pid']}.89abcdef.tmp").exists()


def test_a_dead_processs_running_runs_are_killed_and_the_others_left(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    client = store.client()
    exp = client.create_experiment("reap")
    dead = _dead_process()
    tags = {
        "dead": {"finalbn.worker": f"{dead['host']}:{dead['pid']}", "finalbn.worker_started": str(dead["started"])},
        "live": store.worker_tags(),
        "elsewhere": {"finalbn.worker": f"node-that-is-not-this-one:{os.getpid()}"},
        "untagged": {},
    }  # not finalbn's (an `mlflow run` project run): never touched
    ids = {name: client.create_run(exp, run_name=name, tags=t).info.run_id for name, t in tags.items()}
    assert store.reap([exp]) == [ids["dead"]]
    status = {name: client.get_run(i).info.status for name, i in ids.items()}
    assert status == {"dead": "KILLED", "live": "RUNNING", "elsewhere": "RUNNING", "untagged": "RUNNING"}
    assert store.reap([exp], own=True) == [ids["live"]]  # on Ctrl-C: this process's own, once closed
    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])


def test_a_fault_point_stops_on_its_nth_hit_and_costs_nothing_unset(tmp_path):
    ready = tmp_path / "ready"
    code = (
        "from finalbn.infra import faults\n"
        "faults.point('grid.cell'); print('first', flush=True)\n"
        "faults.point('grid.between'); faults.point('grid.cell'); print('second', flush=True)\n"
    )
    env = {**os.environ, "FINALBN_FAULT": "grid.cell@2", "FINALBN_FAULT_READY": str(ready)}
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not ready.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ready.read_text().strip() == str(proc.pid)
    time.sleep(0.3)
    assert proc.poll() is None  # waiting there
    proc.kill()
    assert proc.communicate()[0] == "first\n"
    env.pop("FINALBN_FAULT")
    assert (
        subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True).stdout
        == "first\nsecond\n"
    )


def test_a_ctrl_c_python_swallowed_stops_the_next_epoch_and_the_command_says_interrupted(monkeypatch, capsys):
    """The SIGINT handler's KeyboardInterrupt, raised inside a weakref callback or a __del__, is
    printed as "Exception ignored" and lost: the next epoch's end raises it again, once, and a
    command that still returns exits 130 with its one line."""
    interrupt.reset()
    try:
        point = cellrun._Point("grid.cell")
        point.on_epoch_end(1, {})  # no Ctrl-C: nothing
        interrupt.received()  # the handler ran; its exception went nowhere
        with pytest.raises(KeyboardInterrupt):
            point.on_epoch_end(2, {})
        point.on_epoch_end(3, {})  # delivered once
        monkeypatch.setattr(cli, "stage_main", lambda command: lambda cfg, args: 0)
        assert cli.main(["store", "--params", str(ROOT / "params.yaml")]) == 130
        assert "finalbn store: interrupted" in capsys.readouterr().err
    finally:
        interrupt.reset()


def test_a_swallowed_ctrl_c_prints_no_traceback_and_other_unraisable_errors_still_do(capsys):
    """Python prints "Exception ignored ... Traceback" for an exception raised in a __del__: the
    command line's hook drops it for the Ctrl-C it remembered (delivered later), for nothing else."""

    class Collected:
        def __init__(self, exc):
            self.exc = exc

        def __del__(self):
            raise self.exc

    before = sys.unraisablehook
    interrupt.reset()
    sys.unraisablehook = interrupt.quiet(sys.__unraisablehook__)
    try:
        Collected(KeyboardInterrupt())  # no Ctrl-C received: this is no Ctrl-C of ours, it is printed
        gc.collect()
        assert "KeyboardInterrupt" in capsys.readouterr().err
        interrupt.received()
        Collected(KeyboardInterrupt())
        gc.collect()
        assert capsys.readouterr().err == "" and interrupt.pending()
        Collected(ValueError("a real error"))
        gc.collect()
        err = capsys.readouterr().err
        assert "Exception ignored" in err and "ValueError: a real error" in err
    finally:
        sys.unraisablehook = before
        interrupt.reset()

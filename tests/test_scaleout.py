"""Beyond one machine, for real: the Ray executor, a PostgreSQL-backed MLflow server, Optuna's RDB
storage with heartbeats; kill -9 of a Ray worker in a cell and of a search worker in a trial, two
grid tasks and two search workers writing to one PostgreSQL at once, a tracking-server outage.

The servers (tests/servers.py) and a Ray head (`ray start --head`, the several-machines setup:
the commands join it through RAY_ADDRESS) start once, on loopback only, for one test that goes
through every case in turn: starting them is a third of its time, and xdist would start them again
in each process that ran a part."""
from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import mlflow
import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState

from finalbn import rayexec
from finalbn.config import RayConfig

from conftest import ROOT
from servers import MlflowServer, Postgres, free_port, postgres_bin

pytestmark = pytest.mark.slow

GRID = ["grid.configs=[31, 29]", "grid.headline.configs=[]", "grid.replicates=2"]  # 2 units (tasks), 4 cells
SEARCH = ["search.space.switches=[bn, wl, wd]", "search.space.hidden=[16, 32]", "search.space.final=null",
          "search.space.final_bn_affine=null", "search.space.final_bias=null", "search.space.batch_size=null",
          "search.space.mixup_alpha=null", "search.space.final_bn_momentum=null", "search.space.label_smoothing=null",
          "search.space.dropout_0=null", "search.space.dropout_1=null", "search.pruner=none", "search.n_trials=3",
          "selection.replicates=2", "search.workers=2",
          # trials here last seconds: a dead worker's trial is found after 3 missed heartbeats of 1 s
          # (the default, 60 s, suits trials of minutes)
          "search.heartbeat_s=1"]


def _finalbn(command: str, overrides, *extra) -> list[str]:
    return [sys.executable, "-m", "finalbn", command, "--params", str(ROOT / "params.yaml"),
            *[x for o in overrides for x in ("--set", o)], *extra]


def _runs(experiment: str, uri: str | None = None) -> list:
    client = mlflow.MlflowClient(uri or os.environ["MLFLOW_TRACKING_URI"])
    exp = client.get_experiment_by_name(experiment)
    return [] if exp is None else client.search_runs([exp.experiment_id], max_results=5000)


def _cells(uri: str | None = None) -> list:
    return [r for r in _runs("finalbn/grid", uri) if r.data.tags.get("finalbn.cell") == "true"]


@pytest.fixture
def servers(tmp_path_factory):
    """PostgreSQL, an MLflow server on it (artifacts served from a folder), and a Ray head of its
    own (stopped by its process group: `ray stop` would stop every Ray on the machine)."""
    if postgres_bin() is None:
        pytest.skip("PostgreSQL is not installed (.ci/run installs Debian's postgresql)")
    tmp = tmp_path_factory.mktemp("servers")
    port = free_port()
    # token authentication, as Ray 2.61 makes the default for every cluster: the head and each
    # command that joins it have RAY_AUTH_MODE=token and this cluster's own token in RAY_AUTH_TOKEN
    # (`ray start` makes none, and ~/.ray/auth_token exists only where a local Ray once ran)
    token = secrets.token_hex(32)
    head = subprocess.Popen([str(Path(sys.executable).with_name("ray")), "start", "--head", f"--port={port}",
                             "--num-cpus=4", "--include-dashboard=false", "--disable-usage-stats", "--block"],
                            stdout=open(tmp / "ray-head.log", "w"), stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token})
    try:
        with Postgres() as pg, MlflowServer(pg.database("mlflow"), tmp / "artifacts", tmp / "mlflow-server.log") as server:
            yield {"pg": pg, "mlflow": server, "ray": f"127.0.0.1:{port}", "ray_token": token}
    finally:  # a throwaway cluster: kill -9 at once (SIGTERM makes `ray start --block` stop it gently, ~30 s)
        os.killpg(head.pid, signal.SIGKILL)
        head.wait(timeout=60)


def _kill_when_running(find, deadline_s: float, procs: dict[str, subprocess.Popen]) -> tuple[int, str]:
    """Poll the store until `find()` names a RUNNING run's worker (host:pid tag); kill -9 it. A
    command of `procs` that ended meanwhile fails the test with its output."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        for name, proc in procs.items():
            if proc.poll() is not None:
                raise AssertionError(f"{name} ended (exit {proc.returncode}) before a run was killed:\n"
                                     f"{proc.stdout.read()[-20000:]}")
        for run in find():
            worker = run.data.tags.get("finalbn.worker", "")
            if run.info.status == "RUNNING" and worker:
                pid = int(worker.rsplit(":", 1)[1])
                os.kill(pid, signal.SIGKILL)
                return pid, run.info.run_id
        time.sleep(0.2)
    raise AssertionError("no RUNNING run to kill appeared")


def _metrics(runs) -> dict[str, dict]:
    """Each FINISHED cell's metrics by cell key: what it computed (not how fast it ran)."""
    return {r.data.tags["cell_key"]: {k: v for k, v in r.data.metrics.items() if "second" not in k}
            for r in runs if r.info.status == "FINISHED"}


def test_on_real_servers_kill_9_load_outage(prepared, servers, monkeypatch):
    """The cases in turn, on one PostgreSQL, MLflow server and Ray head."""
    _, overrides = prepared
    ray = _kill_9_under_load(overrides, servers, monkeypatch)
    local = _outage(overrides, servers, monkeypatch)
    assert len(local) == 4 and local.keys() == ray.keys()  # the same cells through either executor ...
    for key in local:  # ... compute the same (a killed and retried one included)
        assert ray[key] == pytest.approx(local[key], abs=1e-6), key
    _a_raising_task(servers, monkeypatch)


def _kill_9_under_load(overrides, servers, monkeypatch) -> dict[str, dict]:
    """Two grid tasks and two search workers (Ray tasks on one Ray cluster) write to one
    PostgreSQL at once (MLflow server; Optuna RDB); one grid worker is killed inside a cell and
    one search worker inside a trial. Ray retries both tasks; the grid ends with one FINISHED run
    per cell and nothing RUNNING; the killed trial is FAIL, retried, and the study has n_trials
    complete. Returns the cells' metrics by key."""
    uri = servers["mlflow"].uri
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("RAY_ADDRESS", servers["ray"])
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    monkeypatch.setenv("RAY_AUTH_TOKEN", servers["ray_token"])
    storage = servers["pg"].database("optuna_kill")
    grid = subprocess.Popen(_finalbn("grid", overrides + GRID + ["train.epochs=2"], "--executor", "ray"),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    search = subprocess.Popen(_finalbn("search", overrides + GRID + SEARCH + [f"search.storage={storage}"],
                                       "--executor", "ray", "--out", "search.json"),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    killed_cell = _kill_when_running(lambda: _cells(uri), 300, {"grid": grid, "search": search})
    killed_trial = _kill_when_running(lambda: [r for r in _runs("finalbn/search", uri)
                                               if r.data.tags.get("finalbn.trial") == "true"], 300, {"search": search})
    outs = {"grid": grid.communicate(timeout=600)[0], "search": search.communicate(timeout=600)[0]}
    assert (grid.returncode, search.returncode) == (0, 0), outs
    for out in outs.values():
        assert "database is locked" not in out and "Traceback" not in out, out

    runs = _cells(uri)
    finished = Counter(r.data.tags["cell_key"] for r in runs if r.info.status == "FINISHED")
    assert len(finished) == 4 and set(finished.values()) == {1}  # one FINISHED run per cell, no duplicate
    assert {r.info.run_id: r.info.status for r in runs}[killed_cell[1]] == "KILLED"
    everything = [r for e in ("finalbn/grid", "finalbn/search") for r in _runs(e, uri)]
    assert not [r.info.run_name for r in everything if r.info.status == "RUNNING"]

    study = optuna.load_study(study_name=optuna.get_all_study_names(storage)[0], storage=storage)
    states = Counter(t.state for t in study.trials)
    assert states[TrialState.RUNNING] == 0 and states[TrialState.COMPLETE] == 3, states
    dead = [t for t in study.trials if t.state == TrialState.FAIL]
    retries = [t for t in study.trials if "failed_trial" in t.system_attrs]
    assert len(dead) == 1 and [t.system_attrs["failed_trial"] for t in retries] == [dead[0].number]
    assert retries[0].state == TrialState.COMPLETE and "no heartbeat" in retries[0].user_attrs["retry_reason"]
    assert retries[0].params == dead[0].params
    assert {r.info.run_id: r.info.status for r in _runs("finalbn/search", uri)}[killed_trial[1]] == "KILLED"
    print(f"grid: killed worker {killed_cell[0]} in a cell; 4 cells, {len(runs)} runs, 4 FINISHED; search: "
          f"killed worker {killed_trial[0]} in trial {dead[0].number}, retried as trial {retries[0].number}; {states}")
    return _metrics(runs)


def _outage(overrides, servers, monkeypatch) -> dict[str, dict]:
    """The same grid through the local executor, into another experiment of the same server; the
    server is killed while it trains, and comes back a few seconds later: MLflow's client retries
    its requests, every cell finishes, nothing is lost or RUNNING. Returns the cells' metrics."""
    server = servers["mlflow"]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.uri)
    grid = subprocess.Popen(_finalbn("grid", overrides + GRID + ["train.epochs=2", "tracking.experiment=outage"],
                                     "--workers", "1"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = []
    for line in grid.stdout:
        seen.append(line)
        if " cell 1/" in line:
            server.stop()
            time.sleep(3)
            server.start()
            break
    seen.append(grid.communicate(timeout=600)[0])
    assert grid.returncode == 0, "".join(seen)
    runs = [r for r in _runs("outage/grid") if r.data.tags.get("finalbn.cell") == "true"]
    assert Counter(r.info.status for r in runs) == {"FINISHED": 4}
    assert len(pd.read_csv("results/grid.csv")) == 4
    return _metrics(runs)


def _a_raising_task(servers, monkeypatch):
    """A task that raises comes back as a TaskFailed naming it and why; the others finish."""
    monkeypatch.setenv("RAY_ADDRESS", servers["ray"])
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    monkeypatch.setenv("RAY_AUTH_TOKEN", servers["ray_token"])
    import ray  # the test's own driver on the module's Ray head

    try:
        out = rayexec.run_tasks(RayConfig(), int, [("12",), ("twelve",), ("7",)], ["a", "b", "c"])
    finally:
        ray.shutdown()
    assert out[0] == 12 and out[2] == 7
    assert out[1] == rayexec.TaskFailed("b", "ValueError: invalid literal for int() with base 10: 'twelve'")

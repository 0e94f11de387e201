"""Beyond one machine, for real: the Ray executor, a PostgreSQL-backed MLflow server, Optuna's RDB
storage with heartbeats; kill -9 of a Ray worker in a cell and of a search worker in a trial, two
grid tasks and two search workers writing to one PostgreSQL at once (shown to overlap in time, from
the runs' times in the store), a tracking-server outage that a request of the grid met and outlived,
and one that outlasts MLflow's retries (one line, exit 1). The servers' logs are read for errors last.

The servers (tests/servers.py) and a Ray head (`ray start --head`, the several-machines setup:
the commands join it through RAY_ADDRESS) start once, on loopback only, for one test that goes
through every case in turn: starting them is a third of its time, and xdist would start them again
in each process that ran a part."""

from __future__ import annotations

import os
import queue
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import mlflow
import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState

from conftest import ROOT
from finalbn.cluster import rayexec
from finalbn.config import RayConfig
from servers import MlflowServer, Postgres, free_port, postgres_bin

pytestmark = pytest.mark.slow

GRID = ["grid.configs=[31, 29]", "grid.headline.configs=[]", "grid.replicates=2"]  # 2 units (tasks), 4 cells
SEARCH = [
    "search.space.switches=[bn, wl, wd]",
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
    "search.pruner=none",
    "search.n_trials=3",
    "selection.replicates=2",
    "search.workers=2",
    # trials here last seconds: a dead worker's trial is found after 3 missed heartbeats of 1 s
    # (the default, 60 s, suits trials of minutes)
    "search.heartbeat_s=1",
]


# `python -m finalbn`, with urllib3's warnings on stderr: each retry of a request is a line "Retrying
# (Retry(total=...)) after connection broken by '<why>': <path>" that urllib3 logs, and that nobody
# shows by default (urllib3's logger has only a NullHandler)
SHOWING_RETRIES = (
    "import logging, sys; logging.getLogger('urllib3').addHandler(logging.StreamHandler()); "
    "from finalbn.cli import main; sys.exit(main(sys.argv[1:]))"
)


def _finalbn(command: str, overrides, *extra, show_retries: bool = False) -> list[str]:
    run = ["-c", SHOWING_RETRIES] if show_retries else ["-m", "finalbn"]
    return [
        sys.executable,
        *run,
        command,
        "--params",
        str(ROOT / "params.yaml"),
        *[x for o in overrides for x in ("--set", o)],
        *extra,
    ]


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
    head = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("ray")),
            "start",
            "--head",
            f"--port={port}",
            "--num-cpus=4",
            "--include-dashboard=false",
            "--disable-usage-stats",
            "--block",
        ],
        stdout=open(tmp / "ray-head.log", "w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env={**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token},
    )
    try:
        with (
            Postgres() as pg,
            MlflowServer(pg.database("mlflow"), tmp / "artifacts", tmp / "mlflow-server.log") as server,
        ):
            yield {"pg": pg, "mlflow": server, "ray": f"127.0.0.1:{port}", "ray_token": token}
    finally:  # a throwaway cluster: kill -9 at once (SIGTERM makes `ray start --block` stop it gently, ~30 s)
        os.killpg(head.pid, signal.SIGKILL)
        head.wait(timeout=60)


def _kill_under_load(finds: dict, deadline_s: float, procs: dict[str, subprocess.Popen]) -> dict[str, tuple]:
    """Poll the store until each `finds[name]()` shows RUNNING runs of two workers at once (host:pid
    tags: two tasks under load); kill -9 one of them. Returns {name: (pid, run id, kill time in
    ms)}. The command `procs[name]` ending before its kill fails the test with its output."""
    killed: dict[str, tuple] = {}
    deadline = time.monotonic() + deadline_s
    while len(killed) < len(finds) and time.monotonic() < deadline:
        for name, find in finds.items():
            if name in killed:
                continue
            if procs[name].poll() is not None:
                raise AssertionError(
                    f"{name} ended (exit {procs[name].returncode}) before two of its workers "
                    f"ran at once:\n{procs[name].stdout.read()[-20000:]}"
                )
            running = {
                r.data.tags["finalbn.worker"]: r
                for r in find()
                if r.info.status == "RUNNING" and r.data.tags.get("finalbn.worker")
            }
            if len(running) >= 2:
                worker, run = next(iter(running.items()))
                pid = int(worker.rsplit(":", 1)[1])
                os.kill(pid, signal.SIGKILL)
                killed[name] = (pid, run.info.run_id, time.time() * 1000)
        time.sleep(0.2)
    assert len(killed) == len(finds), f"never two RUNNING runs of different workers at once: {set(finds) - set(killed)}"
    return killed


def _spans(runs, killed: tuple) -> dict[str, list[tuple[float, float]]]:
    """Each worker's runs (`finalbn.worker`) as (start, end) in seconds, from the store. The killed
    run ends when it was killed (its end in the store is when a retry marked it KILLED)."""
    out: dict[str, list[tuple[float, float]]] = {}
    for r in runs:
        end = min(r.info.end_time, killed[2]) if r.info.run_id == killed[1] else r.info.end_time
        out.setdefault(r.data.tags["finalbn.worker"], []).append((r.info.start_time / 1000, end / 1000))
    return out


def together_s(groups: dict[str, list[tuple[float, float]]]) -> float:
    """Seconds during which intervals of at least two of `groups` were open at once (intervals
    that only touch do not overlap)."""
    events = sorted(
        (t, step) for spans in groups.values() for start, end in _union(spans) for t, step in ((start, 1), (end, -1))
    )  # at one instant, an end (-1) before a start
    open_, since, total = 0, 0.0, 0.0
    for t, step in events:
        if open_ >= 2:
            total += t - since
        open_, since = open_ + step, t
    return total


def _union(spans: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The intervals merged where they overlap: one group counts once however many of its runs are open."""
    out: list[list[float]] = []
    for start, end in sorted(spans):
        if out and start <= out[-1][1]:
            out[-1][1] = max(out[-1][1], end)
        else:
            out.append([start, end])
    return [(a, b) for a, b in out]


def _metrics(runs) -> dict[str, dict]:
    """Each FINISHED cell's metrics by cell key: what it computed (not how fast it ran)."""
    return {
        r.data.tags["cell_key"]: {k: v for k, v in r.data.metrics.items() if "second" not in k}
        for r in runs
        if r.info.status == "FINISHED"
    }


def test_on_real_servers_kill_9_load_outage(prepared, servers, monkeypatch):
    """The cases in turn, on one PostgreSQL, MLflow server and Ray head; then the servers' logs."""
    _, overrides = prepared
    ray = _kill_9_under_load(overrides, servers, monkeypatch)
    local = _outage(overrides, servers, monkeypatch)
    assert len(local) == 4 and local.keys() == ray.keys()  # the same cells through either executor ...
    for key in local:  # ... compute the same (a killed and retried one included)
        assert ray[key] == pytest.approx(local[key], abs=1e-6), key
    _outage_outlasting_the_retries(overrides, servers)
    _a_raising_task(servers, monkeypatch)
    # what the clients could not see: an error the server logged, a request it answered 4xx/5xx
    # (a conflict, a unique violation, a deadlock behind it), an error of PostgreSQL's own
    problems = {"mlflow server": servers["mlflow"].problems(), "postgresql": servers["pg"].problems()}
    assert problems == {"mlflow server": [], "postgresql": []}, "\n".join(sum(problems.values(), []))
    print(f"server logs: no error ({servers['mlflow'].log}; PostgreSQL's {servers['pg'].log})")


def _kill_9_under_load(overrides, servers, monkeypatch) -> dict[str, dict]:
    """Two grid tasks and two search workers (Ray tasks on one Ray cluster) write to one
    PostgreSQL at once (MLflow server; Optuna RDB); one grid worker is killed inside a cell and
    one search worker inside a trial, each while another of its kind ran too. Ray retries both
    tasks; the grid ends with one FINISHED run per cell and nothing RUNNING; the killed trial is
    FAIL, retried, and the study has n_trials complete. The store's times show the grid's tasks,
    and the search's workers running at once. Returns the cells' metrics by key."""
    uri = servers["mlflow"].uri
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("RAY_ADDRESS", servers["ray"])
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    monkeypatch.setenv("RAY_AUTH_TOKEN", servers["ray_token"])
    storage = servers["pg"].database("optuna_kill")
    grid = subprocess.Popen(
        _finalbn("grid", overrides + GRID + ["train.epochs=2"], "--executor", "ray"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    search = subprocess.Popen(
        _finalbn(
            "search",
            overrides + GRID + SEARCH + [f"search.storage={storage}"],
            "--executor",
            "ray",
            "--out",
            "search.json",
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    killed = _kill_under_load(
        {"grid": lambda: _cells(uri), "search": lambda: _trials(uri)}, 300, {"grid": grid, "search": search}
    )
    outs = {"grid": grid.communicate(timeout=600)[0], "search": search.communicate(timeout=600)[0]}
    assert (grid.returncode, search.returncode) == (0, 0), "\n".join(
        [f"--- {k}:\n{v}" for k, v in outs.items()] + ["--- the store's cells:", *_described(_cells(uri))]
    )
    for out in outs.values():
        assert "Traceback" not in out, out

    runs = _cells(uri)
    finished = Counter(r.data.tags["cell_key"] for r in runs if r.info.status == "FINISHED")
    assert len(finished) == 4 and set(finished.values()) == {1}  # one FINISHED run per cell, no duplicate
    assert {r.info.run_id: r.info.status for r in runs}[killed["grid"][1]] == "KILLED"
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
    assert {r.info.run_id: r.info.status for r in _runs("finalbn/search", uri)}[killed["search"][1]] == "KILLED"
    print(
        f"grid: killed worker {killed['grid'][0]} in a cell; 4 cells, {len(runs)} runs, 4 FINISHED; search: "
        f"killed worker {killed['search'][0]} in trial {dead[0].number}, retried as trial {retries[0].number}; {states}"
    )
    _overlapped(_spans(runs, killed["grid"]), _spans(_trials(uri), killed["search"]))
    return _metrics(runs)


def _described(runs) -> list[str]:
    """One line per run: name, status, worker, start and end (s), and the tags that say why it ended."""
    return [
        f"{r.info.run_name} {r.info.status} {r.data.tags.get('finalbn.worker')} {r.info.start_time / 1000:.3f}-"
        f"{(r.info.end_time or 0) / 1000:.3f} { ({k: v for k, v in r.data.tags.items() if 'reason' in k or 'kill' in k}) }"
        for r in sorted(runs, key=lambda r: r.info.start_time)
    ]


def _trials(uri: str) -> list:
    return [r for r in _runs("finalbn/search", uri) if r.data.tags.get("finalbn.trial") == "true"]


def _overlapped(cells: dict[str, list], trials: dict[str, list]) -> None:
    """Cells of two grid tasks ran at once, and trials of two search workers (each kill waits for
    two RUNNING at once: it cannot pass by luck). How long cells and trials overlapped is printed,
    not asserted: on a loaded machine the grid's four short cells can end before the search's
    first trial starts."""
    seconds = {
        "grid tasks": together_s(cells),
        "search workers": together_s(trials),
        "grid and search": together_s({"grid": sum(cells.values(), []), "search": sum(trials.values(), [])}),
    }
    print(
        "ran at once: "
        + ", ".join(f"{what} {s:.1f} s" for what, s in seconds.items())
        + f" ({len(cells)} grid workers, {len(trials)} search workers)"
    )
    assert seconds["grid tasks"] > 0 and seconds["search workers"] > 0, seconds


def _outage(overrides, servers, monkeypatch) -> dict[str, dict]:
    """The same grid through the local executor, into another experiment of the same server; the
    server is killed once a cell has finished, and kept down until a request of the grid has met
    it (urllib3's retry line, connection refused); started again, it answers the request's next
    try: every cell finishes, nothing is lost or RUNNING. Returns the cells' metrics."""
    server = servers["mlflow"]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.uri)
    # MLflow's 7 retries, their backoff factor 1, not 2: tries at about 0, 0, 2, 6, 14, 30, 62 s, not
    # 0, 0, 4, 12, 28, 60, 124, so that a restart of 10-20 s (a loaded machine) is met ~14 s in, not 28
    grid = subprocess.Popen(
        _finalbn(
            "grid",
            overrides + GRID + ["train.epochs=2", "tracking.experiment=outage"],
            "--workers",
            "1",
            show_retries=True,
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"},
    )
    lines = _Lines(grid)
    lines.until(lambda line: " cell 1/" in line, 300, "a first cell")
    server.stop()
    down = time.monotonic()
    met = lines.until(
        lambda line: line.startswith("Retrying (Retry(total=") and "Connection refused" in line,
        120,
        "a request meeting the outage (urllib3's retry line)",
    )
    server.start()
    print(f"outage: {time.monotonic() - down:.1f} s; met by: {met.strip()[:300]}")
    grid.wait(timeout=600)
    assert grid.returncode == 0, lines.text()
    runs = [r for r in _runs("outage/grid") if r.data.tags.get("finalbn.cell") == "true"]
    assert Counter(r.info.status for r in runs) == {"FINISHED": 4}
    assert len(pd.read_csv("results/grid.csv")) == 4
    return _metrics(runs)


class _Lines:
    """A command's output lines as they come (a thread reads them): `until` waits for one."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc, self.seen, self.queue = proc, [], queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.queue.put(line)
        self.queue.put(None)

    def until(self, wanted, deadline_s: float, what: str) -> str:
        """The first line from now for which `wanted(line)`; fails the test, with the output so far,
        when the command ends or `deadline_s` passes first."""
        deadline = time.monotonic() + deadline_s
        while True:
            try:
                line = self.queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no {what} within {deadline_s} s:\n{self.text()}") from None
            if line is None:
                raise AssertionError(f"the command ended (exit {self.proc.wait()}) before {what}:\n{self.text()}")
            self.seen.append(line)
            if wanted(line):
                return line

    def text(self) -> str:
        """Everything it wrote (once it has ended: all of it)."""
        while True:
            try:
                line = self.queue.get(timeout=5 if self.proc.poll() is not None else 0)
            except queue.Empty:
                return "".join(self.seen)
            if line is None:
                return "".join(self.seen)
            self.seen.append(line)


# MLflow's retries made short, as a deployment may set them: 2 tries, no backoff, 5 s per try
SHORT_RETRIES = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "0",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "5",
}


def _outage_outlasting_the_retries(overrides, servers) -> None:
    """A grid (one process, short retries) whose server goes down for good once a cell has
    finished: it ends with exit 1 and one line on stderr naming the server and what to do, no
    traceback; the cell that finished is kept in the store (read from PostgreSQL itself)."""
    server = servers["mlflow"]
    grid = subprocess.Popen(
        _finalbn("grid", overrides + GRID + ["tracking.experiment=unreachable"], "--workers", "1"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "MLFLOW_TRACKING_URI": server.uri, **SHORT_RETRIES},
    )
    errs: list[str] = []
    reader = threading.Thread(target=lambda: errs.append(grid.stderr.read()), daemon=True)
    reader.start()
    lines = _Lines(grid)
    lines.until(lambda line: " cell 1/" in line, 300, "a first cell")
    server.stop()
    t0 = time.monotonic()
    code = grid.wait(timeout=120)
    took = time.monotonic() - t0
    reader.join(timeout=30)
    out, err = lines.text(), "".join(errs)
    assert code == 1 and "Traceback" not in out + err, out + err
    assert re.fullmatch(
        rf"finalbn grid: error: the tracking server {re.escape(server.uri)} did not answer \(connection "
        r"refused; 2 tries, MLFLOW_HTTP_REQUEST_MAX_RETRIES=1\); finished runs are kept in the store; "
        r"start it again and run the same command\n",
        err,
    ), err
    print(f"server down for good: exit 1 after {took:.1f} s, stderr: {err.strip()}")
    kept = _finished_cells(servers["pg"], "unreachable/grid")
    assert kept >= 1, kept


def _finished_cells(pg, experiment: str) -> int:
    """FINISHED cell runs of `experiment`, read from the MLflow server's PostgreSQL database itself
    (the server is down)."""
    import psycopg  # here: optional (the cluster extra), SQLAlchemy's postgresql:// driver

    with psycopg.connect(pg.url("mlflow")) as conn:
        return conn.execute(
            "SELECT count(*) FROM runs JOIN experiments USING (experiment_id) JOIN tags USING (run_uuid) "
            "WHERE experiments.name = %s AND runs.status = 'FINISHED' AND tags.key = 'finalbn.cell' "
            "AND tags.value = 'true'",
            (experiment,),
        ).fetchone()[0]


def _a_raising_task(servers, monkeypatch):
    """A task that raises comes back as a TaskFailed naming it and why; the others finish."""
    monkeypatch.setenv("RAY_ADDRESS", servers["ray"])
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    monkeypatch.setenv("RAY_AUTH_TOKEN", servers["ray_token"])
    import ray  # here: optional (the cluster extra); the test's own driver on the Ray head

    try:
        out = rayexec.run_tasks(RayConfig(), int, [("12",), ("twelve",), ("7",)], ["a", "b", "c"])
    finally:
        ray.shutdown()
    assert out[0] == 12 and out[2] == 7
    assert out[1] == rayexec.TaskFailed("b", "ValueError: invalid literal for int() with base 10: 'twelve'")

"""DVC and MLflow agree: a stage's fingerprint says whether the store holds the runs and the alias
its outputs cite (`finalbn.tracking.fingerprint`, the `store` stage); the search starts its study
again when its trials' runs are gone. (The whole pipeline after `rm mlflow.db` and with another
MLFLOW_TRACKING_URI: tests/test_pipeline.py.)"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import mlflow
import optuna
import pytest
import yaml

from conftest import ROOT
from finalbn import tracking
from finalbn.cli import main
from finalbn.stages import search
from finalbn.tracking import fingerprint
from finalbn.tracking import store as store_module


@pytest.fixture
def store(tmp_path, monkeypatch):
    """An empty SQLite store in tmp_path (the cwd), MLFLOW_TRACKING_URI pointing at it."""
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    return mlflow.MlflowClient(uri)


def _run(client: mlflow.MlflowClient, name: str = "finalbn/grid") -> str:
    exp = client.get_experiment_by_name(name)
    exp_id = exp.experiment_id if exp else client.create_experiment(name)
    run = client.create_run(exp_id)
    client.set_terminated(run.info.run_id)
    return run.info.run_id


def test_cited_reads_run_id_keys_and_columns_in_json_and_csv(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "a.json").write_text(
        json.dumps(
            {
                "mlflow_run_id": "r1",
                "best": {"mlflow_run_ids": ["r2", "r3"], "value": 0.9},
                "trial_mlflow_run_ids": {"0": ["r4"], "1": []},
                "rows": [{"run_id": "r5", "config_key": "k"}],
                "note": "run_id r9 in prose is not cited",
                "model_run_id": None,
            }
        )
    )
    (tmp_path / "out" / "cells.csv").write_text("run_id,source_run_id,x\nr6,r7,1\n,,2\nnan,r8,3\n")
    (tmp_path / "out" / "plain.txt").write_text("run_id\nr10\n")
    assert fingerprint.cited([tmp_path / "out"]) == {f"r{i}" for i in range(1, 9)}
    assert fingerprint.cited([tmp_path / "out" / "a.json"]) == {f"r{i}" for i in range(1, 6)}


def test_a_fingerprint_changes_only_when_the_store_lost_what_it_cites(store, tmp_path):
    a, b = _run(store), _run(store)
    path = tmp_path / "results" / "store" / "grid.json"
    marked = fingerprint.mark(path, [a, b])
    assert marked["complete"] and marked["store"] == f"sqlite:///{tmp_path / 'mlflow.db'}"
    written = path.read_bytes()
    assert fingerprint.refresh(path) == marked and path.read_bytes() == written  # all there: the same bytes
    store.delete_run(b)  # deleted in the UI: gone for the stage too
    lost = fingerprint.refresh(path)
    assert not lost["complete"] and lost["missing_runs"] == [b] and lost["runs"] == sorted([a, b])
    store.restore_run(b)
    assert fingerprint.refresh(path) == marked and path.read_bytes() == written


def test_a_missing_store_file_holds_nothing_and_is_not_created(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'gone.db'}")
    assert fingerprint.missing_runs(["x", "y"]) == ["x", "y"]
    assert fingerprint.missing_models({"finalbn@champion": "x"}) == ["finalbn@champion"]
    assert fingerprint.missing_runs([]) == [] and not (tmp_path / "gone.db").exists()


def test_an_alias_counts_only_while_it_points_at_the_runs_version(store):
    a, b = _run(store), _run(store)
    store.create_registered_model("finalbn")
    for run in (a, b):
        store.create_model_version("finalbn", f"runs:/{run}/model", run_id=run)
    store.set_registered_model_alias("finalbn", "champion", "1")
    assert fingerprint.missing_models({"finalbn@champion": a}) == []
    store.set_registered_model_alias("finalbn", "champion", "2")  # another model took the alias
    assert fingerprint.missing_models({"finalbn@champion": a}) == ["finalbn@champion"]
    store.delete_registered_model_alias("finalbn", "champion")
    assert fingerprint.missing_models({"finalbn@champion": b}) == ["finalbn@champion"]


def test_the_store_is_named_without_its_password():
    assert (
        fingerprint.store_identity("postgresql://ann:s3cret@db.example:5432/mlflow")
        == "postgresql://ann:***@db.example:5432/mlflow"
    )
    assert fingerprint.store_identity("sqlite:///mlflow.db") == "sqlite:///mlflow.db"


def _store_stage(capsys) -> tuple[int, str, str]:
    code = main(["store", "--params", str(ROOT / "params.yaml"), "--out", "results/store"])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_the_store_stage_says_which_stages_run_again_and_why(store, tmp_path, monkeypatch, capsys):
    code, out, _ = _store_stage(capsys)  # a new project: nothing cited yet, nothing to say
    assert code == 0 and "no stage's outputs cite a run yet" in out
    files = sorted(
        p.relative_to(tmp_path / "results" / "store").as_posix()
        for p in (tmp_path / "results" / "store").rglob("*.json")
    )
    assert files == [
        "ceiling/synthetic-apple.json",
        "export.json",
        "grid.json",
        "needs.json",
        "report.json",
        "search.json",
        "sensitivity.json",
    ]
    readme = tmp_path / "results" / "store" / "README.md"  # the `store` stage's one output, unchanged by a rerun
    before = readme.read_bytes()
    assert b"do not edit" in before and _store_stage(capsys)[0] == 0 and readme.read_bytes() == before
    cells = [_run(store) for _ in range(3)]
    fingerprint.mark("results/store/grid.json", cells)
    store.create_registered_model("finalbn")
    store.create_model_version("finalbn", f"runs:/{cells[0]}/model", run_id=cells[0])
    store.set_registered_model_alias("finalbn", "champion", "1")
    fingerprint.mark("results/store/export.json", cells[:1], {"finalbn@champion": cells[0]})
    store.delete_registered_model_alias("finalbn", "champion")  # moved or removed by hand
    code, out, _ = _store_stage(capsys)
    assert "export: the store lacks the alias finalbn@champion of its model: it runs again" in out
    assert "grid" not in out and "1 stage(s) to run again (3 run(s) of the others found)" in out
    store.delete_run(cells[1])
    _, out, _ = _store_stage(capsys)
    assert "grid: the store lacks 1 of the 3 run(s) its outputs cite: it runs again" in out
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'team.db'}")  # a team's new store
    _, out, _ = _store_stage(capsys)
    assert f"grid: its outputs cite runs of another store (sqlite:///{tmp_path / 'mlflow.db'}): it runs again" in out
    assert not (tmp_path / "team.db").exists()


def test_a_store_that_cannot_be_read_is_one_line(store, tmp_path, monkeypatch, capsys):
    fingerprint.mark(tmp_path / "results" / "store" / "grid.json", [_run(store)])
    (tmp_path / "broken.db").write_bytes(b"not a database, a file someone overwrote" * 100)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'broken.db'}")
    before = (tmp_path / "results" / "store" / "grid.json").read_bytes()
    code, _, err = _store_stage(capsys)
    assert code == 1 and err.startswith("finalbn store: the tracking store sqlite:///") and "cannot be read" in err
    assert len(err.strip().splitlines()) == 1
    assert (tmp_path / "results" / "store" / "grid.json").read_bytes() == before  # nothing produced is lost


def test_a_stage_marks_its_fingerprint_only_when_it_succeeds(store, tmp_path, capsys):
    (tmp_path / "results" / "ceiling").mkdir(parents=True)
    args = [
        "ceiling",
        "--params",
        str(ROOT / "params.yaml"),
        "--splits",
        str(tmp_path / "nowhere"),
        "--out",
        "results/ceiling/x.json",
        "--fingerprint",
        "results/store/ceiling/x.json",
    ]
    assert main(args) == 2 and not (tmp_path / "results" / "store").exists()  # no splits: exit 2, no mark


def test_a_study_whose_trials_runs_are_gone_starts_again_beside_the_old_one(store, tmp_path, load, capsys):
    cfg = load([f"search.storage={tmp_path / 'journal.log'}"])
    study = search.open_study(cfg)
    kept = _run(store, "finalbn/search")
    dist = {"x": optuna.distributions.FloatDistribution(0, 1)}
    study.add_trial(
        optuna.trial.create_trial(
            params={"x": 0.5}, distributions=dist, value=0.9, user_attrs={"mlflow_run_ids": [kept]}
        )
    )
    again, _, _ = search.start(cfg)
    assert again.study_name == search.study_name(cfg) and "starts again" not in capsys.readouterr().out
    store.delete_run(kept)  # `rm mlflow.db`, or another MLFLOW_TRACKING_URI: the trial's run is not there
    fresh, parent, _ = search.start(cfg)
    out = capsys.readouterr().out
    assert fresh.study_name == f"{search.study_name(cfg)}.2" and not fresh.trials
    assert f"study {search.study_name(cfg)}'s finished trials cite 1 MLflow run(s)" in out and "starts again" in out
    assert tracking.get_run(parent).tags["finalbn.study"] == fresh.study_name
    assert search.open_study(cfg).study_name == fresh.study_name  # the workers open the new one
    names = optuna.get_all_study_names(search.storage(cfg))
    assert sorted(names) == [search.study_name(cfg), fresh.study_name]  # the old trials are kept


def test_a_sqlite_uri_is_read_as_mlflow_reads_it(store, tmp_path):
    """Percent-encoded and with a query, the URI names the same file MLflow opens: its runs are there."""
    (tmp_path / "my store").mkdir()
    uri = f"sqlite:///{tmp_path / 'my store' / 'x.db'}"
    client = mlflow.MlflowClient(uri)
    run = _run(client)
    for same in (uri.replace("my store", "my%20store"), f"{uri}?timeout=30"):
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("MLFLOW_TRACKING_URI", same)
            assert fingerprint.missing_runs([run, "gone"]) == ["gone"], same


def test_a_stage_whose_runs_the_store_does_not_show_writes_no_fingerprint(store, tmp_path):
    path = tmp_path / "results" / "store" / "grid.json"
    with pytest.raises(tracking.fingerprint.StoreError, match=r"does not show 1 of the runs .*\(e\.g\. nowhere\)"):
        fingerprint.mark(path, [_run(store), "nowhere"])
    assert not path.exists()  # DVC will run the stage again


def test_an_experiment_in_mlflows_trash_is_one_line_saying_what_to_do(store, load, tmp_path, capsys):
    exp = store.create_experiment("finalbn/grid")
    store.delete_experiment(exp)
    with pytest.raises(
        tracking.fingerprint.StoreError,
        match=rf"'finalbn/grid' \(id {exp}\) is in MLflow's trash: "
        rf"restore it .*--experiment-id {exp}",
    ):
        tracking.setup(load(), "grid")


def test_a_tracking_server_out_of_reach_is_one_line_in_seconds(store, tmp_path, monkeypatch, capsys):
    fingerprint.mark(tmp_path / "results" / "store" / "grid.json", [_run(store)])
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    t0 = time.monotonic()
    code, _, err = _store_stage(capsys)
    assert code == 1 and f"the tracking store http://127.0.0.1:{port} cannot be read" in err
    assert len(err.strip().splitlines()) == 1 and time.monotonic() - t0 < 60


def _being_written(db) -> bool:
    """Whether a store file of `db` (the store, its temporary or their SQLite journals), not its
    lock, holds bytes; a journal SQLite removes between listing and reading counts as none."""
    for p in db.parent.glob(f"*{db.name}*"):
        with contextlib.suppress(FileNotFoundError):
            if not p.name.endswith(".lock") and p.stat().st_size:
                return True
    return False


@pytest.mark.parametrize("how", ["SIGKILL", "SIGINT"])
def test_a_command_killed_while_it_creates_the_store_leaves_none_or_a_whole_one(tmp_path, monkeypatch, how):
    """MLflow creates a SQLite store's tables by running its migrations on the file (seconds): a
    command killed meanwhile (a Ctrl-C during a first `make run`) must not leave a half-made store
    that every later command fails on (`table _alembic_tmp_runs already exists`, found by
    make test's random kills). The killer waits until a store file is being written, then kills."""
    db = tmp_path / "my store" / "mlflow.db"
    uri = f"sqlite:///{db}"
    code = (
        "import sys; from finalbn.tracking import store; "
        "store.client().search_experiments(); print('created', flush=True)"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        env={**os.environ, "MLFLOW_TRACKING_URI": uri},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        # Ctrl-C as a user's shell delivers it, whatever this test process inherited (an ignored SIGINT
        # is inherited across exec, and a driver library in an earlier test of this worker may leave it so)
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        deadline = time.monotonic() + 120
        while not _being_written(db):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.01)
        time.sleep(0.05)  # inside the migrations (0.2 s let a fast store creation finish first on this machine)
        os.killpg(proc.pid, getattr(signal, how))
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert "created" not in out, "the store was made before the kill: nothing was tested"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    client = store_module.client()  # the next command: a whole store, made now if there was none
    assert client.get_experiment(client.create_experiment("finalbn/grid")).name == "finalbn/grid"
    assert not [p.name for p in db.parent.iterdir() if p.name.endswith(".tmp")]  # the killed one's temporary swept


def test_each_stage_owns_what_it_writes_so_dvc_status_can_say_up_to_date():
    """No stage runs every time (DVC lists such a stage in every `dvc status`), and no stage writes into
    another's outputs: a stage's fingerprint (`--fingerprint PATH`, which it writes as it ends) is a
    dependency of its own, inside no stage's outputs; every tracking stage runs after the `store` stage."""
    spec = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    outs = {
        stage: [next(iter(o)) if isinstance(o, dict) else o for o in s.get("outs", []) + s.get("metrics", [])]
        for stage, s in ((k, v.get("do", v)) for k, v in spec.items())
    }
    assert not [k for k, s in spec.items() if s.get("do", s).get("always_changed")]
    for stage, s in ((k, v.get("do", v)) for k, v in spec.items()):
        m = re.search(r"--fingerprint (\S+)", s["cmd"])
        if not m:
            continue
        fp = m.group(1)
        assert fp in s["deps"] and "results/store/README.md" in s["deps"], stage
        owners = [k for k, paths in outs.items() for o in paths if fp == o or fp.startswith(o.rstrip("/") + "/")]
        assert owners == [], (stage, owners)
    assert outs["store"] == ["results/store/README.md"]

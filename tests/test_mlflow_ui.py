"""What a user sees in MLflow's UI: metric names grouped into sections by a `/` (and read back as
finalbn's names), grid parents with params, a Description, a source and their spread in
replicates.json (no `<name>_std` metrics), cell runs with the seed they used as a param, and pruned
trials that say why they ended KILLED. On a real SQLite store."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import mlflow
import optuna
import pytest

from conftest import empty_store
from finalbn import tracking
from finalbn.config import TOGGLES, cell_seed
from finalbn.stages import grid
from finalbn.stages.cellrun import CellRun, track_cell
from finalbn.stages.tracker import MemoryTracker
from finalbn.tracking import names, query
from finalbn.tracking.adapter import MLFLOW
from finalbn.tracking.records import NOTE, OPTUNA_STATE, PRUNED
from finalbn.tracking.runs import EpochLogger, create_run, end_run, log_batch

SPLITS = Path("data/splits")
SWITCHES = {f"switch.{t}" for t in TOGGLES}

# names finalbn logs (a cell's, its epochs', the final BN's, a post-hoc rival's, and some with no group)
LOGGED = {
    "val_last_auroc": "val/last_auroc",
    "val_sel_balanced_loss": "val/sel_balanced_loss",
    "val_auroc": "val/auroc",
    "test_f1_1": "test/f1_1",
    "test_sel_f1_1": "test/sel_f1_1",
    "test_recall_1__Apple___Scab": "test/recall_1__Apple___Scab",
    "train_loss": "train/loss",
    "train_seconds": "train/seconds",
    "final_bn_running_mean_0": "final_bn/running_mean_0",
    "final_bn_gamma_1": "final_bn/gamma_1",
    "posthoc_tau": "posthoc/tau",
    "lr": "lr",
    "selected_epoch": "selected_epoch",
    "ceiling_auroc": "ceiling_auroc",
    "bn_vs_none_f1_estimate": "bn_vs_none_f1_estimate",
    "testing": "testing",  # a first word that only starts like a group's
    "val": "val",
}


@pytest.fixture
def store(tmp_path, monkeypatch):
    """An empty SQLite store in tmp_path (the cwd), MLFLOW_TRACKING_URI pointing at it."""
    monkeypatch.chdir(tmp_path)
    empty_store(tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    return mlflow.MlflowClient(uri)


def test_metric_names_are_stored_by_group_and_read_back():
    assert {name: names.stored(name) for name in LOGGED} == LOGGED
    assert {names.read(s): s for s in LOGGED.values()} == {name: s for name, s in LOGGED.items()}
    # a stored name is stored again as it is, and an old (ungrouped) name reads as itself
    assert all(names.stored(names.read(s)) == s for s in LOGGED.values())
    assert names.read("test_f1_1") == "test_f1_1" and names.read("other/x_y") == "other_x_y"
    with pytest.raises(ValueError, match="empty"):
        names.stored("")


def test_a_store_written_before_the_groups_reads_the_same(store):
    """Runs of an old store (names with `_` only) and of a new one read alike, histories too."""
    exp = store.create_experiment("finalbn/grid")
    old = store.create_run(exp, tags={"finalbn.cell": "true"}).info.run_id
    for step, v in ((1, 0.5), (2, 0.75)):
        store.log_metric(old, "val_auroc", v, step=step)
        store.log_metric(old, "final_bn_gamma_0", v + 1, step=step)
    store.log_metric(old, "test_f1_1", 0.25)
    store.set_terminated(old, "FINISHED")
    new = create_run(exp, "new", {"finalbn.cell": "true"})
    epochs = EpochLogger(new)
    for step, v in ((1, 0.5), (2, 0.75)):
        epochs.on_epoch_end(step, {"epoch": step, "val_auroc": v, "final_bn_gamma_0": v + 1})
    epochs.flush()
    log_batch(new, {"test_f1_1": 0.25})
    end_run(new, "FINISHED")
    assert set(store.get_run(new).data.metrics) == {"val/auroc", "final_bn/gamma_0", "test/f1_1"}
    assert set(store.get_run(old).data.metrics) == {"val_auroc", "final_bn_gamma_0", "test_f1_1"}
    runs = {r.run_id: r for r in query.finished_cell_runs("finalbn/grid")}
    want = {"val_auroc": 0.75, "final_bn_gamma_0": 1.75, "test_f1_1": 0.25}
    assert dict(runs[old].metrics) == want and dict(runs[new].metrics) == want
    history = {1: {"val_auroc": 0.5, "final_bn_gamma_0": 1.5}, 2: {"val_auroc": 0.75, "final_bn_gamma_0": 1.75}}
    for run_id in (old, new):
        assert query.metric_history(run_id, ["val_auroc", "final_bn_gamma_0"]) == history


@pytest.mark.slow
def test_a_grid_parent_is_described_and_keeps_its_spread_in_an_artifact(prepared):
    load, _ = prepared
    cfg = load(["grid.configs=[31]", "grid.replicates=2", "grid.headline.configs=[]", "train.epochs=1"])
    stats = grid.run_shard(cfg, SPLITS, log=lambda m: None)
    assert (stats["ran"], stats["failed"]) == (2, [])
    client = mlflow.MlflowClient()
    (parent,) = mlflow.search_runs(
        experiment_names=["finalbn/grid"], output_format="list", filter_string="tags.`finalbn.parent` = 'true'"
    )
    kids = sorted(
        mlflow.search_runs(
            experiment_names=["finalbn/grid"], output_format="list", filter_string="tags.`finalbn.cell` = 'true'"
        ),
        key=lambda r: r.data.tags["replicate"],
    )
    p, tags, metrics = parent.data.params, parent.data.tags, parent.data.metrics
    dataset = cfg.datasets[0].name
    # params for MLflow's parallel coordinates: the switches, id, dataset, arch (no baseline here)
    assert p == {
        "switch.bn": "true",
        **{s: "false" for s in SWITCHES - {"switch.bn"}},
        "config_id": "31",
        "dataset": dataset,
        "arch": cfg.model.arch,
    }
    assert tags[NOTE] == (
        f"**BN** (configuration 31) on {dataset}, {cfg.model.arch}: BN on; WL, DA, MX, UF, WD off.\n\n"
        "Its metrics are the mean over its 2 FINISHED replicate(s) (the runs under it), under the replicates' "
        "own metric names. The standard deviation, count and every replicate's value of each metric are in the "
        "artifacts `replicates.json` and `replicates.csv`."
    )
    # the source MLflow gives the cell runs it starts
    source = {k: v for k, v in kids[0].data.tags.items() if k.startswith("mlflow.source.")}
    assert source["mlflow.source.type"] == "LOCAL" and source["mlflow.source.name"]
    assert {k: v for k, v in tags.items() if k.startswith("mlflow.source.")} == source
    # the mean under the children's (stored) names; the spread in replicates.json, no _std metric
    vals = [k.data.metrics["test/f1_1"] for k in kids]
    assert metrics["test/f1_1"] == pytest.approx(sum(vals) / 2)
    assert "test_f1_1" not in metrics and not [k for k in metrics if k.endswith("_std")]
    assert {k.split("/")[0] for k in metrics} == {"test", "val", "selected_epoch"}
    table = json.loads(query.artifact_text(parent.info.run_id, "replicates.json"))
    assert table["runs"] == [{"replicate": str(r), "run_id": k.info.run_id} for r, k in enumerate(kids)]
    f1 = table["metrics"]["test_f1_1"]
    assert f1["values"] == vals and f1["n"] == 2 and f1["mean"] == pytest.approx(metrics["test/f1_1"])
    assert f1["std"] == pytest.approx(abs(vals[0] - vals[1]) / math.sqrt(2))
    assert set(table["metrics"]) == {names.read(k) for k in metrics}
    rows = list(csv.reader(io.StringIO(query.artifact_text(parent.info.run_id, "replicates.csv"))))
    assert [r[0] for r in rows] == ["row", "replicate 0", "replicate 1", "mean", "std", "n"]
    col = rows[0].index("test_f1_1")
    assert [float(r[col]) for r in rows[1:]] == pytest.approx([*vals, f1["mean"], f1["std"], 2])
    # a cell's epochs: the final BN's statistics in one section, validation in another
    kid = kids[0].info.run_id
    assert [m.step for m in client.get_metric_history(kid, "final_bn/running_mean_0")] == [1]
    sections = {k.split("/")[0] for k in kids[0].data.metrics}
    assert sections == {"final_bn", "val", "test", "train", "lr", "selected_epoch"}  # lr, selected_epoch: no group
    # the rest of finalbn reads the old names
    (run,) = [r for r in query.finished_cell_runs(["finalbn/grid"]) if r.run_id == kid]
    assert run.metrics["test_f1_1"] == vals[0] and "val_last_auroc" in run.metrics
    assert not [k for k in run.metrics if "/" in k]
    assert set(query.metric_history(kid, ["val_auroc", "final_bn_gamma_0"])[1]) == {"val_auroc", "final_bn_gamma_0"}
    assert {s: kids[0].data.params[s] for s in SWITCHES} == {s: p[s] for s in SWITCHES}


def test_a_cell_run_logs_the_seed_it_used_and_survives_being_resumed(prepared, monkeypatch):
    """`seed.effective` is `cell_seed`, not train.seed; a run resumed with its params already
    logged (as `mlflow run` resumes its project run) logs them again without MLflow refusing."""
    load, _ = prepared
    cfg = load(["train.seed=5", "train.epochs=1", "ablation.bn=true", "ablation.wl=true"])
    client = mlflow.MlflowClient()
    run_id = client.create_run(client.create_experiment("finalbn/train")).info.run_id
    for _ in range(2):
        monkeypatch.setenv("MLFLOW_RUN_ID", run_id)  # start_run takes it out of the environment
        got, _ = track_cell(cfg, cfg.datasets[0].name, SPLITS, CellRun("train"), MLFLOW, replicate=1)
        assert got == run_id
    run = client.get_run(run_id)
    p = run.data.params
    assert cell_seed(cfg, 1) == 6
    assert (p["seed.effective"], p["train.seed"], p["replicate"]) == ("6", "5", "1")
    assert run.data.tags["seed"] == "6" and run.data.tags["replicate"] == "1"  # the tags stay
    assert {s: p[s] for s in SWITCHES} == {f"switch.{t}": "true" if t in ("bn", "wl") else "false" for t in TOGGLES}
    assert run.info.status == "FINISHED"


def test_a_pruned_trial_says_why_it_ended_killed(store, load):
    tracking.setup(load(), "search")
    reason = "pruned at epoch 1 of replicate 0: running mean val_auroc 0.2000 over 1 replicate(s)"
    with pytest.raises(optuna.TrialPruned):
        with tracking.cell_run(
            "trial 3 r0", {"finalbn.cell": "true"}, killed_on=(optuna.TrialPruned,), state_tag="trial_state"
        ):
            raise optuna.TrialPruned(reason)
    (run,) = mlflow.search_runs(experiment_names=["finalbn/search"], output_format="list")
    note = f"Pruned by the search's pruner: {reason}. Its epochs up to then are kept; it is not a result."
    assert run.info.status == "KILLED"
    assert (run.data.tags["trial_state"], run.data.tags[OPTUNA_STATE], run.data.tags[NOTE]) == ("pruned", PRUNED, note)
    assert query.finished_cell_runs("finalbn/search") == []  # not a result
    # a run that fails is no pruned trial: none of these tags
    with pytest.raises(RuntimeError):
        with tracking.cell_run("broken", {}, killed_on=(optuna.TrialPruned,), state_tag="trial_state"):
            raise RuntimeError("out of memory")
    (broken,) = [
        r
        for r in mlflow.search_runs(experiment_names=["finalbn/search"], output_format="list")
        if r.info.run_name == "broken"
    ]
    assert broken.info.status == "FAILED" and OPTUNA_STATE not in broken.data.tags and NOTE not in broken.data.tags
    # the in-memory tracker of tests and `finalbn bench` tags it the same way
    memory = MemoryTracker()
    with pytest.raises(optuna.TrialPruned):
        with memory.cell_run("trial 3 r0", {}, killed_on=(optuna.TrialPruned,), state_tag="trial_state"):
            raise optuna.TrialPruned(reason)
    (mem,) = memory.runs.values()
    assert (mem.status, mem.tags[OPTUNA_STATE], mem.tags[NOTE]) == ("KILLED", PRUNED, note)

"""Stage cores on a tracker handed in: the grid and the sensitivity stage run whole in-process on the
in-memory tracker (no MLflow store is made), the MLflow adapter and the memory tracker offer the
same methods, and a config derived in-process equals the one loaded with the same overrides."""

from __future__ import annotations

import inspect
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from finalbn.config import ConfigError
from finalbn.config.overrides import with_overrides
from finalbn.stages import ceiling, grid, report, sensitivity
from finalbn.stages.tracker import MemoryTracker, Tracker
from finalbn.tracking.adapter import MlflowTracker

SPLITS = Path("data/splits")
SMALL = [
    "grid.configs=[31,63]",
    "grid.replicates=2",
    "grid.headline.configs=[]",
    "grid.baselines.methods=[]",
    "train.epochs=1",
]


def _methods(cls) -> dict[str, list[str]]:
    return {
        n: list(inspect.signature(f).parameters)
        for n, f in inspect.getmembers(cls, inspect.isfunction)
        if not n.startswith("_")
    }


def test_both_trackers_offer_the_protocol_with_its_signatures():
    wanted = _methods(Tracker)
    assert wanted.keys() >= {"cell_run", "cells_by_key", "take_over", "parent", "finish_parent", "owned", "setup"}
    for impl in (MlflowTracker, MemoryTracker):
        have = _methods(impl)
        assert {n: have.get(n) for n in wanted} == wanted, impl.__name__
    assert MlflowTracker.shared and not MemoryTracker.shared


def test_with_overrides_is_load_config_in_process(load):
    cfg = load()
    assert with_overrides(cfg, []) == cfg
    assert with_overrides(cfg, ["train.batch_size=16", "split.train=[1000,53]", "datasets.0.crop=0"]) == load(
        ["train.batch_size=16", "split.train=[1000,53]", "datasets.0.crop=0"]
    )
    with pytest.raises(ConfigError, match="unknown key 'train.bogus'|train.bogus"):
        with_overrides(cfg, ["train.bogus=1"])
    with pytest.raises(ConfigError, match="not key=value"):
        with_overrides(cfg, ["train.lr"])


def _untouched(db: Path) -> bool:
    """The store the environment names (`prepared`'s empty one) holds no run and no experiment of ours."""
    client = mlflow.MlflowClient(f"sqlite:///{db}")
    exps = client.search_experiments()
    return [e.name for e in exps] == ["Default"] and not client.search_runs([e.experiment_id for e in exps])


def test_the_grid_core_runs_whole_on_the_memory_tracker_with_no_store(prepared, tmp_path):
    load, _ = prepared
    cfg = load(SMALL)
    tracker, lines = MemoryTracker(), []
    summary = grid.run(cfg, grid.GridPaths(SPLITS, tmp_path / "results"), tracker, log=lines.append)
    assert summary.code == 0 and summary.workers == 1  # a memory tracker: every cell here, not in workers
    assert (summary.results["cells"], summary.results["finished"], summary.missing) == (4, 4, [])
    assert _untouched(tmp_path / "mlflow.db")  # nothing reached the store the environment names
    df = pd.read_csv(tmp_path / "results" / "grid.csv")
    assert len(df) == 4 and df["run_id"].str.startswith("mem-").all()
    assert sorted(df["config_id"]) == [31, 31, 63, 63]
    cells = [r for r in tracker.runs.values() if r.tags.get("cell_key")]
    parents = [r for r in tracker.runs.values() if r.tags.get("finalbn.parent") == "true"]
    assert len(cells) == 4 and {r.status for r in cells} == {"FINISHED"} and len(parents) == 2
    for p in parents:  # the parent holds the mean of its two replicates, as the MLflow adapter's does
        kids = [r for r in cells if r.tags["mlflow.parentRunId"] == p.run_id]
        assert len(kids) == 2 and p.status == "FINISHED"
        assert p.metrics["test_f1_1"] == pytest.approx(sum(k.metrics["test_f1_1"] for k in kids) / 2)
    # a second run finds every cell by its key: nothing trained again
    again = grid.run(cfg, grid.GridPaths(SPLITS, tmp_path / "again"), tracker, log=lines.append)
    assert again.code == 0 and len(tracker.runs) == 6
    # each run said its projection first (the cells still to train, priced by kind) and the time left per cell
    said = [m for m in lines if "to train" in m]
    assert said[0].startswith("grid: 4 of 4 cells to train at 1 process(es); projected") and "priced by" in said[0]
    assert said[1] == "grid: all 4 cells are in the store: none to train"
    assert sum("left)" in m for m in lines if " cell " in m and "test minority F1" in m) == 4
    assert pd.read_csv(tmp_path / "again" / "grid.csv")["run_id"].tolist() == df["run_id"].tolist()
    # the report's core reads those cells from the same tracker: the whole study with no store
    summary = report.run(cfg, report.ReportPaths(tmp_path / "report", tmp_path / "results" / "grid.csv"), tracker)
    assert summary["cells"] == 4 and (tmp_path / "report" / "report.md").is_file()
    (rep,) = [r for r in tracker.runs.values() if r.tags.get("finalbn.report") == "true"]
    assert rep.status == "FINISHED" and "report.md" in rep.files and rep.tags["verdict_0"] == summary["verdict"][0]
    # a fresh memory tracker knows none of them
    fresh = MemoryTracker()
    grid.run(
        load([*SMALL[:-1], "grid.replicates=1", "train.epochs=1"]),
        grid.GridPaths(SPLITS, tmp_path / "r1"),
        fresh,
        log=lines.append,
    )
    assert len([r for r in fresh.runs.values() if r.tags.get("cell_key")]) == 2


@pytest.mark.slow
def test_the_sensitivity_core_calls_the_grid_core_in_process(prepared, tmp_path):
    load, _ = prepared
    cfg = load(
        [
            "grid.headline.replicates=2",
            "sensitivity.replicates=2",
            "sensitivity.imbalance=[]",
            "sensitivity.batch_size=[2]",
            "sensitivity.final_bn_momentum=[]",
            "sensitivity.frozen_bn=[]",
            "sensitivity.single_logit=false",
            "sensitivity.bias_shift=true",
            "sensitivity.inference_removal=false",  # tests/test_sensitivity.py runs it
            "sensitivity.workers=2",
            "report.prevalences=[0.5]",
            "train.epochs=1",
        ]
    )
    tracker, lines = MemoryTracker(), []
    summary = sensitivity.run(cfg, sensitivity.SensitivityPaths(SPLITS, tmp_path / "sens"), tracker, log=lines.append)
    table = summary.table
    assert set(table["factor"]) == {"batch_size", "bias_shift"} and (table["n"] == 2).all()
    # two levels (batch 2 and params' own 4) x configs 31 and 63 x 2 replicates, one after another here
    cells = [r for r in tracker.runs.values() if r.tags.get("cell_key")]
    assert len(cells) == 8 and {r.tags["stage"] for r in cells} == {"sensitivity"}
    assert {r.params["train.batch_size"] for r in cells} == {"2", "4"}
    assert _untouched(tmp_path / "mlflow.db")
    assert (tmp_path / "sens" / "sensitivity.csv").is_file() and summary.results["factors"] == [
        "batch_size",
        "bias_shift",
    ]


def test_the_ceiling_core_records_each_measurement_on_the_tracker(prepared, tmp_path):
    load, _ = prepared
    cfg = load(["ceiling.per_class=4", "ceiling.folds=2"])
    tracker = MemoryTracker()
    out = tmp_path / "ceiling" / "all.json"
    summary = ceiling.run(cfg, ceiling.CeilingPaths(SPLITS, out), tracker, log=lambda m: None)
    (result,) = summary.results
    (run,) = tracker.runs.values()
    assert result["mlflow_run_id"] == run.run_id and run.tags["finalbn.ceiling"] == "true"
    assert run.tags["stage"] == "ceiling" and run.metrics["ceiling_auroc"] == pytest.approx(result["auroc"])
    assert run.params["n"] == str(result["n"]) and '"auroc"' in run.files["ceiling.json"]
    assert out.is_file() and _untouched(tmp_path / "mlflow.db")

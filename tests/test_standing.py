"""Each configuration's standing in the export's choice (stages.export.standing) and where the MLflow
UI shows it (tracking.standing): grid parents and the search's runs, sorted by `selection/rank`."""

from __future__ import annotations

import math

import mlflow
import pytest

from conftest import empty_store
from finalbn.stages.export.standing import standings
from finalbn.tracking import query
from finalbn.tracking.records import FINISHED, RunRecord
from finalbn.tracking.standing import mark_cells, mark_parents


def _cell(key: str, rep: int, auroc: float, bn: bool = True, posthoc: str = "none", loss: float = 0.5) -> RunRecord:
    return RunRecord(
        run_id=f"{key}-{rep}",
        name=f"{key} r{rep}",
        status=FINISHED,
        end_time=rep,
        metrics={"val_last_auroc": auroc, "val_last_balanced_loss": loss},
        params={"model.final_variant": "bn", "train.posthoc": posthoc},
        tags={"config_key": key, "replicate": str(rep), "BN": "true" if bn else "false", "finalbn.cell": "true"},
    )


RUNS = [
    *(_cell("a", r, v) for r, v in enumerate([0.80, 0.90])),  # mean 0.85
    *(_cell("b", r, v) for r, v in enumerate([0.95, 0.85])),  # mean 0.90: the best candidate
    *(_cell("none", r, v, bn=False) for r, v in enumerate([0.99, 0.99])),  # higher, but no final BN
    _cell("short", 0, 0.99),  # one replicate of two
    *(_cell("vs", r, 0.97, posthoc="vector_scaling") for r in range(2)),  # a rival's post-hoc step
    _cell("a", 2, 0.10),  # replicate 2 >= k: not judged
]


def test_the_choices_number_rank_and_reasons():
    table = standings(RUNS, k=2, chosen="b")
    assert table["b"].rank == 1 and table["a"].rank == 2 and table["b"].chosen and not table["a"].chosen
    assert table["a"].val_auroc == pytest.approx(0.85) and table["a"].replicates == 2  # replicate 2 left out
    assert table["none"].rank is None and table["none"].why == "no final BN" and table["none"].val_auroc == 0.99
    assert table["short"].rank is None and table["short"].why == "1 of the 2 replicates 0..1"
    assert table["vs"].rank is None and table["vs"].why == "a rival's post-hoc step or detector"


def test_grid_parents_and_search_runs_carry_it_in_a_real_store(tmp_path, monkeypatch):
    uri = f"sqlite:///{empty_store(tmp_path / 'mlflow.db')}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient(uri)
    grid, search = client.create_experiment("finalbn/grid"), client.create_experiment("finalbn/search")
    parent = client.create_run(grid, tags={"finalbn.parent": "true", "parent_key": "a"}).info.run_id
    other = client.create_run(grid, tags={"finalbn.parent": "true", "parent_key": "zzz"}).info.run_id
    trial = client.create_run(search, tags={"finalbn.cell": "true", "config_key": "b"}).info.run_id
    client.set_terminated(trial, FINISHED)
    rows = {k: vars(s) for k, s in standings(RUNS, k=2, chosen="b").items()}
    assert mark_parents(["finalbn/grid"], rows) == 1 and mark_cells(["finalbn/search"], rows) == 1
    got = query.get_run(parent)
    assert got is not None and got.metrics["selection_rank"] == 2 and got.tags["selection.chosen"] == "false"
    assert client.get_run(parent).data.metrics["selection/rank"] == 2  # its own section in the UI
    best = query.get_run(trial)
    assert best is not None and best.metrics["selection_rank"] == 1 and best.tags["selection.chosen"] == "true"
    assert best.metrics["selection_val_auroc"] == pytest.approx(0.90)
    untouched = query.get_run(other)
    assert untouched is not None and "selection_rank" not in untouched.metrics
    assert not math.isnan(got.metrics["selection_val_auroc"])

"""The data-needs planner (`finalbn needs`) end to end on a tiny dataset, and its refusals."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from tests.conftest import PARAMS

from finalbn import cli
from finalbn.config import ConfigError, load_config
from finalbn.stages import needs

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_a_rival_that_is_no_rival_on_63_is_refused():
    for rival in ("patchcore", "final_bn_removed", "temperature"):
        with pytest.raises(ConfigError, match=f"needs.rival={rival} is no rival"):
            load_config([PARAMS], [f"needs.rival={rival}"])


def test_counts_mark_the_runs_own_count_as_the_grids(load):
    cfg = load(["needs.counts=[1,10,40]"])
    plan = needs.counts(cfg, Path("data/splits"), Path("out"))
    assert [(c.n, c.reference) for c in plan] == [(1, False), (10, True), (40, False)]
    assert plan[1].splits == Path("data/splits") and plan[0].splits == Path("out/splits/minority-1")


def test_too_many_minority_images_are_refused_naming_the_count(prepared, capfd):
    _, overrides = prepared
    argv = ["--params", str(PARAMS)] + [x for o in [*overrides, "needs.counts=[1,2,50]"] for x in ("--set", o)]
    assert cli.main(["needs", *argv, "--out", "results/needs"]) != 0
    err = capfd.readouterr().err.strip().splitlines()
    assert "needs: 50 minority images" in err[-1]
    assert not Path("results/needs/needs.json").exists()


@pytest.mark.slow
def test_the_planner_end_to_end_on_a_tiny_dataset(prepared, capfd):
    _, overrides = prepared
    extra = ["needs.counts=[1,2,3]", "needs.replicates=2", "needs.bootstrap=100", "needs.workers=2"]
    extra += ["needs.rival=vector_scaling"]  # a post-hoc rival: it reuses 63's head (the default trains its own)
    argv = ["--params", str(PARAMS)] + [x for o in overrides + extra for x in ("--set", o)]
    assert cli.main(["needs", *argv, "--out", "results/needs"]) == 0
    folder = Path("results/needs")
    table = pd.read_csv(folder / "needs.csv")
    # 3 counts x (31, 63, vector scaling on 63) x 2 replicates, each scored at its validation cut
    assert len(table) == 18 and set(table["n"]) == {1, 2, 3}
    assert set(table["method"]) == {"final BN (31)", "none (63)", "vector_scaling (on 63)"}
    assert table["f1"].between(0, 1).all()
    answer = json.loads((folder / "needs.json").read_text())
    assert answer["sentence"] and answer["prevalence"] == 0.05
    assert (folder / "needs.png").read_bytes().startswith(PNG_MAGIC)
    run = mlflow.get_run(answer["mlflow_run_id"])
    assert run.data.params["rival"] == "vector_scaling"
    # the count of 2 is the run's own split.train[1]: its cells are found among the grid's when the grid ran,
    # here trained once; a second run trains nothing
    capfd.readouterr()
    assert cli.main(["needs", *argv, "--set", "needs.workers=1", "--out", "results/needs"]) == 0
    assert "cell " not in capfd.readouterr().out
    pd.testing.assert_frame_equal(
        pd.read_csv(folder / "needs.csv").drop(columns="run_id"), table.drop(columns="run_id")
    )

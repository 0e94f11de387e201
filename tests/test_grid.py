"""The grid: shard partition, resumability after SIGKILL, concurrent shards on one sqlite store,
parent runs with mean/std, and results/grid.csv."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from conftest import ROOT
from finalbn.cli import main
from finalbn.config import ablation_from_id
from finalbn.config.study import POSTHOC_METHODS
from finalbn.stages import grid
from finalbn.stages.grid.output import bn_means
from finalbn.stages.grid.plan import KIND_COST, cell_kinds, unit_costs

SPLITS = Path("data/splits")


def _cells(load, extra=()):
    return grid.all_cells(load(list(extra)))


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 13])
def test_shards_cover_every_cell_exactly_once(load, n):
    cfg = load(["grid.replicates=3", "grid.archs=[resnet18, vgg19]"])
    cells = grid.all_cells(cfg)
    # headline configs on 10 replicates, the baselines on the same 10
    m = len(cfg.grid.baselines.methods)
    assert m == 14 and len(cells) == (64 * 3 + 4 * 7 + m * 10) * 2
    parts = [grid.shard_cells(cells, i, n) for i in range(n)]
    counts = Counter(c for part in parts for c in part)
    assert set(counts) == set(cells) and set(counts.values()) == {1}
    for part in parts:
        others = [c for p in parts if p is not part for c in p]
        # a UF-off family (dataset, arch, UF, DA, MX: its cells share features) stays in one shard
        assert not {c.family for c in part if not c.family[2]} & {c.family for c in others}
        # and so does every parent's set of replicates
        assert not {(c.family, c.config_id, c.baseline) for c in part} & {
            (c.family, c.config_id, c.baseline) for c in others
        }
    assert grid.shard_cells(cells, 0, n) == parts[0]  # deterministic


def test_shards_are_balanced_by_cost(load):
    """UF-on configurations are dealt on their own, so two shards end together although one
    family holds the headline and baseline cells: the estimated loads (each cell at its kind's
    measured cost) differ by at most one UF-on cell."""
    cells = grid.all_cells(load())
    kinds = cell_kinds(cells)
    assert Counter(kinds.values()) == {
        "uf_on": 16,
        "uf_on_da": 16,
        "first": 10,
        "first_mx": 1,
        "first_da": 2,
        "warm": 105,
        "posthoc": 80,  # 8 post-hoc methods right after their base cell, on 10 replicates: its head reused
        "anomaly": 10,  # PatchCore
    }  # the plain family on 10 replicates; 3 others on replicate 0
    loads = [sum(KIND_COST[kinds[c]] for c in grid.shard_cells(cells, i, 2)) for i in range(2)]
    assert abs(loads[0] - loads[1]) <= KIND_COST["uf_on"]


def test_baselines_are_cells_of_their_own(load, tmp_path):
    """Each baseline runs on the base configuration with its loss or calibration, on the headline
    replicates, under a key of its own (never taken for the paper's cell)."""
    cfg = load()
    cells = grid.all_cells(cfg)
    base = [c for c in cells if c.baseline]
    assert Counter(c.baseline for c in base) == {m: 10 for m in cfg.grid.baselines.methods}
    assert {c.config_id for c in base if c.baseline != "final_bn_removed"} == {63}
    assert {c.config_id for c in base if c.baseline == "final_bn_removed"} == {31}  # what it removes is 31's
    first = next(c for c in base if c.baseline == "focal")
    focal = grid.cell_config(cfg, first)
    plain = grid.cell_config(cfg, grid.Cell(first.dataset, first.arch, 63, first.replicate))
    assert (plain.train.loss, plain.train.calibration) == ("ce", "none")
    assert {grid.cell_config(cfg, c).train.loss for c in base} == {
        "focal",
        "logit_adjusted",
        "class_balanced",
        "ldam_drw",
        "ce",
    }
    assert {grid.cell_config(cfg, c).train.posthoc for c in base} == set(POSTHOC_METHODS) - {"none"} | {"none"}
    assert focal.ablation == plain.ablation
    assert not [c for c in grid.all_cells(load(["grid.headline.configs=[]"])) if c.baseline]


def test_config_selection(load):
    cfg = load(["grid.configs=[31, none, WL]", "grid.headline.configs=[]"])
    assert sorted({c.config_id for c in grid.all_cells(cfg)}) == [31, 47, 63]
    assert ablation_from_id(47).wl and not ablation_from_id(47).bn


def test_default_design_every_config_once_headline_contrasts_ten_times(load):
    cells = grid.all_cells(load())
    reps = Counter(c.config_id for c in cells if not c.baseline)
    assert set(reps) == set(range(64)) and len(cells) == 64 + 4 * 9 + 14 * 10
    assert {cid: reps[cid] for cid in (31, 63, 47, 15)} == {31: 10, 63: 10, 47: 10, 15: 10}
    assert all(n == 1 for cid, n in reps.items() if cid not in (31, 63, 47, 15))
    assert load().grid.max_replicates == 10


def _grid_cmd(overrides, *extra):
    return [
        sys.executable,
        "-m",
        "finalbn",
        "grid",
        "--params",
        str(ROOT / "params.yaml"),
        *[x for o in overrides for x in ("--set", o)],
        *extra,
    ]


def _cell_runs():
    runs = mlflow.search_runs(
        experiment_names=["finalbn/grid"], output_format="list", filter_string="tags.`finalbn.cell` = 'true'"
    )
    return runs


GRID4 = ["grid.configs=[31, 63, 15, 47]", "grid.headline.configs=[]", "grid.workers=1", "train.epochs=1"]


@pytest.mark.slow
def test_two_concurrent_shards_share_one_sqlite_store(prepared):
    _, overrides = prepared
    procs = [
        subprocess.Popen(
            _grid_cmd(overrides + GRID4, "--shard", f"{i}/2"),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    runs = _cell_runs()
    assert Counter(r.info.status for r in runs) == {"FINISHED": 4}
    assert len({r.data.tags["cell_key"] for r in runs}) == 4


@pytest.mark.slow
def test_parent_runs_carry_the_mean_of_replicates(prepared, capsys):
    load, overrides = prepared
    cfg = load(["grid.configs=[31]", "grid.replicates=2", "grid.headline.configs=[]", "train.epochs=1"])
    stats = grid.run_shard(cfg, SPLITS, log=lambda m: None)
    assert (stats["ran"], stats["skipped"], stats["failed"]) == (2, 0, [])
    assert stats["cells"] == {"uf_off": 2, "uf_on": 0} and stats["seconds"]["uf_off"] > 0
    children = _cell_runs()
    (parent,) = mlflow.search_runs(
        experiment_names=["finalbn/grid"], output_format="list", filter_string="tags.`finalbn.parent` = 'true'"
    )
    assert parent.info.status == "FINISHED" and parent.data.tags["config_id"] == "31"
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    assert {c.data.tags["replicate"] for c in children} == {"0", "1"}
    vals = [c.data.metrics["test/f1_1"] for c in children]  # stored grouped (`tracking.names`)
    assert parent.data.metrics["test/f1_1"] == pytest.approx(sum(vals) / 2)
    # the spread is the parent's replicates.json, not a metric (tests/test_mlflow_ui.py)
    assert not [k for k in parent.data.metrics if k.endswith("_std")]
    summary = grid.write_results(cfg, SPLITS, Path("results"))
    assert summary["finished"] == 2 and summary["missing"] == []
    # grid cells draw no figures (tracking.cell_figures: train); `finalbn figures` draws them later
    client, run_id = mlflow.MlflowClient(), children[0].info.run_id
    assert client.list_artifacts(run_id, "plots") == []
    assert main(["figures", "--params", str(ROOT / "params.yaml"), "--run-id", run_id]) == 0
    assert {a.path for a in client.list_artifacts(run_id, "plots")} == {
        f"plots/{n}.png"
        for n in ("loss_curves", "softmax_scatter", "reliability_last", "reliability_selected", "confusion_matrix")
    }
    assert (
        main(["figures", "--params", str(ROOT / "params.yaml"), "--run-id", parent.info.run_id]) == 2
    )  # a parent is not a cell: one line, nothing drawn
    err = capsys.readouterr().err.strip()
    assert "is not a finished cell run: it lacks history.csv" in err and len(err.splitlines()) == 1
    # the parent's own figures, drawn once as it closed, and nothing more from `finalbn figures`
    assert {a.path for a in client.list_artifacts(parent.info.run_id, "plots")} == {
        "plots/loss_curves.png",
        "plots/reliability.png",
    }
    # a changed result-relevant param gives new keys: nothing is skipped
    assert (
        grid.run_shard(
            load(["grid.configs=[31]", "grid.replicates=1", "grid.headline.configs=[]", "train.epochs=2"]),
            SPLITS,
            log=lambda m: None,
        )["ran"]
        == 1
    )


def test_bad_shard_and_missing_split_exit_2(prepared, capsys):
    _, overrides = prepared
    args = ["grid", "--params", str(ROOT / "params.yaml"), *[x for o in overrides for x in ("--set", o)]]
    assert main(args + ["--shard", "3/2"]) == 2
    assert "need 0 <= I < N" in capsys.readouterr().err
    assert main(args + ["--splits", "nowhere"]) == 2
    assert "run `finalbn prepare`" in capsys.readouterr().err
    # the headline configs need 10 replicates; a split folder with fewer is named
    shutil.rmtree("data/splits/synthetic-apple/4")
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "synthetic-apple/4/manifest.csv does not exist" in err and "replicates" in err


def test_bn_on_and_off_are_means_of_configuration_means():
    df = pd.DataFrame(
        {
            "BN": [1] * 11 + [0, 0],
            "config_id": [31] * 10 + [30] + [63, 62],
            "baseline": [""] * 13,
            "test_f1_1": [0.9] * 10 + [0.1] + [0.5, 0.3],
        }
    )
    m = bn_means(df)
    assert m[1] == pytest.approx((0.9 + 0.1) / 2) and m[0] == pytest.approx(0.4)  # not (10 x 0.9 + 0.1) / 11


def test_units_are_the_shards_building_blocks_costliest_first(load):
    cells = grid.all_cells(load())
    units = grid.units(cells)
    assert sorted((c for u in units for c in u), key=repr) == sorted(cells, key=repr)  # every cell once
    assert (
        len(units) == 37
    )  # 4 UF-off families, PatchCore's cells (no head, its own patch features), 32 UF-on configurations
    for u in units:  # a unit is a UF-off family, or one UF-on configuration with its replicates
        assert len({c.family for c in u}) == 1 and (not u[0].family[2] or len({c.config_id for c in u}) == 1)
    costs = list(unit_costs(cells).values())
    assert costs == sorted(costs, reverse=True)
    for i in range(3):  # a shard is a union of whole units
        shard = set(grid.shard_cells(cells, i, 3))
        assert all(set(u) <= shard or not set(u) & shard for u in units)

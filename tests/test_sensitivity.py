"""finalbn sensitivity: the levels it plans, the bias-shift rival by hand, and the stage end to end
on a tiny prepared dataset (real cells, a real MLflow store)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from scipy.special import expit
from tests.conftest import PARAMS

from finalbn import cli
from finalbn.stages import grid, sensitivity
from finalbn.stages.grid import shard
from finalbn.stages.sensitivity import analysis
from finalbn.stages.tracker import MemoryTracker
from finalbn.tracking.adapter import MLFLOW

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_levels_mark_the_reference_and_draw_their_own_splits_only_for_imbalance(load, tmp_path):
    cfg = load(
        [
            "sensitivity.imbalance=[0.01,0.05,0.1]",
            "sensitivity.batch_size=[256]",
            "sensitivity.final_bn_momentum=[0.1]",
            "sensitivity.costly=true",  # adds the costly levels: batch size 16, the body's BN in train mode
        ]
    )
    plan = sensitivity.levels(cfg, tmp_path)
    by = {(lv.factor, lv.level): lv for lv in plan}
    imb = [lv for lv in plan if lv.factor == "imbalance"]
    assert [lv.split_train for lv in imb] == [(1000, 10), (1000, 53), (1000, 111)]
    assert [lv.reference for lv in imb] == [True, False, False]
    assert imb[0].splits is None and imb[1].splits == tmp_path / "splits" / "minority-53"
    assert imb[1].overrides == ("split.train=[1000,53]",)
    # params' own batch size (64) and momentum (0.01) join the lists as the reference levels
    assert [lv.level for lv in plan if lv.factor == "batch_size"] == ["16", "64", "256"]
    assert by[("batch_size", "64")].reference and by[("batch_size", "64")].overrides == ()
    assert by[("final_bn_momentum", "0.01")].reference
    assert by[("frozen_bn", "eval")].reference and by[("frozen_bn", "train")].overrides == ("model.frozen_bn=train",)
    assert by[("single_logit", "two softmax logits")].reference
    assert by[("single_logit", "one sigmoid logit")].overrides == ("model.single_logit=true",)
    # without the switch, the costly levels are left out, and a factor with only its reference compares nothing
    cheap = {(lv.factor, lv.level) for lv in sensitivity.levels(load(["sensitivity.batch_size=[256]"]), tmp_path)}
    assert ("batch_size", "16") not in cheap and ("batch_size", "256") in cheap
    assert not any(f == "frozen_bn" for f, _ in cheap)


def test_levels_side_by_side_share_the_cores(load, monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 8)
    lv = sensitivity.Level("batch_size", "16", ("train.batch_size=16",), False)
    cfg = load(["sensitivity.workers=2"])
    lcfg = sensitivity.level_config(cfg, lv, 3, side_by_side=2)
    assert lcfg.train.threads == 4  # two levels at once on 8 cores: 4 threads each, not 8
    assert lcfg.train.batch_size == 16 and lcfg.grid.replicates == 3 and lcfg.grid.configs == (31, 63)
    assert lcfg.grid.headline.configs == () and lcfg.grid.baselines.methods == ()
    assert sensitivity.level_config(cfg, lv, 3).train.threads == cfg.train.threads  # one at a time: as set
    # the user's own setting is kept
    assert sensitivity.level_config(load(["train.threads=3"]), lv, 3, side_by_side=2).train.threads == 3
    # the level's config is the one `finalbn grid` would load with the same overrides (the same cell keys)
    assert lcfg == load(
        ["sensitivity.workers=2", *sensitivity.COMMON, "grid.replicates=3", "train.batch_size=16", "train.threads=4"]
    )


def test_the_learned_bias_balances_the_classes_by_hand():
    # scores with a known shift: the positives' logits are N(0,1), the negatives' N(-4,1); a
    # balanced likelihood puts the boundary between them, i.e. adds about +2
    rng = np.random.default_rng(0)
    z = np.r_[rng.normal(0, 1, 400), rng.normal(-4, 1, 4000)]
    y = np.r_[np.ones(400, int), np.zeros(4000, int)]
    b = analysis.fit_logit_bias(y, expit(z))
    assert b == pytest.approx(2.0, abs=0.15)

    # the balanced NLL is smallest there
    def nll(bb):
        s = z + bb
        return (np.log1p(np.exp(-s[y == 1])).mean() + np.log1p(np.exp(s[y == 0])).mean()) / 2

    assert nll(b) <= min(nll(b - 0.1), nll(b + 0.1))
    tpr, tnr = analysis.shifted_rates(y, expit(z), b)
    assert tpr == pytest.approx(((z + b > 0) & (y == 1)).sum() / 400)
    assert tnr == pytest.approx(((z + b <= 0) & (y == 0)).sum() / 4000)
    with pytest.raises(ValueError, match="both classes"):
        analysis.fit_logit_bias([1, 1], [0.2, 0.3])


def test_contrasts_pair_by_replicate_and_reweight_to_each_prevalence():
    rows = []
    for r, (t31, s31, t63, s63) in enumerate([(0.7, 0.95, 0.4, 0.99), (0.8, 0.9, 0.5, 0.98), (0.6, 0.92, 0.45, 0.97)]):
        rows += [
            {
                "factor": "f",
                "level": "a",
                "reference": True,
                "replicate": r,
                "config_id": 31,
                "test_recall_1": t31,
                "test_recall_0": s31,
            },
            {
                "factor": "f",
                "level": "a",
                "reference": True,
                "replicate": r,
                "config_id": 63,
                "test_recall_1": t63,
                "test_recall_0": s63,
            },
        ]
    out = analysis.contrasts(pd.DataFrame(rows), [0.5, 0.01]).set_index("prevalence")

    def f1(t, s, pi):
        return 2 * pi * t / (pi * t + (1 - pi) * (1 - s) + pi)

    d = [
        f1(a, b, 0.01) - f1(c, e, 0.01)
        for a, b, c, e in [(0.7, 0.95, 0.4, 0.99), (0.8, 0.9, 0.5, 0.98), (0.6, 0.92, 0.45, 0.97)]
    ]
    assert out.loc[0.01, "estimate"] == pytest.approx(np.mean(d))
    assert out.loc[0.01, "n"] == 3 and out.loc[0.01, "estimate"] < 0 < out.loc[0.5, "estimate"]
    assert out.loc[0.01, "sd"] == pytest.approx(np.std(d, ddof=1))
    assert math.isfinite(out.loc[0.5, "detectable"])


@pytest.mark.slow
def test_the_stage_end_to_end_on_a_tiny_dataset(prepared, capfd):
    _, overrides = prepared
    extra = [
        "grid.headline.replicates=2",
        "sensitivity.replicates=2",
        "sensitivity.imbalance=[0.2]",
        "sensitivity.batch_size=[]",
        "sensitivity.final_bn_momentum=[]",
        "sensitivity.frozen_bn=[]",
        "sensitivity.single_logit=false",
        "sensitivity.workers=2",
        "report.prevalences=[0.5,0.1]",
    ]
    argv = ["--params", str(PARAMS)] + [x for o in overrides + extra for x in ("--set", o)]
    assert cli.main(["sensitivity", *argv, "--out", "results/sensitivity"]) == 0
    out = capfd.readouterr().out
    assert "sensitivity" in out and "bias_shift" in out
    folder = Path("results/sensitivity")
    table = pd.read_csv(folder / "sensitivity.csv")
    assert set(table["factor"]) == {"imbalance", "bias_shift", "final_bn_at_inference"}
    removed = table[(table["factor"] == "final_bn_at_inference") & ~table["reference"]]
    assert len(removed) == 2 and (removed["n"] == 2).all()  # 31 without its final BN against the reference's 63
    assert set(table["prevalence"]) == {0.5, 0.1}
    assert (table["n"] == 2).all()
    # the reference levels are one set of cells: the same numbers wherever they appear
    refs = table[table["reference"] & (table["prevalence"] == 0.5)]
    assert refs["estimate"].nunique() == 1
    for f in ("imbalance", "bias_shift"):
        assert (folder / f"{f}.png").read_bytes().startswith(PNG_MAGIC)
    summary = json.loads(
        (folder / "sensitivity.json").read_text(), parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}")
    )
    assert summary["replicates"] == 2
    cells = pd.read_csv(folder / "cells.csv")
    assert "bias" in cells and cells.loc[cells["rival"] == "63 + learned bias", "bias"].notna().all()
    # each level's parents (trained in worker processes) are named by its setting
    parents = mlflow.search_runs(
        experiment_names=["finalbn/sensitivity"], output_format="list", filter_string="tags.`finalbn.parent` = 'true'"
    )
    assert {r.info.run_name for r in parents} == {
        "BN (config 31) · imbalance=20.0% (4/1)",
        "none (config 63) · imbalance=20.0% (4/1)",
        "BN (config 31) · reference (params.yaml)",
        "none (config 63) · reference (params.yaml)",
        "BN (config 31) · final_bn_at_inference=trained, removed at inference",
    }
    # a second run trains nothing: every cell is found by its key (its levels here, one after another: no
    # worker processes to start for cells that are all in the store)
    once = ["--set", "sensitivity.workers=1"]
    assert cli.main(["sensitivity", *argv, *once, "--out", "results/sensitivity"]) == 0
    assert "cell " not in capfd.readouterr().out
    # nothing asked for: an empty table, no error
    none = ["sensitivity.imbalance=[]", "sensitivity.bias_shift=false", "sensitivity.inference_removal=false"]
    assert cli.main(["sensitivity", *argv, *[x for o in none for x in ("--set", o)], "--out", "results/empty"]) == 0
    assert "nothing to run" in capfd.readouterr().out and pd.read_csv("results/empty/sensitivity.csv").empty


def test_a_levels_runs_are_named_and_tagged_by_its_setting(load):
    lv = sensitivity.Level("batch_size", "16", ("train.batch_size=16",), False)
    setting = sensitivity.level_setting([lv])
    assert setting == grid.Setting("batch_size=16", (("sensitivity.factor", "batch_size"), ("sensitivity.level", "16")))
    refs = [
        sensitivity.Level("batch_size", "64", (), True),
        sensitivity.Level("single_logit", "two softmax logits", (), True),
    ]
    assert sensitivity.level_setting(refs) == grid.Setting(
        "reference (params.yaml)", (("sensitivity.factor", "reference"), ("sensitivity.level", "params.yaml"))
    )
    bn = grid.Cell("apple", "efficientnet_lite0", 31, 2)
    assert bn.parent_name(False, setting.label) == "BN (config 31) · batch_size=16"
    assert bn.run_name(False, setting.label) == "BN r2 · batch_size=16"
    assert bn.run_name(True, setting.label) == "BN r2 · batch_size=16 · apple efficientnet_lite0"
    assert (bn.parent_name(), bn.run_name()) == ("BN (config 31)", "BN r2")  # the grid's own names, as before
    # a parent found by its key under an older name takes the level's name and tags (in memory here)
    tracker = MemoryTracker()
    pid = tracker.parent(load(), "sensitivity", "apple", "efficientnet_lite0", 31, "k", "BN (config 31)")
    shard.label_run(tracker, pid, "BN (config 31) · batch_size=16", dict(setting.tags))
    run = tracker.runs[pid]
    assert run.name == "BN (config 31) · batch_size=16" and run.tags["parent_key"] == "k"
    assert (run.tags["sensitivity.factor"], run.tags["sensitivity.level"]) == ("batch_size", "16")


def test_a_level_in_the_store_names_its_parents_and_cells_by_its_setting_keyed_as_before(prepared):
    load, _ = prepared
    lv = sensitivity.Level("batch_size", "2", ("train.batch_size=2",), False)
    lcfg = sensitivity.level_config(load(["train.epochs=1"]), lv, 1)
    splits, paths = Path("data/splits"), grid.GridPaths(Path("data/splits"), Path("levels/00-batch_size"))
    ds, arch = lcfg.datasets[0].name, lcfg.grid.archs[0]
    key = {cid: grid.cell_key(lcfg, grid.Cell(ds, arch, cid, 0), splits, with_replicate=False) for cid in (31, 63)}
    MLFLOW.parent(lcfg, "sensitivity", ds, arch, 31, key[31], "BN (config 31)")  # left by an older finalbn
    assert sensitivity.train_level(lcfg, paths, sensitivity.level_setting([lv])) == 0
    runs = mlflow.search_runs(experiment_names=["finalbn/sensitivity"], output_format="list")
    parents = {r.info.run_name: r for r in runs if r.data.tags.get("finalbn.parent") == "true"}
    cells = {r.info.run_name: r for r in runs if r.data.tags.get("finalbn.cell") == "true"}
    assert set(parents) == {"BN (config 31) · batch_size=2", "none (config 63) · batch_size=2"}
    assert set(cells) == {"BN r0 · batch_size=2", "none r0 · batch_size=2"}
    for r in [*parents.values(), *cells.values()]:
        assert (r.data.tags["sensitivity.factor"], r.data.tags["sensitivity.level"]) == ("batch_size", "2")
    assert parents["BN (config 31) · batch_size=2"].data.tags["parent_key"] == key[31]  # the older run, renamed
    assert parents["none (config 63) · batch_size=2"].data.tags["parent_key"] == key[63]
    assert "Sensitivity: batch_size = 2." in parents["none (config 63) · batch_size=2"].data.tags["mlflow.note.content"]
    # the name is no part of a key: the same level without a setting finds every cell and trains nothing
    assert sensitivity.train_level(lcfg, paths) == 0
    assert len(mlflow.search_runs(experiment_names=["finalbn/sensitivity"], output_format="list")) == len(runs) == 4

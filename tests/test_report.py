"""finalbn.report: hand-made cell grids with known numbers in, tables / effects / files checked by hand;
and one small real MLflow sqlite store read back by `collect`."""
from __future__ import annotations

import itertools
import json
import math

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from finalbn import report
from finalbn.report import CellData

TOGGLES = ("bn", "wl", "da", "mx", "uf", "wd")
PRODUCT = list(itertools.product([True, False], repeat=6))
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _row(run_id, dataset, seed, cid, f1_1, f1_0=0.9, arch="resnet34", **extra):
    flags = dict(zip(TOGGLES, PRODUCT[cid]))
    row = {"run_id": run_id, "dataset": dataset, "arch": arch, "seed": seed, "config_id": cid,
           "config_name": "+".join(t.upper() for t in TOGGLES if flags[t]) or "none", **flags,
           "best_epoch": 5, "test_best_f1_1": f1_1, "test_best_f1_0": f1_0, "test_best_minority_f1": f1_1,
           "test_best_precision_1": f1_1, "test_best_recall_1": f1_1, "test_best_precision_0": f1_0,
           "test_best_recall_0": f1_0, "test_best_ece": 0.1, "test_best_brier": 0.2}
    row.update(extra)
    return row


def _history(offset: float, epochs: int = 4) -> pd.DataFrame:
    e = np.arange(1, epochs + 1)
    return pd.DataFrame({"epoch": e, "train_loss": 1.0 / e + offset, "val_loss": 1.2 / e + offset})


def _predictions(p1_minority: dict[str, float], p1_majority: dict[str, float]) -> pd.DataFrame:
    rows = [{"path": p, "label": 1, "p1_last": v, "p1_best": v} for p, v in p1_minority.items()]
    rows += [{"path": p, "label": 0, "p1_last": v, "p1_best": v} for p, v in p1_majority.items()]
    return pd.DataFrame(rows)


def _bins(counts, accs, confs):
    edges = np.linspace(0, 1, len(counts) + 1)
    return {"lower": edges[:-1].tolist(), "upper": edges[1:].tolist(), "count": counts,
            "accuracy": accs, "confidence": confs}


def full_grid(datasets=("apple", "pepper"), seeds=(0, 1, 2), bn_effect=0.5) -> CellData:
    """All 64 configs. minority F1 = 0.2 + bn_effect*BN + 0.1*DA + 0.05*BN*(2WL-1) + BN*e, where e
    depends on (dataset, seed, WL, MX, UF, WD) only and sums to 0. So: BN main effect = bn_effect
    exactly, DA main effect = 0.1 exactly, BNxWL = 0.1 (+ noise), BNxDA = 0 exactly, BNxMX ~ 0."""
    rng = np.random.default_rng(7)
    keys = list(itertools.product(datasets, seeds, *[(True, False)] * 4))
    e = rng.normal(0, 0.02, len(keys))
    e -= e.mean()
    noise = dict(zip(keys, e))
    rows, n = [], 0
    for ds in datasets:
        for s in seeds:
            for cid in range(64):
                f = dict(zip(TOGGLES, PRODUCT[cid]))
                f1 = (0.2 + bn_effect * f["bn"] + 0.1 * f["da"] + 0.05 * f["bn"] * (2 * f["wl"] - 1)
                      + f["bn"] * noise[(ds, s, f["wl"], f["mx"], f["uf"], f["wd"])])
                rows.append(_row(f"r{n}", ds, s, cid, f1, f1_0=0.8 + 0.1 * f["bn"],
                                 test_best_ece=0.2 - 0.1 * f["bn"], test_best_brier=0.3 - 0.1 * f["bn"]))
                n += 1
    cells = pd.DataFrame(rows)
    data = CellData(cells=cells, experiment="fake")
    for r in cells[cells["config_id"].isin([31, 47, 63])].itertuples():
        data.histories[r.run_id] = _history(0.1 * (r.config_id == 31) + 0.01 * r.seed)
    for r in cells[cells["config_id"].isin([31, 63])].itertuples():
        bn = r.config_id == 31
        data.predictions[r.run_id] = _predictions(
            {f"d{i}.png": (0.6 + 0.05 * i if bn else 0.05 * i + 0.01 * r.seed) for i in range(7)},
            {f"h{i}.png": (0.45 if bn else 0.01) for i in range(7)})
        data.reliability[r.run_id] = {"best": _bins([0, 2, 2], [None, 0.5, 1.0], [None, 0.5, 0.9]),
                                      "last": _bins([0, 2, 2], [None, 0.5, 1.0], [None, 0.5, 0.9])}
    return data


# --------------------------------------------------------------------------- tables


def test_table1_means_and_bn_improvement(tmp_path):
    cells = pd.DataFrame([
        _row("a", "apple", 0, 63, 0.2, 0.7), _row("b", "apple", 1, 63, 0.4, 0.8),
        _row("c", "apple", 0, 47, 0.5, 0.85), _row("d", "apple", 1, 47, 0.7, 0.95),
        _row("e", "apple", 0, 31, 0.9, 0.96), _row("f", "apple", 1, 31, 0.8, 0.94),
        _row("g", "tomato", 0, 63, 0.1), _row("h", "tomato", 0, 31, 0.6),  # no WL run for tomato
    ])
    t1 = report.table1(report._prepare(cells)[0])
    apple = t1[(t1["dataset"] == "apple")].set_index("class")
    assert apple.loc["unhealthy (1)", "without_final_bn"] == pytest.approx(0.3)
    assert apple.loc["unhealthy (1)", "with_wl_no_bn"] == pytest.approx(0.6)
    assert apple.loc["unhealthy (1)", "with_final_bn_no_wl"] == pytest.approx(0.85)
    assert apple.loc["unhealthy (1)", "bn_improvement"] == pytest.approx(0.25)  # BN minus WL, as the paper
    assert apple.loc["healthy (0)", "without_final_bn"] == pytest.approx(0.75)
    assert apple.loc["healthy (0)", "bn_improvement"] == pytest.approx(0.95 - 0.9)
    assert apple.loc["unhealthy (1)", "seeds_63_47_31"] == "2/2/2"
    tomato = t1[(t1["dataset"] == "tomato")].set_index("class")
    assert math.isnan(tomato.loc["unhealthy (1)", "with_wl_no_bn"])
    assert math.isnan(tomato.loc["unhealthy (1)", "bn_improvement"])

    summary = report.build_report(CellData(cells=cells, experiment="t"), tmp_path, n_boot=200)
    assert summary["table1"]["apple"] == pytest.approx(
        {"without_bn_f1_1": 0.3, "wl_f1_1": 0.6, "bn_f1_1": 0.85, "bn_improvement_f1_1": 0.25})
    assert summary["table1"]["tomato"]["wl_f1_1"] is None  # NaN -> null
    csv = pd.read_csv(tmp_path / "table1.csv")
    assert csv.loc[(csv["dataset"] == "apple") & (csv["class"] == "unhealthy (1)"), "without_final_bn"].item() \
        == pytest.approx(0.3)


def test_table2_top3_per_dataset():
    rows = []
    for i, (cid, f1) in enumerate([(31, 0.95), (23, 0.94), (20, 0.93), (63, 0.3), (0, 0.5)]):
        for s in (0, 1):
            rows.append(_row(f"r{i}{s}", "apple", s, cid, f1 + 0.01 * (s - 0.5) * 2, best_epoch=6 + s))
    t2 = report.table2(report._prepare(pd.DataFrame(rows))[0])
    un = t2[t2["class"] == "unhealthy (1)"]
    assert un["config_id"].tolist() == [31, 23, 20]
    assert un["f1"].tolist() == pytest.approx([0.95, 0.94, 0.93])
    assert un["epoch"].tolist() == pytest.approx([6.5] * 3)
    assert t2[t2["class"] == "healthy (0)"]["config_id"].tolist() == [31, 23, 20]
    first = un.iloc[0]
    assert bool(first["BN"]) and not bool(first["WL"]) and first["config_name"] == "BN"


def test_table3_top_and_bottom_order():
    avg = {29: 0.96, 28: 0.95, 31: 0.94, 0: 0.8, 5: 0.7, 49: 0.6, 48: 0.55, 50: 0.5}
    rows, n = [], 0
    for cid, a in avg.items():
        for ds, shift in (("apple", -0.02), ("pepper", 0.02)):
            rows.append(_row(f"r{n}", ds, 0, cid, a + shift))
            n += 1
    rows.append(_row("lonely", "apple", 0, 63, 0.99))  # only in one dataset: not ranked
    t3, notes = report.table3(report._prepare(pd.DataFrame(rows))[0])
    assert t3["config_id"].tolist() == [29, 28, 31, 49, 48, 50]
    assert t3["group"].tolist() == ["top"] * 3 + ["bottom"] * 3
    assert t3["rank"].tolist() == [1, 2, 3, 6, 7, 8]
    assert t3["average"].tolist() == pytest.approx([0.96, 0.95, 0.94, 0.6, 0.55, 0.5])
    assert t3["apple"].tolist()[0] == pytest.approx(0.94) and t3["pepper"].tolist()[0] == pytest.approx(0.98)
    assert 63 not in t3["config_id"].tolist() and any("lack a minority F1 for some dataset" in s for s in notes)
    assert t3.iloc[2]["BN"] and not t3.iloc[2]["DA"]  # 31 = BN only


def test_table4_lowest_p_minority_images_joined_on_path():
    cells = report._prepare(pd.DataFrame([
        _row("n0", "apple", 0, 63, 0.2), _row("b0", "apple", 0, 31, 0.9),
        _row("n1", "apple", 1, 63, 0.2), _row("b1", "apple", 1, 31, 0.9)]))[0]
    without = _predictions({"a.png": 0.30, "b.png": 0.05, "c.png": 0.6, "d.png": 0.10, "e.png": 0.2,
                            "f.png": 0.15, "g.png": 0.9}, {"h0.png": 0.0, "h1.png": 0.01})
    # with-BN file in another order, with one extra image: the join is on path, not on position
    with_bn = _predictions({"g.png": 0.95, "f.png": 0.66, "e.png": 0.67, "d.png": 0.64, "c.png": 0.8,
                            "b.png": 0.61, "a.png": 0.70, "z.png": 0.99}, {"h1.png": 0.4, "h0.png": 0.3})
    data = CellData(cells=cells, predictions={
        "n0": without, "b0": with_bn,
        "n1": _predictions({"a.png": 0.0, "x.png": 0.0}, {}), "b1": _predictions({"a.png": 1.0}, {})})
    pairs, _ = report._prediction_pairs(data, cells)
    t4 = report.table4(pairs)
    assert t4["seed"].unique().tolist() == [0]  # first seed
    assert t4["path"].tolist() == ["b.png", "d.png", "f.png", "e.png", "a.png"]
    assert t4["p1_without_final_bn"].tolist() == pytest.approx([0.05, 0.10, 0.15, 0.2, 0.30])
    assert t4["p1_with_final_bn"].tolist() == pytest.approx([0.61, 0.64, 0.66, 0.67, 0.70])


# --------------------------------------------------------------------------- effects


@pytest.fixture(scope="module")
def grid_report(tmp_path_factory):
    """One report over the full fake grid, shared (figures make build_report take seconds)."""
    out = tmp_path_factory.mktemp("grid_report")
    return report.build_report(full_grid(), out, n_boot=500, seed=1), out


def test_effects_on_full_grid_and_verdict(grid_report):
    summary, out = grid_report
    eff = pd.read_csv(out / "effects.csv")
    pooled = eff[(eff["scope"] == "all") & (eff["metric"] == "minority_f1")].set_index("effect")

    bn = summary["bn_main_effect"]
    assert bn["n"] == 2 * 3 * 32
    assert bn["mean"] == pytest.approx(0.5, abs=1e-9)
    assert bn["ci_low"] < 0.5 < bn["ci_high"] and bn["ci_high"] - bn["ci_low"] < 0.02
    assert bn["p"] < 0.05
    assert "helps here" in summary["verdict"] and "+0.50" in summary["verdict"] and "192 pairs" in summary["verdict"]

    assert pooled.loc["DA", "mean"] == pytest.approx(0.1, abs=1e-9)
    assert pooled.loc["DA", "ci_low"] == pytest.approx(0.1) and pooled.loc["DA", "ci_high"] == pytest.approx(0.1)
    assert pooled.loc["BNxWL", "mean"] == pytest.approx(0.1, abs=0.01) and pooled.loc["BNxWL", "n"] == 96
    # zero by construction: exactly 0, degenerate CI, p = 1
    assert pooled.loc["BNxDA", "mean"] == pytest.approx(0.0, abs=1e-12)
    assert pooled.loc["BNxDA", "p"] == 1.0
    assert pooled.loc["BNxDA", "ci_low"] == pytest.approx(0.0) and pooled.loc["BNxDA", "ci_high"] == pytest.approx(0.0)
    # ~0 up to noise: small, CI covers 0
    assert abs(pooled.loc["BNxMX", "mean"]) < 0.01
    assert pooled.loc["BNxMX", "ci_low"] < 0 < pooled.loc["BNxMX", "ci_high"]
    # per-dataset BN rows and BN on calibration (ECE 0.1 lower with BN by construction)
    per_ds = eff[(eff["effect"] == "BN") & (eff["scope"] == "apple")]
    assert per_ds["n"].item() == 96
    assert eff[(eff["metric"] == "ece")]["mean"].item() == pytest.approx(-0.1)
    assert summary["ece"]["bn"] == pytest.approx(0.1) and summary["ece"]["no_bn"] == pytest.approx(0.2)
    assert summary["brier"]["config31"] == pytest.approx(0.2) and summary["brier"]["config63"] == pytest.approx(0.3)
    assert summary["cells"] == 2 * 3 * 64
    assert summary["main_effects"]["DA"] == pytest.approx(0.1)


def test_effect_stats_edges():
    empty = report.effect_stats(np.array([]))
    assert empty["n"] == 0 and math.isnan(empty["mean"]) and empty["note"] == "not enough cells"
    zeros = report.effect_stats(np.zeros(5))
    assert zeros["p"] == 1.0 and zeros["mean"] == 0.0
    noisy = report.effect_stats(np.array([0.1, -0.2, 0.05, 0.0, -0.1, 0.15, -0.05, 0.02]), n_boot=300)
    assert noisy["ci_low"] < 0 < noisy["ci_high"] and noisy["p"] > 0.05 and noisy["n"] == 8
    again = report.effect_stats(np.array([0.1, -0.2, 0.05, 0.0, -0.1, 0.15, -0.05, 0.02]), n_boot=300)
    assert again == noisy  # seeded


def test_verdict_wording():
    base = {"n": 32, "p": 3e-5}
    assert report.verdict({**base, "mean": 0.21, "ci_low": 0.15, "ci_high": 0.27}) == (
        "Final BN raises minority F1 by +0.21 [95% CI +0.15, +0.27] (Wilcoxon p = 3e-05, 32 pairs): it helps here.")
    assert report.verdict({**base, "mean": -0.2, "ci_low": -0.3, "ci_high": -0.1}).endswith("it hurts here.")
    assert report.verdict({**base, "mean": 0.02, "ci_low": -0.03, "ci_high": 0.07}).endswith(
        "no evidence that it helps here.")
    assert "not enough cells" in report.verdict({"n": 0, "mean": math.nan, "ci_low": math.nan,
                                                 "ci_high": math.nan, "p": math.nan})


def test_bn_hurts_grid():
    cells = report._prepare(full_grid(datasets=("apple",), seeds=(0,), bn_effect=-0.1).cells)[0]
    eff = report.effects_table(cells, n_boot=200, seed=0)
    bn = eff[(eff["effect"] == "BN") & (eff["scope"] == "all") & (eff["metric"] == "minority_f1")].iloc[0]
    assert bn["n"] == 32 and bn["mean"] == pytest.approx(-0.1, abs=1e-9) and bn["ci_high"] < 0
    assert report.verdict(bn.to_dict()).endswith("it hurts here.")


# --------------------------------------------------------------------------- files, partial grids


def test_all_files_and_summary_keys(grid_report):
    summary, tmp_path = grid_report
    for name in report.FILES:
        assert (tmp_path / name).is_file(), name
    for png in [n for n in report.FILES if n.endswith(".png")]:
        assert (tmp_path / png).read_bytes().startswith(PNG_MAGIC)
    on_disk = json.loads((tmp_path / "summary.json").read_text(),
                         parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    assert on_disk == summary
    assert {"verdict", "bn_main_effect", "table1", "ece", "brier", "cells"} <= set(summary)
    assert set(summary["bn_main_effect"]) == {"mean", "ci_low", "ci_high", "p", "n"}
    assert set(summary["table1"]) == {"apple", "pepper"}
    assert set(summary["ece"]) >= {"bn", "no_bn"} and set(summary["brier"]) >= {"bn", "no_bn"}
    md = (tmp_path / "report.md").read_text()
    for needle in ("![](fig3_loss_curves.png)", "![](fig4_softmax.png)", "![](reliability.png)", "![](effects.png)",
                   "## Table I", "## Table IV", "best epoch", summary["verdict"]):
        assert needle in md
    assert "| dataset |" in md and "✓" in md
    # Fig. 3 CSV: mean and std over the 3 seeds (offsets 0, 0.01, 0.02 on top of 1/epoch)
    curves = pd.read_csv(tmp_path / "fig3_loss_curves.csv")
    e1 = curves[(curves["dataset"] == "apple") & (curves["config_id"] == 63) & (curves["epoch"] == 1)].iloc[0]
    assert e1["train_loss_mean"] == pytest.approx(1.01) and e1["train_loss_std"] == pytest.approx(0.01)
    assert e1["runs"] == 3
    # calibration: pooled bins over seeds and datasets (counts add)
    cal = pd.read_csv(tmp_path / "calibration.csv")
    row = cal[(cal["dataset"] == "all") & (cal["comparison"] == "config 31 vs 63") & cal["final_bn"]]
    assert row["cells"].item() == 6 and row["ece_mean"].item() == pytest.approx(0.1)


def test_merge_bins_count_weighted():
    a = _bins([0, 2, 2], [None, 0.5, 1.0], [None, 0.5, 0.9])
    b = _bins([1, 0, 6], [1.0, None, 0.5], [0.2, None, 0.7])
    m = report.merge_bins([a, b])
    assert m["count"] == [1, 2, 8]
    assert m["accuracy"] == pytest.approx([1.0, 0.5, (2 * 1.0 + 6 * 0.5) / 8])
    assert m["confidence"] == pytest.approx([0.2, 0.5, (2 * 0.9 + 6 * 0.7) / 8])
    assert report.bins_ece(m) == pytest.approx((1 * 0.8 + 0 + 8 * abs(0.625 - 0.75)) / 11)


def test_partial_grid_single_seed_does_not_crash(tmp_path):
    cells = pd.DataFrame([_row("n", "apple", 0, 63, 0.3), _row("b", "apple", 0, 31, 0.8)])
    data = CellData(cells=cells, histories={"n": _history(0.0), "b": _history(0.2)})  # no predictions
    before = plt.get_fignums()
    summary = report.build_report(data, tmp_path, n_boot=100)
    assert plt.get_fignums() == before  # every figure closed
    for name in report.FILES:
        assert (tmp_path / name).is_file(), name
    assert summary["bn_main_effect"]["n"] == 1 and summary["bn_main_effect"]["mean"] == pytest.approx(0.5)
    assert summary["bn_main_effect"]["ci_low"] is None
    assert "not enough cells" in summary["verdict"]
    assert summary["table1"]["apple"]["bn_improvement_f1_1"] is None
    eff = pd.read_csv(tmp_path / "effects.csv")
    inter = eff[eff["kind"] == "interaction"]
    assert (inter["n"] == 0).all() and inter["mean"].isna().all() and (inter["note"] == "not enough cells").all()
    assert (pd.read_csv(tmp_path / "fig3_loss_curves.csv")["train_loss_std"] == 0).all()
    assert pd.read_csv(tmp_path / "table4.csv").empty
    md = (tmp_path / "report.md").read_text()
    assert "not enough cells" in md and "![](fig4_softmax.png)" not in md and "![](fig3_loss_curves.png)" in md


def test_empty_raises(tmp_path):
    with pytest.raises(ValueError, match="no finished cell runs in experiment fake: run `finalbn grid` first"):
        report.build_report(CellData(cells=pd.DataFrame(), experiment="fake"), tmp_path)


def test_duplicate_cell_keeps_latest(tmp_path):
    cells = pd.DataFrame([_row("old", "apple", 0, 63, 0.1, start_time=1), _row("new", "apple", 0, 63, 0.5,
                                                                               start_time=2)])
    prepared, dropped = report._prepare(cells)
    assert dropped == 1 and prepared["run_id"].tolist() == ["new"]


def test_markdown_table():
    md = report.markdown_table(pd.DataFrame({"a": [1.23456, math.nan], "b": [True, False], "c": ["x|y", "z"]}))
    assert md.splitlines() == ["| a | b | c |", "|---|---|---|", "| 1.2346 | ✓ | x\\|y |", "| — |  | z |"]


# --------------------------------------------------------------------------- MLflow round trip


def _log_cell(client, exp_id, tmp_path, cid, seed, f1_1, status="FINISHED", history=True, preds=None):
    from mlflow.entities import Metric

    flags = dict(zip(TOGGLES, PRODUCT[cid]))
    tags = {t.upper(): str(v).lower() for t, v in flags.items()}
    tags.update({"config_id": str(cid), "config_name": "x", "dataset": "apple", "arch": "resnet34",
                 "seed": str(seed), "finalbn.cell": "true", "best_epoch": "2"})
    run_id = client.create_run(exp_id, tags=tags).info.run_id
    metrics = [Metric("test_best_f1_1", f1_1, 0, 0), Metric("test_best_f1_0", 0.9, 0, 0),
               Metric("test_f1_1", f1_1 - 0.1, 0, 0), Metric("best_epoch", 2, 0, 0)]
    if history:
        metrics += [Metric("train_loss", 1.0 / e, e, e) for e in (1, 2, 3)]
        metrics += [Metric("val_loss", 2.0 / e, e, e) for e in (1, 2, 3)]
    client.log_batch(run_id, metrics=metrics)
    if preds is not None:
        d = tmp_path / f"art_{run_id}"
        (d / "predictions").mkdir(parents=True)
        preds.to_csv(d / "predictions" / "test_predictions.csv", index=False)
        (d / "reliability.json").write_text(json.dumps({"best": _bins([1, 1], [1.0, 0.0], [0.6, 0.9]),
                                                        "last": _bins([1, 1], [1.0, 0.0], [0.6, 0.9])}))
        client.log_artifacts(run_id, str(d))
    client.set_terminated(run_id, status)
    return run_id


def test_collect_from_mlflow_sqlite(tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient(tracking_uri=uri)
    exp_id = client.create_experiment("finalbn-test", artifact_location=(tmp_path / "artifacts").as_uri())
    p63 = _predictions({"a.png": 0.1, "b.png": 0.3}, {"h.png": 0.05})
    p31 = _predictions({"b.png": 0.7, "a.png": 0.6}, {"h.png": 0.4})
    r63 = _log_cell(client, exp_id, tmp_path, 63, 0, 0.3, preds=p63)
    r31 = _log_cell(client, exp_id, tmp_path, 31, 0, 0.8, preds=p31)
    r47 = _log_cell(client, exp_id, tmp_path, 47, 0, 0.6, history=False)
    _log_cell(client, exp_id, tmp_path, 31, 1, 0.99, status="FAILED", history=False)
    client.set_terminated(client.create_run(exp_id, tags={"finalbn.parent": "true"}).info.run_id)

    data = report.collect("finalbn-test", tracking_uri=uri)
    cells = data.cells.set_index("run_id")
    assert sorted(cells.index) == sorted([r63, r31, r47])  # FAILED cell and parent run ignored
    assert cells.loc[r31, "config_id"] == 31 and cells.loc[r31, "config_name"] == "BN"
    assert bool(cells.loc[r31, "bn"]) and not bool(cells.loc[r31, "wl"]) and bool(cells.loc[r47, "wl"])
    assert cells.loc[r63, "test_best_f1_1"] == pytest.approx(0.3) and cells.loc[r63, "test_f1_1"] == pytest.approx(0.2)
    assert cells.loc[r63, "seed"] == 0 and cells.loc[r63, "best_epoch"] == 2
    assert math.isnan(cells.loc[r63, "test_best_ece"])  # not logged -> NaN
    assert cells["seed"].dtype.kind == "i" and cells["config_id"].dtype.kind == "i" and cells["bn"].dtype == bool
    assert data.predictions == {} and data.histories == {}  # lazy: nothing fetched yet

    hist = data.history(r63)
    assert hist["epoch"].tolist() == [1, 2, 3] and hist["val_loss"].tolist() == pytest.approx([2.0, 1.0, 2 / 3])
    assert data.history(r47) is None  # no history metrics, no history.csv
    pd.testing.assert_frame_equal(data.prediction(r31), p31)
    assert data.reliability_bins(r63)["best"]["count"] == [1, 1]
    assert set(data.predictions) == {r31}

    assert report.collect("finalbn-test", tracking_uri=uri, filter_tags={"seed": "0", "config_id": "63"}) \
        .cells["run_id"].tolist() == [r63]
    with pytest.raises(ValueError, match="no finished cell runs in experiment nope"):
        report.collect("nope", tracking_uri=uri)

    out = tmp_path / "report"
    summary = report.build_report(data, out, n_boot=100)
    assert summary["table1"]["apple"]["bn_improvement_f1_1"] == pytest.approx(0.2)
    t4 = pd.read_csv(out / "table4.csv")
    assert t4["path"].tolist() == ["a.png", "b.png"] and t4["p1_with_final_bn"].tolist() == pytest.approx([0.6, 0.7])
    assert pd.read_csv(out / "fig3_loss_curves.csv")["config_id"].unique().tolist() == [31, 63]

    rid = report.log_report(out, "finalbn-test", tracking_uri=uri)
    run = client.get_run(rid)
    assert run.info.status == "FINISHED" and run.data.tags["finalbn.report"] == "true"
    assert run.info.run_name == "report"
    assert {"report.md", "summary.json", "table1.csv"} <= {f.path for f in client.list_artifacts(rid)}
    assert len(report.collect("finalbn-test", tracking_uri=uri).cells) == 3  # the report run is no cell

"""finalbn.report: hand-made cell grids with known numbers in, tables / effects / files checked by
hand; the statistics against hand computations; one small real MLflow sqlite store read back."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import matplotlib.pyplot as plt
import matplotlib.text
import mlflow
import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure
from mlflow.entities import Metric
from scipy import stats

from finalbn import tracking
from finalbn.stages import report
from finalbn.stages.report import CellData, baselines, choice, effects, figures, tables
from finalbn.stages.report.cells import prepare
from finalbn.stages.report.markdown import markdown_table
from finalbn.stats import inference as finalbn_stats
from finalbn.stats import separability

TOGGLES = ("bn", "wl", "da", "mx", "uf", "wd")
PRODUCT = list(itertools.product([True, False], repeat=6))
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _row(run_id, dataset, rep, cid, f1_1, f1_0=0.9, arch="efficientnet_lite0", val_auroc=0.8, **extra):
    flags = dict(zip(TOGGLES, PRODUCT[cid]))
    row = {
        "run_id": run_id,
        "dataset": dataset,
        "arch": arch,
        "replicate": rep,
        "config_id": cid,
        "config_name": "+".join(t.upper() for t in TOGGLES if flags[t]) or "none",
        **flags,
        "selected_epoch": 5,
        "test_f1_1": f1_1,
        "test_f1_0": f1_0,
        "test_precision_1": f1_1,
        "test_recall_1": f1_1,
        "test_precision_0": f1_0,
        "test_recall_0": f1_0,
        "test_ece": 0.1,
        "test_brier": 0.2,
        "test_auroc": 0.5 + f1_1 / 2,
        "test_ap": 0.5 + f1_1 / 2,
        "test_f1_1_pc": f1_1 - 0.05,
        "test_sel_f1_1": f1_1 - 0.01,
        "val_auroc": val_auroc,
        "val_f1_1": 0.5,
    }
    row.update(extra)
    return row


def _history(offset: float, epochs: int = 4) -> pd.DataFrame:
    e = np.arange(1, epochs + 1)
    return pd.DataFrame({"epoch": e, "train_loss": 1.0 / e + offset, "val_loss": 1.2 / e + offset})


def _predictions(p1_minority: dict[str, float], p1_majority: dict[str, float]) -> pd.DataFrame:
    rows = [{"path": p, "label": 1, "p1_last": v, "p1_sel": v} for p, v in p1_minority.items()]
    rows += [{"path": p, "label": 0, "p1_last": v, "p1_sel": v} for p, v in p1_majority.items()]
    return pd.DataFrame(rows)


def _bins(counts, accs, confs):
    edges = np.linspace(0, 1, len(counts) + 1)
    return {
        "lower": edges[:-1].tolist(),
        "upper": edges[1:].tolist(),
        "count": counts,
        "accuracy": accs,
        "confidence": confs,
    }


def design_grid(bn_effect=0.3, headline_reps=5, noise=0.02) -> CellData:
    """The default design: all 64 configs on replicate 0, 31/63/47/15 on replicates 0..4.
    minority F1 = 0.3 + bn_effect*BN + 0.1*DA + 0.05*BN*WL(±1 product) + replicate noise."""
    rng = np.random.default_rng(7)
    rep_shift = rng.normal(0, noise, headline_reps)
    rows, n = [], 0
    wanted = {(cid, 0) for cid in range(64)} | {(cid, r) for cid in (31, 63, 47, 15) for r in range(headline_reps)}
    for cid, r in sorted(wanted):
        f = dict(zip(TOGGLES, PRODUCT[cid]))
        x = {t: 1 if f[t] else -1 for t in TOGGLES}
        f1 = (
            0.3
            + bn_effect * f["bn"]
            + 0.1 * f["da"]
            + 0.025 * x["bn"] * x["wl"]
            + rep_shift[r]
            + 0.01 * rng.normal() * f["bn"]
        )
        rows.append(
            _row(
                f"r{n}",
                "apple",
                r,
                cid,
                f1,
                f1_0=0.8 + 0.1 * f["bn"],
                val_auroc=0.7 + 0.2 * f["bn"] + 0.001 * (cid % 7),
                test_ece=0.2 - 0.1 * f["bn"],
                test_brier=0.3 - 0.1 * f["bn"],
            )
        )
        n += 1
    cells = pd.DataFrame(rows)
    data = CellData(cells=cells, experiment="fake")
    for r in cells[cells["config_id"].isin([31, 47, 63])].itertuples():
        data.histories[r.run_id] = _history(0.1 * (r.config_id == 31) + 0.01 * r.replicate)
    for r in cells[cells["config_id"].isin([31, 63, 47, 15])].itertuples():
        bn = r.bn
        data.predictions[r.run_id] = _predictions(
            {f"d{i}.png": (0.6 + 0.05 * i if bn else 0.1 * i + 0.01 * r.replicate) for i in range(8)},
            {f"h{i}.png": (0.45 if bn else 0.01 * i) for i in range(8)},
        )
        data.val_predictions[r.run_id] = data.predictions[r.run_id].drop(columns=["p1_sel"])  # its own cuts
        data.reliability[r.run_id] = {
            "selected": _bins([0, 2, 2], [None, 0.5, 1.0], [None, 0.5, 0.9]),
            "last": _bins([0, 2, 2], [None, 0.5, 1.0], [None, 0.5, 0.9]),
        }
    return data


CEILING = {
    "dataset": "apple",
    "arch": "efficientnet_lite0",
    "image_size": 64,
    "auroc": 0.95,
    "auroc_std": 0.02,
    "images": "150 + 150 spare images outside the split",
    "low": False,
}


# --------------------------------------------------------------------------- tables


def test_table1_means_and_bn_improvement():
    cells = pd.DataFrame(
        [
            _row("a", "apple", 0, 63, 0.2, 0.7),
            _row("b", "apple", 1, 63, 0.4, 0.8),
            _row("c", "apple", 0, 47, 0.5, 0.85),
            _row("d", "apple", 1, 47, 0.7, 0.95),
            _row("e", "apple", 0, 31, 0.9, 0.96),
            _row("f", "apple", 1, 31, 0.8, 0.94),
            _row("g", "tomato", 0, 63, 0.1),
            _row("h", "tomato", 0, 31, 0.6),  # no WL run for tomato
        ]
    )
    t1 = tables.table1(prepare(cells)[0])
    apple = t1[(t1["dataset"] == "apple")].set_index("class")
    assert apple.loc["diseased (1)", "without_final_bn"] == pytest.approx(0.3)
    assert apple.loc["diseased (1)", "with_wl_no_bn"] == pytest.approx(0.6)
    assert apple.loc["diseased (1)", "with_final_bn_no_wl"] == pytest.approx(0.85)
    assert apple.loc["diseased (1)", "bn_improvement"] == pytest.approx(0.25)  # BN minus WL, as the paper
    assert apple.loc["healthy (0)", "bn_improvement"] == pytest.approx(0.95 - 0.9)
    assert apple.loc["diseased (1)", "replicates_63_47_31"] == "2/2/2"
    tomato = t1[(t1["dataset"] == "tomato")].set_index("class")
    assert math.isnan(tomato.loc["diseased (1)", "with_wl_no_bn"])


def test_table2_and_3_rank_on_validation_never_on_test():
    rows = []
    # config 0 has the best test F1 but the worst validation AUROC: it must rank last
    for i, (cid, f1, val) in enumerate([(31, 0.7, 0.95), (23, 0.6, 0.94), (20, 0.5, 0.93), (0, 0.99, 0.5)]):
        for r in (0, 1):
            rows.append(_row(f"r{i}{r}", "apple", r, cid, f1, val_auroc=val, selected_epoch=6 + r))
            rows.append(_row(f"p{i}{r}", "pepper", r, cid, f1, val_auroc=val))
    cells = prepare(pd.DataFrame(rows))[0]
    t2 = tables.table2(cells, k=2)
    un = t2[(t2["class"] == "diseased (1)") & (t2["dataset"] == "apple")]
    assert un["config_id"].tolist() == [31, 23, 20]
    assert un["f1"].tolist() == pytest.approx([0.7, 0.6, 0.5]) and un["sel_epoch"].tolist() == pytest.approx([6.5] * 3)
    t3, notes = tables.table3(cells, k=2, n=2)
    assert t3["config_id"].tolist() == [31, 23, 20, 0] and t3["group"].tolist() == ["top"] * 2 + ["bottom"] * 2
    assert t3["average"].tolist()[-1] == pytest.approx(0.99)  # reported beside, not deciding


def test_a_configuration_on_fewer_replicates_is_never_ranked_against_replicated_ones():
    """Config 0 reaches validation AUROC 1.0 on its one replicate; 31 and 63 have 0.9 and 0.8 over
    three: the lone replicate is reported in its own tier, never above a replicated mean."""
    rows = [_row("z", "apple", 0, 0, 0.99, val_auroc=1.0)]
    for r in range(3):
        rows += [_row(f"b{r}", "apple", r, 31, 0.8, val_auroc=0.9), _row(f"n{r}", "apple", r, 63, 0.5, val_auroc=0.8)]
    cells = prepare(pd.DataFrame(rows))[0]
    t2 = tables.table2(cells, k=3)
    un = t2[t2["class"] == "diseased (1)"]
    assert un["config_id"].tolist() == [31, 63, 0] and un["rank"].tolist() == [1, 2, 1]
    assert un["ranked_over"].tolist() == ["replicates 0-2"] * 2 + ["replicate 0 only (screened, not selected)"]
    cand, lines = choice.selection_table(cells, k=3, n_boot=200)
    assert cand["config_id"].tolist() == [31, 63] and cand["wins"].iloc[0] == 1.0
    assert "config 31" in lines[0] and "not candidates" in lines[0]
    assert "no candidate was run on a replicate beyond 0-2" in lines[1] and "within-sample only" in lines[2]
    assert "BN only (31) itself" in lines[3]
    # the same cells at k=5: nothing has five replicates, nothing is chosen, and the report says so
    cand5, lines5 = choice.selection_table(cells, k=5, n_boot=200)
    assert cand5.empty and "no configuration has all 5 replicates" in lines5[0]


def test_the_choice_against_bn_only_uses_only_held_out_replicates():
    rows = []
    for r in range(5):  # config 15 leads on replicates 0-1 (chosen there), and loses to 31 on 2-4
        rows += [
            _row(f"a{r}", "apple", r, 15, 0.9 if r < 2 else 0.4, val_auroc=0.95),
            _row(f"b{r}", "apple", r, 31, 0.7, val_auroc=0.9),
        ]
    cells = prepare(pd.DataFrame(rows))[0]
    line = choice.held_out_line(cells, 15, 2, "apple")
    assert "held-out replicates 2-4 (3, not used to choose)" in line and "minority F1 0.400 vs 0.700" in line


def test_table4_draws_its_images_by_a_seeded_rule_that_reads_no_score():
    cells = prepare(
        pd.DataFrame(
            [
                _row("n0", "apple", 0, 63, 0.2),
                _row("b0", "apple", 0, 31, 0.9),
                _row("n1", "apple", 1, 63, 0.2),
                _row("b1", "apple", 1, 31, 0.9),
            ]
        )
    )[0]
    paths = [f"{c}.png" for c in "abcdefg"]
    without = _predictions(dict(zip(paths, [0.30, 0.05, 0.6, 0.10, 0.2, 0.15, 0.9])), {"h0.png": 0.0, "h1.png": 0.01})
    with_bn = _predictions(
        dict(zip(paths, [0.70, 0.61, 0.8, 0.64, 0.67, 0.66, 0.95])) | {"z.png": 0.99}, {"h1.png": 0.6, "h0.png": 0.3}
    )
    data = CellData(
        cells=cells,
        predictions={
            "n0": without,
            "b0": with_bn,
            "n1": _predictions({"a.png": 0.0, "x.png": 0.0}, {}),
            "b1": _predictions({"a.png": 1.0}, {}),
        },
    )
    pairs, _ = tables.prediction_pairs(data, cells)
    t4 = tables.table4(pairs, seed=0)
    assert t4["replicate"].unique().tolist() == [0] and len(t4) == 5
    # the rule: a seeded draw among the minority images both runs scored, sorted by path
    pick = sorted(np.random.default_rng(0).choice(7, size=5, replace=False))
    assert t4["path"].tolist() == [paths[i] for i in pick]
    # the scores play no part: reversed scores pick the same images
    flipped = {k: v.assign(p1_last=1 - v["p1_last"], p1_sel=1 - v["p1_sel"]) for k, v in data.predictions.items()}
    pairs2, _ = tables.prediction_pairs(CellData(cells=cells, predictions=flipped), cells)
    assert tables.table4(pairs2, seed=0)["path"].tolist() == t4["path"].tolist()
    assert tables.table4(pairs, seed=1)["path"].tolist() != t4["path"].tolist()
    expect = {
        "a.png": "found",
        "b.png": "found",
        "c.png": "",
        "d.png": "found",
        "e.png": "found",
        "f.png": "found",
        "g.png": "",
    }
    assert t4["flips"].tolist() == [expect[p] for p in t4["path"]]
    flips = tables.flip_counts(pairs).set_index("class")
    assert flips.loc["diseased", "flagged_only_with_final_bn"] == 5 and flips.loc["diseased", "images"] == 7
    assert flips.loc["healthy", "flagged_only_with_final_bn"] == 1 and flips.loc["healthy", "flagged_only_without"] == 0


# --------------------------------------------------------------------------- statistics, by hand


def test_paired_contrast_is_a_t_interval_over_replicates():
    # the t interval itself is checked by hand in test_stats.py
    cells = prepare(
        pd.DataFrame(
            [_row(f"b{r}", "apple", r, 31, v) for r, v in enumerate([0.9, 0.8, 0.7, 0.95])]
            + [_row(f"n{r}", "apple", r, 63, v) for r, v in enumerate([0.5, 0.6, 0.6, 0.5])]
            + [_row("lonely", "apple", 9, 31, 0.1)]
        )
    )[0]  # no partner: not a pair
    d = effects.paired_differences(cells, 31, "test_f1_1", 63, "test_f1_1")
    assert d["diff"].tolist() == pytest.approx([0.4, 0.2, 0.1, 0.45])
    assert effects.t_interval is finalbn_stats.t_interval  # finalbn.search imports it from effects
    row = effects.study_effects(cells)[0].set_index("effect").loc["31-63"]
    assert row["n"] == 4 and row["estimate"] == pytest.approx(0.2875)


def test_ols_cluster_robust_effect_matches_the_hand_computed_sandwich():
    """A 2^2 design (BN, WL) on 3 replicates: the effect is 2 x coefficient and its variance the
    cluster sandwich (X'X)^-1 (sum_g X_g'u_g u_g'X_g) (X'X)^-1 x G/(G-1) x (N-1)/(N-K)."""
    rng = np.random.default_rng(3)
    rows = []
    for r in range(3):
        for bn, wl in itertools.product([1, -1], [1, -1]):
            y = 0.5 + 0.15 * bn + 0.05 * wl + 0.02 * bn * wl + rng.normal(0, 0.03) + 0.05 * r
            rows.append({"BN": bn, "WL": wl, "y": y, "g": r})
    df = pd.DataFrame(rows)
    x = df[["BN", "WL"]]
    eff = effects.factorial_ols(df["y"].to_numpy(), x, df["g"].to_numpy()).set_index("effect")
    X = np.column_stack([np.ones(len(df)), df["BN"], df["WL"], df["BN"] * df["WL"]])
    beta, *_ = np.linalg.lstsq(X, df["y"].to_numpy(), rcond=None)
    u = df["y"].to_numpy() - X @ beta
    bread = np.linalg.inv(X.T @ X)
    meat = sum(np.outer(X[df["g"] == k].T @ u[df["g"] == k], X[df["g"] == k].T @ u[df["g"] == k]) for k in range(3))
    n, k, g = len(df), X.shape[1], 3
    V = bread @ meat @ bread * g / (g - 1) * (n - 1) / (n - k)
    bn_on = df[df["BN"] == 1]["y"].mean() - df[df["BN"] == -1]["y"].mean()
    assert eff.loc["BN", "estimate"] == pytest.approx(bn_on) == pytest.approx(2 * beta[1])
    assert eff.loc["BN", "se"] == pytest.approx(2 * math.sqrt(V[1, 1]))
    half = stats.t.ppf(0.975, g - 1) * 2 * math.sqrt(V[1, 1])
    assert (eff.loc["BN", "ci_low"], eff.loc["BN", "ci_high"]) == pytest.approx((bn_on - half, bn_on + half))
    assert eff.loc["BNxWL", "estimate"] == pytest.approx(2 * beta[3])
    # simple effect of BN with WL off: 2 (b_BN - b_BNxWL), the difference of the two cell means
    off = df[(df["WL"] == -1)]
    assert eff.loc["BN | WL off", "estimate"] == pytest.approx(
        off[off["BN"] == 1]["y"].mean() - off[off["BN"] == -1]["y"].mean()
    )


def test_the_unreplicated_factorial_is_exploratory_estimates_without_intervals():
    cells = prepare(design_grid(noise=0.0).cells)[0]
    eff, how = effects.factorial_effects(cells[cells["dataset"] == "apple"])
    eff = eff.set_index("effect")
    assert "exploratory" in how and "without interval or p value" in how
    assert eff.loc["DA", "estimate"] == pytest.approx(0.1, abs=0.01)
    assert eff.loc["BN", "estimate"] == pytest.approx(0.3, abs=0.01)
    assert eff.loc["BNxWL", "estimate"] == pytest.approx(0.05, abs=0.01)
    assert eff[["ci_low", "ci_high", "p", "p_holm"]].isna().all().all()
    assert (eff["method"] == "exploratory, one replicate").all()


def test_a_replicated_factorial_gets_cluster_robust_intervals_that_cover_the_truth():
    """All 64 configurations on 4 replicates, minority F1 = 0.3 + 0.2 BN + 0.1 DA (0/1 switches) +
    a replicate shift + noise: OLS clustered by replicate, intervals and p values, one Holm family."""
    rng = np.random.default_rng(11)
    rows, n = [], 0
    for r in range(4):
        shift = rng.normal(0, 0.05)
        for cid in range(64):
            f = dict(zip(TOGGLES, PRODUCT[cid]))
            rows.append(
                _row(f"r{n}", "apple", r, cid, 0.3 + 0.2 * f["bn"] + 0.1 * f["da"] + shift + rng.normal(0, 0.02))
            )
            n += 1
    cells = prepare(pd.DataFrame(rows))[0]
    eff, how = effects.factorial_effects(cells)
    eff = eff.set_index("effect")
    assert "OLS" in how and "4 complete replicates" in how and "family `factorial`" in how
    for name, truth in (("BN", 0.2), ("DA", 0.1), ("WD", 0.0), ("MX", 0.0), ("BNxWL", 0.0)):
        assert eff.loc[name, "ci_low"] <= truth <= eff.loc[name, "ci_high"], name
    assert eff.loc["BN", "p"] < 1e-3 and (eff["family"] == "factorial").all()
    assert eff["p_holm"].to_numpy() == pytest.approx(finalbn_stats.holm(eff["p"].to_numpy()))


def test_bn_by_setting_pairs_the_factorial_and_the_matched_pair():
    cells = prepare(design_grid().cells)[0]
    s = effects.by_setting(cells, "apple/x").set_index("setting")
    # design: 0.3 BN + 0.05 BN*WL (±1 product): BN is +0.25 with WL off, +0.35 with WL on
    assert s.loc["UF off, WL off", "factorial_estimate"] == pytest.approx(0.25, abs=0.02)
    assert s.loc["UF on, WL on", "factorial_estimate"] == pytest.approx(0.35, abs=0.02)
    assert (s["factorial_pairs"] == 8).all()
    assert s.loc["UF off, WL off", "pair"] == "31 − 63" and s.loc["UF off, WL off", "pair_replicates"] == 5
    assert s.loc["UF off, WL on", "pair"] == "15 − 47"
    assert s.loc["UF on, WL off", "pair_replicates"] == 1 and math.isnan(s.loc["UF on, WL off", "pair_ci_low"])


def test_one_holm_family_per_section():
    data = design_grid()
    eff, verdicts, _, _ = effects.study_effects(prepare(data.cells)[0], data.prediction, n_boot=100)
    for fam in ("verdict", "other contrasts"):
        part = eff[eff["family"] == fam]
        assert len(part) >= 2
        assert part["p_holm"].to_numpy() == pytest.approx(finalbn_stats.holm(part["p"].to_numpy()), nan_ok=True)
    assert eff.loc[eff["family"] == "", "p_holm"].isna().all()  # exploratory rows: no p at all
    n_verdict = int(eff.loc[eff["family"] == "verdict", "p"].notna().sum())
    assert f"one family of {n_verdict} paired contrasts" in verdicts["apple/efficientnet_lite0"][-1]


def test_hierarchical_bootstrap():
    y = np.array([1, 1, 1, 0, 0, 0])
    same = [(y, y.copy(), y.copy())] * 3
    assert effects.hierarchical_bootstrap(same, 200, 0) == (0.0, 0.0)
    better = [(y, y.copy(), np.array([1, 0, 0, 0, 0, 0])) for _ in range(4)]  # F1 1.0 vs 0.5
    lo, hi = effects.hierarchical_bootstrap(better, 500, 1)
    assert 0 < lo <= 0.5 <= hi <= 1.0
    assert effects.hierarchical_bootstrap(better, 500, 1) == (lo, hi)  # seeded
    assert all(math.isnan(v) for v in effects.hierarchical_bootstrap(better[:1], 100, 0))


def test_verdict_wording_is_neutral_and_set_against_the_paper():
    base = {"n": 5, "p": 0.01, "p_holm": 0.03, "kind": "contrast", "boot_low": math.nan}
    inside = effects.describe("X", {**base, "estimate": 0.12, "ci_low": 0.05, "ci_high": 0.19})
    assert inside == (
        "X changes minority F1 by +0.120 [+0.050, +0.190] (95 % CI; 5 replicates; Holm-adjusted p = 0.03)."
    )
    null = effects.describe("X", {**base, "estimate": 0.0, "ci_low": -0.04, "ci_high": 0.03})
    assert "rule out a gain larger than +0.030 and a loss larger than 0.040" in null
    assert not any(w in inside + null for w in ("helps", "hurts", "rescue"))
    explo = effects.describe("X", {"estimate": 0.2, "n": 64, "kind": "main", "method": "exploratory, one replicate"})
    assert explo == "X changes minority F1 by +0.200 on one replicate (exploratory: no interval, no p value)."
    below = effects._versus_paper("31-63", {"ci_low": -0.1, "ci_high": 0.1})
    assert "+0.23 (Pepper) to +0.66 (Apple)" in below and "lies below it by more than 0.05" in below
    assert "VGG19 fine-tuned on PlantVillage photographs" in below and "not a replication" in below
    assert "lies within" in effects._versus_paper("31-63", {"ci_low": 0.3, "ci_high": 0.5})
    # a hair below the range is not "below it" (issue 34: 0.2334 against 0.234)
    hair = effects._versus_paper("31-63", {"ci_low": 0.1, "ci_high": 0.2334})
    assert "less than the margin" in hair and "lies below" not in hair


# --------------------------------------------------------------------------- the whole report


FIGURE_FONTS: dict[str, tuple[float, float]] = {}  # figure file -> (its smallest font in points, its width in inches)


@pytest.fixture(scope="module")
def design_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("design_report")
    save = Figure.savefig

    def spy(fig, path, *a, **k):  # every figure the report draws, as it is saved
        sizes = [
            t.get_fontsize() for t in fig.findobj(matplotlib.text.Text) if t.get_visible() and t.get_text().strip()
        ]
        FIGURE_FONTS[Path(path).name] = (min(sizes, default=99.0), fig.get_figwidth())
        return save(fig, path, *a, **k)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Figure, "savefig", spy)
        return report.build_report(
            design_grid(), out, n_boot=300, seed=1, ceilings=[CEILING], train_counts=(1000, 10)
        ), out


def test_every_report_figure_is_readable_at_its_rendered_size(design_report):
    """Each PNG of the report, shown about RENDER_PX wide (a Markdown viewer): no text under
    MIN_TEXT_PX, i.e. no font under `figures.min_font_pt` of the figure's width."""
    assert len(FIGURE_FONTS) >= 10
    small = {
        name: f"{pt:.1f} pt in {w:.1f} in (needs {figures.min_font_pt(w):.1f})"
        for name, (pt, w) in FIGURE_FONTS.items()
        if pt < figures.min_font_pt(w) - 1e-9
    }
    assert not small, small


def test_report_opens_with_the_ceiling_then_the_verdict(design_report):
    summary, out = design_report
    md = (out / "report.md").read_text()
    assert md.index("## Can the features see the cue?") < md.index("## Verdict") < md.index("## Table I")
    assert "cross-validated AUROC of 0.950" in md and "![](ceiling.png)" in md
    verdict = summary["verdict"]
    # 31 - 63 = BN effect 0.3 minus the BN x WL product term at WL off (2 x 0.025)
    paper = next(v for v in verdict if v.startswith("The paper's contrast"))
    assert paper.startswith(
        "The paper's contrast, measured as the paper did (the test set as drawn, argmax cut, last "
        "epoch): final BN alone vs nothing (31 − 63) changes minority F1 by +0.25"
    )
    assert "5 replicates" in paper and "bootstrap" not in paper  # the replicate interval is primary
    assert "The paper reports +0.23 (Pepper) to +0.66 (Apple)" in paper
    assert verdict[0].startswith("**Does final BN help at your prevalence?**")
    assert all(f"π = {p:g}: " in verdict[0] for p in (0.5, 0.1, 0.05, 0.01))
    assert verdict[1].startswith("**Which cut?**") and verdict[2].startswith("**How sure?**")
    assert any(v.startswith("Epoch protocol (secondary") for v in verdict)
    assert any(v.startswith("The BN × WL interaction") for v in verdict)
    assert any(v.startswith("BN's effect depends on the setting") for v in verdict)
    fac = next(v for v in verdict if v.startswith("Factorial main effect"))
    assert "exploratory" in fac and "Lenth" not in md and "replicate scale" not in md
    assert "AUROC by" in verdict[2]
    assert any(v.startswith("WD (1e-2, decoupled") for v in verdict)
    assert any(
        v.startswith("Calibration (31 vs 63, last epoch)") and "training prior (π = 0.0099)" in v for v in verdict
    )
    assert any(v.startswith("Power: with 5 replicates") for v in verdict)
    assert any(v.startswith("What the intervals describe") for v in verdict)
    assert verdict[-1].startswith("Multiplicity: the Holm-adjusted p values of the opening sentences")
    e = summary["effects"]["apple/efficientnet_lite0"]
    assert e["31-63"]["n"] == 5 and e["31-63"]["estimate"] == pytest.approx(0.25, abs=0.02)
    assert e["31-63"]["p_holm"] >= e["31-63"]["p"] and e["31-63"]["family"] == "verdict"
    assert "31-63 π=0.01" in e and "31-63 sel π=0.05" in e
    assert "## The answer at the prevalence the user will meet" in md and "![](prevalence.png)" in md


def test_all_files_and_summary(design_report):
    summary, out = design_report
    for name in report.FILES:
        assert (out / name).is_file(), name
    for png in [n for n in report.FILES if n.endswith(".png")]:
        assert (out / png).read_bytes().startswith(PNG_MAGIC), png
    on_disk = json.loads(
        (out / "summary.json").read_text(), parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}")
    )
    assert on_disk == summary
    assert summary["cells"] == 64 + 16 and summary["replicates"] == 5 and summary["configs"] == 64
    assert summary["ceiling"][0]["auroc"] == 0.95
    best = summary["best_config_on_validation"]["apple/efficientnet_lite0"]
    # chosen over the 5 replicates: only the headline configurations have them all
    assert best["config_id"] in (31, 63, 47, 15) and best["replicates"] == 5
    base = pd.read_csv(out / "baselines.csv")
    assert set(base["config"]) == {"none (63)", "WL (47)", "BN (31)", "BN+WL (15)"}
    assert (base["replicates"] == 5).all()
    curves = pd.read_csv(out / "fig3_loss_curves.csv")
    e1 = curves[(curves["config_id"] == 63) & (curves["epoch"] == 1)].iloc[0]
    assert e1["runs"] == 5 and e1["train_loss_mean"] == pytest.approx(1.02)


def test_partial_grid_single_replicate_does_not_crash(tmp_path):
    cells = pd.DataFrame([_row("n", "apple", 0, 63, 0.3), _row("b", "apple", 0, 31, 0.8)])
    data = CellData(cells=cells, histories={"n": _history(0.0), "b": _history(0.2)})  # no predictions
    before = plt.get_fignums()
    summary = report.build_report(data, tmp_path, n_boot=100)
    assert plt.get_fignums() == before  # every figure closed
    for name in report.FILES:
        assert (tmp_path / name).is_file(), name
    assert "one replicate: no interval" in summary["verdict"][0]
    md = (tmp_path / "report.md").read_text()
    assert "no separability ceiling was measured" in md
    assert "no replicate has all 64 configurations" in md
    assert pd.read_csv(tmp_path / "table4.csv").empty


def test_empty_raises(tmp_path):
    with pytest.raises(ValueError, match="no finished cell runs in experiment fake: run `finalbn grid` first"):
        report.build_report(CellData(cells=pd.DataFrame(), experiment="fake"), tmp_path)


def test_duplicate_cell_keeps_latest():
    cells = pd.DataFrame(
        [_row("old", "apple", 0, 63, 0.1, start_time=1), _row("new", "apple", 0, 63, 0.5, start_time=2)]
    )
    prepared, dropped = prepare(cells)
    assert dropped == 1 and prepared["run_id"].tolist() == ["new"]


def test_markdown_table():
    md = markdown_table(pd.DataFrame({"a": [1.23456, math.nan], "b": [True, False], "c": ["x|y", "z"]}))
    assert md.splitlines() == ["| a | b | c |", "|---|---|---|", "| 1.235 | ✓ | x\\|y |", "| — |  | z |"]


def test_a_bad_ceiling_file_is_named(tmp_path):
    (tmp_path / "apple.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"ceiling file .*apple\.json is not a `finalbn ceiling` output"):
        separability.read_ceilings(tmp_path)
    assert separability.read_ceilings(tmp_path / "missing") == []


# --------------------------------------------------------------------------- MLflow round trip


def _log_cell(client, exp_id, tmp_path, cid, rep, f1_1, status="FINISHED", history=True, preds=None, key="k"):
    flags = dict(zip(TOGGLES, PRODUCT[cid]))
    tags = {t.upper(): str(v).lower() for t, v in flags.items()}
    tags.update(
        {
            "config_id": str(cid),
            "config_name": "x",
            "dataset": "apple",
            "arch": "efficientnet_lite0",
            "replicate": str(rep),
            "finalbn.cell": "true",
            "cell_key": f"{key}{cid}-{rep}",
        }
    )
    run_id = client.create_run(exp_id, tags=tags).info.run_id
    metrics = [
        Metric("test_f1_1", f1_1, 0, 0),
        Metric("test_f1_0", 0.9, 0, 0),
        Metric("test_sel_f1_1", f1_1 - 0.1, 0, 0),
        Metric("selected_epoch", 2, 0, 0),
        Metric("val_last_auroc", 0.8, 0, 0),
    ]
    if history:
        metrics += [Metric("train_loss", 1.0 / e, e, e) for e in (1, 2, 3)]
        metrics += [Metric("val_loss", 2.0 / e, e, e) for e in (1, 2, 3)]
    client.log_batch(run_id, metrics=metrics)
    if preds is not None:
        d = tmp_path / f"art_{run_id}"
        (d / "predictions").mkdir(parents=True)
        preds.to_csv(d / "predictions" / "test_predictions.csv", index=False)
        (d / "reliability.json").write_text(
            json.dumps(
                {"selected": _bins([1, 1], [1.0, 0.0], [0.6, 0.9]), "last": _bins([1, 1], [1.0, 0.0], [0.6, 0.9])}
            )
        )
        client.log_artifacts(run_id, str(d))
    client.set_terminated(run_id, status)
    return run_id


def test_collect_through_tracking_from_mlflow_sqlite(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient(tracking_uri=uri)
    exp_id = client.create_experiment("finalbn-test", artifact_location=(tmp_path / "artifacts").as_uri())
    p63 = _predictions({"a.png": 0.1, "b.png": 0.3}, {"h.png": 0.05})
    p31 = _predictions({"b.png": 0.7, "a.png": 0.6}, {"h.png": 0.4})
    r63 = _log_cell(client, exp_id, tmp_path, 63, 0, 0.3, preds=p63)
    r31 = _log_cell(client, exp_id, tmp_path, 31, 0, 0.8, preds=p31)
    r47 = _log_cell(client, exp_id, tmp_path, 47, 0, 0.6, history=False)
    _log_cell(client, exp_id, tmp_path, 31, 1, 0.99, status="FAILED", history=False)
    _log_cell(client, exp_id, tmp_path, 15, 0, 0.5, key="stale")  # another params' cell
    client.set_terminated(client.create_run(exp_id, tags={"finalbn.parent": "true"}).info.run_id)

    keys = {"k63-0", "k31-0", "k47-0", "k31-1"}
    data = report.collect("finalbn-test", keys=keys)
    cells = data.cells.set_index("run_id")
    assert sorted(cells.index) == sorted([r63, r31, r47])  # FAILED, stale-key and parent runs ignored
    assert cells.loc[r31, "config_id"] == 31 and cells.loc[r31, "config_name"] == "BN"
    assert cells.loc[r63, "test_f1_1"] == pytest.approx(0.3) and cells.loc[r63, "test_sel_f1_1"] == pytest.approx(0.2)
    assert cells.loc[r63, "val_auroc"] == pytest.approx(0.8) and cells.loc[r63, "selected_epoch"] == 2
    assert math.isnan(cells.loc[r63, "test_ece"])  # not logged -> NaN
    assert data.predictions == {} and data.histories == {}  # lazy: nothing fetched yet
    hist = data.history(r63)
    assert hist["epoch"].tolist() == [1, 2, 3] and hist["val_loss"].tolist() == pytest.approx([2.0, 1.0, 2 / 3])
    assert data.history(r47) is None
    pd.testing.assert_frame_equal(data.prediction(r31), p31)
    assert data.reliability_bins(r63)["last"]["count"] == [1, 1]
    with pytest.raises(ValueError, match="no finished cell runs in experiment nope"):
        report.collect("nope")

    out = tmp_path / "report"
    summary = report.build_report(data, out, n_boot=100)
    assert summary["table1"]["apple"]["bn_improvement_f1_1"] == pytest.approx(0.2)
    t4 = pd.read_csv(out / "table4.csv")
    assert sorted(t4["path"]) == ["a.png", "b.png"] and dict(zip(t4["path"], t4["p1_with_final_bn"])) == pytest.approx(
        {"a.png": 0.6, "b.png": 0.7}
    )

    rid = tracking.log_report(out, "finalbn-test")
    run = client.get_run(rid)
    assert run.info.status == "FINISHED" and run.data.tags["finalbn.report"] == "true"
    assert run.data.tags["verdict_0"].startswith("The paper's contrast")  # no validation predictions: no opening
    assert {"report.md", "summary.json", "table1.csv"} <= {f.path for f in client.list_artifacts(rid)}
    assert len(report.collect("finalbn-test", keys=keys).cells) == 3  # the report run is no cell


# --------------------------------------------------------------------------- baselines and the search


def _with_baselines(data: CellData, reps: int = 5) -> CellData:
    """design_grid plus focal (63 + 0.2 on every replicate but the last: +0.1) and temperature
    (63's F1 exactly, lower ECE) on the headline replicates."""
    cells = data.cells
    rows = []
    for r in range(reps):
        base = cells[(cells["config_id"] == 63) & (cells["replicate"] == r)].iloc[0].to_dict()
        rows.append(
            {
                **base,
                "run_id": f"focal{r}",
                "baseline": "focal",
                "test_f1_1": base["test_f1_1"] + (0.2 if r < reps - 1 else 0.1),
            }
        )
        rows.append({**base, "run_id": f"temp{r}", "baseline": "temperature", "test_ece": 0.01})
    cells = pd.concat([cells.assign(baseline=""), pd.DataFrame(rows)], ignore_index=True)
    return CellData(
        cells=cells,
        histories=data.histories,
        predictions=data.predictions,
        reliability=data.reliability,
        experiment="fake",
    )


def test_imbalance_baselines_paired_against_bn_only_and_their_base():
    cells, _ = prepare(_with_baselines(design_grid()).cells)
    t = baselines.imbalance_table(cells).set_index("method")
    assert list(t.index) == ["none (63)", "BN only (31)", "focal", "temperature"]
    assert (t["replicates"] == 5).all()
    paper = cells[cells["baseline"] == ""]
    f31 = paper[paper["config_id"] == 31].set_index("replicate")["test_f1_1"]
    f63 = paper[paper["config_id"] == 63].set_index("replicate")["test_f1_1"]
    focal = f63 + np.array([0.2, 0.2, 0.2, 0.2, 0.1])
    d = (focal - f31).to_numpy()
    half = stats.t.ppf(0.975, 4) * d.std(ddof=1) / math.sqrt(5)
    assert t.loc["focal", "f1_1_vs_bn_estimate"] == pytest.approx(d.mean())
    assert t.loc["focal", "f1_1_vs_bn_ci_high"] == pytest.approx(d.mean() + half)
    assert t.loc["focal", "f1_1_vs_base_estimate"] == pytest.approx(0.18)
    # temperature scaling changes no argmax: the same F1 as its base, to the last digit
    assert t.loc["temperature", "f1_1_vs_base_estimate"] == 0.0
    assert t.loc["temperature", "ece"] == pytest.approx(0.01)
    lines = baselines.summary_lines(baselines.imbalance_table(cells))
    # ... so it is no rival: listed apart, its ECE against its base's, not counted as falling short of BN
    assert any(
        line.startswith(
            "temperature (on config 63) changes no decision (its argmax equals its base's): listed apart, ECE 0.010 vs"
        )
        and "falls short" not in line
        for line in lines
    )
    assert any(line.startswith("focal (on config 63): minority F1") and "Holm-adjusted p = " in line for line in lines)
    assert not t.loc["temperature", "moves_decisions"] and t.loc["focal", "moves_decisions"]


def test_baseline_cells_stay_out_of_the_paper_tables(tmp_path):
    data = _with_baselines(design_grid())
    summary = report.build_report(data, tmp_path, n_boot=200, seed=1)
    md = (tmp_path / "report.md").read_text()
    assert summary["cells"] == 64 + 16  # the baseline cells are not configurations of the grid
    t1 = pd.read_csv(tmp_path / "table1.csv")
    report.build_report(design_grid(), tmp_path / "plain", n_boot=200, seed=1)
    pd.testing.assert_frame_equal(t1, pd.read_csv(tmp_path / "plain" / "table1.csv"))  # as without the baselines
    assert "## The imbalance baselines against the final BN" in md and "![](imbalance.png)" in md
    assert "**Against the imbalance baselines**" in md
    assert set(pd.read_csv(tmp_path / "imbalance.csv")["method"]) == {
        "none (63)",
        "BN only (31)",
        "focal",
        "temperature",
    }
    assert len(summary["imbalance_baselines"]) == 4


def _search_summary() -> dict:
    def rows(base: float) -> list[dict]:
        return [
            {
                "replicate": r,
                "test_f1_1": base + 0.01 * r,
                "test_f1_1_vt": base + 0.05,
                "test_auroc": 0.9,
                "val_auroc": 1.0,
                "val_f1_1": 0.8,
                "run_id": f"x{base}{r}",
            }
            for r in range(3)
        ]

    diff = {"estimate": -0.1, "ci_low": -0.1, "ci_high": -0.1, "p": 0.0, "n": 3, "note": "all differences equal"}
    return {
        "study": "finalbn-search-abc",
        "objective": "val_auroc",
        "trials": 16,
        "states": {"complete": 10, "pruned": 6, "fail": 0},
        "trials_per_hour": 240.0,
        "best": {
            "number": 4,
            "value": 1.0,
            "params": {"lr": 0.0123, "loss": "focal"},
            "config_name": "WL+DA",
            "tied_on_objective": [1, 4, 9],
        },
        "comparison": {
            "best_trial": 4,
            "replicates": 3,
            "runs": rows(0.7),
            "best_trial_mean": {},
            "bn_only_31": {
                "config_id": 31,
                "config_name": "BN",
                "replicates": 3,
                "rows": rows(0.8),
                "mean": {"test_f1_1": 0.81},
                "best_trial_minus_test_f1_1": diff,
                "best_trial_minus_test_auroc": {**diff, "estimate": 0.0},
                "best_trial_minus_test_f1_1_vt": diff,
            },
        },
        "plots": ["results/search_history.png"],
    }


def test_the_search_section(tmp_path):
    report.build_report(design_grid(), tmp_path, n_boot=200, seed=1, search=_search_summary())
    md = (tmp_path / "report.md").read_text()
    sec = md[md.index("## Beyond the grid: the Optuna search") :]
    assert "16 trials (10 complete, 6 pruned)" in sec and "240 finished trials per hour" in sec
    assert "trial 4 (WL+DA)" in sec and "3 trials tied on it, broken by the lower validation balanced loss" in sec
    assert "lr=0.0123, loss=focal" in sec
    assert "Best trial vs BN only (config 31 BN), test minority F1 at the argmax 0.710 vs 0.810: -0.100" in sec
    assert "; each at its validation cut 0.750 vs 0.850: -0.100 [95% CI -0.100, -0.100]" in sec
    assert "![](search.png)" in sec and "`results/search_history.png`" in sec
    t = pd.read_csv(tmp_path / "search.csv")
    assert list(t["configuration"]) == ["best trial 4", "BN only"]
    assert t.loc[1, "best_minus_f1_1"] == pytest.approx(-0.1)


def test_no_search_is_a_note_and_a_bad_summary_is_named(tmp_path):
    report.build_report(design_grid(), tmp_path, n_boot=200, seed=1)
    assert "no results/search.json: run `finalbn search`" in (tmp_path / "report.md").read_text()
    assert (tmp_path / "search.png").read_bytes().startswith(PNG_MAGIC)
    bad = tmp_path / "s.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="is not JSON"):
        report.read_search(bad)
    bad.write_text('{"trials": 3}')
    with pytest.raises(ValueError, match="not a `finalbn search` output"):
        report.read_search(bad)
    assert report.read_search(tmp_path / "missing.json") is None

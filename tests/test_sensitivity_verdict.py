"""The sensitivity stage's family and rival on tiny hand-made data: Holm over every non-reference
row in both directions, collapsed comparisons, the bias fitted for the prevalence it is judged at,
consistent bias-shift rows, and the report line that names them."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy.optimize import minimize_scalar
from scipy.special import expit, logit
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, precision_score
from statsmodels.stats.multitest import multipletests

from finalbn.stages import sensitivity
from finalbn.stages.report.answer import sensitivity_section
from finalbn.stages.report.markdown import Page
from finalbn.stages.sensitivity import analysis
from finalbn.stages.tracker import MemoryTracker

# (TPR, TNR) of 31 and of 63 per replicate, for one level
UP = [
    ((0.80, 0.90), (0.30, 0.90)),
    ((0.82, 0.91), (0.31, 0.90)),
    ((0.79, 0.90), (0.29, 0.91)),
    ((0.81, 0.89), (0.30, 0.90)),
]
DOWN = [(b, a) for a, b in UP]
FLAT = [
    ((0.50, 0.90), (0.52, 0.90)),
    ((0.55, 0.90), (0.50, 0.90)),
    ((0.48, 0.90), (0.51, 0.90)),
    ((0.52, 0.90), (0.49, 0.90)),
]
DEAD = [
    ((0.24, 0.97), (0.02, 0.999)),
    ((0.25, 0.96), (0.02, 0.999)),
    ((0.23, 0.97), (0.03, 0.998)),
    ((0.24, 0.97), (0.01, 0.999)),
]  # the rival flags (almost) nothing


def _cells(levels: dict[str, tuple[bool, list]]) -> pd.DataFrame:
    rows = []
    for level, (ref, reps) in levels.items():
        for r, ((t31, s31), (t63, s63)) in enumerate(reps):
            for cid, t, s in ((31, t31, s31), (63, t63, s63)):
                rows.append(
                    {
                        "factor": "f",
                        "level": level,
                        "reference": ref,
                        "replicate": r,
                        "config_id": cid,
                        "test_recall_1": t,
                        "test_recall_0": s,
                    }
                )
    return pd.DataFrame(rows)


def test_holm_runs_over_every_non_reference_row_in_both_directions():
    cells = _cells({"ref": (True, UP), "up": (False, UP), "down": (False, DOWN), "flat": (False, FLAT)})
    out = analysis.contrasts(cells, [0.5, 0.01])
    fam = out[~out["reference"]]
    assert len(fam) == 6 and (fam["family"] == "sensitivity").all()
    # Holm (1979) over the six p-values of the family, computed here with statsmodels
    assert fam["p_holm"].to_numpy() == pytest.approx(multipletests(fam["p"], method="holm")[1])
    assert (fam["p_holm"] >= fam["p"] - 1e-15).all() and fam["p_holm"].min() == pytest.approx(6 * fam["p"].min())
    ref = out[out["reference"]]
    assert ref["p_holm"].isna().all() and (ref["direction"] == "reference").all() and (ref["family"] == "").all()
    by = out.set_index(["level", "prevalence"])
    assert by.loc[("up", 0.5), "direction"] == "above zero" and by.loc[("up", 0.5), "estimate"] > 0
    assert by.loc[("down", 0.01), "direction"] == "below zero" and by.loc[("down", 0.01), "estimate"] < 0
    assert by.loc[("flat", 0.5), "direction"] == "not distinguishable"
    assert not out["collapsed"].any()


def test_a_comparison_with_a_model_that_flags_almost_nothing_or_everything_is_collapsed():
    everything = [((0.99, 0.05), (0.30, 0.90))] * 2 + [((0.98, 0.06), (0.31, 0.91))] * 2  # 31 flags all
    out = analysis.contrasts(_cells({"dead": (False, DEAD), "all": (False, everything), "up": (False, UP)}), [0.5])
    by = out.set_index("level")
    assert by.loc["dead", "collapsed"] and by.loc["all", "collapsed"] and not by.loc["up", "collapsed"]
    assert by.loc["dead", "tpr_bn"] == pytest.approx(0.24) and by.loc["dead", "tpr_rival"] == pytest.approx(0.02)
    assert by.loc["all", "tnr_bn"] == pytest.approx(0.055)


def _old_balanced_fit(y, p1):
    z = logit(np.clip(p1, 1e-12, 1 - 1e-12))
    return minimize_scalar(
        lambda b: (np.logaddexp(0, -(z[y == 1] + b)).mean() + np.logaddexp(0, z[y == 0] + b).mean()) / 2,
        bounds=(-20.0, 20.0),
        method="bounded",
    ).x


def test_the_bias_is_fitted_for_the_prevalence_it_is_judged_at():
    rng = np.random.default_rng(1)
    z = np.r_[rng.normal(1, 1, 60), rng.normal(-1, 1, 140)]
    y = np.r_[np.ones(60, int), np.zeros(140, int)]
    b05, b01 = analysis.fit_logit_bias(y, expit(z)), analysis.fit_logit_bias(y, expit(z), 0.01)
    assert b05 == _old_balanced_fit(y, expit(z))  # π = 0.5: the class-balanced fit, unchanged
    assert analysis.fit_logit_bias(y, expit(z), 0.5) == b05
    assert b01 < b05 - 2  # at 1 % diseased the minority logit goes down (prior shift, Saerens et al. 2002)

    def nll(b, pi):
        return pi * np.logaddexp(0, -(z[y == 1] + b)).mean() + (1 - pi) * np.logaddexp(0, z[y == 0] + b).mean()

    assert nll(b01, 0.01) <= min(nll(b01 - 0.05, 0.01), nll(b01 + 0.05, 0.01), nll(b05, 0.01))
    for bad in (0.0, 1.0):
        with pytest.raises(ValueError, match="prevalence"):
            analysis.fit_logit_bias(y, expit(z), bad)


def test_bias_shift_rows_are_recomputed_from_the_shifted_predictions_per_prevalence():
    rng = np.random.default_rng(2)
    yv, yt = np.r_[np.ones(30, int), np.zeros(70, int)], np.r_[np.ones(40, int), np.zeros(60, int)]
    pv, pt = expit(rng.normal(0, 1.5, 100) + yv), expit(rng.normal(0, 1.5, 100) + yt)
    preds = {
        "predictions/val_predictions.csv": pd.DataFrame({"label": yv, "p1_last": pv}).to_csv(index=False),
        "predictions/test_predictions.csv": pd.DataFrame({"label": yt, "p1_last": pt}).to_csv(index=False),
    }
    tracker = MemoryTracker()  # the runs' prediction files, kept in memory
    ids = {}
    for c in (31, 63):
        with tracker.cell_run(f"config {c}", {"stage": "grid"}) as run:
            run.log_files(preds)
        ids[c] = run.run_id
    stale = {
        "test_f1_1": 0.999,
        "test_precision_1": 0.999,
        "test_recall_1": 0.999,
        "test_recall_0": 0.999,
        "test_accuracy": 0.999,
        "test_balanced_accuracy": 0.999,
        "test_ece": 0.5,
        "test_auroc": 0.7,
        "test_sel_f1_1": 0.999,
        "val_f1_1": 0.999,
    }
    ref = pd.DataFrame(
        [
            {
                "factor": "imbalance",
                "level": "1%",
                "reference": True,
                "replicate": 0,
                "config_id": c,
                "run_id": ids[c],
                "rival": "",
                **stale,
            }
            for c in (31, 63)
        ]
    )
    rows = sensitivity.bias_shift_rows(ref, [0.5, 0.01], tracker)
    shifted = rows[rows["rival"] == "63 + learned bias"].set_index("fitted_prevalence")
    assert sorted(shifted.index) == [0.01, 0.5]
    assert rows.loc[rows["config_id"] == 31, "test_f1_1"].tolist() == [0.999]  # 31 itself is not shifted
    for pi in (0.5, 0.01):
        r = shifted.loc[pi]
        assert r["bias"] == analysis.fit_logit_bias(yv, pv, pi)
        flag = (logit(pt) + r["bias"] > 0).astype(int)
        assert r["test_f1_1"] == pytest.approx(f1_score(yt, flag, zero_division=0))
        assert r["test_precision_1"] == pytest.approx(precision_score(yt, flag, zero_division=0))
        assert r["test_accuracy"] == pytest.approx(accuracy_score(yt, flag))
        assert r["test_balanced_accuracy"] == pytest.approx(balanced_accuracy_score(yt, flag))
        assert r["test_recall_1"] == pytest.approx(flag[yt == 1].mean())
        assert r["val_f1_1"] == pytest.approx(f1_score(yv, (logit(pv) + r["bias"] > 0).astype(int), zero_division=0))
        assert math.isnan(r["test_ece"]) and math.isnan(r["test_sel_f1_1"]) and r["test_auroc"] == 0.7
    assert shifted.loc[0.5, "test_f1_1"] != shifted.loc[0.01, "test_f1_1"]
    # each π's contrast uses the rival fitted for that π, one pair each
    out = analysis.contrasts(rows, [0.5, 0.01]).set_index("prevalence")
    assert out["fitted_prevalence"].to_dict() == {0.5: 0.5, 0.01: 0.01} and (out["n"] == 1).all()
    assert out.loc[0.01, "tpr_rival"] == pytest.approx(shifted.loc[0.01, "test_recall_1"])


def test_the_section_names_every_direction_reversals_and_collapsed_levels(tmp_path):
    def row(level, pi, est, lo, hi, p_holm, direction, collapsed=False, ref=False, tpr=(0.8, 0.5)):
        return {
            "factor": "batch_size",
            "level": level,
            "reference": ref,
            "rival": "none (63)",
            "prevalence": pi,
            "f1_bn": 0.5,
            "f1_rival": 0.4,
            "estimate": est,
            "ci_low": lo,
            "ci_high": hi,
            "p": p_holm / 3,
            "n": 5,
            "sd": 0.1,
            "detectable": 0.1,
            "p_holm": p_holm,
            "family": "" if ref else "sensitivity",
            "direction": direction,
            "tpr_bn": tpr[0],
            "tpr_rival": tpr[1],
            "tnr_bn": 0.9,
            "tnr_rival": 0.99,
            "collapsed": collapsed,
        }

    table = pd.DataFrame(
        [
            row("64", 0.5, 0.10, 0.05, 0.15, math.nan, "reference", ref=True),
            row("64", 0.01, -0.01, -0.02, 0.0, math.nan, "reference", ref=True),
            row("16", 0.5, 0.12, 0.05, 0.19, 0.01, "above zero"),
            row("16", 0.01, -0.08, -0.12, -0.04, 0.02, "below zero"),
            row("256", 0.5, 0.02, -0.03, 0.07, 0.6, "not distinguishable"),
            row("256", 0.01, 0.01, -0.03, 0.05, 0.6, "not distinguishable"),
            row("train", 0.5, 0.33, 0.2, 0.46, 0.001, "above zero", collapsed=True, tpr=(0.24, 0.02)),
            row("train", 0.01, 0.05, 0.02, 0.08, 0.03, "above zero", collapsed=True, tpr=(0.24, 0.02)),
        ]
    )
    page = Page(tmp_path, False)
    [line] = sensitivity_section(page, table)
    assert (
        "At π = 0.01, above zero: none; below zero: batch_size 16 -0.08 [-0.12, -0.04]; 1 not distinguishable." in line
    )
    assert "at π = 0.5, above zero: batch_size 16 +0.12 [+0.05, +0.19]; below zero: none;" in line
    assert "Holm-adjusted" in line and "sensitivity family of 6" in line
    assert "Sign reversals between π values: batch_size 16 (+0.12 at π = 0.5, -0.08 at π = 0.01)" in line
    assert "batch_size train (rival collapsed: TPR 0.24 vs 0.02)" in line
    assert "train +0.33" not in line  # a collapsed comparison is no gain
    md = "\n".join(page.md)
    assert md.count("| batch_size |") == 8 and "rival collapsed: TPR 0.24 vs 0.02" in md  # every level at every π
    assert (tmp_path / "sensitivity.png").is_file()

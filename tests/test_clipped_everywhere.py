"""Every interval the report prints of a bounded metric stays in the metric's range (issue 39,
item 4): a t interval is symmetric and crosses 1 (or -1) when a difference of F1 sits near it. Each
case is hand-made so that its unclipped interval passes the bound; the p value stays the one the
unclipped t test gave. (The model card and the rivals table: tests/test_report_rivals.py.)"""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from finalbn.stages.report import baselines, choice, effects
from finalbn.stages.report.answer import sensitivity_section
from finalbn.stages.report.cells import prepare
from finalbn.stages.report.markdown import Page
from finalbn.stages.sensitivity import analysis
from finalbn.stats.inference import t_interval

TOGGLES = ("bn", "wl", "da", "mx", "uf", "wd")
PRODUCT = list(itertools.product([True, False], repeat=6))
NEAR_ONE = [1.0, 1.0, 0.6]  # per-replicate differences: mean 0.867, t interval [0.293, 1.440]


def _row(cid: int, rep: int, f1: float, baseline: str = "") -> dict:
    return {
        "run_id": f"{cid}{baseline}-{rep}",
        "dataset": "apple",
        "arch": "lite0",
        "replicate": rep,
        "config_id": cid,
        "baseline": baseline,
        **dict(zip(TOGGLES, PRODUCT[cid])),
        "selected_epoch": 5,
        "test_f1_1": f1,
        "test_sel_f1_1": f1,
        "test_f1_1_pc": f1,
        "test_f1_1_vt": f1,
        "test_f1_0": 0.9,
        "test_recall_1": f1,
        "test_recall_0": 0.9,
        "test_precision_1": f1,
        "test_precision_0": 0.9,
        "test_auroc": 0.5 + f1 / 2,
        "test_ap": 0.5 + f1 / 2,
        "test_ece": 0.1,
        "test_brier": 0.2,
        "val_auroc": 0.8,
        "val_f1_1": 0.5,
    }


def test_the_unclipped_interval_of_the_cases_passes_one():
    r = t_interval(NEAR_ONE)
    assert r["ci_high"] == pytest.approx(0.8667 + stats.t.ppf(0.975, 2) * 0.2309 / np.sqrt(3), abs=1e-3)
    assert r["ci_high"] > 1.4 and 0.29 < r["ci_low"] < 0.3


def test_effects_their_verdict_and_by_setting_clip_a_paired_difference_to_one():
    cells = prepare(
        pd.DataFrame([_row(31, r, d) for r, d in enumerate(NEAR_ONE)] + [_row(63, r, 0.0) for r in range(3)])
    )[0]
    eff, verdicts, _, setting = effects.study_effects(cells)
    row = eff.set_index("effect").loc["31-63"]
    raw = t_interval(NEAR_ONE)
    assert row["ci_high"] == 1.0 and row["ci_low"] == pytest.approx(raw["ci_low"])
    assert row["p"] == pytest.approx(raw["p"]) and row["estimate"] == pytest.approx(raw["estimate"])
    text = "\n".join(verdicts["apple/lite0"])
    assert "+1.000]" in text and "1.440" not in text
    pair = setting[setting["pair"] == "31 − 63"].iloc[0]
    assert pair["pair_ci_high"] == 1.0 and pair["pair_ci_low"] == pytest.approx(raw["ci_low"])


def test_the_bn_by_wl_interaction_is_clipped_to_two():
    # (15 − 47) − (31 − 63) per replicate: [2, 2, 1.6], a t interval past 2
    f1 = {15: [1.0, 1.0, 1.0], 47: [0.0, 0.0, 0.4], 31: [0.0, 0.0, 0.0], 63: [1.0, 1.0, 1.0]}
    cells = prepare(pd.DataFrame([_row(cid, r, v) for cid, vals in f1.items() for r, v in enumerate(vals)]))[0]
    row = effects._interaction_row(cells, "apple/lite0", 0.5, 0.5)
    raw = t_interval([2.0, 2.0, 1.6])
    assert raw["ci_high"] > 2 and row["ci_high"] == 2.0 and row["ci_low"] == pytest.approx(raw["ci_low"])
    assert row["p"] == pytest.approx(raw["p"])


def test_a_baselines_difference_from_bn_is_clipped_to_minus_one():
    bn = [1.0, 1.0, 0.6, 1.0]  # a method at 0 on every replicate: differences [-1, -1, -0.6, -1]
    rows = [_row(63, r, 0.1) for r in range(4)] + [_row(31, r, f) for r, f in enumerate(bn)]
    rows += [_row(63, r, 0.0, "focal") for r in range(4)]
    t = baselines.imbalance_table(pd.DataFrame(rows)).set_index("method")
    raw = t_interval([-1.0, -1.0, -0.6, -1.0])
    assert raw["ci_low"] < -1.2
    assert t.loc["focal", "f1_1_vs_bn_ci_low"] == -1.0
    assert t.loc["focal", "f1_1_vs_bn_ci_high"] == pytest.approx(raw["ci_high"])
    assert t.loc["focal", "f1_1_vs_bn_p"] == pytest.approx(raw["p"])
    assert "[-1.000, " in baselines._interval(t.loc["focal"], "f1_1_vs_bn")


def test_the_choice_against_bn_only_on_held_out_replicates_is_clipped_to_one():
    sub = pd.DataFrame(
        [{"config_id": 15, "replicate": r, "test_f1_1": f, "test_auroc": 0.9} for r, f in zip(range(2, 5), NEAR_ONE)]
        + [{"config_id": 31, "replicate": r, "test_f1_1": 0.0, "test_auroc": 0.9} for r in range(2, 5)]
    )
    line = choice.held_out_line(sub, 15, 2, "apple")
    assert "difference +0.867 [95 % CI +0.293, +1.000]" in line and "1.440" not in line


def _sensitivity_cells() -> pd.DataFrame:
    # at π = 0.5 with TNR 1, F1 = 2 TPR / (TPR + 1): TPR 1 -> 1, TPR 3/7 -> 0.6; TPR 0 -> 0
    rows = []
    for r, tpr in enumerate([1.0, 1.0, 3 / 7]):
        for cid, t in ((31, tpr), (63, 0.0)):
            rows.append(
                {
                    "factor": "batch_size",
                    "level": "16",
                    "reference": False,
                    "replicate": r,
                    "config_id": cid,
                    "test_recall_1": t,
                    "test_recall_0": 1.0,
                }
            )
    return pd.DataFrame(rows)


def test_the_sensitivity_contrast_is_clipped_to_one_with_its_p_and_spread_as_computed():
    out = analysis.contrasts(_sensitivity_cells(), [0.5]).iloc[0]
    raw = t_interval(NEAR_ONE)
    assert out["ci_high"] == 1.0 and out["ci_low"] == pytest.approx(raw["ci_low"])
    assert out["p"] == pytest.approx(raw["p"]) and out["sd"] == pytest.approx(raw["sd"])


def test_the_report_clips_a_sensitivity_csv_written_before_the_stage_clipped(tmp_path):
    old = analysis.contrasts(_sensitivity_cells(), [0.5]).assign(ci_high=1.44)  # an older sensitivity.csv
    page = Page(tmp_path, multi_arch=False)
    sensitivity_section(page, old)
    md = "\n".join(page.md)
    assert "+0.867 [+0.293, +1.000]" in md and "1.440" not in md

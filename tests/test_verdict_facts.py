"""The verdict built from facts: hand-made cases (gain, loss, null, mixed, collapsed models) and a
whole report whose every verdict number is parsed back and found in effects.csv."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from finalbn.config import TOGGLES
from finalbn.config.study import ablation_from_id
from finalbn.stages import report
from finalbn.stages.report.cells import CellData
from finalbn.stages.report.facts import FACT_COLUMNS, direction, opening_lines
from finalbn.stages.report.prevalence import at_validation_cut, tpr_at_fpr

PIS = (0.5, 0.1, 0.05, 0.01)
TRIPLE = re.compile(r"([+-]\d+\.\d{3}) \[([+-]\d+\.\d{3}), ([+-]\d+\.\d{3})\]")


# --------------------------------------------------------------------------- hand-made facts


def _fact(quantity, pi, est, lo, hi, p, collapsed=False, tpr=(0.8, 0.6), fpr=(0.05, 0.01), neg=1000, pos=150):
    r = {
        "quantity": quantity,
        "prevalence": pi,
        "effect": f"{quantity} {pi}",
        "estimate": est,
        "ci_low": lo,
        "ci_high": hi,
        "p_holm": p,
        "n": 10,
        "collapsed": collapsed,
        "tpr_bn": tpr[0],
        "tpr_none": tpr[1],
        "fpr_bn": fpr[0],
        "fpr_none": fpr[1],
        "negatives": neg,
        "positives": pos,
    }
    r["direction"] = direction(r)
    return r


def _facts(cut, argmax=None, ap=None, collapsed=()):
    """cut/argmax/ap: {π: (estimate, lo, hi, p)}."""
    rows = [_fact("cut", pi, *v, collapsed=pi in collapsed) for pi, v in cut.items()]
    rows += [_fact("argmax", pi, *v) for pi, v in (argmax or {}).items()]
    rows += [_fact("ap", pi, *v) for pi, v in (ap or {}).items()]
    return pd.DataFrame(rows, columns=FACT_COLUMNS)


def test_direction_follows_the_holm_adjusted_p_and_the_sign():
    assert direction({"estimate": 0.1, "ci_low": 0.02, "ci_high": 0.2, "p_holm": 0.01}) == "gain"
    assert direction({"estimate": -0.1, "ci_low": -0.2, "ci_high": -0.02, "p_holm": 0.01}) == "loss"
    # the unadjusted interval excludes zero, Holm's adjustment does not: not a finding
    assert direction({"estimate": 0.1, "ci_low": 0.01, "ci_high": 0.2, "p_holm": 0.2}) == "not distinguishable"
    assert direction({"estimate": 0.1, "ci_low": math.nan, "ci_high": math.nan, "p_holm": math.nan}) == "not estimable"


def test_a_gain_at_every_prevalence():
    lines = opening_lines(_facts({pi: (0.2, 0.1, 0.3, 0.001) for pi in PIS}))
    assert lines[0].startswith("**Does final BN help at your prevalence?**")
    assert "It helps at π = 0.5, 0.1, 0.05 and 0.01" in lines[0]
    assert "hurts at" not in lines[0] and "not distinguishable" not in lines[0]
    assert "π = 0.01: +0.200 [+0.100, +0.300]" in lines[0]


def test_a_loss_is_a_loss():
    lines = opening_lines(_facts({pi: (-0.2, -0.3, -0.1, 0.001) for pi in PIS}))
    assert "It hurts at π = 0.5, 0.1, 0.05 and 0.01" in lines[0] and "helps at" not in lines[0]


def test_a_null_result_says_what_the_interval_rules_out_the_right_way_round():
    lines = opening_lines(_facts({0.5: (0.01, -0.065, 0.083, 0.7)}))
    assert "is not distinguishable from zero at π = 0.5" in lines[0]
    # [-0.065, +0.083] rules out gains above +0.083 and losses beyond 0.065 (issue 34's garbled line)
    assert "at π = 0.5 the data rule out a gain larger than +0.083 and a loss larger than 0.065" in lines[0]
    # an unadjusted interval above zero that Holm's adjustment does not keep: no "loss larger than -0.024"
    lines = opening_lines(_facts({0.05: (0.086, 0.024, 0.148, 0.06)}))
    assert "at π = 0.05 the unadjusted interval excludes zero, Holm's adjustment does not" in lines[0]
    assert "larger than -" not in lines[0]


def test_mixed_directions_and_the_argmax_cuts_reversal():
    cut = {
        0.5: (0.2, 0.1, 0.3, 0.001),
        0.1: (0.1, 0.05, 0.15, 0.01),
        0.05: (0.02, -0.05, 0.09, 0.5),
        0.01: (0.01, -0.08, 0.1, 0.8),
    }
    argmax = {
        0.5: (0.2, 0.1, 0.3, 0.001),
        0.1: (0.0, -0.1, 0.1, 0.9),
        0.05: (-0.1, -0.15, -0.05, 0.01),
        0.01: (-0.135, -0.2, -0.07, 0.004),
    }
    lines = opening_lines(_facts(cut, argmax, ap={0.01: (0.216, 0.107, 0.325, 0.003)}))
    assert "helps at π = 0.5 and 0.1; is not distinguishable from zero at π = 0.05 and 0.01" in lines[0]
    assert lines[1].startswith("**Which cut?**") and "hurts at π = 0.05 and 0.01" in lines[1]
    assert (
        "At π = 0.05 and 0.01 the argmax cut's loss does not hold at the cut fit for π, where the contrast is not "
        "distinguishable from zero: it is the cut's, not final BN's."
    ) in lines[1]
    assert "At π = 0.1 the argmax cut's result does not hold" in lines[1]  # null at argmax, a gain at the cut
    assert "At π = 0.5" not in lines[1]  # the same direction under both cuts: nothing to say
    assert lines[2].startswith("**How sure?**") and "π = 0.01 changes by +0.216 [+0.107, +0.325]" in lines[2]
    # 1000 healthy test images: one false alarm at π = 0.01 with TPR 0.8 moves precision to 0.89
    assert "moves precision from 1 to 0.89" in lines[2] and "1000 healthy images" in lines[2]


def test_collapsed_models_are_named_not_counted_as_a_gain():
    lines = opening_lines(_facts({0.5: (0.33, 0.2, 0.45, 0.001), 0.01: (0.1, 0.05, 0.15, 0.01)}, collapsed=(0.5,)))
    assert "helps at π = 0.01" in lines[0] and "helps at π = 0.5" not in lines[0]
    assert "at π = 0.5 both models collapse" in lines[0] and "says nothing about final BN" in lines[0]


# --------------------------------------------------------------------------- the cut fit for π


def test_the_validation_cut_is_chosen_on_validation_and_judged_on_test():
    val_y = np.array([1] * 4 + [0] * 40)
    val_p = np.r_[[0.9, 0.8, 0.7, 0.3], np.linspace(0.0, 0.6, 40)]
    y = np.array([1] * 10 + [0] * 100)
    p = np.r_[np.full(10, 0.75), np.full(100, 0.65)]
    m = at_validation_cut(val_y, val_p, y, p, 0.01)
    assert m["cut_threshold"] == pytest.approx(0.7)  # on validation, the best F1 at 1 % flags the top three
    assert m["cut_tpr"] == 1.0 and m["cut_fpr"] == 0.0  # on test: every diseased image, no healthy one
    assert m["cut_f1_1"] == pytest.approx(1.0)
    assert tpr_at_fpr(y, p) == 1.0
    # one healthy image above every diseased one is 1 of 101 (FPR 0.0099 <= 1 %); two are 2 of 102
    assert tpr_at_fpr(np.r_[y, 0], np.r_[p, 0.99]) == 1.0 and tpr_at_fpr(np.r_[y, 0, 0], np.r_[p, 0.99, 0.99]) == 0.0


# --------------------------------------------------------------------------- a whole report, parsed back


def _sigmoid(z):
    return 1 / (1 + np.exp(-z))


MODELS = {31: (2.6, 0.5), 63: (1.8, -2.5), 15: (2.6, 0.6), 47: (2.0, -0.5)}  # cid -> (separation, logit offset)


def simulated_study(reps=10, n0=400, n1=60, seed=0) -> CellData:
    """Configs 31/63/15/47 on `reps` replicates; each run's test and validation scores are
    logit = separation · y + offset + N(0, 1): final BN separates better and flags more at the argmax
    cut (a higher offset), the no-BN model carries the 1 % prior (a low offset)."""
    rng = np.random.default_rng(seed)
    rows, data = [], CellData(cells=pd.DataFrame(), experiment="sim")
    for rep in range(reps):
        for cid, (sep, off) in MODELS.items():
            run = f"c{cid}r{rep}"

            def scores(n_pos, n_neg, sep=sep, off=off):
                y = np.r_[np.ones(n_pos, int), np.zeros(n_neg, int)]
                return y, _sigmoid(sep * y + off + rng.normal(0, 1, len(y)) + rng.normal(0, 0.3))

            y, p = scores(n1, n0)
            vy, vp = scores(7, 150)
            data.predictions[run] = pd.DataFrame(
                {"path": [f"i{i}.png" for i in range(len(y))], "label": y, "p1_last": p, "p1_sel": p}
            )
            data.val_predictions[run] = pd.DataFrame(
                {"path": [f"v{i}.png" for i in range(len(vy))], "label": vy, "p1_last": vp}
            )
            flag = p > 0.5
            tp, fp = (flag & (y == 1)).sum(), (flag & (y == 0)).sum()
            f1 = 2 * tp / (2 * tp + fp + (y == 1).sum() - tp)
            ab = ablation_from_id(cid)
            rows.append(
                {
                    "run_id": run,
                    "dataset": "apple",
                    "arch": "efficientnet_lite0",
                    "replicate": rep,
                    "config_id": cid,
                    **{t: getattr(ab, t) for t in TOGGLES},
                    "selected_epoch": 5,
                    "test_f1_1": f1,
                    "test_recall_1": flag[y == 1].mean(),
                    "test_recall_0": 1 - flag[y == 0].mean(),
                    "test_auroc": roc_auc_score(y, p),
                    "test_sel_f1_1": f1,
                    "val_auroc": 0.8,
                    "test_ece": 0.1,
                    "test_brier": 0.2,
                }
            )
    data.cells = pd.DataFrame(rows)
    return data


@pytest.fixture(scope="module")
def simulated_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("verdict")
    summary = report.build_report(simulated_study(), out, n_boot=50, seed=0, train_counts=(1000, 10), prevalences=PIS)
    return summary, out


def test_the_report_opens_with_the_answer_at_each_prevalence(simulated_report):
    summary, out = simulated_report
    md = (out / "report.md").read_text()
    verdict = md[md.index("## Verdict") :]
    first = verdict.split("\n- ")[1]
    assert first.startswith("**Does final BN help at your prevalence?**")
    assert all(f"π = {pi:g}: " in first for pi in PIS)
    assert summary["verdict"][1].startswith("**Which cut?**") and summary["verdict"][2].startswith("**How sure?**")


def check_verdict_numbers(verdict: list[str], eff: pd.DataFrame, prevalences=PIS) -> int:
    """Each `estimate [low, high]` the verdict prints is one effects.csv row to three decimals, a
    number printed after `π = X:` belongs to a row at that π, and the opening's words (helps, hurts,
    not distinguishable) at each π follow the validation-cut row's `direction`. Returns how many
    numbers were checked (also used by tests/test_pipeline.py on a real run)."""
    keyed: dict[tuple, list] = {}
    for r in eff.itertuples():
        if math.isfinite(r.ci_low):
            keyed.setdefault((f"{r.estimate:+.3f}", f"{r.ci_low:+.3f}", f"{r.ci_high:+.3f}"), []).append(r)
    found = 0
    for line in verdict:
        for m in TRIPLE.finditer(line):
            assert m.groups() in keyed, f"{m.group(0)} of {line[:80]!r} is in no effects.csv row"
            pi = re.search(r"π = ([\d.]+): $", line[: m.start()])
            if pi:
                assert any(math.isclose(r.prevalence, float(pi.group(1))) for r in keyed[m.groups()]), (
                    m.group(0),
                    [r.effect for r in keyed[m.groups()]],
                )
            found += 1
    by = {r.effect: r for r in eff.itertuples()}
    first = verdict[0]
    for pi in prevalences:
        r = by.get(f"31-63 cut π={pi:g}")
        if r is None or r.direction == "not estimable" or f"at π = {pi:g} both models collapse" in first:
            continue
        words = {"gain": "helps", "loss": "hurts", "not distinguishable": "is not distinguishable from zero"}[
            r.direction
        ]
        listed = re.search(words + r" at π = ([\d.]+(?:(?:, | and )[\d.]+)*)", first)
        assert listed and f"{pi:g}" in re.split(r", | and ", listed.group(1)), (pi, r.direction, first)
    return found


def test_every_number_of_the_verdict_is_a_row_of_effects_csv(simulated_report):
    summary, out = simulated_report
    assert check_verdict_numbers(summary["verdict"], pd.read_csv(out / "effects.csv")) >= 12


def test_a_number_that_is_not_in_effects_csv_is_caught(simulated_report):
    """The check above can fail: one digit changed in the verdict, or a direction word swapped."""
    summary, out = simulated_report
    eff = pd.read_csv(out / "effects.csv")
    verdict = list(summary["verdict"])
    m = TRIPLE.search(verdict[0])
    wrong = f"{float(m.group(1)) + 0.001:+.3f}"
    with pytest.raises(AssertionError, match="is in no effects.csv row"):
        check_verdict_numbers([verdict[0].replace(m.group(1), wrong, 1), *verdict[1:]], eff)
    swapped = verdict[0].replace("It helps at", "It hurts at", 1)
    assert swapped != verdict[0]
    with pytest.raises(AssertionError):
        check_verdict_numbers([swapped, *verdict[1:]], eff)


def test_the_simulated_reversal_is_the_argmax_cuts(simulated_report):
    """With the no-BN model on the 1 % prior and final BN re-centred, the argmax cut hurts final BN at
    π = 0.01 while the cut fit for π does not: the verdict says so."""
    summary, out = simulated_report
    eff = pd.read_csv(out / "effects.csv").set_index("effect")
    assert eff.loc["31-63 π=0.01", "direction"] == "loss"
    assert eff.loc["31-63 cut π=0.01", "direction"] != "loss"
    assert re.search(
        r"At π = [\d., and]*0\.01 the argmax cut's loss does not hold at the cut fit for π", summary["verdict"][1]
    )
    assert eff.loc["31-63 ap π=0.01", "family"] == "verdict" and eff.loc["BNxWL", "family"] == "verdict"


def test_headline_json_agrees_with_table_i_and_the_verdict(simulated_report):
    """`dvc metrics show`'s row: the gain is Table I's difference (both on the test set reweighted to
    balanced classes), and the low-prevalence gains are the verdict's argmax and validation-cut rows."""
    summary, out = simulated_report
    head = json.loads((out / "headline.json").read_text())
    eff = pd.read_csv(out / "effects.csv").set_index("effect")
    assert head["gain"] == pytest.approx(head["f1_bn"] - head["f1_none"], abs=2e-4)
    assert head["gain_at_low_prev"] == pytest.approx(eff.loc["31-63 π=0.01", "estimate"], abs=1e-4)
    assert head["gain_at_low_prev_cut"] == pytest.approx(eff.loc["31-63 cut π=0.01", "estimate"], abs=1e-4)

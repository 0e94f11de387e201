"""report.prevalence: the balanced test set reweighted to a field prevalence, against a hand-computed
case and against scikit-learn / finalbn.stats.metrics at the test set's own prevalence."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import average_precision_score, f1_score, precision_score

from finalbn.stages.report import prevalence as prev
from finalbn.stats import metrics

Y = np.array([1, 1, 1, 1, 0, 0, 0, 0])
P = np.array([0.9, 0.8, 0.6, 0.3, 0.7, 0.4, 0.2, 0.1])  # argmax: TPR 3/4, FPR 1/4


def test_a_hand_computed_case_at_one_in_ten():
    m = prev.at_prevalence(Y, P, 0.1)
    # per field image: TP = 0.1 x 3/4 = 0.075, FP = 0.9 x 1/4 = 0.225, FN = 0.1 x 1/4 = 0.025
    assert m["tpr"] == 0.75 and m["fpr"] == 0.25
    assert m["precision_1"] == pytest.approx(0.075 / 0.3)
    assert m["f1_1"] == pytest.approx(2 * 0.075 / (2 * 0.075 + 0.225 + 0.025))
    assert m["accuracy"] == pytest.approx(0.075 + 0.9 * 0.75)
    assert m["balanced_accuracy"] == pytest.approx(0.75)
    # the weights: each diseased image 0.1/4, each healthy one 0.9/4
    assert prev.weights(Y, 0.1).tolist() == pytest.approx([0.025] * 4 + [0.225] * 4)
    # Brier summed over both classes: 2 (p - y)^2, weighted
    assert m["brier"] == pytest.approx(float(np.sum(prev.weights(Y, 0.1) * 2 * (P - Y) ** 2)))
    # AP: cuts at 0.9, 0.8, 0.7, 0.6, 0.4, 0.3 (recall steps of 1/4 at 0.9, 0.8, 0.6, 0.3)
    prec = [1.0, 1.0, 0.1 * 0.75 / (0.1 * 0.75 + 0.9 * 0.25), 0.1 / (0.1 + 0.9 * 0.5)]
    assert m["ap"] == pytest.approx(sum(p / 4 for p in prec))


def test_at_the_test_sets_own_prevalence_it_is_the_plain_metric():
    rng = np.random.default_rng(0)
    y = np.r_[np.ones(40, int), np.zeros(60, int)]
    p = np.clip(rng.normal(0.35 + 0.3 * y, 0.2), 0.001, 0.999)
    pi = 0.4
    m = prev.at_prevalence(y, p, pi)
    pred = (p > 0.5).astype(int)
    assert m["precision_1"] == pytest.approx(precision_score(y, pred))
    assert m["f1_1"] == pytest.approx(f1_score(y, pred))
    assert m["ap"] == pytest.approx(average_precision_score(y, p))
    probs = np.column_stack([1 - p, p])
    assert m["ece"] == pytest.approx(metrics.ece(y, probs))
    assert m["brier"] == pytest.approx(metrics.brier(y, probs))
    bins = prev.reliability_at(y, p, pi)
    assert sum(bins["weight"]) == pytest.approx(1.0) and sum(bins["count"]) == 100


def test_precision_falls_with_prevalence_and_the_pr_curve_with_it():
    recall, precision = prev.pr_curve_at(Y, P, 0.5)
    recall_low, precision_low = prev.pr_curve_at(Y, P, 0.01)
    assert recall.tolist() == recall_low.tolist()  # recall is free of the prevalence
    assert (precision_low <= precision + 1e-12).all() and precision_low[-1] == pytest.approx(0.01)


@pytest.mark.parametrize(
    "labels, pi, message",
    [
        (Y, 0.0, r"a prevalence must lie in \(0, 1\)"),
        (Y, 1.0, r"a prevalence must lie in \(0, 1\)"),
        (np.ones(8, int), 0.1, "needs both classes"),
    ],
)
def test_bad_input_is_one_clear_error(labels, pi, message):
    with pytest.raises(ValueError, match=message):
        prev.at_prevalence(labels, P, pi)


def test_cell_table_widen_and_means():
    cells = pd.DataFrame(
        [
            {"run_id": "a", "dataset": "d", "arch": "x", "config_id": 31, "baseline": "", "replicate": 0},
            {"run_id": "b", "dataset": "d", "arch": "x", "config_id": 63, "baseline": "", "replicate": 0},
            {"run_id": "gone", "dataset": "d", "arch": "x", "config_id": 63, "baseline": "", "replicate": 1},
        ]
    )
    preds = {
        "a": pd.DataFrame({"label": Y, "p1_last": P, "p1_sel": P}),
        "b": pd.DataFrame({"label": Y, "p1_last": P / 2, "p1_sel": P}),
    }
    table, notes = prev.cell_table(cells, preds.get, [0.5, 0.1])
    assert len(table) == 2 * 2 * 2 and notes == [
        "1 cell run(s) without test predictions are left out of the metrics at each prevalence"
    ]
    wide = prev.widen(cells, table)
    assert wide.loc[0, "f1_1@0.1"] == pytest.approx(prev.at_prevalence(Y, P, 0.1)["f1_1"])
    assert wide.loc[1, "sel_f1_1@0.1"] == pytest.approx(prev.at_prevalence(Y, P, 0.1)["f1_1"])
    assert np.isnan(wide.loc[2, "f1_1@0.5"])
    means = prev.means_at_prevalence(table, [31, 63]).set_index(["config_id", "prevalence"])
    assert means.loc[(63, 0.5), "replicates"] == 1

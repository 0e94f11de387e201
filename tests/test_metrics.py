"""Hand-computed checks of finalbn.stats.metrics."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest

from finalbn.stats import metrics as m

# ---------------------------------------------------------------------------------------------
# The 6-sample worked example used throughout.
#
#   i  y   P(1)   pred  correct  conf   15-bin index (bin = (k/15, (k+1)/15])
#   0  0   0.10   0     yes      0.90   13  (0.8667, 0.9333]
#   1  0   0.30   0     yes      0.70   10  (0.6667, 0.7333]
#   2  0   0.75   1     no       0.75   11  (0.7333, 0.8000]
#   3  0   0.45   0     yes      0.55    8  (0.5333, 0.6000]
#   4  1   0.90   1     yes      0.90   13
#   5  1   0.35   0     no       0.65    9  (0.6000, 0.6667]
#
# Confusion (rows true, cols pred): [[3, 1], [1, 1]]
# class 1: TP=1 (i4), FP=1 (i2), FN=1 (i5) -> P = 1/2, R = 1/2, F1 = 1/2
# class 0: TP=3 (i0,i1,i3), FP=1 (i5), FN=1 (i2) -> P = 3/4, R = 3/4, F1 = 3/4
# macro F1 = (0.75 + 0.5) / 2 = 0.625 ; accuracy = 4/6
# ECE: bin 13: 2 samples, acc 1, conf 0.9 -> |gap| 0.10 weighted 2/6
#      bins 10, 11, 8, 9: one sample each, gaps 0.30, 0.75, 0.45, 0.65
#      ECE = (2*0.10 + 0.30 + 0.75 + 0.45 + 0.65) / 6 = 2.35 / 6 = 0.391666...
# Brier (multi-class, summed over both classes = 2 * (y - P(1))^2 per sample):
#      2 * (0.01 + 0.09 + 0.5625 + 0.2025 + 0.01 + 0.4225) / 6 = 2.595 / 6 = 0.4325
# NLL: -mean(log [0.9, 0.7, 0.25, 0.55, 0.9, 0.35])
# ---------------------------------------------------------------------------------------------
Y6 = np.array([0, 0, 0, 0, 1, 1])
P1_6 = np.array([0.10, 0.30, 0.75, 0.45, 0.90, 0.35])
PROBS6 = np.column_stack([1 - P1_6, P1_6])
PRED6 = PROBS6.argmax(axis=1)


def test_worked_example_predictions():
    assert PRED6.tolist() == [0, 0, 1, 0, 1, 0]


def test_classification_report_worked_example():
    r = m.classification_report(Y6, PROBS6)
    assert list(r) == [
        "accuracy",
        "precision_0",
        "recall_0",
        "f1_0",
        "support_0",
        "precision_1",
        "recall_1",
        "f1_1",
        "support_1",
        "f1_macro",
        "ece",
        "brier",
        "nll",
        "minority_f1",
        "balanced_accuracy",
        "auroc",
        "ap",
    ]
    assert all(type(v) is float for v in r.values())
    assert r["accuracy"] == pytest.approx(4 / 6)
    assert r["precision_0"] == pytest.approx(0.75)
    assert r["recall_0"] == pytest.approx(0.75)
    assert r["f1_0"] == pytest.approx(0.75)
    assert r["support_0"] == 4.0
    assert r["precision_1"] == pytest.approx(0.5)
    assert r["recall_1"] == pytest.approx(0.5)
    assert r["f1_1"] == pytest.approx(0.5)
    assert r["support_1"] == 2.0
    assert r["f1_macro"] == pytest.approx(0.625)
    assert r["ece"] == pytest.approx(2.35 / 6)
    assert r["brier"] == pytest.approx(0.4325)
    nll = -np.mean(np.log([0.9, 0.7, 0.25, 0.55, 0.9, 0.35]))
    assert r["nll"] == pytest.approx(nll)
    assert r["minority_f1"] == r["f1_1"]
    assert r["balanced_accuracy"] == pytest.approx((0.75 + 0.5) / 2)
    # P(1) ranks: positives 0.90, 0.35 against negatives 0.10, 0.30, 0.75, 0.45 -> 4 + 2 of 8 pairs
    assert r["auroc"] == pytest.approx(6 / 8)
    # AP: ranked 0.90 (+), 0.75, 0.45, 0.35 (+) -> precision 1 at recall 1/2, 2/4 at recall 1
    assert r["ap"] == pytest.approx(0.5 * 1 + 0.5 * 0.5)


def test_prior_correction_moves_the_threshold_by_the_training_odds():
    """Logit adjustment to a uniform prior: minority iff p1/p0 > n1/n0 (here 10/1000)."""
    probs = np.array([[0.995, 0.005], [0.985, 0.015], [0.4, 0.6], [0.999, 0.001]])
    assert m.prior_corrected_preds(probs, (1000, 10)).tolist() == [0, 1, 1, 0]
    assert m.prior_corrected_preds(probs, (10, 10)).tolist() == [0, 0, 1, 0]  # balanced: argmax
    r = m.classification_report([0, 1, 1, 0], probs, train_counts=(1000, 10))
    assert r["f1_1_pc"] == pytest.approx(1.0) and r["f1_1"] == pytest.approx(2 / 3)
    assert r["recall_1_pc"] == 1.0 and r["balanced_accuracy_pc"] == 1.0
    with pytest.raises(ValueError, match="train_counts must both be positive"):
        m.prior_corrected_preds(probs, (1000, 0))


def test_threshold_free_metrics_with_one_class_are_nan():
    probs = np.array([[0.6, 0.4], [0.3, 0.7]])
    assert math.isnan(m.auroc([0, 0], probs)) and math.isnan(m.average_precision([0, 0], probs))


def test_asymmetric_precision_recall():
    # y = [0,0,0,0,1,1], pred = [1,1,0,0,1,1]: class 1 TP=2, FP=2, FN=0 -> P=1/2, R=1, F1=2/3
    # class 0: TP=2, FP=0, FN=2 -> P=1, R=1/2, F1=2/3
    y = [0, 0, 0, 0, 1, 1]
    probs = [[0.4, 0.6], [0.3, 0.7], [0.8, 0.2], [0.9, 0.1], [0.2, 0.8], [0.1, 0.9]]
    r = m.classification_report(y, probs)
    assert r["precision_1"] == pytest.approx(0.5)
    assert r["recall_1"] == pytest.approx(1.0)
    assert r["f1_1"] == pytest.approx(2 / 3)
    assert r["precision_0"] == pytest.approx(1.0)
    assert r["recall_0"] == pytest.approx(0.5)
    assert m.minority_f1(y, [1, 1, 0, 0, 1, 1]) == pytest.approx(2 / 3)


def test_minority_f1_and_confusion_worked_example():
    assert m.minority_f1(Y6, PRED6) == pytest.approx(0.5)
    cm = m.confusion(Y6, PRED6)
    assert cm.shape == (2, 2)
    np.testing.assert_array_equal(cm, [[3, 1], [1, 1]])


def test_confusion_counts_sum_to_n_and_rejects_foreign_labels():
    assert m.confusion([1, 1, 1], [0, 0, 0]).tolist() == [[0, 0], [3, 0]]
    with pytest.raises(ValueError, match="not in labels"):
        m.confusion([0, 2], [0, 1])


def test_ece_worked_example():
    assert m.ece(Y6, PROBS6) == pytest.approx(2.35 / 6)


def test_ece_mixed_bin():
    # n_bins=2: bins (0, 0.5], (0.5, 1]. All confidences fall in the second bin.
    # conf = [0.6, 0.8, 0.7, 0.9], correct = [1, 0, 1, 1] -> acc 0.75, conf 0.75 -> ECE 0
    y = [0, 0, 1, 1]
    probs = [[0.6, 0.4], [0.2, 0.8], [0.3, 0.7], [0.1, 0.9]]
    assert m.ece(y, probs, n_bins=2) == pytest.approx(0.0, abs=1e-12)
    # with 15 bins they split: 0.6 (bin 8, correct), 0.7 (bin 10, correct), 0.8 is exactly the
    # upper edge of bin 11 (wrong), 0.9 (bin 13, correct):
    # ECE = (0.4 + 0.3 + 0.8 + 0.1) / 4 = 0.4
    assert m.ece(y, probs) == pytest.approx(0.4)


def test_brier_is_multiclass_sum():
    # one sample, true class 0, probs [0.7, 0.3]: (0.7-1)^2 + (0.3-0)^2 = 0.18
    assert m.brier([0], [[0.7, 0.3]]) == pytest.approx(0.18)
    # three classes, true class 2, probs [0.2, 0.3, 0.5]: 0.04 + 0.09 + 0.25 = 0.38
    # true class 0, probs [1, 0, 0]: 0  -> mean 0.19
    assert m.brier([2, 0], [[0.2, 0.3, 0.5], [1.0, 0.0, 0.0]]) == pytest.approx(0.19)
    # binary: twice the classic binary Brier score
    assert m.brier(Y6, PROBS6) == pytest.approx(2 * np.mean((Y6 - P1_6) ** 2))


def test_perfect_predictions():
    y = np.array([0, 0, 0, 1, 1])
    probs = np.eye(2)[y]
    r = m.classification_report(y, probs)
    assert r["ece"] == 0.0
    assert r["brier"] == 0.0
    assert r["minority_f1"] == 1.0
    assert r["f1_0"] == 1.0
    assert r["accuracy"] == 1.0
    assert r["nll"] == pytest.approx(0.0, abs=1e-9)


def test_never_predicting_minority_gives_zero_without_warnings():
    y = np.array([0, 0, 0, 1, 1])
    probs = np.tile([0.8, 0.2], (5, 1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert m.minority_f1(y, probs.argmax(axis=1)) == 0.0
        r = m.classification_report(y, probs)
        # minority absent from y_true and never predicted: still 0, still no warning
        assert m.minority_f1([0, 0], [0, 0]) == 0.0
    assert r["precision_1"] == 0.0
    assert r["recall_1"] == 0.0
    assert r["f1_1"] == 0.0
    assert r["minority_f1"] == 0.0
    assert r["accuracy"] == pytest.approx(0.6)
    # every confidence 0.8 sits on the upper edge of bin 11; acc 0.6 -> ECE 0.2
    assert r["ece"] == pytest.approx(0.2)
    # Brier: 3 samples 2*0.2^2=0.08, 2 samples 2*0.8^2=1.28 -> (0.24 + 2.56) / 5 = 0.56
    assert r["brier"] == pytest.approx(0.56)


def test_nll_is_finite_for_zero_probability_on_true_class():
    r = m.classification_report([0, 1], [[1.0, 0.0], [1.0, 0.0]])
    assert math.isfinite(r["nll"]) and r["nll"] > 10


def test_reliability_bins_worked_example():
    b = m.reliability_bins(Y6, PROBS6)
    assert set(b) == {"lower", "upper", "count", "accuracy", "confidence"}
    assert all(len(v) == 15 for v in b.values())
    assert sum(b["count"]) == 6
    expected_counts = [0] * 15
    for k, c in {8: 1, 9: 1, 10: 1, 11: 1, 13: 2}.items():
        expected_counts[k] = c
    assert b["count"] == expected_counts
    assert b["lower"][0] == 0.0 and b["upper"][-1] == 1.0
    assert b["lower"][13] == pytest.approx(13 / 15) and b["upper"][13] == pytest.approx(14 / 15)
    assert b["accuracy"][13] == pytest.approx(1.0)
    assert b["confidence"][13] == pytest.approx(0.9)
    assert b["accuracy"][11] == 0.0 and b["confidence"][11] == pytest.approx(0.75)
    for k in range(15):
        if expected_counts[k] == 0:
            assert b["accuracy"][k] is None and b["confidence"][k] is None
        else:
            assert isinstance(b["accuracy"][k], float)
    # JSON-serialisable, with nulls (not NaN) for empty bins
    text = json.dumps(b, allow_nan=False)
    assert "null" in text


def test_reliability_bins_edges():
    # n_bins=2, edges 0, 0.5, 1: conf 0.5 belongs to (0, 0.5], conf 1.0 to (0.5, 1]
    b = m.reliability_bins([0, 1, 0], [[0.5, 0.5], [0.0, 1.0], [1.0, 0.0]], n_bins=2)
    assert b["count"] == [1, 2]
    assert b["lower"] == [0.0, 0.5] and b["upper"] == [0.5, 1.0]
    assert b["accuracy"] == [1.0, 1.0]


def test_float32_rows_within_tolerance_are_accepted():
    probs = np.array([[0.7004, 0.3], [0.2, 0.7995]], dtype=np.float32)  # sums 1.0004, 0.9995
    assert m.brier([0, 1], probs) == pytest.approx(
        np.mean([2 * (0.3 / 1.0004) ** 2, 2 * (0.2 / 0.9995) ** 2]), rel=1e-5
    )


@pytest.mark.parametrize(
    "y, probs, match",
    [
        ([], np.zeros((0, 2)), "empty"),
        ([0, 1], [[0.5, 0.5]], "samples"),
        ([0, 1], [0.5, 0.5], "2-D"),
        ([0], [[1.0]], "at least 2"),
        ([0], [[0.6, 0.6]], "sum to 1"),
        ([0], [[0.5, 0.49]], "sum to 1"),
        ([0], [[np.nan, 1.0]], "NaN"),
        ([0], [[1.5, -0.5]], r"\[0, 1\]"),
        ([2], [[0.5, 0.5]], "class indices"),
        ([-1], [[0.5, 0.5]], "class indices"),
        ([[0], [1]], [[0.5, 0.5], [0.5, 0.5]], "1-D"),
        ([0.5], [[0.5, 0.5]], "integer"),
    ],
)
def test_bad_probability_input_raises(y, probs, match):
    for fn in (m.classification_report, m.ece, m.brier, m.reliability_bins):
        with pytest.raises(ValueError, match=match):
            fn(y, probs)


def test_bad_prediction_input_raises():
    with pytest.raises(ValueError, match="samples"):
        m.minority_f1([0, 1, 1], [0, 1])
    with pytest.raises(ValueError, match="empty"):
        m.minority_f1([], [])
    with pytest.raises(ValueError, match="samples"):
        m.confusion([0], [0, 1])


def test_bad_parameters_raise():
    with pytest.raises(ValueError, match="n_bins"):
        m.ece(Y6, PROBS6, n_bins=0)
    with pytest.raises(ValueError, match="n_bins"):
        m.reliability_bins(Y6, PROBS6, n_bins=2.5)
    with pytest.raises(ValueError, match="labels"):
        m.classification_report(Y6, PROBS6, labels=(0, 2))
    with pytest.raises(ValueError, match="labels"):
        m.classification_report(Y6, PROBS6, labels=())


def test_error_messages_are_one_line():
    with pytest.raises(ValueError) as info:
        m.classification_report([0, 1], [[0.5, 0.5], [0.9, 0.3]])
    assert "\n" not in str(info.value)

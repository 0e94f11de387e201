"""Decision rules at the user's prevalence (`finalbn_field.decision`) and choosing over replicates
(`finalbn.stats.selection`): pure functions, checked against scikit-learn and by simulation."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import f1_score, roc_curve

from finalbn.stats import selection
from finalbn_field import decision


def _no_prior_scores(rng, n0: int, n1: int):
    """Scores as a final-BN model gives them: healthy centred near 0.4, diseased near 0.65 —
    centred on the batch's mix, carrying no trace of a 1 % training prior."""
    y = np.r_[np.zeros(n0, int), np.ones(n1, int)]
    p = np.r_[rng.normal(0.40, 0.05, n0), rng.normal(0.65, 0.10, n1)].clip(0, 1)
    return y, p


def test_the_curve_is_sklearns_roc_and_its_f1_is_the_confusion_matrixs():
    rng = np.random.default_rng(0)
    y, p = _no_prior_scores(rng, 300, 40)
    c = decision.operating_curve(y, p)
    fpr, tpr, _ = roc_curve(y, p, drop_intermediate=False)
    assert np.allclose(c["fpr"], fpr) and np.allclose(c["tpr"], tpr)
    assert (c["positives"], c["negatives"]) == (40, 300)
    assert not (p >= c["threshold"][0]).any() and (p >= c["threshold"][-1]).all()  # nothing, then everything
    # at the sample's own prevalence, the reweighted F1 is the F1 of the confusion matrix
    for i in (5, 20, 60, 200):
        flagged = (p >= c["threshold"][i]).astype(int)
        assert decision.f1_at(c["tpr"][i], c["fpr"][i], 40 / 340) == pytest.approx(f1_score(y, flagged))


def test_a_rarer_field_gets_a_stricter_cut():
    rng = np.random.default_rng(1)
    c = decision.operating_curve(*_no_prior_scores(rng, 750, 35))
    cuts = [decision.at_prevalence(c, pi)["threshold"] for pi in (0.5, 0.1, 0.02, 0.005)]
    assert cuts == sorted(cuts)
    costly = decision.at_prevalence(c, 0.02, miss_cost=200.0)
    assert costly["threshold"] < decision.at_prevalence(c, 0.02)["threshold"] and costly["rule"].startswith("least")
    with pytest.raises(ValueError, match="prevalence must lie in"):
        decision.at_prevalence(c, 1.0)
    with pytest.raises(ValueError, match="both classes"):
        decision.operating_curve([0, 0], [0.2, 0.3])


def test_at_5_percent_a_model_without_prior_flags_at_most_the_fpr_promised_on_held_out_images():
    """Final-BN-like scores (healthy P(diseased) 0.3-0.5): the training-count rule's cut (0.160 at
    pi = 0.05 for 1000/10 training images) flags every healthy image; the validation cut's promise
    holds on held-out images."""
    rng = np.random.default_rng(2)
    y_val, p_val = _no_prior_scores(rng, 750, 35)  # 5 replicates' validation pooled
    y_test, p_test = _no_prior_scores(rng, 5000, 500)  # held out
    healthy = p_test[y_test == 0]
    assert (healthy >= decision.prior_threshold((1000, 10), 0.05)).mean() == 1.0  # the old rule
    for pi in (0.05, 0.02):
        r = decision.at_prevalence(decision.operating_curve(y_val, p_val), pi)
        flagged = float((healthy >= r["threshold"]).mean())
        found = float((p_test[y_test == 1] >= r["threshold"]).mean())
        assert flagged <= r["fpr_upper95"] and found >= r["tpr_lower95"], (pi, flagged, found, r)
        assert r["fpr"] < 0.1 and r["tpr"] > 0.3


def test_the_training_count_rule_applies_only_to_outputs_that_carry_the_prior():
    assert decision.prior_rule_applies("none", False, "ce")[0]
    assert decision.prior_threshold((1000, 10), 10 / 1010) == pytest.approx(0.5)
    for final, wl, loss in (
        ("bn", False, "ce"),
        ("selu", False, "ce"),
        ("none", True, "ce"),
        ("none", False, "logit_adjusted"),
        ("none", False, "class_balanced"),
    ):
        ok, why = decision.prior_rule_applies(final, wl, loss)
        assert not ok and "carry no training prior" in why


def test_wilson_bounds():
    assert decision.wilson_upper(0, 750) == pytest.approx(0.00510, abs=1e-4)
    low, high = decision.wilson(25, 35)
    assert low == pytest.approx(0.5495, abs=1e-3) and high == pytest.approx(0.8367, abs=1e-3)
    assert decision.wilson_upper(75, 750) > 0.1 and math.isnan(decision.wilson_upper(0, 0))


def _rows(values: dict[str, list[float]], losses: dict[str, list[float]] | None = None, switches=None):
    rows = []
    for key, vals in values.items():
        for rep, v in enumerate(vals):
            if v is None:
                continue
            rows.append(
                {
                    "key": key,
                    "replicate": rep,
                    "val_auroc": v,
                    "val_balanced_loss": (losses or {}).get(key, [0.5] * len(vals))[rep],
                    "switches": (switches or {}).get(key, 1),
                    "test_f1_1": 0.0 if key == "a" else 1.0,
                }
            )
    return pd.DataFrame(rows)


def test_a_mean_over_k_replicates_beats_a_lucky_single_replicate():
    rows = _rows({"lucky": [1.0, None, None], "a": [0.9, 0.95, 0.92], "b": [0.95, 0.9, 0.88]})
    ranked = selection.rank(rows, 3)
    assert ranked["key"].tolist() == ["a", "b", "lucky"] and ranked["eligible"].tolist() == [True, True, False]
    assert ranked["rank"].tolist() == [1, 2, 1] and ranked["tier"].tolist() == [0, 0, 1]
    assert selection.best(rows, 3)["key"] == "a"  # test F1 (0 for a, 1 for b) decides nothing
    assert ranked.iloc[0]["val_auroc_ci_low"] < ranked.iloc[0]["val_auroc"] < ranked.iloc[0]["val_auroc_ci_high"]
    assert selection.best(rows, 4) is None
    # replicates beyond k are not judged
    assert selection.rank(_rows({"a": [0.9, 0.9, 0.1], "b": [0.8, 0.8, 1.0]}), 2)["key"].tolist() == ["a", "b"]


def test_ties_go_to_the_lower_balanced_loss_then_fewer_switches_never_to_f1():
    rows = _rows(
        {"a": [1.0, 1.0], "b": [1.0, 1.0], "c": [1.0, 1.0]},
        losses={"a": [0.4, 0.4], "b": [0.3, 0.3], "c": [0.3, 0.3]},
        switches={"a": 1, "b": 3, "c": 2},
    )
    assert selection.rank(rows, 2)["key"].tolist() == ["c", "b", "a"]
    wins = selection.resampled_wins(rows, 2, n=50)
    assert wins.to_dict() == {"c": 1.0, "b": 0.0, "a": 0.0}
    close = _rows({"a": [0.9, 0.7, 0.9, 0.7], "b": [0.8, 0.8, 0.8, 0.8]})
    w = selection.resampled_wins(close, 4, n=400)
    assert 0.2 < w["a"] < 0.8 and w.sum() == pytest.approx(1.0)

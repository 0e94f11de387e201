"""The imbalance baselines: focal, logit-adjusted and class-balanced losses; temperature scaling."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from finalbn.stats import metrics
from finalbn.train.cell import class_balanced_weights, run_cell
from finalbn.train.engine import FitSettings, loss_value

SPLITS = Path("data/splits")


def _settings(**kw):
    return FitSettings(epochs=1, lr=1e-3, **kw)


@pytest.mark.parametrize("weight", [None, torch.tensor([0.5, 2.0])])
def test_focal_with_gamma_zero_is_cross_entropy(weight):
    g = torch.Generator().manual_seed(0)
    logits, y = torch.randn(8, 2, generator=g), torch.tensor([0, 1] * 4)
    soft = torch.softmax(torch.randn(8, 2, generator=g), 1)
    for target in (y, soft):
        ce = F.cross_entropy(logits, target, weight=weight)
        assert loss_value(logits, target, _settings(loss="focal", focal_gamma=0.0), weight) == pytest.approx(
            float(ce), abs=1e-6
        )


def test_focal_down_weights_easy_examples():
    easy = torch.tensor([[4.0, -4.0]])  # confidently right
    hard = torch.tensor([[0.1, 0.0]])
    y = torch.tensor([0])
    s = _settings(loss="focal", focal_gamma=2.0)
    ratio_easy = loss_value(easy, y, s, None) / F.cross_entropy(easy, y)
    ratio_hard = loss_value(hard, y, s, None) / F.cross_entropy(hard, y)
    assert ratio_easy < 1e-3 < ratio_hard < 1


def test_logit_adjusted_is_cross_entropy_on_shifted_logits():
    logits, y = torch.randn(6, 2), torch.tensor([0, 0, 0, 0, 1, 1])
    prior = torch.log(torch.tensor([1000.0, 10.0]) / 1010.0)
    got = loss_value(logits, y, _settings(loss="logit_adjusted"), None, prior)
    assert float(got) == pytest.approx(float(F.cross_entropy(logits + prior, y)), abs=1e-6)


def test_class_balanced_weights_follow_the_effective_number():
    labels = np.array([0] * 1000 + [1] * 10)
    w = class_balanced_weights(labels, 0.999)
    eff = [(1 - 0.999**1000) / 0.001, (1 - 0.999**10) / 0.001]  # effective numbers
    assert w[1] / w[0] == pytest.approx(eff[0] / eff[1], rel=1e-9) and sum(w) == pytest.approx(2.0)
    assert 50 < w[1] / w[0] < 100  # between no weighting and inverse frequency (100)
    assert class_balanced_weights(labels, 0.0) == pytest.approx((1.0, 1.0))


def test_temperature_scaling_recovers_an_overconfident_scale():
    rng = np.random.default_rng(0)
    z = rng.normal(0, 1.5, (4000, 2))
    p_true = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    y = (rng.random(4000) < p_true[:, 1]).astype(int)
    over = np.exp(3 * z) / np.exp(3 * z).sum(1, keepdims=True)  # logits x3: overconfident
    t = metrics.fit_temperature(y, over)
    assert t == pytest.approx(3.0, rel=0.1)
    fixed = metrics.apply_temperature(over, t)
    assert (fixed.argmax(1) == over.argmax(1)).all() and metrics.ece(y, fixed) < metrics.ece(y, over)


@pytest.mark.parametrize("loss", ["focal", "logit_adjusted", "class_balanced"])
def test_each_loss_trains_a_cell(prepared, loss):
    load, _ = prepared
    r = run_cell(load([f"train.loss={loss}", "ablation.mx=true"]), "synthetic-apple", SPLITS)
    assert all(np.isfinite(row["train_loss"]) for row in r.fit.history)
    if loss == "class_balanced":
        assert r.class_weights is not None and r.class_weights[1] > r.class_weights[0]


def test_temperature_changes_calibration_not_decisions(prepared):
    load, _ = prepared
    plain = run_cell(load(["train.calibration=none"]), "synthetic-apple", SPLITS)
    scaled = run_cell(load(["train.calibration=temperature"]), "synthetic-apple", SPLITS)
    assert scaled.temperature > 0 and plain.temperature is None
    assert scaled.test_last["f1_1"] == plain.test_last["f1_1"]  # argmax unchanged
    assert scaled.test_last["auroc"] == pytest.approx(plain.test_last["auroc"])  # ranking unchanged
    assert [p["p1_last"] for p in scaled.predictions] != [p["p1_last"] for p in plain.predictions]

"""The training-side imbalance rivals: the LDAM-DRW loss (Cao et al. 2019) and class-balanced
sampling (Kang et al. 2020), on tiny tensors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from finalbn.config.seeds import ORDER, SAMPLER, stream_seed
from finalbn.data.tensors import SplitTensors, TrainPlan
from finalbn.train.engine import (
    FitSettings,
    drw_first_epoch,
    fit,
    loss_inputs,
    loss_value,
)

CPU = torch.device("cpu")
COUNTS = (1000, 10)
# Cui et al.'s weights for COUNTS at beta 0.9999, by hand: (1 - b) / (1 - b^n), scaled to sum to 2
CUI = (0.020787872963857337, 1.9792121270361427)


def _ldam(**kw) -> FitSettings:
    return FitSettings(**{"epochs": 10, "lr": 1e-3, "loss": "ldam_drw", "train_counts": COUNTS, **kw})


def _margins(s: FitSettings) -> torch.Tensor:
    return loss_inputs(s, CPU, epoch=1)[1]


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_ldam_with_no_margin_and_unit_scale_is_cross_entropy(smoothing):
    g = torch.Generator().manual_seed(0)
    logits, y = torch.randn(8, 2, generator=g), torch.tensor([0, 1] * 4)
    soft = torch.softmax(torch.randn(8, 2, generator=g), 1)
    s = _ldam(ldam_max_margin=0.0, ldam_scale=1.0, label_smoothing=smoothing)
    for target in (y, soft):
        want = F.cross_entropy(logits, target, label_smoothing=smoothing)
        assert float(loss_value(logits, target, s, None, _margins(s))) == pytest.approx(float(want), abs=1e-6)


def test_ldam_margins_and_loss_on_counts_1000_10():
    s = _ldam(ldam_scale=2.0)  # ldam_max_margin 0.5
    assert _margins(s).tolist() == pytest.approx([0.5 * (10 / 1000) ** 0.25, 0.5], abs=1e-7)
    assert _margins(s).tolist() == pytest.approx([0.158114, 0.5], abs=1e-6)
    logits = torch.tensor([[1.0, 0.5]])
    # minority: logits [1, 0.5 - 0.5] x 2 = [2, 0] -> -log softmax_1 = log(1 + e^2)
    got1 = loss_value(logits, torch.tensor([1]), s, None, _margins(s))
    assert float(got1) == pytest.approx(math.log(1 + math.exp(2.0)), abs=1e-5)
    assert float(got1) == pytest.approx(2.126928, abs=1e-5)
    # majority: [1 - 0.158114, 0.5] x 2 -> log(1 + e^(2 (0.5 - 0.841886)))
    got0 = loss_value(logits, torch.tensor([0]), s, None, _margins(s))
    assert float(got0) == pytest.approx(0.408600, abs=1e-5)


def test_ldam_soft_targets_take_their_share_of_each_margin():
    s = _ldam(ldam_scale=1.0)
    logits, t = torch.tensor([[1.0, 0.5]]), torch.tensor([[0.3, 0.7]])
    z0, z1 = 1.0 - 0.3 * 0.15811388, 0.5 - 0.7 * 0.5  # logits - t * Delta
    lse = math.log(math.exp(z0) + math.exp(z1))
    want = -(0.3 * (z0 - lse) + 0.7 * (z1 - lse))
    assert float(loss_value(logits, t, s, None, _margins(s))) == pytest.approx(want, abs=1e-5)
    # a one-hot soft target is its hard label
    hard = loss_value(logits, torch.tensor([1]), s, None, _margins(s))
    assert float(loss_value(logits, torch.tensor([[0.0, 1.0]]), s, None, _margins(s))) == pytest.approx(float(hard))


def test_drw_reweights_from_the_deferred_epoch():
    s = _ldam()  # 10 epochs, drw_start 0.8
    assert drw_first_epoch(10, 0.8) == 9 and drw_first_epoch(200, 0.8) == 161
    for epoch in range(1, 9):
        assert loss_inputs(s, CPU, epoch=epoch)[0] is None, epoch
    for epoch in (9, 10):
        weight = loss_inputs(s, CPU, epoch=epoch)[0]
        assert weight is not None and weight.tolist() == pytest.approx(CUI, rel=1e-6)
    # the weighted loss is cross_entropy's weighted mean of the margined logits
    logits, y = torch.tensor([[1.0, 0.5], [0.2, 0.1]]), torch.tensor([1, 0])
    weight, margins = loss_inputs(s, CPU, epoch=9)
    z = 30.0 * (logits - torch.tensor([[0.0, 0.5], [0.15811388, 0.0]]))
    nll = -torch.log_softmax(z, 1)[[0, 1], [1, 0]]
    want = (CUI[1] * nll[0] + CUI[0] * nll[1]) / (CUI[1] + CUI[0])
    assert float(loss_value(logits, y, s, weight, margins)) == pytest.approx(float(want), rel=1e-5)


def test_ldam_drw_refuses_what_it_cannot_use():
    with pytest.raises(ValueError, match="train_counts"):
        loss_inputs(_ldam(train_counts=None), CPU, epoch=1)
    with pytest.raises(ValueError, match="epoch"):
        loss_inputs(_ldam(), CPU)
    with pytest.raises(ValueError, match="class_weights"):
        loss_inputs(_ldam(class_weights=(1.0, 2.0)), CPU, epoch=1)
    with pytest.raises(ValueError, match="drw_start"):
        loss_inputs(_ldam(drw_start=1.5), CPU, epoch=1)
    with pytest.raises(ValueError, match="drw_beta"):
        loss_inputs(_ldam(drw_beta=1.0), CPU, epoch=1)
    with pytest.raises(ValueError, match="positive"):
        loss_inputs(_ldam(train_counts=(10, 0)), CPU, epoch=1)
    with pytest.raises(ValueError, match="margins"):
        loss_value(torch.zeros(2, 2), torch.tensor([0, 1]), _ldam(), None, None)
    # the other losses are called as before
    assert loss_inputs(FitSettings(epochs=1, lr=1e-3), CPU) == (None, None)


def test_fit_applies_drw_from_its_epoch():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(40, 4, generator=g), torch.tensor([0] * 30 + [1] * 10)
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    # lr 0: the model stays as it is, so each epoch's train loss is the loss of the same logits
    s = FitSettings(epochs=3, lr=0.0, loss="ldam_drw", train_counts=(30, 10), drw_start=0.6, ldam_scale=2.0)
    with torch.no_grad():
        z = 2.0 * (model(x) - F.one_hot(y, 2) * torch.tensor([0.5 * (10 / 30) ** 0.25, 0.5]))
    cui = torch.tensor([(1 - 0.9999) / (1 - 0.9999**n) for n in (30, 10)])
    plain, weighted = F.cross_entropy(z, y), F.cross_entropy(z, y, weight=cui * 2 / cui.sum())
    history = fit(model, [(x, y)], [(x, y)], s).history
    got = [row["train_loss"] for row in history]  # epochs 1-2 plain LDAM, epoch 3 (after round(1.8)) DRW
    assert got == pytest.approx([float(plain), float(plain), float(weighted)], rel=1e-5)
    assert abs(float(plain) - float(weighted)) > 0.01


def test_fit_trains_ldam_drw_on_soft_targets():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(40, 4, generator=g), torch.tensor([0] * 30 + [1] * 10)
    soft = F.one_hot(y, 2).float() * 0.8 + 0.1  # MixUp-like (B, 2) targets
    torch.manual_seed(0)
    s = FitSettings(epochs=3, lr=1e-2, loss="ldam_drw", train_counts=(30, 10))
    history = fit(nn.Linear(4, 2), [(x[:20], soft[:20]), (x[20:], soft[20:])], [(x, y)], s).history
    assert len(history) == 3 and all(math.isfinite(row["train_loss"]) for row in history)


def _split(n_major: int = 1000, n_minor: int = 10) -> SplitTensors:
    n = n_major + n_minor
    labels = torch.tensor([0] * n_major + [1] * n_minor)
    return SplitTensors(torch.zeros(n, 3, 2, 2, dtype=torch.uint8), labels, tuple(f"{i}.png" for i in range(n)))


def test_class_balanced_sampler_draws_each_class_half_the_time():
    split = _split()
    plan = TrainPlan(split, batch_size=64, seed=3, sampler="class_balanced")
    drawn = [torch.cat(plan.batches(epoch)) for epoch in range(1, 21)]
    assert all(len(d) == 1010 for d in drawn)  # an epoch is the split's size
    share = float(torch.cat([split.labels[d] for d in drawn]).float().mean())
    assert 0.45 < share < 0.55  # shuffle: 10 / 1010 ~ 0.01
    minority = drawn[0][split.labels[drawn[0]] == 1]
    assert set(minority.tolist()) == set(range(1000, 1010))  # each of the 10 repeats (~50 times each)
    assert len(set(drawn[0].tolist())) < 1010  # drawn with replacement


def test_class_balanced_sampler_is_seeded_and_never_a_batch_of_one():
    split = _split()
    a, b = (TrainPlan(split, batch_size=64, seed=3, sampler="class_balanced") for _ in range(2))
    assert all(torch.equal(p, q) for p, q in zip(a.batches(2), b.batches(2)))
    # the draw: weight 1 / n_y per image (1/1000 majority, 1/10 minority) on the epoch's sampler stream
    g = torch.Generator().manual_seed(stream_seed(3, SAMPLER, 2))
    per_image = torch.tensor([1 / 1000] * 1000 + [1 / 10] * 10, dtype=torch.float64)
    assert torch.equal(torch.cat(a.batches(2)), torch.multinomial(per_image, 1010, replacement=True, generator=g))
    assert not torch.equal(torch.cat(a.batches(1)), torch.cat(a.batches(2)))
    other = TrainPlan(split, batch_size=64, seed=4, sampler="class_balanced")
    assert not torch.equal(torch.cat(a.batches(1)), torch.cat(other.batches(1)))
    lone = TrainPlan(split, batch_size=1009, seed=3, sampler="class_balanced")  # 1010 = 1009 + 1
    assert [len(c) for c in lone.batches(1)] == [1009]


def test_shuffle_sampler_is_unchanged():
    split = _split(30, 7)
    for plan in (TrainPlan(split, 8, seed=5), TrainPlan(split, 8, seed=5, sampler="shuffle")):
        for epoch in (1, 2):
            g = torch.Generator().manual_seed(stream_seed(5, ORDER, epoch))
            want = list(torch.randperm(37, generator=g).split(8))  # the permutation as it was drawn before
            got = plan.batches(epoch)
            assert len(got) == len(want) and all(torch.equal(p, q) for p, q in zip(got, want))


def test_unknown_sampler_raises():
    with pytest.raises(ValueError, match="sampler must be one of shuffle, class_balanced"):
        TrainPlan(_split(), 8, seed=0, sampler="oversample")

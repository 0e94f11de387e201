"""The post-hoc rivals of the final BN (finalbn.train.posthoc) on hand-checked cases, and a post-hoc
cell reusing its base cell's trained head."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from finalbn.config import configure
from finalbn.models import HeadOnFeatures, HeadSpec, create_head
from finalbn.train import posthoc, trained
from finalbn.train.cell import run_cell
from finalbn.train.engine import FitSettings, loss_value


def _head(final: str = "none", seed: int = 0) -> HeadOnFeatures:
    head = create_head(4, 2, HeadSpec(hidden=6, dropout=(0.0, 0.0), final=final), seed=seed)
    model = HeadOnFeatures(head, final)
    if final == "bn":  # running statistics away from their start, as after training
        last = head[-1]
        last.running_mean.copy_(torch.tensor([0.7, -1.2]))
        last.running_var.copy_(torch.tensor([2.0, 0.25]))
    return model.eval()


def _data(n: int, minority: int, seed: int = 0) -> tuple[np.ndarray, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    labels = np.array([0] * (n - minority) + [1] * minority)
    x = torch.randn(n, 8, generator=g) + torch.as_tensor(labels)[:, None].float() * 1.5
    return labels, x


def _parts_and_features(model, x):
    parts = posthoc.head_parts(model)
    return parts, parts.before(x)


def test_none_is_the_network_and_remove_final_bn_is_the_last_linear():
    model = _head("bn")
    labels, x = _data(40, 4)
    parts, h = _parts_and_features(model, x)
    with torch.no_grad():
        out = model(x)
        lin = parts.linear(h)
    none = posthoc.fit("none", parts, (labels, h), (labels, h), (36, 4))
    removed = posthoc.fit("remove_final_bn", parts, (labels, h), (labels, h), (36, 4))
    torch.testing.assert_close(none.logits(h), out)
    torch.testing.assert_close(removed.logits(h), lin)
    assert not torch.allclose(out, lin)  # the final BN did change the logits


def test_tau_norm_with_tau_zero_is_the_identity():
    model = _head()
    labels, x = _data(40, 4)
    parts, h = _parts_and_features(model, x)
    with torch.no_grad():
        torch.testing.assert_close(posthoc.tau_normalised(parts, 0.0)(h), model(x))
        w = parts.linear.weight
        manual = h @ (w / w.norm(dim=1, keepdim=True)).T + parts.linear.bias
        torch.testing.assert_close(posthoc.tau_normalised(parts, 1.0)(h), manual)


def test_logit_adjustment_with_tau_one_is_balanced_softmax():
    """Post-hoc: z − log π gives the class-balanced posterior p(y|x) / π_y (normalised). Training:
    the logit-adjusted loss is Ren et al.'s Balanced Softmax, −log(n_y e^{z_y} / Σ_j n_j e^{z_j})."""
    counts = (90, 10)
    z = torch.tensor([[2.0, -1.0], [0.5, 0.3], [-1.0, 1.0]])
    prior = torch.tensor(counts, dtype=torch.float32) / sum(counts)
    adjusted = torch.softmax(posthoc.adjusted_logits(z, counts, 1.0), 1)
    balanced = torch.softmax(z, 1) / prior
    torch.testing.assert_close(adjusted, balanced / balanced.sum(1, keepdim=True))
    target = torch.tensor([0, 1, 1])
    n = torch.tensor(counts, dtype=torch.float32)
    ren = -torch.log(n[target] * z.exp()[torch.arange(3), target] / (n * z.exp()).sum(1)).mean()
    settings = FitSettings(epochs=1, lr=1e-3, loss="logit_adjusted", train_counts=counts)
    torch.testing.assert_close(loss_value(z, target, settings, None, torch.log(prior)), ren)


def test_logit_adjustment_picks_the_tau_that_balances_validation():
    labels = np.array([0] * 8 + [1] * 2)
    z = torch.tensor([[1.0, 0.0]] * 8 + [[0.6, 0.0]] * 2)  # argmax says healthy for every image
    parts = posthoc.HeadParts(lambda x: x, nn.Linear(2, 2), nn.Identity(), nn.Identity())
    with torch.no_grad():
        parts.linear.weight.copy_(torch.eye(2))
        parts.linear.bias.zero_()
    f = posthoc.fit("logit_adjustment", parts, (labels, z), (labels, z), (90, 10))
    # minority logit + tau * log 9 must exceed 0.6 but stay below 1.0: tau in (0.273, 0.455); nearest 1 on the grid
    assert f.params["tau"] == pytest.approx(0.45)
    assert (f.probs(z).argmax(1) == labels).all()


def test_vector_scaling_lowers_the_validation_nll():
    model = _head()
    labels, x = _data(60, 10, seed=1)
    parts, h = _parts_and_features(model, x)
    f = posthoc.fit("vector_scaling", parts, (labels, h), (labels, h), (50, 10))
    y = torch.as_tensor(labels)
    with torch.no_grad():
        before = nn.functional.cross_entropy(model(x), y)
    after = nn.functional.cross_entropy(torch.log(torch.as_tensor(f.probs(h))), y)
    assert float(after) < float(before) - 1e-3
    assert set(f.params) == {"w_0", "w_1", "b_0", "b_1"}


def test_standardisation_gives_each_training_logit_mean_zero_and_unit_std():
    model = _head()
    labels, x = _data(50, 5)
    parts, h = _parts_and_features(model, x)
    f = posthoc.fit("standardisation", parts, (labels, h), (labels, h), (45, 5))
    z = f.logits(h)
    torch.testing.assert_close(z.mean(0), torch.zeros(2), atol=1e-5, rtol=0)
    torch.testing.assert_close(z.std(0, unbiased=False), torch.ones(2), atol=1e-4, rtol=0)


def test_crt_retrains_a_useless_classifier_on_balanced_batches():
    labels, x = _data(200, 8, seed=2)
    parts = posthoc.HeadParts(lambda v: v, nn.Linear(8, 2), nn.Identity(), nn.Identity())
    with torch.no_grad():
        parts.linear.weight.zero_()
        parts.linear.bias.copy_(torch.tensor([5.0, 0.0]))  # says healthy for everything
    f = posthoc.fit("crt", parts, (labels, x), (labels, x), (192, 8), epochs=10, batch_size=32, seed=0)
    assert posthoc.balanced_accuracy(labels, f.probs(x).argmax(1)) > 0.85
    again = posthoc.fit("crt", parts, (labels, x), (labels, x), (192, 8), epochs=10, batch_size=32, seed=0)
    np.testing.assert_array_equal(f.probs(x), again.probs(x))  # seeded


def test_lws_learns_a_scale_and_keeps_the_weights():
    labels, x = _data(200, 8, seed=3)
    parts = posthoc.HeadParts(lambda v: v, nn.Linear(8, 2), nn.Identity(), nn.Identity())
    w0 = parts.linear.weight.detach().clone()
    f = posthoc.fit("lws", parts, (labels, x), (labels, x), (192, 8), epochs=5, batch_size=32)
    s = torch.tensor([f.params["scale_0"], f.params["scale_1"]])
    assert not torch.allclose(s, torch.ones(2))
    torch.testing.assert_close(parts.linear.weight, w0)
    with torch.no_grad():
        torch.testing.assert_close(f.logits(x), x @ w0.T * s + parts.linear.bias)


def test_balanced_batches_draw_each_class_half_the_time():
    labels = np.array([0] * 1000 + [1] * 10)
    drawn = np.concatenate([np.concatenate(posthoc.balanced_batches(labels, 64, e, 0)) for e in range(20)])
    assert 0.45 < labels[drawn].mean() < 0.55
    a, b = posthoc.balanced_batches(labels, 64, 3, 0), posthoc.balanced_batches(labels, 64, 3, 0)
    assert all((x == y).all() for x, y in zip(a, b))


def test_unknown_method_and_one_class_validation_are_refused():
    model = _head()
    labels, x = _data(20, 2)
    parts, h = _parts_and_features(model, x)
    with pytest.raises(ValueError, match="train.posthoc must be one of"):
        posthoc.fit("platt", parts, (labels, h), (labels, h), (18, 2))
    with pytest.raises(ValueError, match="holds one class only"):
        posthoc.fit("vector_scaling", parts, (labels, h), (np.zeros(20, dtype=int), h), (18, 2))


def test_a_posthoc_cell_reuses_its_base_cells_head(prepared):
    load, _ = prepared
    cfg = load()
    trained.HEADS.clear()
    base = run_cell(configure(cfg, cfg.model.arch, 63), "synthetic-apple", Path("data/splits"))
    reused_before = trained.HEADS.reused
    seen: list[int] = []

    class Spy:
        def on_epoch_end(self, epoch, metrics):
            seen.append(epoch)

    cell = run_cell(
        configure(cfg, cfg.model.arch, 63, "vector_scaling"), "synthetic-apple", Path("data/splits"), [Spy()]
    )
    assert trained.HEADS.reused == reused_before + 1
    assert cell.fit.train_seconds == 0 and cell.fit.history == base.fit.history
    assert seen == list(range(1, cfg.train.epochs + 1))  # the epoch rows replayed to the cell's logger
    assert {"posthoc_w_0", "posthoc_b_1"} <= set(cell.metrics())
    assert not np.allclose(cell.probs_last, base.probs_last)
    removed = run_cell(configure(cfg, cfg.model.arch, 31, "final_bn_removed"), "synthetic-apple", Path("data/splits"))
    assert removed.fit.train_seconds > 0  # its base (31) was not trained in this process: it trains
    trained.HEADS.clear()
    alone = run_cell(configure(cfg, cfg.model.arch, 63, "vector_scaling"), "synthetic-apple", Path("data/splits"))
    np.testing.assert_array_equal(alone.probs_last, cell.probs_last)  # reused = trained again


def test_a_patchcore_cell_scores_without_a_head(prepared):
    load, _ = prepared
    cfg = load(["anomaly.coreset=0.5"])
    cell = run_cell(configure(cfg, cfg.model.arch, 63, "patchcore"), "synthetic-apple", Path("data/splits"))
    m = cell.metrics()
    assert m["posthoc_bank"] >= 1 and 0.0 <= m["test_auroc"] <= 1.0
    assert cell.probs_last.shape == (len(cell.labels), 2)
    np.testing.assert_allclose(cell.probs_last.sum(1), 1.0)
    assert "test_f1_1_pc" not in m or not np.isfinite(m["test_f1_1_pc"])  # no training prior to correct
    assert cell.fit.train_images == 4  # the tiny split's healthy training images only

"""PatchCore (models/patchcore.py): stage discovery on tiny and real bodies, the coreset, scoring on
hand-made images, and the Platt map. Tiny random conv bodies, CPU, no weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score
from torch import nn

from finalbn.models import create_model
from finalbn.models.patchcore import (
    PatchCore,
    StageTaps,
    find_stages,
    greedy_coreset,
    nearest_distances,
    patch_features,
    to_probability,
)


def _stage(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=2, padding=1), nn.ReLU())  # halves H and W


def tiny_body(seed: int = 0) -> nn.Sequential:
    """Five stride-2 stages: outputs at stride 2, 4, 8, 16, 32 (8 and 16 are children "2" and "3")."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return nn.Sequential(_stage(3, 4), _stage(4, 6), _stage(6, 8), _stage(8, 10), _stage(10, 12))


def healthy_images(n: int, seed: int, size: int = 32) -> torch.Tensor:
    """(n, 3, size, size): one smooth pattern plus a little noise, so the images are alike."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    base = torch.stack([xx, yy, xx * yy])  # (3, size, size)
    return base + 0.05 * torch.randn(n, 3, size, size, generator=g)


def test_find_stages_takes_the_last_module_at_each_stride_and_opens_sequentials():
    assert find_stages(tiny_body()) == ("2", "3")
    # the stages nested as in timm's body: stem, Sequential(blocks), head; two blocks end at stride 8
    blocks = nn.Sequential(_stage(4, 6), _stage(6, 8), nn.Conv2d(8, 8, 3, padding=1), _stage(8, 10), _stage(10, 12))
    nested = nn.Sequential(_stage(3, 4), blocks, nn.Conv2d(12, 16, 1))
    assert find_stages(nested) == ("1.2", "1.3")
    maps = StageTaps(nested)(torch.zeros(2, 3, 32, 32))
    assert [tuple(m.shape) for m in maps] == [(2, 8, 4, 4), (2, 10, 2, 2)]


def test_find_stages_raises_when_the_body_stops_before_stride_16():
    with pytest.raises(ValueError, match="no stage with output at stride 16"):
        find_stages(nn.Sequential(_stage(3, 4), _stage(4, 6), _stage(6, 8)))


def test_real_efficientnet_lite0_body_gives_its_stride_8_and_16_blocks():
    body = create_model("efficientnet_lite0", weights="none").body
    taps = StageTaps(body)
    assert taps.names == ("2.2", "2.4")  # timm blocks 2 (40 ch, stride 8) and 4 (112 ch, stride 16)
    maps = taps(torch.randn(4, 3, 48, 48))
    assert [tuple(m.shape) for m in maps] == [(4, 40, 6, 6), (4, 112, 3, 3)]
    assert tuple(patch_features(maps, dim=64).shape) == (4, 36, 64)  # 6 x 6 patches, 152 channels pooled to 64


def test_patch_features_average_upsample_and_pool_channels_by_hand():
    shallow = torch.zeros(1, 2, 2, 2)
    shallow[0, 0, 0, 0] = 4.0  # 3x3 mean over the real neighbours: every cell of a 2x2 sees all 4 -> 1.0
    deep = torch.full((1, 2, 1, 1), 3.0)  # upsampled to 2x2: 3.0 everywhere
    feats = patch_features([shallow, deep], dim=2)  # channels [1, 0, 3, 3] pooled in pairs -> [0.5, 3]
    assert torch.allclose(feats, torch.tensor([[0.5, 3.0]] * 4)[None])


def test_bright_square_image_ranks_first():
    model = PatchCore(tiny_body(), dim=16, coreset=1.0).fit([(healthy_images(8, seed=1), torch.zeros(8))])
    test = healthy_images(6, seed=2)
    test[3, :, 8:16, 8:16] = 3.0  # a bright square on image 3 only
    labels, scores = model.score([(test[:4], torch.zeros(4)), (test[4:], torch.zeros(2))])
    assert labels.tolist() == [0] * 6 and scores.shape == (6,)
    assert int(np.argmax(scores)) == 3
    assert scores[3] > 2 * np.delete(scores, 3).max()


def test_training_image_scores_zero_when_the_bank_keeps_every_patch():
    train = healthy_images(4, seed=1)
    model = PatchCore(tiny_body(), dim=16, coreset=1.0).fit([(train, torch.zeros(4))])
    assert tuple(model.bank.shape) == (4 * 16, 16)  # 4 images x (4 x 4 stride-8 patches), D = min(16, 18)
    _, seen = model.score([(train[1:3], torch.zeros(2))])
    _, unseen = model.score([(healthy_images(1, seed=9), torch.zeros(1))])
    assert seen.max() < 1e-6  # exactly 0 here: the nearest bank patch is the patch itself
    assert unseen[0] > 1e-3  # 0.0031 by hand: a new healthy image is close, but not in the bank


def test_greedy_coreset_picks_one_point_per_tight_cluster_after_projection():
    g = torch.Generator().manual_seed(0)
    centres = 10.0 * torch.eye(4, 200)  # 4 clusters 14 apart in 200 dims: projected to 128 by the coreset
    points = (centres[:, None, :] + 0.01 * torch.randn(4, 25, 200, generator=g)).reshape(100, 200)
    chosen = greedy_coreset(points, 4, proj_dim=128, seed=3)
    assert sorted((chosen // 25).tolist()) == [0, 1, 2, 3]


def test_greedy_coreset_is_seeded_and_checks_its_size():
    points = torch.randn(200, 8, generator=torch.Generator().manual_seed(0))
    a, b = greedy_coreset(points, 20, seed=0), greedy_coreset(points, 20, seed=0)
    assert torch.equal(a, b) and len(set(a.tolist())) == 20
    assert not torch.equal(a, greedy_coreset(points, 20, seed=1))
    with pytest.raises(ValueError, match="coreset size"):
        greedy_coreset(points, 201)


def test_bank_size_is_the_coreset_fraction_capped_by_max_bank():
    batch = (healthy_images(4, seed=1), torch.zeros(4))  # 64 patches
    assert PatchCore(tiny_body(), dim=16, coreset=0.1).fit([batch]).bank.shape[0] == 6  # floor(6.4)
    capped = PatchCore(tiny_body(), dim=16, coreset=0.5, max_bank=5).fit([batch])
    assert capped.bank.shape[0] == 5
    again = PatchCore(tiny_body(), dim=16, coreset=0.5, max_bank=5).fit([batch])
    assert torch.equal(capped.bank, again.bank)


def test_fit_ignores_minority_images():
    healthy = healthy_images(4, seed=1)
    sick = healthy_images(2, seed=5) + 2.0
    alone = PatchCore(tiny_body(), dim=16, coreset=0.5).fit([(healthy, torch.zeros(4))])
    mixed = torch.cat([healthy[:2], sick[:1], healthy[2:]])
    with_sick = PatchCore(tiny_body(), dim=16, coreset=0.5).fit(
        [(mixed, torch.tensor([0, 0, 1, 0, 0])), (sick[1:], torch.ones(1))]
    )
    assert torch.equal(alone.bank, with_sick.bank)
    with pytest.raises(ValueError, match="no healthy"):
        PatchCore(tiny_body(), dim=16).fit([(sick, torch.ones(2))])


def test_bank_survives_a_state_dict_round_trip_and_scoring_needs_a_fit():
    model = PatchCore(tiny_body(), dim=16, coreset=0.5).fit([(healthy_images(2, seed=1), torch.zeros(2))])
    fresh = PatchCore(tiny_body(), dim=16)
    with pytest.raises(ValueError, match="not fitted"):
        fresh.score([(healthy_images(1, seed=2), torch.zeros(1))])
    fresh.load_state_dict(model.state_dict())
    assert torch.equal(fresh.bank, model.bank)


def test_nearest_distances_in_chunks_by_hand():
    bank = torch.tensor([[0.0, 0.0], [3.0, 4.0]])
    queries = torch.tensor([[0.0, 0.0], [3.0, 0.0], [6.0, 8.0]])
    assert torch.allclose(nearest_distances(queries, bank, max_elements=2), torch.tensor([0.0, 3.0, 5.0]))


def test_to_probability_is_monotone_keeps_auroc_and_needs_both_classes():
    rng = np.random.default_rng(0)
    val_labels = np.array([0] * 30 + [1] * 5)
    val_scores = np.concatenate([rng.normal(1.0, 0.3, 30), rng.normal(2.0, 0.3, 5)])
    labels = np.array([0] * 40 + [1] * 10)
    scores = np.concatenate([rng.normal(1.0, 0.3, 40), rng.normal(1.8, 0.4, 10)])
    probs = to_probability(val_labels, val_scores, scores)
    assert probs.shape == (50, 2) and np.allclose(probs.sum(axis=1), 1.0)
    order = np.argsort(scores)
    assert np.all(np.diff(probs[order, 1]) > 0)  # strictly increasing in the score
    assert roc_auc_score(labels, probs[:, 1]) == roc_auc_score(labels, scores)
    assert to_probability(val_labels, val_scores, np.array([0.0, 5.0])).argmax(axis=1).tolist() == [0, 1]
    with pytest.raises(ValueError, match="only class"):
        to_probability(np.zeros(5), np.arange(5.0), scores)
    with pytest.raises(ValueError, match="minority below"):
        to_probability(val_labels, -val_scores, scores)

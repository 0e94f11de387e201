"""Shared frozen-body features give the numbers of running the body in every cell."""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from finalbn.config import AugmentConfig
from finalbn.data.augment import BatchAugment
from finalbn.data.tensors import augment_transform
from finalbn.train import features
from finalbn.train.cell import run_cell, shares_body

SPLITS = Path("data/splits")
TOL = 1e-5


@pytest.fixture(autouse=True)
def _memory_only(monkeypatch):
    """These tests count the body's images in one process: features kept on disk by an earlier test's
    cells would make a first cell warm. The disk tests below turn it on again."""
    monkeypatch.setenv("FINALBN_FEATURE_CACHE", "off")


@pytest.fixture
def disk(monkeypatch, tmp_path):
    """Features kept on disk, in a cache folder of this test's own."""
    monkeypatch.setenv("FINALBN_FEATURE_CACHE", "on")
    monkeypatch.setenv("FINALBN_CACHE", str(tmp_path / "own-cache"))


def _kept(split: str) -> list[Path]:
    return sorted((Path(os.environ["FINALBN_CACHE"]) / "features").glob(f"*-{split}.pt"))


def _close(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], float) and math.isnan(a[k]):
            assert math.isnan(b[k]), k
        else:
            assert a[k] == pytest.approx(b[k], abs=TOL), k


def _same(shared, unshared) -> None:
    assert shared.features == "shared" and unshared.features == "unshared"
    assert len(shared.fit.history) == len(unshared.fit.history)
    for a, b in zip(shared.fit.history, unshared.fit.history):
        _close(a, b)
    _close(shared.test_last, unshared.test_last)
    _close(shared.test_sel, unshared.test_sel)
    _close(shared.val_last, unshared.val_last)
    assert shared.fit.selected_epoch == unshared.fit.selected_epoch
    for p, q in zip(shared.predictions, unshared.predictions):
        assert p["p1_last"] == pytest.approx(q["p1_last"], abs=TOL)
        assert p["p1_sel"] == pytest.approx(q["p1_sel"], abs=TOL)


# head-side switches (BN, WL, WD) on the three kinds of body input: fixed, augmented, mixed
@pytest.mark.parametrize(
    "toggles",
    [
        ["ablation.bn=true", "ablation.wl=false", "ablation.wd=false"],
        ["ablation.bn=false", "ablation.wl=true", "ablation.wd=true", "ablation.da=true"],
        ["ablation.bn=true", "ablation.wl=true", "ablation.mx=true", "ablation.da=true"],
        # fastai's frozen BN in train mode (the paper profile): batch statistics, drifting running ones
        ["model.frozen_bn=train", "ablation.bn=true", "ablation.wl=false"],
        ["model.frozen_bn=train", "ablation.bn=false", "ablation.wl=true", "ablation.da=true"],
    ],
)
def test_shared_equals_unshared(prepared, toggles):
    load, _ = prepared
    features.CACHE.clear()
    shared = run_cell(load(toggles + ["train.share_features=true", "train.epochs=3"]), "synthetic-apple", SPLITS)
    unshared = run_cell(load(toggles + ["train.share_features=false", "train.epochs=3"]), "synthetic-apple", SPLITS)
    _same(shared, unshared)


def test_order_of_cells_does_not_change_a_draw(prepared):
    """A cell trained second on features another cell computed equals the same cell alone."""
    load, _ = prepared
    first = ["ablation.bn=false", "ablation.da=true", "ablation.mx=true"]
    second = ["ablation.bn=true", "ablation.wl=true", "ablation.da=true", "ablation.mx=true"]
    features.CACHE.clear()
    run_cell(load(first), "synthetic-apple", SPLITS)
    after = run_cell(load(second), "synthetic-apple", SPLITS)
    assert after.body_images == 0  # every feature came from the first cell's pass
    features.CACHE.clear()
    alone = run_cell(load(second), "synthetic-apple", SPLITS)
    assert alone.body_images > 0
    _same(after, run_cell(load(second + ["train.share_features=false"]), "synthetic-apple", SPLITS))
    for a, b in zip(after.fit.history, alone.fit.history):
        _close(a, b)


def test_replicates_and_input_switches_do_not_share(prepared):
    load, _ = prepared
    features.CACHE.clear()
    a = run_cell(load(["ablation.da=false"]), "synthetic-apple", SPLITS)
    b = run_cell(load(["ablation.da=false"]), "synthetic-apple", SPLITS, replicate=1)
    c = run_cell(load(["ablation.da=true"]), "synthetic-apple", SPLITS)
    assert a.body_images > 0 and b.body_images > 0 and c.body_images > 0


def test_what_shares(load):
    assert shares_body(load(["ablation.uf=false"]))
    assert shares_body(load(["ablation.uf=false", "model.frozen_bn=train"]))  # same batches, same statistics
    assert not shares_body(load(["ablation.uf=true"]))  # the body trains: nothing to share
    assert not shares_body(load(["train.share_features=false"]))


def test_a_stateful_body_is_the_groups_own(prepared):
    """With BN in train mode the running statistics drift: a group never touches the cached body,
    so a second group on the same body (here: DA on) starts from the same statistics."""
    load, _ = prepared
    features.CACHE.clear()
    augmented = load(["model.frozen_bn=train", "ablation.da=true"])
    a = run_cell(augmented, "synthetic-apple", SPLITS)
    features.CACHE.clear()
    run_cell(load(["model.frozen_bn=train", "ablation.da=false"]), "synthetic-apple", SPLITS)  # another group first
    b = run_cell(augmented, "synthetic-apple", SPLITS)
    assert len(features.CACHE._bodies) == 1  # both groups came from one cached body
    for x, y in zip(a.fit.history, b.fit.history):
        _close(x, y)


def test_shared_cell_returns_the_whole_network(prepared):
    load, _ = prepared
    features.CACHE.clear()
    r = run_cell(load(), "synthetic-apple", SPLITS)
    model = r.model
    assert model.bn_policy == "frozen-eval" and hasattr(model, "body") and model.final_bn is not None


@pytest.mark.parametrize("flip_vertical, lighting", [(True, 0.2), (False, 0.5), (True, 0.0)])
def test_batched_augmentation_gives_the_per_image_pipelines_draws_and_pixels(flip_vertical, lighting):
    """DA's batched pass (`finalbn.data.augment`) against torchvision's per-image transforms it replaces:
    the same generator state in, the same pixels and the same generator state out."""
    aug = AugmentConfig(flip_vertical=flip_vertical, rotate=10.0, zoom=1.1, lighting=lighting)
    g = torch.Generator().manual_seed(0)
    x = torch.nn.functional.avg_pool2d(torch.randint(0, 256, (300, 3, 40, 40), generator=g).float(), 3, 1, 1)
    x = x.round().to(torch.uint8)  # smooth images: brightness and contrast land on every kind of value
    per_image = augment_transform(aug)
    torch.manual_seed(7)
    want = torch.stack([per_image(img) for img in x])
    after_want = torch.get_rng_state()
    torch.manual_seed(7)
    got = BatchAugment(aug)(x)
    assert torch.equal(got, want) and torch.equal(torch.get_rng_state(), after_want)
    assert not torch.equal(got, x)
    with pytest.raises(ValueError, match="uint8"):
        BatchAugment(aug)(x.float())


def _identical(a, b) -> None:
    """Two cells' numbers to the bit (a disk hit is the tensor the body would have given)."""
    assert a.fit.history == b.fit.history and a.fit.selected_epoch == b.fit.selected_epoch
    assert np.array_equal(a.probs_last, b.probs_last) and np.array_equal(a.probs_sel, b.probs_sel)
    assert a.test_last == b.test_last and a.val_last == b.val_last


def test_features_kept_on_disk_give_a_later_process_the_same_cell_to_the_bit(prepared, disk, monkeypatch):
    load, _ = prepared
    features.CACHE.clear()
    first = run_cell(load(), "synthetic-apple", SPLITS)
    assert first.body_images > 0 and all(len(_kept(s)) == 1 for s in ("train", "val", "test"))
    features.CACHE.clear()  # a new process: nothing in memory
    again = run_cell(load(), "synthetic-apple", SPLITS)
    assert again.body_images == 0  # every feature read from disk
    _identical(first, again)
    # an augmented family reads its validation and test features, runs the body on its training epochs
    features.CACHE.clear()
    augmented = run_cell(load(["ablation.da=true"]), "synthetic-apple", SPLITS)
    assert augmented.body_images == first.train_size * augmented.fit.history[-1]["epoch"]
    monkeypatch.setenv("FINALBN_FEATURE_CACHE", "off")
    features.CACHE.clear()
    _identical(first, run_cell(load(), "synthetic-apple", SPLITS))  # and the body run again agrees


def test_another_thread_count_or_body_is_another_entry(prepared, disk):
    load, _ = prepared
    features.CACHE.clear()
    run_cell(load(["train.threads=1"]), "synthetic-apple", SPLITS)
    features.CACHE.clear()
    two = run_cell(load(["train.threads=2"]), "synthetic-apple", SPLITS)
    assert two.body_images > 0 and len(_kept("val")) == 2  # 1 and 2 threads round differently: two entries
    a = features.FrozenBody(features.BodyKey("efficientnet_lite0", "none", seed=0))
    b = features.FrozenBody(features.BodyKey("efficientnet_lite0", "none", seed=1))
    assert a.digest != b.digest and a.digest == features.FrozenBody(a.key).digest


def test_a_damaged_or_foreign_feature_file_is_computed_again(prepared, disk, caplog):
    load, _ = prepared
    features.CACHE.clear()
    first = run_cell(load(), "synthetic-apple", SPLITS)
    (train,), (val,), (test,) = _kept("train"), _kept("val"), _kept("test")
    train.write_bytes(b"truncated")
    val.write_bytes(test.read_bytes())  # another split's features: other rows and labels
    features.CACHE.clear()
    with caplog.at_level(logging.WARNING, logger="finalbn.train.features"):
        again = run_cell(load(), "synthetic-apple", SPLITS)
    assert again.body_images == first.train_size + len(first.val_predictions)  # train and val run again
    assert sum("could not be read" in r.getMessage() for r in caplog.records) == 2
    _identical(first, again)
    features.CACHE.clear()
    assert run_cell(load(), "synthetic-apple", SPLITS).body_images == 0  # both replaced by whole files

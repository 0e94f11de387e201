"""Head-only cells trained as one stack give each cell's one-at-a-time numbers."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from finalbn.train import features
from finalbn.train.cell import CellResult, run_cell
from finalbn.train.engine import TrainingDiverged
from finalbn.train.stacked import run_stacked, stack_groups, train_stacked, why_not_stacked

SPLITS = Path("data/splits")
DS = "synthetic-apple"
TOL = 1e-5
# 3 epochs of 2 steps (6 training images, batches of 4 and 2); a weight decay large enough that a
# cell decayed with another cell's rate, or not at all, moves its probabilities far beyond TOL
BASE = ["train.epochs=3", "train.weight_decay=1.0", "ablation.uf=false"]
WL_WD = [[f"ablation.wl={wl}", f"ablation.wd={wd}"] for wl in ("false", "true") for wd in ("false", "true")]


class Rows:
    """An epoch callback that keeps the rows it is handed."""

    def __init__(self) -> None:
        self.rows: list[tuple[int, dict]] = []

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        self.rows.append((epoch, metrics))


@pytest.fixture(autouse=True)
def _memory_only(monkeypatch):
    """Stacked and one-at-a-time cells are compared on the images their bodies ran (body_images):
    features kept on disk by the first would make the second's first cell warm."""
    monkeypatch.setenv("FINALBN_FEATURE_CACHE", "off")


def _close(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], float) and math.isnan(a[k]):
            assert math.isnan(b[k]), k
        else:
            assert a[k] == pytest.approx(b[k], abs=TOL), k


def _same(alone: CellResult, stacked: CellResult) -> None:
    """Everything a cell reports, to TOL."""
    assert (stacked.config_id, stacked.seed, stacked.features) == (alone.config_id, alone.seed, alone.features)
    assert stacked.fit.selected_epoch == alone.fit.selected_epoch
    assert len(stacked.fit.history) == len(alone.fit.history)
    for a, b in zip(alone.fit.history, stacked.fit.history):
        _close(a, b)
    np.testing.assert_allclose(stacked.probs_last, alone.probs_last, rtol=0, atol=TOL)
    np.testing.assert_allclose(stacked.probs_sel, alone.probs_sel, rtol=0, atol=TOL)
    _close(alone.test_last, stacked.test_last)
    _close(alone.test_sel, stacked.test_sel)
    _close(alone.val_last, stacked.val_last)
    assert (alone.temperature is None) == (stacked.temperature is None)
    if alone.temperature is not None:
        assert stacked.temperature == pytest.approx(alone.temperature, abs=TOL)
    assert stacked.fit.selected_state.keys() == alone.fit.selected_state.keys()
    for k, v in alone.fit.selected_state.items():
        torch.testing.assert_close(stacked.fit.selected_state[k], v, rtol=0, atol=TOL)
    assert stacked.class_weights == alone.class_weights
    assert stacked.body_images == alone.body_images
    assert stacked.fit.train_images == alone.fit.train_images


def _alone(cfgs) -> list[CellResult]:
    features.CACHE.clear()
    return [run_cell(c, DS, SPLITS) for c in cfgs]


def _stacked(cfgs, mode: str = "exact") -> tuple[list[CellResult], list[Rows]]:
    features.CACHE.clear()
    rows = [Rows() for _ in cfgs]
    return run_stacked(cfgs, DS, SPLITS, callbacks=[[r] for r in rows], mode=mode), rows


def _apart(a: CellResult, b: CellResult) -> float:
    """How far two cells' outcomes lie apart: their test probabilities, or their trained weights (a
    final BN standardises the logits, so on the tiny split weight decay moves the probabilities by
    ~5e-5 on some CPUs, its weights by far more)."""
    weights = max(float((a.model.state_dict()[k] - v).abs().max()) for k, v in b.model.state_dict().items())
    return max(float(np.abs(a.probs_last - b.probs_last).max()), weights)


def test_a_final_bn_family_with_wl_and_wd_mixed(prepared):
    load, _ = prepared
    cfgs = [load([*BASE, "ablation.bn=true", *v]) for v in WL_WD]
    alone = _alone(cfgs)
    stacked, rows = _stacked(cfgs)
    for a, s, r in zip(alone, stacked, rows):
        _same(a, s)
        assert r.rows == [(i + 1, row) for i, row in enumerate(s.fit.history)]  # each cell's own callbacks
        assert s.fit.history[-1]["final_bn_running_mean_0"] == pytest.approx(
            a.fit.history[-1]["final_bn_running_mean_0"], abs=TOL
        )
    # the test can fail: WL and WD each move a cell's numbers far beyond TOL
    assert _apart(alone[0], alone[1]) > 10 * TOL and _apart(alone[0], alone[2]) > 10 * TOL
    assert alone[0].body_images > 0 and all(r.body_images == 0 for r in alone[1:])


def test_a_family_without_final_bn_with_the_baselines(prepared):
    load, _ = prepared
    off = [*BASE, "ablation.bn=false"]
    cfgs = [load(off + v) for v in WL_WD[1:3]]
    cfgs += [load([*off, f"train.loss={loss}"]) for loss in ("focal", "logit_adjusted", "class_balanced")]
    cfgs.append(load([*off, "train.calibration=temperature"]))
    alone = _alone(cfgs)
    stacked, _ = _stacked(cfgs)
    for a, s in zip(alone, stacked):
        _same(a, s)
    assert stacked[-1].temperature is not None
    assert min(_apart(alone[2], a) for a in alone[3:5]) > 10 * TOL  # each loss its own


@pytest.mark.parametrize(
    "family",
    [["ablation.mx=true"], ["ablation.da=true", "model.frozen_bn=train"]],
    ids=["mixup", "augmented-fastai-bn"],
)
def test_mixup_and_augmented_families(prepared, family):
    load, _ = prepared
    cfgs = [load([*BASE, *family, "ablation.bn=true", *v]) for v in (WL_WD[0], WL_WD[3])]
    for a, s in zip(_alone(cfgs), _stacked(cfgs)[0]):
        _same(a, s)


def test_vmap_mode_equals_alone_over_an_epoch(prepared):
    """mode vmap: one batched forward of all heads; its kernels round otherwise than one head's,
    so over one epoch it equals the cells alone to TOL (over many epochs, as a thread count
    does, the rounding grows)."""
    load, _ = prepared
    cfgs = [load([*BASE, "train.epochs=1", "ablation.bn=true", *v]) for v in WL_WD]
    alone = _alone(cfgs)
    for a, s in zip(alone, _stacked(cfgs, mode="vmap")[0]):
        _same(a, s)
    assert _apart(alone[0], alone[2]) > 10 * TOL  # per-cell decay: far beyond TOL when wrong


def test_a_diverged_cell_ends_alone_and_the_others_train_on(prepared):
    load, _ = prepared
    cfgs = [
        load([*BASE, "train.weight_decay=1e300", "ablation.bn=true", f"ablation.wd={wd}"]) for wd in ("false", "true")
    ]
    features.CACHE.clear()
    healthy = run_cell(cfgs[0], DS, SPLITS)
    with pytest.raises(TrainingDiverged):
        run_cell(cfgs[1], DS, SPLITS)
    features.CACHE.clear()
    out = train_stacked(cfgs, DS, SPLITS)
    assert isinstance(out[0], CellResult) and isinstance(out[1], TrainingDiverged)
    _same(healthy, out[0])
    with pytest.raises(TrainingDiverged):
        run_stacked(cfgs, DS, SPLITS)


def test_cells_that_cannot_stack_say_why(prepared):
    load, _ = prepared
    bn = load([*BASE, "ablation.bn=true"])
    cases = {
        "UF on": [bn, load([*BASE, "ablation.uf=true"])],
        "share_features is off": [load([*BASE, "train.share_features=false"])],
        "different head architectures (final layer bn vs none)": [bn, load([*BASE, "ablation.bn=false"])],
        "not of one family (ablation.da": [bn, load([*BASE, "ablation.bn=true", "ablation.da=true"])],
        "not of one family (train.lr": [bn, load([*BASE, "ablation.bn=true", "train.lr=0.1"])],
    }
    for words, cfgs in cases.items():
        assert words in (why_not_stacked(cfgs, DS) or "")
        with pytest.raises(ValueError, match="cannot train stacked"):
            run_stacked(cfgs, DS, SPLITS)
    assert why_not_stacked([bn, load([*BASE, "ablation.bn=true", "ablation.wl=true", "train.loss=focal"])], DS) is None
    with pytest.raises(ValueError, match="callback lists"):
        run_stacked([bn, bn], DS, SPLITS, callbacks=[[]])
    with pytest.raises(ValueError, match="mode must be one of"):
        run_stacked([bn], DS, SPLITS, mode="fast")


def test_stack_groups(load):
    on = [load(["ablation.bn=true", f"ablation.wl={w}"]) for w in ("false", "true")]
    off = load(["ablation.bn=false"])
    uf = load(["ablation.uf=true"])
    cells = [(on[0], DS, 0), (off, DS, 0), (on[1], DS, 0), (uf, DS, 0), (on[0], DS, 1), (on[1], DS, 0)]
    assert stack_groups(cells) == [[0, 2, 5], [1], [3], [4]]  # a replicate is its own family
    assert stack_groups(cells, limit=2) == [[0, 2], [1], [3], [4], [5]]
    with pytest.raises(ValueError, match="at least one cell"):
        stack_groups(cells, limit=0)

"""Trained heads kept in memory, so that a post-hoc cell right after its base cell trains nothing.

    fitted = HEADS.fit_or_reuse(setup, inputs, callbacks, lambda: engine.fit(...))

A post-hoc method (`train.posthoc`, `train.calibration`) changes a trained head's outputs only: its
cell trains what its base cell trains (same split, seed, batches, dropout draws and settings), so a
process that has just trained the base reuses that head — its last-epoch state, its FitResult and
its epoch rows, replayed to the cell's callbacks — and the cell costs its post-hoc step alone. The
grid runs a base cell and its post-hoc cells one after another (`share_order`: the base's empty
baseline sorts first). A reused cell reports `train_seconds` 0 and `train_images` 0 (it trained
nothing); its numbers are those it would train to, as training is deterministic given its seed.
Only head-only cells (the shared path) are kept: a few MB each, `max_entries` at a time.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import torch

from finalbn.config import NOT_RESULT_PARAMS, flatten, to_dict
from finalbn.train.engine import Callback, FitResult

# train.* keys that leave a cell's training alone: applied to the trained head afterwards
AFTER_TRAINING = ("train.posthoc", "train.calibration")


def after_training(cfg: Any) -> bool:
    """Whether a cell's config changes its trained head after training (`AFTER_TRAINING` set)."""
    return cfg.train.posthoc != "none" or cfg.train.calibration != "none"


def training_identity(setup: Any, share_key: tuple) -> tuple:
    """What fixes a head-only cell's training: its shared features' key, dataset and replicate, and
    every result-changing config value but the post-hoc ones (`AFTER_TRAINING`)."""
    flat = flatten(to_dict(setup.cfg))
    kept = sorted((k, repr(v)) for k, v in flat.items() if k not in AFTER_TRAINING and k not in NOT_RESULT_PARAMS)
    return (share_key, setup.ds.name, setup.replicate, setup.seed, tuple(kept))


class TrainedHeads:
    """The last `max_entries` trained heads: identity -> (FitResult, last-epoch state)."""

    def __init__(self, max_entries: int = 2) -> None:
        self.max_entries = max_entries
        self._kept: OrderedDict[tuple, tuple[FitResult, dict[str, torch.Tensor]]] = OrderedDict()
        self.reused = 0

    def fit_or_reuse(
        self,
        identity: tuple | None,
        model: torch.nn.Module,
        callbacks: Sequence[Callback],
        train: Callable[[], FitResult],
        reuse: bool = True,
    ) -> FitResult:
        """`train()`'s FitResult, or (`reuse` and `identity` kept) the kept head loaded into `model`,
        its epoch rows replayed to `callbacks`, `train_seconds` and `train_images` 0. `identity` None:
        train, keep nothing. Only a post-hoc cell reuses (`reuse`); every trained head is kept."""
        if identity is None or self.max_entries < 1:
            return train()
        hit = self._kept.get(identity) if reuse else None
        if hit is None:
            fitted = train()
            self._kept[identity] = (fitted, {k: v.detach().clone() for k, v in model.state_dict().items()})
            self._kept.move_to_end(identity)
            while len(self._kept) > self.max_entries:
                self._kept.popitem(last=False)
            return fitted
        self._kept.move_to_end(identity)
        fitted, state = hit
        model.load_state_dict(state)
        for epoch, row in enumerate(fitted.history, start=1):
            for cb in callbacks:
                cb.on_epoch_end(epoch, dict(row))
        self.reused += 1
        return dataclasses.replace(fitted, train_seconds=0.0, train_images=0)

    def clear(self) -> None:
        self._kept.clear()


HEADS = TrainedHeads()

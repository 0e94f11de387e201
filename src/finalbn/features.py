"""Frozen-body features, computed once and shared by the cells that see the same body inputs.

With UF off (and the body kept in eval mode, `model.frozen_bn: eval`) the body is a fixed
function of the image. Cells that differ only in head-side switches (BN, WL, WD) and share the
replicate, DA and MX feed it the same images in the same order — the `TrainPlan` draws order,
augmentation and MixUp from its own seeded streams — so the body runs once for all of them:

    shared = features.shared_features(plan, splits, body_key)   # cached in this process
    for x, target in shared.train(epoch): ...                   # pooled (B, 2nf) features
    shared.val, shared.test                                     # [(features, labels)]

Without augmentation and MixUp the training images are the same every epoch: their features are
computed once per split and each epoch indexes them in its own order. With either, each epoch's
batches are passed through the body once, when the first cell asks, and kept for the others.
Validation and test features are computed once per split. The pool (fastai's concat pool) and
flatten run here, so the head trains on (B, 2nf) vectors (`models.HeadOnFeatures`).
"""
from __future__ import annotations

import collections
from dataclasses import dataclass, field

import torch
from torch import nn

from finalbn.data import EvalBatches, SplitTensors, TrainPlan
from finalbn.models import AdaptiveConcatPool2d, create_model

Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class BodyKey:
    """What fixes the body as a function: arch, weights (resolved path or name), device, and the
    seed of a randomly initialised body (`weights="none"`; None otherwise)."""

    arch: str
    weights: str
    seed: int | None = None
    device: str = "cpu"
    channels_last: bool = True
    bf16: bool = False


class FrozenBody(nn.Module):
    """The pretrained body in eval mode followed by the head's concat pool: image -> (B, 2nf)."""

    def __init__(self, key: BodyKey) -> None:
        super().__init__()
        with torch.random.fork_rng(devices=[]):  # a random body draws as the unshared path's does
            torch.default_generator.manual_seed(key.seed or 0)
            net = create_model(key.arch, weights=key.weights, final="none")
        self.body = net.body.eval()
        self.nf = net.nf
        self.pool = AdaptiveConcatPool2d()
        self.key = key
        self.to(torch.device(key.device))
        if key.channels_last:
            self.to(memory_format=torch.channels_last)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "FrozenBody":
        return super().train(False)  # always a fixed function

    @torch.no_grad()  # not inference mode: the features are inputs of autograd-tracked heads
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(torch.device(self.key.device), non_blocking=True)
        if self.key.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=self.key.bf16):
            return self.pool(self.body(x)).flatten(1).float()


@dataclass
class SharedFeatures:
    """The body's pooled features of one training plan and its validation and test splits."""

    plan: TrainPlan
    body: FrozenBody
    val: list[Batch]
    test: list[Batch]
    _fixed: torch.Tensor | None = None  # train features when every epoch sees the same images
    _epochs: dict[int, list[Batch]] = field(default_factory=dict)
    body_images: int = 0  # images passed through the body so far (the shared cost)

    def train(self, epoch: int) -> list[Batch]:
        """The epoch's training batches as (features, target), in the plan's order."""
        if not self.plan.varies:
            if self._fixed is None:
                self._fixed = _run(self.body, EvalBatches(self.plan.split, self.plan.mean, self.plan.std,
                                                          device=self.plan.device))[0]
                self.body_images += len(self.plan.labels)
            labels = self.plan.labels.to(self._fixed.device)
            return [(self._fixed[idx.to(self._fixed.device)], labels[idx.to(labels.device)])
                    for idx in self.plan.batches(epoch)]
        if epoch not in self._epochs:
            out = []
            for x, target in self.plan.inputs(epoch):
                out.append((self.body(x), target))
                self.body_images += len(target)
            self._epochs[epoch] = out
        return self._epochs[epoch]


def _run(body: FrozenBody, batches: EvalBatches) -> tuple[torch.Tensor, torch.Tensor]:
    feats, labels = [], []
    for x, y in batches:
        feats.append(body(x))
        labels.append(y)
    return torch.cat(feats), torch.cat(labels)


class FeatureCache:
    """In-process cache: bodies by `BodyKey`, shared features by (body, plan, splits) key, least
    recently used first out (a grid shard runs the cells of one share group one after another)."""

    def __init__(self, max_entries: int = 2) -> None:
        self.max_entries = max_entries
        self._bodies: dict[BodyKey, FrozenBody] = {}
        self._features: collections.OrderedDict[tuple, SharedFeatures] = collections.OrderedDict()
        self.hits = self.misses = 0

    def body(self, key: BodyKey) -> FrozenBody:
        if key not in self._bodies:
            self._bodies.clear()  # one body at a time: a grid runs one arch after another
            self._bodies[key] = FrozenBody(key)
        return self._bodies[key]

    def get(self, share_key: tuple, plan: TrainPlan, splits: dict[str, SplitTensors], body_key: BodyKey) -> SharedFeatures:
        if share_key in self._features:
            self.hits += 1
            self._features.move_to_end(share_key)
            return self._features[share_key]
        self.misses += 1
        body = self.body(body_key)
        evals = {}
        for name in ("val", "test"):
            feats, labels = _run(body, EvalBatches(splits[name], plan.mean, plan.std, device=plan.device))
            evals[name] = [(feats, labels)]
        shared = SharedFeatures(plan, body, evals["val"], evals["test"],
                                body_images=len(splits["val"].labels) + len(splits["test"].labels))
        self._features[share_key] = shared
        while len(self._features) > self.max_entries:
            self._features.popitem(last=False)
        return shared

    def clear(self) -> None:
        self._bodies.clear()
        self._features.clear()


CACHE = FeatureCache()

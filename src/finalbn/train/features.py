"""Frozen-body features, computed once and shared by the cells that see the same body inputs.

With UF off the body's parameters are frozen. Cells that differ only in head-side switches (BN,
WL, WD) and share the replicate, DA and MX feed it the same images in the same order — the
`TrainPlan` draws order, augmentation and MixUp from its own seeded streams — so the body runs
once for all of them:

    shared = features.CACHE.get(share_key, plan, splits, body_key)   # kept in this process
    for x, target in shared.train(epoch): ...                        # pooled (B, 2nf) features
    shared.val_at(epoch), shared.test_at(epoch)                      # [(features, labels)]

Body in eval mode (`model.frozen_bn: eval`, the default): a fixed function of the image. Without
augmentation and MixUp the training images are the same every epoch: their features are
computed once per split and each epoch indexes them in its own order; with either, each epoch's
batches pass through the body once, when the first cell asks, and are kept for the others.
Validation and test features are computed once per split.

Body BN layers in train mode (`model.frozen_bn: train`, fastai's semantics, the paper profile):
each training batch is normalised with its own statistics and the running statistics drift, so
the body is a function of the batch sequence — which is the same for the group's cells. Epochs
are computed in order, each epoch's batches in train mode, then validation and test features
with the running statistics of that epoch. The group owns its copy of the body.

The pool (fastai's concat pool) and flatten run here, so the head trains on (B, 2nf) vectors
(`models.HeadOnFeatures`).

On disk: a fixed body's features of a split's fixed images (train in split order, val, test) are also
kept in the cache folder (`FINALBN_CACHE`, `<cache>/features/<key>-<split>.pt`), so that the
processes of later stages (the search's trials, the sensitivity stage's levels, the export) read
what the grid's computed instead of running the body again. The key names everything the numbers
depend on: the decoded tensors' content (`source`, the decode cache's name), the body's parameters
and buffers (a digest of its state), the normalisation, the device, memory format, bf16, torch's
thread count (1 and 2 threads round differently) and the code versions (torch, torchvision, this
module and the model code): a hit is the tensor this process would have computed, to the bit.
`FINALBN_FEATURE_CACHE=off` keeps them in memory only (what `finalbn bench` measures: the body's cost).
"""

from __future__ import annotations

import collections
import copy
import functools
import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torchvision
from torch import nn

from finalbn.data.tensors import EvalBatches, SplitTensors, TrainPlan, cache_root, decode_settings, decoded_cache_path
from finalbn.infra.io import atomic_path
from finalbn.models import AdaptiveConcatPool2d, HeadSpec, create_model, head, network, registry

log = logging.getLogger(__name__)

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
    bn_train: bool = False  # body BN layers normalise with batch statistics in training (fastai)


class FrozenBody(nn.Module):
    """The pretrained body (frozen parameters) followed by the head's concat pool: image -> (B, 2nf).

    `forward(x)` evaluates (eval mode); `forward(x, training=True)` runs a training batch — the same
    as eval unless `key.bn_train`, where BN layers use the batch's statistics and update their
    running ones."""

    def __init__(self, key: BodyKey) -> None:
        super().__init__()
        with torch.random.fork_rng(devices=[]):  # a random body draws as the unshared path's does
            torch.default_generator.manual_seed(key.seed or 0)
            net = create_model(key.arch, weights=key.weights, head=HeadSpec(final="none"))
        self.body = net.body
        self.nf = net.nf
        self.pool = AdaptiveConcatPool2d()
        self.key = key
        self.to(torch.device(key.device))
        if key.channels_last:
            self.to(memory_format=torch.channels_last)
        self.requires_grad_(False)
        self.eval()
        self._digest: str | None = None

    @property
    def digest(self) -> str:
        """sha256 (hex, 24 characters) of the body's parameters and buffers: what fixes it as a function."""
        if self._digest is None:
            h = hashlib.sha256()
            for name, t in self.body.state_dict().items():
                h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
                h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
            self._digest = h.hexdigest()[:24]
        return self._digest

    @torch.no_grad()  # not inference mode: the features are inputs of autograd-tracked heads
    def forward(self, x: torch.Tensor, training: bool = False) -> torch.Tensor:
        self.body.train(training and self.key.bn_train)
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
    splits: dict[str, SplitTensors]
    _eval: dict[str, list[Batch]] = field(default_factory=dict)  # fixed body: val/test once
    _fixed: torch.Tensor | None = None  # fixed body, fixed images: train features once
    _epochs: dict[int, list[Batch]] = field(default_factory=dict)
    _evals_at: dict[int, dict[str, list[Batch]]] = field(default_factory=dict)  # BN in train mode
    body_images: int = 0  # images passed through the body so far (the shared cost)
    source: str | None = None  # the decoded tensors' identity (`decoded_cache_path` stem): kept on disk

    @property
    def stateful(self) -> bool:
        return self.body.key.bn_train

    def train(self, epoch: int) -> list[Batch]:
        """The epoch's training batches as (features, target), in the plan's order."""
        if not self.stateful and not self.plan.varies:
            if self._fixed is None:
                self._fixed = self._run("train")[0][0]
            labels = self.plan.labels.to(self._fixed.device)
            return [
                (self._fixed[idx.to(self._fixed.device)], labels[idx.to(labels.device)])
                for idx in self.plan.batches(epoch)
            ]
        self._advance(epoch)
        return self._epochs[epoch]

    def train_eval(self) -> list[Batch]:
        """The training split's features in split order, body in eval mode (no augmentation)."""
        return self._run("train")

    def val_at(self, epoch: int) -> list[Batch]:
        return self._eval_at("val", epoch)

    def test_at(self, epoch: int) -> list[Batch]:
        return self._eval_at("test", epoch)

    def _eval_at(self, split: str, epoch: int) -> list[Batch]:
        if self.stateful:  # the running statistics after `epoch` epochs
            self._advance(epoch)
            return self._evals_at[epoch][split]
        if split not in self._eval:
            self._eval[split] = self._run(split)
        return self._eval[split]

    def _advance(self, epoch: int) -> None:
        """Compute epochs in order up to `epoch` (a stateful body's output depends on all before)."""
        done = max(self._epochs, default=0)
        for e in range(done + 1, epoch + 1):
            out = []
            for x, target in self.plan.inputs(e):
                out.append((self.body(x, training=True), target))
                self.body_images += len(target)
            self._epochs[e] = out
            if self.stateful:
                self._evals_at[e] = {s: self._run(s) for s in ("val", "test")}

    def _run(self, split: str) -> list[Batch]:
        """A split's features in split order (body in eval mode): from disk when a fixed body's were
        kept there (`disk_path`), else computed (and kept)."""
        batches = EvalBatches(self.splits[split], self.plan.mean, self.plan.std, device=self.plan.device)
        kept = not self.stateful and self.source is not None and disk_enabled()
        path = disk_path(self, split, batches.batch_size) if kept else None
        if path is not None and path.is_file():
            got = _read(path, self.splits[split].labels, 2 * self.body.nf)
            if got is not None:
                return [(got.to(torch.device(self.plan.device)), self.splits[split].labels.to(got.device))]
        feats, labels = [], []
        for x, y in batches:
            feats.append(self.body(x))
            labels.append(y)
        self.body_images += len(self.splits[split].labels)
        out = (torch.cat(feats), torch.cat(labels))
        if path is not None:
            _write(path, out[0], self.splits[split].labels, self.source or "", self.body.key.arch)
        return [out]


# ---------------------------------------------------------------- on disk


@functools.lru_cache(maxsize=1)
def _code_version() -> str:
    """The code that turns images into features: torch, torchvision, this module, the model code."""
    h = hashlib.sha256(f"{torch.__version__}|{torchvision.__version__}".encode())
    for module in (__file__, head.__file__, network.__file__, registry.__file__):
        h.update(Path(module).read_bytes())
    return h.hexdigest()[:12]


def disk_enabled() -> bool:
    """Whether fixed bodies' features are kept on disk (`FINALBN_FEATURE_CACHE`, on unless `off`)."""
    return os.environ.get("FINALBN_FEATURE_CACHE", "on").strip().lower() != "off"


def disk_path(shared: SharedFeatures, split: str, batch_size: int) -> Path:
    """`<cache>/features/<key>-<split>.pt`: the key hashes every input of the features' numbers."""
    k = shared.body.key
    parts = [
        shared.source,
        k.arch,
        shared.body.digest,
        k.device,
        k.channels_last,
        k.bf16,
        list(shared.plan.mean),
        list(shared.plan.std),
        batch_size,
        torch.get_num_threads(),
        _code_version(),
    ]
    key = hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()[:32]
    return cache_root() / "features" / f"{key}-{split}.pt"


def _read(path: Path, labels: torch.Tensor, width: int) -> torch.Tensor | None:
    """The features kept at `path` when they match the split (rows, labels, width); else None."""
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
        feats = raw["features"]
        if feats.dtype != torch.float32 or tuple(feats.shape) != (len(labels), width):
            raise ValueError("shape does not match the split")
        if not torch.equal(raw["labels"], labels.cpu()):
            raise ValueError("labels do not match the split")
        return feats
    except Exception as exc:  # a truncated or foreign file: computed again and replaced
        log.warning("feature cache %s could not be read (%s); running the body again", path, exc)
        return None


def _write(path: Path, feats: torch.Tensor, labels: torch.Tensor, source: str, arch: str) -> None:
    try:
        with atomic_path(path) as tmp:  # a concurrent reader sees no file or the whole one
            torch.save({"features": feats.detach().cpu(), "labels": labels.cpu()}, tmp)
        hint = hint_path(source, arch)
        hint.parent.mkdir(parents=True, exist_ok=True)
        hint.touch()
    except OSError as exc:  # a read-only or full cache folder costs speed, not results
        log.warning("feature cache %s could not be written (%s)", path, exc)


def hint_path(source: str, arch: str) -> Path:
    """A marker that some process kept `arch`'s features of the tensors `source` (pricing reads it)."""
    return cache_root() / "features" / "seen" / f"{source}-{arch}"


def source_of(manifest: Path, image_size: int) -> str:
    """The identity of a split's decoded tensors: the decode cache's file stem (manifest content,
    size, intensity rule, decoder version)."""
    return decoded_cache_path(manifest, image_size, decode_settings(manifest)[0]).stem


def on_disk(manifest: Path, image_size: int, arch: str) -> bool:
    """Whether a process has kept `arch`'s features of this split at this size (a pricing hint:
    another thread count or weights would still compute them)."""
    return manifest.is_file() and hint_path(source_of(manifest, image_size), arch).is_file()


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

    def get(
        self,
        share_key: tuple,
        plan: TrainPlan,
        splits: dict[str, SplitTensors],
        body_key: BodyKey,
        source: str | None = None,
    ) -> SharedFeatures:
        """The shared features of `share_key` (made here on a miss); `source` names the splits'
        decoded tensors, so that a fixed body's features are also kept on disk (None: memory only)."""
        if share_key in self._features:
            self.hits += 1
            self._features.move_to_end(share_key)
            return self._features[share_key]
        self.misses += 1
        body = self.body(body_key)
        if body_key.bn_train:  # its running statistics will drift: the group's own copy
            body = copy.deepcopy(body)
        shared = SharedFeatures(plan, body, splits, source=source)
        self._features[share_key] = shared
        while len(self._features) > self.max_entries:
            self._features.popitem(last=False)
        return shared

    def clear(self) -> None:
        self._bodies.clear()
        self._features.clear()


CACHE = FeatureCache()

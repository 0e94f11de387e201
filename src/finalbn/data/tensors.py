"""Split tensors, their on-disk decode cache, the transforms, and what a cell trains and evaluates on.

    splits = load_splits("data/splits/synthetic-apple/0/manifest.csv", image_size=64)
    plan = TrainPlan(splits["train"], batch_size=64, seed=0, augment=cfg.train.augment,
                     mixup_alpha=0.4, mean=spec.mean, std=spec.std)
    for x, target in plan.inputs(epoch):   # normalised images; target: labels or MixUp soft labels
        ...
    for x, y in EvalBatches(splits["val"], mean=spec.mean, std=spec.std):
        ...

Images are decoded once per (manifest, image size, intensity) into uint8 tensors and cached on
disk, in a content-addressed file `<cache>/decoded/<manifest sha256>-<size>-<intensity>-<decoder>.pt`
(`FINALBN_CACHE`, default `.cache/finalbn`): worker processes and later stages read tensors, never
images. The manifest holds every file's sha256, so its hash names the content. A cache file that
cannot be read is rebuilt. The intensity and pixel limit are those prepare recorded in the
split.json beside the manifest (`decode_settings`), so every caller decodes as prepare validated.

A `TrainPlan` draws the data order, augmentation (on tensors, on the plan's device) and MixUp
from its own seeded streams (`finalbn.config.seeds`): the same epoch gives the same inputs whoever asks,
which is what lets cells share one pass of a frozen body.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2
from tqdm import tqdm

from finalbn.config import AugmentConfig
from finalbn.config.seeds import AUGMENT, MIXUP, ORDER, SAMPLER, stream_seed
from finalbn.data.augment import BatchAugment
from finalbn.data.splits import SPLITS, read_manifest, sha256_file
from finalbn.infra.errors import DataError
from finalbn.infra.io import atomic_path
from finalbn.models import IMAGENET_MEAN, IMAGENET_STD
from finalbn_field import depth as depth_source
from finalbn_field import images as images_source
from finalbn_field.images import MAX_PIXELS, BadImage, Intensity, load_rgb, resize_square, unescape_name

log = logging.getLogger(__name__)

# mean/std default to torchvision's ImageNet statistics; each backbone's own comes from its
# registry spec (`finalbn.models.get_spec(arch).mean/std`) and is passed in.
Stats = tuple[float, float, float]
# Evaluation batch size by device, measured (`finalbn bench`): on this CPU lite0 at 64 px evaluates
# fastest at batch 64 (larger batches fall out of cache); a GPU fills only with large batches.
EVAL_BATCH = {"cpu": 64, "cuda": 512}


@dataclass(frozen=True)
class SplitTensors:
    """One split in memory: images (N, 3, H, W) uint8, labels (N,) int64, their paths and source
    classes (the folder each image came from: the disease kind of a minority image)."""

    images: torch.Tensor
    labels: torch.Tensor
    paths: tuple[str, ...]
    sources: tuple[str, ...] = ()


def decode_images(
    paths: Sequence[str],
    image_size: int,
    progress: bool = False,
    intensity: Intensity = "auto",
    max_pixels: int = MAX_PIXELS,
) -> torch.Tensor:
    """(N, 3, image_size, image_size) uint8 images of `paths` as manifests write them (escaped
    names, `images.unescape_name`), decoded with `intensity` (a JPEG at reduced scale for
    image_size, as the field does). Raises DataError, one line naming the file, for one that cannot
    be used (gone, or changed since `finalbn prepare` checked it)."""
    out = torch.empty((len(paths), 3, image_size, image_size), dtype=torch.uint8)
    for i, p in enumerate(tqdm(paths, desc="decode", unit="img", disable=not progress)):
        try:
            img = load_rgb(unescape_name(p), max_pixels, intensity, image_size)
        except BadImage as exc:
            raise DataError(
                f"{p}: {exc}: the split names an image that is gone or changed since `finalbn prepare` "
                "drew it (run prepare again)"
            ) from None
        arr = np.array(resize_square(img, image_size))  # (H, W, 3) uint8, writable copy
        out[i] = torch.from_numpy(arr).permute(2, 0, 1)
    return out


# ---------------------------------------------------------------- the decode cache


def cache_root() -> Path:
    return Path(os.environ.get("FINALBN_CACHE") or ".cache/finalbn")


@functools.lru_cache(maxsize=1)
def _decoder_version() -> str:
    """Hash of the code that turns a file into a tensor: a change there is a new cache entry."""
    h = hashlib.sha256()
    for path in (images_source.__file__, depth_source.__file__, __file__):  # the decoder (field package) and this
        h.update(Path(path).read_bytes())
    return h.hexdigest()[:12]


def decode_settings(manifest: str | Path) -> tuple[Intensity, int]:
    """(intensity, max_pixels) that prepare recorded in the split.json beside `manifest`
    ("auto" and images.MAX_PIXELS for a split.json without them)."""
    path = Path(manifest).with_name("split.json")
    split = json.loads(path.read_text()) if path.is_file() else {}
    intensity = split.get("intensity", "auto")
    return (intensity if isinstance(intensity, str) else tuple(intensity)), split.get("max_pixels", MAX_PIXELS)


def decoded_cache_path(manifest: str | Path, image_size: int, intensity: Intensity = "auto") -> Path:
    rule = intensity.replace(":", "") if isinstance(intensity, str) else "{:g}-{:g}".format(*intensity)  # auto12
    return cache_root() / "decoded" / f"{sha256_file(manifest)[:32]}-{image_size}-{rule}-{_decoder_version()}.pt"


def _decode_manifest(
    manifest: str, image_size: int, progress: bool, intensity: Intensity, max_pixels: int
) -> dict[str, SplitTensors]:
    rows = read_manifest(manifest)
    out = {}
    for split in SPLITS:
        part = [r for r in rows if r["split"] == split]
        paths = tuple(r["path"] for r in part)
        out[split] = SplitTensors(
            decode_images(paths, image_size, progress, intensity, max_pixels),
            torch.tensor([r["label"] for r in part], dtype=torch.int64),
            paths,
            tuple(r.get("source_class", "") for r in part),
        )
    return out


def _read_cache(path: Path, image_size: int) -> dict[str, SplitTensors] | None:
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
        out = {
            s: SplitTensors(raw[s]["images"], raw[s]["labels"], tuple(raw[s]["paths"]), tuple(raw[s]["sources"]))
            for s in SPLITS
        }
        for s in out.values():
            if (
                s.images.dtype != torch.uint8
                or tuple(s.images.shape[1:]) != (3, image_size, image_size)
                or len(s.images) != len(s.labels)
                or len(s.paths) != len(s.labels)
            ):
                raise ValueError("tensor shapes do not match")
        return out
    except Exception as exc:  # a truncated or foreign file: decode again and replace it
        log.warning("decode cache %s could not be read (%s); decoding the images again", path, exc)
        return None


def _write_cache(path: Path, splits: dict[str, SplitTensors]) -> None:
    with atomic_path(path) as tmp:  # a concurrent reader sees the old file or the whole new one
        torch.save(
            {
                s: {"images": t.images, "labels": t.labels, "paths": list(t.paths), "sources": list(t.sources)}
                for s, t in splits.items()
            },
            tmp,
        )


@functools.lru_cache(maxsize=4)
def _load_cached(
    manifest: str, mtime_ns: int, image_size: int, progress: bool, intensity: Intensity, max_pixels: int
) -> dict[str, SplitTensors]:
    path = decoded_cache_path(manifest, image_size, intensity)
    if path.is_file():
        got = _read_cache(path, image_size)
        if got is not None:
            return got
    out = _decode_manifest(manifest, image_size, progress, intensity, max_pixels)
    try:
        _write_cache(path, out)
    except OSError as exc:  # a read-only cache folder costs speed, not results
        log.warning("decode cache %s could not be written (%s)", path, exc)
    return out


def load_splits(manifest: str | Path, image_size: int, progress: bool = False) -> dict[str, SplitTensors]:
    """train/val/test tensors of a manifest: from memory, else the on-disk cache, else decoded
    (and cached), with the intensity and pixel limit of the split.json beside it."""
    path = Path(manifest)
    if not path.is_file():
        raise FileNotFoundError(f"manifest {path} does not exist: run `finalbn prepare` (or `dvc repro`) first")
    return _load_cached(str(path.resolve()), path.stat().st_mtime_ns, image_size, progress, *decode_settings(path))


# ---------------------------------------------------------------- transforms


def eval_transform(mean: tuple[float, ...] = IMAGENET_MEAN, std: tuple[float, ...] = IMAGENET_STD) -> v2.Transform:
    return v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)])


def augment_transform(aug: AugmentConfig) -> v2.Transform:
    """DA on: flips, small rotation, zoom and lighting (fastai's get_transforms, in torchvision
    v2), uint8 -> uint8 on one image (any device)."""
    steps: list[v2.Transform] = [v2.RandomHorizontalFlip()]
    if aug.flip_vertical:
        steps.append(v2.RandomVerticalFlip())
    steps += [
        v2.RandomAffine(degrees=aug.rotate, scale=(1.0, aug.zoom)),
        v2.ColorJitter(brightness=aug.lighting, contrast=aug.lighting),
    ]
    return v2.Compose(steps)


def train_transform(aug: AugmentConfig | None, mean: Stats = IMAGENET_MEAN, std: Stats = IMAGENET_STD) -> v2.Transform:
    """The augmentation (when `aug` is given) followed by the eval transform."""
    if aug is None:
        return eval_transform(mean, std)
    return v2.Compose([augment_transform(aug), eval_transform(mean, std)])


# ---------------------------------------------------------------- what a cell trains and evaluates on


def _to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t


@dataclass
class TrainPlan:
    """The training inputs of every epoch, from the plan's own seeded streams.

    batches(epoch): the epoch's index batches, by `sampler`: "shuffle", a seeded permutation of the
      split; "class_balanced" (Kang et al. ICLR 2020's class-balanced sampling), as many indices
      as the split has images drawn with replacement, each class present equally likely, then
      uniform within it (minority images repeat). Each draws from its own stream of the epoch
      (`seeds.ORDER`, `seeds.SAMPLER`); never a batch of 1, which BatchNorm cannot train on.
    inputs(epoch): (x (B, 3, H, W) float, normalised with mean/std; target) per batch — target is
      (B,) labels, or (B, C) soft labels when MixUp is on (torchvision's MixUp: one lambda ~
      Beta(alpha, alpha) per batch, mixed with the batch rolled by one).
    varies: whether the images differ between epochs (augmentation or MixUp): a shared frozen
      body must then run once per epoch, else once.
    """

    SAMPLERS = ("shuffle", "class_balanced")  # how `batches` draws an epoch's order (no annotation: not a field)

    split: SplitTensors
    batch_size: int
    seed: int
    augment: AugmentConfig | None = None
    mixup_alpha: float | None = None
    num_classes: int = 2
    mean: Stats = IMAGENET_MEAN
    std: Stats = IMAGENET_STD
    device: str = "cpu"
    sampler: str = "shuffle"  # one of `SAMPLERS`

    def __post_init__(self) -> None:
        n = len(self.split.labels)
        if n < 2:
            raise ValueError("the training split needs at least 2 images")
        if self.sampler not in self.SAMPLERS:
            raise ValueError(f"sampler must be one of {', '.join(self.SAMPLERS)} (got {self.sampler!r})")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1 (got {self.batch_size})")
        self._device = torch.device(self.device)
        self._images: torch.Tensor | None = None
        self._normalise = eval_transform(self.mean, self.std)
        self._augment = BatchAugment(self.augment) if self.augment is not None else None

    @property
    def varies(self) -> bool:
        return self._augment is not None or bool(self.mixup_alpha)

    @property
    def labels(self) -> torch.Tensor:
        return self.split.labels

    def batches(self, epoch: int) -> list[torch.Tensor]:
        n = len(self.split.labels)
        if self.sampler == "shuffle":
            g = torch.Generator().manual_seed(stream_seed(self.seed, ORDER, epoch))
            order = torch.randperm(n, generator=g)
        else:
            order = self._class_balanced(epoch)
        chunks = list(order.split(self.batch_size))
        if len(chunks[-1]) == 1:  # a lone last sample would make BatchNorm raise in train mode
            chunks = chunks[:-1]
        return chunks

    def _class_balanced(self, epoch: int) -> torch.Tensor:
        """(N,) int64 indices drawn with replacement, each with probability 1 / (K n_y): K the
        classes present, n_y its class's count (torch's WeightedRandomSampler draw, on the epoch's
        sampler stream)."""
        g = torch.Generator().manual_seed(stream_seed(self.seed, SAMPLER, epoch))
        labels = self.split.labels
        counts = torch.bincount(labels).double()
        per_image = 1.0 / counts[labels]  # (N,): each present class's images sum to 1
        return torch.multinomial(per_image, len(labels), replacement=True, generator=g)

    def images(self) -> torch.Tensor:
        if self._images is None:
            self._images = _to_device(self.split.images, self._device)
        return self._images

    def inputs(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        images, labels = self.images(), self.split.labels
        mix_rng = np.random.default_rng(stream_seed(self.seed, MIXUP, epoch))
        aug_state = torch.Generator().manual_seed(stream_seed(self.seed, AUGMENT, epoch)).get_state()
        for idx in self.batches(epoch):
            x = images[idx.to(images.device)]
            if self._augment is not None:
                # torchvision's transforms draw from the global generator: run them on the
                # augmentation stream's state and put the caller's state back (head dropout
                # draws from it between batches).
                with torch.random.fork_rng(devices=[]):
                    torch.set_rng_state(aug_state)
                    x = self._augment(x)  # per-image draws, one batched pass (`finalbn.data.augment`)
                    aug_state = torch.get_rng_state()
            x = self._normalise(x)
            y = _to_device(labels[idx], self._device)
            if self.mixup_alpha:
                lam = float(mix_rng.beta(self.mixup_alpha, self.mixup_alpha))
                soft = F.one_hot(y, self.num_classes).to(x.dtype)
                x = x.mul(lam).add_(x.roll(1, 0), alpha=1.0 - lam)
                yield x, soft.mul(lam).add_(soft.roll(1, 0), alpha=1.0 - lam)
            else:
                yield x, y


@dataclass
class EvalBatches:
    """Re-iterable (x normalised, labels) batches of one split, in order, on `device`."""

    split: SplitTensors
    mean: Stats = IMAGENET_MEAN
    std: Stats = IMAGENET_STD
    batch_size: int = 0  # 0: EVAL_BATCH for the device
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.batch_size <= 0:
            self.batch_size = EVAL_BATCH.get(torch.device(self.device).type, 64)
        self._normalise = eval_transform(self.mean, self.std)
        self._images: torch.Tensor | None = None

    def __len__(self) -> int:
        return (len(self.split.labels) + self.batch_size - 1) // self.batch_size  # batches, the last one short

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self._images is None:
            self._images = _to_device(self.split.images, torch.device(self.device))
        for start in range(0, len(self.split.labels), self.batch_size):
            sl = slice(start, start + self.batch_size)
            yield self._normalise(self._images[sl]), self.split.labels[sl]


# ---------------------------------------------------------------- DataLoaders (the pretrain stage)


class TensorImages(Dataset):
    def __init__(self, split: SplitTensors, transform: v2.Transform):
        self.split, self.transform = split, transform

    def __len__(self) -> int:
        return len(self.split.labels)

    def __getitem__(self, i: int):
        return self.transform(self.split.images[i]), self.split.labels[i]


def make_loaders(
    splits: dict[str, SplitTensors],
    batch_size: int,
    augment: AugmentConfig | None,
    seed: int,
    num_workers: int = 0,
    pin_memory: bool = False,
    mean: Stats = IMAGENET_MEAN,
    std: Stats = IMAGENET_STD,
) -> dict[str, DataLoader]:
    """DataLoaders over split tensors (the pretrain stage's multi-class training): train
    (shuffled, seeded; augmented when `augment` is given) and val/test, normalised with the body's
    `mean` / `std`. The train loader never yields a batch of 1."""
    train = splits["train"]
    if len(train.labels) < 2:
        raise ValueError("the training split needs at least 2 images")
    # A lone last sample would make BatchNorm raise in train mode ("Expected more than 1 value").
    drop_last = len(train.labels) % batch_size == 1
    gen = torch.Generator().manual_seed(seed)
    loaders = {
        "train": DataLoader(
            TensorImages(train, train_transform(augment, mean, std)),
            batch_size=batch_size,
            shuffle=True,
            drop_last=drop_last,
            generator=gen,
            num_workers=num_workers,
            pin_memory=pin_memory,
        )
    }
    for name in ("val", "test"):
        if name in splits:
            loaders[name] = DataLoader(
                TensorImages(splits[name], eval_transform(mean, std)),
                batch_size=max(batch_size, 128),
                shuffle=False,
                num_workers=num_workers,
                pin_memory=pin_memory,
            )
    return loaders

"""Datasets over a split manifest: a decoded-image cache, the transforms, and the loaders.

    images = decode_images([r["path"] for r in rows], image_size=64)   # (N, 3, 64, 64) uint8
    loaders = make_loaders(split_tensors, batch_size=64, augment=cfg.train.augment, seed=0,
                           mean=spec.mean, std=spec.std)    # the body's normalisation (models.get_spec)

Images are decoded once (through `finalbn.images.load_rgb`) into a uint8 tensor and kept in
memory: the paper's splits are ~1,500 images, so every epoch after the first costs no decoding.
"""
from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2
from tqdm import tqdm

from finalbn.config import AugmentConfig
from finalbn.images import load_rgb
from finalbn.splits import SPLITS, read_manifest

# The default normalisation (torchvision's ImageNet statistics); each backbone's own comes from
# its registry spec (`finalbn.models.get_spec(arch).mean/std`) and is passed in.
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
Stats = tuple[float, float, float]


@dataclass(frozen=True)
class SplitTensors:
    """One split in memory: images (N, 3, H, W) uint8, labels (N,) int64, their paths and source
    classes (the folder each image came from: the disease kind of a minority image)."""

    images: torch.Tensor
    labels: torch.Tensor
    paths: tuple[str, ...]
    sources: tuple[str, ...] = ()


def resize_square(img: Image.Image, size: int) -> Image.Image:
    """Shorter side to `size`, then a centre crop: the eval geometry shared with field inference."""
    w, h = img.size
    scale = size / min(w, h)
    if (w, h) != (size, size):
        img = img.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BILINEAR)
        w, h = img.size
        left, top = (w - size) // 2, (h - size) // 2
        img = img.crop((left, top, left + size, top + size))
    return img


def decode_images(paths: Sequence[str], image_size: int, progress: bool = False) -> torch.Tensor:
    out = torch.empty((len(paths), 3, image_size, image_size), dtype=torch.uint8)
    for i, p in enumerate(tqdm(paths, desc="decode", unit="img", disable=not progress)):
        arr = np.array(resize_square(load_rgb(p), image_size))  # (H, W, 3) uint8, writable copy
        out[i] = torch.from_numpy(arr).permute(2, 0, 1)
    return out


@functools.lru_cache(maxsize=4)
def _load_manifest_cached(manifest: str, mtime_ns: int, image_size: int) -> dict[str, SplitTensors]:
    rows = read_manifest(manifest)
    out = {}
    for split in SPLITS:
        part = [r for r in rows if r["split"] == split]
        paths = tuple(r["path"] for r in part)
        out[split] = SplitTensors(decode_images(paths, image_size),
                                  torch.tensor([r["label"] for r in part], dtype=torch.int64), paths,
                                  tuple(r.get("source_class", "") for r in part))
    return out


def load_splits(manifest: str | Path, image_size: int) -> dict[str, SplitTensors]:
    """train/val/test tensors of a manifest; cached per process (cells of a grid share them)."""
    path = Path(manifest)
    if not path.is_file():
        raise FileNotFoundError(f"manifest {path} does not exist: run `finalbn prepare` (or `dvc repro`) first")
    return _load_manifest_cached(str(path.resolve()), path.stat().st_mtime_ns, image_size)


def eval_transform(mean: Stats = MEAN, std: Stats = STD) -> v2.Transform:
    return v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)])


def train_transform(aug: AugmentConfig | None, mean: Stats = MEAN, std: Stats = STD) -> v2.Transform:
    """DA on: flips, small rotation, zoom and lighting (fastai's get_transforms, in torchvision v2)."""
    if aug is None:
        return eval_transform(mean, std)
    steps: list[v2.Transform] = [v2.RandomHorizontalFlip()]
    if aug.flip_vertical:
        steps.append(v2.RandomVerticalFlip())
    steps += [
        v2.RandomAffine(degrees=aug.rotate, scale=(1.0, aug.zoom)),
        v2.ColorJitter(brightness=aug.lighting, contrast=aug.lighting),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(mean, std),
    ]
    return v2.Compose(steps)


class TensorImages(Dataset):
    def __init__(self, split: SplitTensors, transform: v2.Transform):
        self.split, self.transform = split, transform

    def __len__(self) -> int:
        return len(self.split.labels)

    def __getitem__(self, i: int):
        return self.transform(self.split.images[i]), self.split.labels[i]


def make_loaders(splits: dict[str, SplitTensors], batch_size: int, augment: AugmentConfig | None, seed: int,
                 num_workers: int = 0, pin_memory: bool = False, mean: Stats = MEAN,
                 std: Stats = STD) -> dict[str, DataLoader]:
    """train (shuffled, seeded; augmented when `augment` is given) and val/test loaders, normalised
    with the body's `mean` / `std`. The train loader never yields a batch of 1."""
    train = splits["train"]
    if len(train.labels) < 2:
        raise ValueError("the training split needs at least 2 images")
    # A lone last sample would make BatchNorm raise in train mode ("Expected more than 1 value").
    drop_last = len(train.labels) % batch_size == 1
    gen = torch.Generator().manual_seed(seed)
    loaders = {"train": DataLoader(TensorImages(train, train_transform(augment, mean, std)), batch_size=batch_size,
                                   shuffle=True, drop_last=drop_last, generator=gen,
                                   num_workers=num_workers, pin_memory=pin_memory)}
    for name in ("val", "test"):
        if name in splits:
            loaders[name] = DataLoader(TensorImages(splits[name], eval_transform(mean, std)), batch_size=max(batch_size, 128),
                                       shuffle=False, num_workers=num_workers, pin_memory=pin_memory)
    return loaders

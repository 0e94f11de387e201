"""The `pretrain` stage: a backbone trained on the balanced synthetic source task.

    finalbn pretrain --set model.arch=resnet18   # params: pretrain.*, model.arch, train.*
    summary = pretrain(cfg)     # writes <pretrain.out_dir>/<arch>.pt and <arch>.json

For archs without offline ImageNet weights (torchvision's cannot be downloaded on our machines;
the default `efficientnet_lite0` has them and does not need this stage, which is therefore not
in the default DVC pipeline). It trains the architecture from scratch on a
balanced synthetic source task: which condition (healthy or one of the disease kinds) a leaf
shows, on crops that no dataset targets, drawn in memory with `pretrain.severity` times more and
larger lesions (late-stage leaves, as ImageNet-scale photo collections show obvious symptoms).
It saves the state_dict: `model.weights=synthetic` loads it like any local `.pt` file. No target
image is ever seen here, so nothing leaks into a test split; what transfers is what lesions
look like.
"""

from __future__ import annotations

import argparse
import json
import sys
import zlib
from pathlib import Path
from typing import cast

import numpy as np
import torch

from finalbn.config import Config
from finalbn.data.splits import DataError
from finalbn.data.tensors import SplitTensors, make_loaders
from finalbn.infra import io
from finalbn.models import get_spec
from finalbn.synthetic import DISEASES, HEALTHY, render_leaf
from finalbn.train.engine import FitSettings, fit, resolve_device


def source_images(cfg: Config) -> tuple[list[str], dict[str, SplitTensors]]:
    """Class names and in-memory train/val tensors (80/20) of the balanced source task."""
    pc = cfg.pretrain
    # strs only (the crops of pc.crops), though a dataset's crop may be None
    targets = cast(set[str], {d.crop for d in cfg.datasets if d.source == "synthetic"} & set(pc.crops))
    if targets:
        raise DataError(
            f"pretrain.crops must not include a crop a dataset targets ({', '.join(sorted(targets))}): "
            "its images would leak into the study"
        )
    classes = [HEALTHY, *DISEASES]
    n_val = max(1, pc.per_class // 5)
    parts: dict[str, list[tuple[np.ndarray, int]]] = {"train": [], "val": []}
    for label, condition in enumerate(classes):
        for i in range(pc.per_class):
            crop = pc.crops[i % len(pc.crops)]
            # A seed space apart from `synthesize`'s files (index offset), so no image repeats them.
            rng = np.random.default_rng([pc.seed, 7919, zlib.crc32(crop.encode()), label, i])
            img = render_leaf(rng, pc.image_size, crop, None if condition == HEALTHY else condition, pc.severity)
            parts["val" if i < n_val else "train"].append((img, label))
    tensors = {
        name: SplitTensors(
            torch.from_numpy(np.stack([a for a, _ in items])).permute(0, 3, 1, 2).contiguous(),
            torch.tensor([y for _, y in items]),
            tuple(f"{name}/{j}" for j in range(len(items))),
        )
        for name, items in parts.items()
    }
    return classes, tensors


def pretrain(cfg: Config, progress: bool = False) -> dict:
    pc, arch = cfg.pretrain, cfg.model.arch
    try:
        spec = get_spec(arch)
    except ValueError as exc:
        raise DataError(str(exc)) from None
    classes, tensors = source_images(cfg)
    torch.manual_seed(pc.seed)
    model = spec(num_classes=len(classes))  # from scratch: every parameter trains
    device = resolve_device(cfg.train.device)
    loaders = make_loaders(
        tensors,
        pc.batch_size,
        cfg.train.augment,
        seed=pc.seed,
        num_workers=cfg.train.num_workers,
        pin_memory=device.type == "cuda",
        mean=spec.mean,
        std=spec.std,
    )
    settings = FitSettings(
        epochs=pc.epochs, lr=pc.lr, weight_decay=cfg.train.weight_decay, device=str(device), progress=progress
    )
    result = fit(model, loaders["train"], loaders["val"], settings)
    model.load_state_dict(result.selected_state)
    out = Path(pc.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save(state, out / f"{arch}.pt")
    summary = {
        "arch": arch,
        "classes": classes,
        "crops": list(pc.crops),
        "severity": pc.severity,
        "images_per_class": pc.per_class,
        "image_size": pc.image_size,
        "epochs": pc.epochs,
        "best_epoch": result.selected_epoch,
        "val_accuracy": result.history[result.selected_epoch - 1]["val_accuracy"],
        "chance_accuracy": 1 / len(classes),
        "train_seconds": round(result.train_seconds, 1),
        "history": result.history,
    }
    io.write_text(out / f"{arch}.json", json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return summary


def main(cfg: Config, args: argparse.Namespace) -> int:
    s = pretrain(cfg, progress=sys.stderr.isatty())
    print(
        f"pretrain {s['arch']}: {len(s['classes'])} synthetic classes x {s['images_per_class']} images, "
        f"val accuracy {s['val_accuracy']:.3f} (chance {s['chance_accuracy']:.3f}) at epoch {s['best_epoch']}, "
        f"{s['train_seconds']:.0f} s -> {cfg.pretrain.out_dir}/{s['arch']}.pt"
    )
    return 0

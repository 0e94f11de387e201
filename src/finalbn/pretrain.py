"""The `pretrain` stage: a backbone trained on the balanced synthetic source task.

    summary = pretrain(cfg)     # writes <pretrain.out_dir>/<arch>.pt and <arch>.json

No ImageNet weights can be downloaded on our machines, yet the paper fine-tunes a pretrained
network. So the embedded default first trains the torchvision architecture from scratch on every
crop/condition class of the synthetic crops that no dataset targets (balanced: `per_class` images
each), then saves its state_dict: `model.weights=synthetic` loads it like any local `.pt` file.
The target crop's images are never seen here, so nothing leaks into its test split.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from finalbn.config import Config
from finalbn.data import SplitTensors, decode_images, make_loaders
from finalbn.engine import FitSettings, fit, resolve_device
from finalbn.images import scan_folder
from finalbn.models import ARCHS
from finalbn.splits import DataError


def source_classes(cfg: Config) -> list[Path]:
    """Class folders of the synthetic crops that no synthetic dataset targets."""
    root = Path(cfg.synthetic.root)
    targets = {d.crop for d in cfg.datasets if d.source == "synthetic"}
    crops = [c for c in cfg.synthetic.crops if c not in targets]
    if not crops:
        raise DataError(f"pretrain needs a synthetic crop that no dataset targets (crops {list(cfg.synthetic.crops)}, "
                        f"targets {sorted(targets)}): add one to synthetic.crops")
    folders = sorted(p for p in root.glob("*___*") if p.is_dir() and p.name.split("___")[0] in crops) if root.is_dir() else []
    if not folders:
        raise DataError(f"no synthetic class folders for crops {crops} under {root}: run `finalbn synthesize` first")
    return folders


def _balanced_split(cfg: Config, folders: list[Path]) -> dict[str, SplitTensors]:
    """per_class images of each class, 80 % train / 20 % val, drawn with pretrain.seed."""
    pc = cfg.pretrain
    rng = np.random.default_rng(pc.seed)
    parts: dict[str, list[tuple[str, int]]] = {"train": [], "val": []}
    for label, folder in enumerate(folders):
        files, _ = scan_folder(folder)
        if len(files) < pc.per_class:
            raise DataError(f"pretrain class {folder.name} has {len(files)} usable images, pretrain.per_class needs {pc.per_class}")
        chosen = [files[i] for i in sorted(rng.choice(len(files), pc.per_class, replace=False))]
        n_val = max(1, pc.per_class // 5)
        parts["val"] += [(str(p), label) for p in chosen[:n_val]]
        parts["train"] += [(str(p), label) for p in chosen[n_val:]]
    return {name: SplitTensors(decode_images([p for p, _ in items], pc.image_size),
                               torch.tensor([y for _, y in items]), tuple(p for p, _ in items))
            for name, items in parts.items()}


def pretrain(cfg: Config, progress: bool = False) -> dict:
    pc, arch = cfg.pretrain, cfg.model.arch
    if arch not in ARCHS:
        raise DataError(f"unknown arch {arch!r} (have: {', '.join(ARCHS)})")
    folders = source_classes(cfg)
    torch.manual_seed(pc.seed)
    tensors = _balanced_split(cfg, folders)
    model = ARCHS[arch](num_classes=len(folders))  # from scratch: every parameter trains
    device = resolve_device(cfg.train.device)
    loaders = make_loaders(tensors, pc.batch_size, cfg.train.augment, seed=pc.seed,
                           num_workers=cfg.train.num_workers, pin_memory=device.type == "cuda")
    settings = FitSettings(epochs=pc.epochs, lr=pc.lr, weight_decay=cfg.train.weight_decay, device=str(device),
                           progress=progress)
    result = fit(model, loaders["train"], loaders["val"], settings)
    model.load_state_dict(result.best_state)
    out = Path(pc.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save(state, out / f"{arch}.pt")
    summary = {
        "arch": arch, "classes": [f.name for f in folders], "images_per_class": pc.per_class,
        "image_size": pc.image_size, "epochs": pc.epochs, "best_epoch": result.best_epoch,
        "val_accuracy": result.history[result.best_epoch - 1]["val_accuracy"],
        "chance_accuracy": 1 / len(folders), "train_seconds": round(result.train_seconds, 1),
        "history": result.history,
    }
    (out / f"{arch}.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return summary

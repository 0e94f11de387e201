"""One training cell = (dataset, configuration of the six toggles, seed): data -> model -> fit -> test.

    result = run_cell(cfg, "synthetic-apple", splits_dir=Path("data/splits"))
    result.test_best["minority_f1"]

Configuration ids and names (`config_id`, `config_name`) follow the paper; see `finalbn.config`.
Knows nothing of MLflow or Optuna: callbacks reach `engine.fit`.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.utils.class_weight import compute_class_weight

from finalbn import metrics
from finalbn.config import Config, DatasetConfig, config_id, config_name
from finalbn.data import load_splits, make_loaders
from finalbn.engine import Callback, FitResult, FitSettings, fit, predict, resolve_device
from finalbn.models import FinalBNNet, WeightsError, create_model


def weights_path(cfg: Config) -> str:
    """`model.weights`, with `synthetic` resolved to the pretrain stage's file."""
    if cfg.model.weights != "synthetic":
        return cfg.model.weights
    path = Path(cfg.pretrain.out_dir) / f"{cfg.model.arch}.pt"
    if not path.is_file():
        raise WeightsError(f"model.weights=synthetic but {path} does not exist: run `finalbn pretrain` "
                           f"(or `dvc repro pretrain`) first, or set model.weights=imagenet|none|<file.pt>")
    return str(path)


def preflight(cfg: Config, dataset: str, splits_dir: Path) -> None:
    """Fail before any run starts: the split exists and `model.weights` resolves to something."""
    manifest = splits_dir / cfg.dataset(dataset).name / "manifest.csv"
    if not manifest.is_file():
        raise FileNotFoundError(f"{manifest} does not exist: run `finalbn prepare` (or `dvc repro`) first")
    w = weights_path(cfg)
    if w not in ("imagenet", "none") and not Path(w).is_file():
        raise WeightsError(f"weights file {w} does not exist (model.weights: imagenet | none | synthetic | <file.pt>)")


def build_model(cfg: Config, num_classes: int = 2) -> FinalBNNet:
    m, ab = cfg.model, cfg.ablation
    return create_model(m.arch, weights=weights_path(cfg), num_classes=num_classes,
                        final=m.final_variant if ab.bn else "none", final_bn_momentum=m.final_bn_momentum,
                        final_bn_eps=m.final_bn_eps, final_bn_affine=m.final_bn_affine, final_bias=m.final_bias,
                        hidden=m.hidden, dropout=m.dropout, unfreeze_bn=ab.uf, frozen_bn=m.frozen_bn)


def class_weights(labels: np.ndarray) -> tuple[float, ...]:
    """WL: scikit-learn's 'balanced' weights n / (k * count_c) from the training counts."""
    classes = np.unique(labels)
    return tuple(float(w) for w in compute_class_weight("balanced", classes=classes, y=labels))


def fit_settings(cfg: Config, train_labels: np.ndarray, device: str = "cpu", progress: bool = False) -> FitSettings:
    """What the toggles mean for the loop: WL -> class weights, MX -> MixUp alpha, WD -> decay."""
    tc, ab = cfg.train, cfg.ablation
    return FitSettings(epochs=tc.epochs, lr=tc.lr, weight_decay=tc.weight_decay if ab.wd else 0.0,
                       class_weights=class_weights(train_labels) if ab.wl else None,
                       mixup_alpha=tc.mixup_alpha if ab.mx else None, label_smoothing=tc.label_smoothing,
                       device=device, progress=progress)


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


@dataclass
class CellResult:
    dataset: str
    manifest_sha256: str
    config_id: int
    config_name: str
    fit: FitResult
    test_last: dict[str, float]
    test_best: dict[str, float]
    predictions: list[dict[str, Any]]  # per test image: path, label, probs at last and best epoch
    reliability_last: dict[str, list]
    reliability_best: dict[str, list]
    confusion_best: list[list[int]]
    class_weights: tuple[float, ...] | None
    bn_policy: str
    device: str
    info: dict[str, Any] = field(default_factory=dict)


def run_cell(cfg: Config, dataset: str | DatasetConfig, splits_dir: Path, callbacks: Sequence[Callback] = (),
             progress: bool = False) -> CellResult:
    """Train one cell on `<splits_dir>/<dataset>/manifest.csv` and evaluate it on the test split."""
    ds = cfg.dataset(dataset) if isinstance(dataset, str) else dataset
    split_dir = splits_dir / ds.name
    tc, ab = cfg.train, cfg.ablation
    if tc.threads:
        torch.set_num_threads(tc.threads)
    device = resolve_device(tc.device)
    tensors = load_splits(split_dir / "manifest.csv", ds.image_size)
    manifest_hash = json.loads((split_dir / "split.json").read_text())["manifest_sha256"]

    seed_everything(tc.seed)
    model = build_model(cfg)
    loaders = make_loaders(tensors, tc.batch_size, tc.augment if ab.da else None, seed=tc.seed,
                           num_workers=tc.num_workers, pin_memory=device.type == "cuda")
    train_labels = tensors["train"].labels.numpy()
    settings = fit_settings(cfg, train_labels, str(device), progress)
    result = fit(model, loaders["train"], loaders["val"], settings, callbacks)

    labels, probs_last = predict(model, loaders["test"], device)
    last_state = {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(result.best_state)
    _, probs_best = predict(model, loaders["test"], device)
    model.load_state_dict(last_state)  # the returned model is the last epoch's, as trained
    preds = [{"path": p, "label": int(y), "p1_last": float(a[1]), "p1_best": float(b[1])}
             for p, y, a, b in zip(tensors["test"].paths, labels, probs_last, probs_best)]
    return CellResult(
        dataset=ds.name, manifest_sha256=manifest_hash, config_id=config_id(ab), config_name=config_name(ab),
        fit=result, test_last=metrics.classification_report(labels, probs_last),
        test_best=metrics.classification_report(labels, probs_best), predictions=preds,
        reliability_last=metrics.reliability_bins(labels, probs_last),
        reliability_best=metrics.reliability_bins(labels, probs_best),
        confusion_best=metrics.confusion(labels, probs_best.argmax(1)).tolist(),
        class_weights=settings.class_weights, bn_policy=model.bn_policy, device=str(device),
        info={"model": model, "train_size": len(train_labels), "probs_best": probs_best, "probs_last": probs_last,
              "labels": labels},
    )

"""The training loop: `fit()` and `predict()`. Knows nothing of MLflow or Optuna.

    result = fit(model, loaders["train"], loaders["val"], FitSettings(epochs=10, lr=3e-3),
                 callbacks=[my_logger])     # my_logger.on_epoch_end(epoch, metrics) after each epoch
    labels, probs = predict(model, loaders["test"], device)

One-cycle LR (OneCycleLR) with AdamW; optional class weights (WL), MixUp (MX, torchvision v2),
label smoothing. The best epoch is chosen on validation minority F1 (ties: lower validation loss),
and its weights are kept in memory so the caller can evaluate both the last and the best epoch.
On CUDA the same code runs with bf16 autocast and channels_last.
"""
from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.data import DataLoader
from torchvision.transforms import v2
from tqdm import tqdm

from finalbn import metrics


class TrainingDiverged(RuntimeError):
    """The loss became NaN/inf; the message names the epoch and step."""


class Callback(Protocol):
    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None: ...


@dataclass(frozen=True)
class FitSettings:
    epochs: int
    lr: float
    weight_decay: float = 0.0
    class_weights: tuple[float, ...] | None = None  # WL: per-class loss weights
    mixup_alpha: float | None = None  # MX: MixUp with this alpha when set
    label_smoothing: float = 0.0
    device: str = "cpu"
    progress: bool = False
    pct_start: float = 0.25  # fastai's fit_one_cycle warm-up fraction


@dataclass
class FitResult:
    history: list[dict[str, float]]
    best_epoch: int  # 1-based
    best_state: dict[str, torch.Tensor]
    train_seconds: float
    train_images: int  # images seen in training, all epochs


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device=cuda but no CUDA device is available (use auto or cpu)")
    return torch.device(name)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: BN weights/biases and every bias get no weight decay, the rest `weight_decay`.

    Exempting BN and bias parameters is standard practice (decaying a BN scale or a shift only
    fights the normalisation); fastai v1's default `bn_wd=True` decays BN too. Frozen parameters
    are left out; empty groups are dropped. Each group carries a "name" for logging.
    """
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    seen: set[int] = set()
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            (no_decay if isinstance(module, _BatchNorm) or name == "bias" else decay).append(p)
    groups = [
        {"params": decay, "weight_decay": float(weight_decay), "name": "decay"},
        {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"},
    ]
    return [g for g in groups if g["params"]]


def _autocast(device: torch.device):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def fit(model: nn.Module, train_loader: DataLoader, val_loader: DataLoader, settings: FitSettings,
        callbacks: Sequence[Callback] = ()) -> FitResult:
    device = torch.device(settings.device)
    model.to(device)
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    steps_per_epoch = len(train_loader)
    if steps_per_epoch == 0:
        raise ValueError("the training loader yields no batch")
    opt = torch.optim.AdamW(param_groups(model, settings.weight_decay), lr=settings.lr)
    total = settings.epochs * steps_per_epoch
    # OneCycleLR divides by zero when the warm-up phase is under 1.5 steps (tiny runs): stretch it.
    pct = min(max(settings.pct_start, 1.5 / total), 0.75)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=settings.lr, total_steps=total, pct_start=pct)
    weight = torch.tensor(settings.class_weights, dtype=torch.float32, device=device) if settings.class_weights else None
    num_classes = _num_classes(model)
    mixup = v2.MixUp(alpha=settings.mixup_alpha, num_classes=num_classes) if settings.mixup_alpha else None

    history: list[dict[str, float]] = []
    best: tuple[float, float] | None = None
    best_epoch, best_state = 1, copy.deepcopy(model.state_dict())
    seen, t0 = 0, time.perf_counter()
    for epoch in range(1, settings.epochs + 1):
        model.train()
        total, count = 0.0, 0
        bar = tqdm(train_loader, desc=f"epoch {epoch}/{settings.epochs}", unit="batch", leave=False,
                   disable=not settings.progress)
        for step, (x, y) in enumerate(bar, start=1):
            if len(y) < 2:
                continue  # BatchNorm cannot train on one sample; make_loaders avoids this already
            x, y = _to(x, device), y.to(device, non_blocking=True)
            target = y
            if mixup is not None:
                x, target = mixup(x, y)  # target: (B, C) soft labels
            with _autocast(device):
                logits = model(x)
            loss = F.cross_entropy(logits.float(), target, weight=weight, label_smoothing=settings.label_smoothing)
            if not torch.isfinite(loss):
                raise TrainingDiverged(f"loss is {loss.item()} at epoch {epoch}, step {step}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(y)
            count += len(y)
            bar.set_postfix(loss=f"{total / count:.4f}")
        seen += count
        labels, probs, val_loss = predict(model, val_loader, device, with_loss=True)
        row = {"epoch": epoch, "train_loss": total / max(count, 1), "val_loss": val_loss,
               "lr": sched.get_last_lr()[0], **_val_metrics(labels, probs, num_classes)}
        history.append(row)
        key = (row["val_minority_f1"] if num_classes == 2 else row["val_accuracy"], -val_loss)
        if best is None or key > best:
            best, best_epoch, best_state = key, epoch, copy.deepcopy(model.state_dict())
        for cb in callbacks:
            cb.on_epoch_end(epoch, dict(row))
    return FitResult(history, best_epoch, best_state, time.perf_counter() - t0, seen)


@torch.no_grad()
def predict(model: nn.Module, loader: DataLoader, device: torch.device | str, with_loss: bool = False):
    """(labels (N,), softmax probs (N, C)[, mean cross-entropy]) in eval mode."""
    device = torch.device(device)
    model.eval()
    ys, ps, loss_sum = [], [], 0.0
    for x, y in loader:
        with _autocast(device):
            logits = model(_to(x, device)).float()
        loss_sum += F.cross_entropy(logits, y.to(device), reduction="sum").item()
        ys.append(y.numpy())
        ps.append(torch.softmax(logits, dim=1).cpu().numpy())
    labels, probs = np.concatenate(ys), np.concatenate(ps).astype(np.float64)
    if with_loss:
        return labels, probs, loss_sum / max(len(labels), 1)
    return labels, probs


def _val_metrics(labels: np.ndarray, probs: np.ndarray, num_classes: int) -> dict[str, float]:
    acc = float((probs.argmax(1) == labels).mean())
    if num_classes != 2:
        return {"val_accuracy": acc}
    return {"val_accuracy": acc, "val_minority_f1": metrics.minority_f1(labels, probs.argmax(1))}


def _num_classes(model: nn.Module) -> int:
    n = getattr(model, "num_classes", None)
    if n is None:
        last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
        n = last.out_features
    return int(n)


def _to(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    x = x.to(device, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last) if device.type == "cuda" else x


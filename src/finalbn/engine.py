"""The training loop: `fit()` and `predict()`. Knows nothing of MLflow or Optuna.

    result = fit(model, loaders["train"], loaders["val"], FitSettings(epochs=10, lr=3e-3),
                 callbacks=[my_logger])     # my_logger.on_epoch_end(epoch, metrics) after each epoch
    labels, probs = predict(model, loaders["test"], device)

One-cycle LR (OneCycleLR) with AdamW; optional class weights (WL), MixUp (MX, torchvision v2),
label smoothing. The last epoch is the primary result (the paper's protocol); a second epoch is
selected on a prevalence-invariant validation criterion — validation AUROC of P(minority), ties
to the lower class-balanced validation loss (accuracy for multi-class) — and its weights are kept
in memory so the caller can evaluate both. A model with an `epoch_stats()` method (the final
BN's running statistics, gamma, beta) has them added to each epoch's row.
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
    body_lr_ratio: float = 1.0  # LR of parameters under `body.` / head LR (fastai's slice(lr): 0.1)
    wd_on_bn: bool = False  # decay BN weights and biases too (fastai's bn_wd=True)
    train_counts: tuple[int, ...] | None = None  # (n_majority, n_minority): prior-corrected val F1


@dataclass
class FitResult:
    history: list[dict[str, float]]
    selected_epoch: int  # 1-based, chosen on validation (see the module docstring)
    selected_state: dict[str, torch.Tensor]
    train_seconds: float
    train_images: int  # images seen in training, all epochs


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device=cuda but no CUDA device is available (use auto or cpu)")
    return torch.device(name)


def param_groups(model: nn.Module, weight_decay: float, body_lr_ratio: float = 1.0,
                 wd_on_bn: bool = False) -> list[dict[str, Any]]:
    """AdamW groups: by default BN weights/biases and every other bias get no weight decay, the
    rest `weight_decay`; parameters under a `body` submodule get `lr_scale` = `body_lr_ratio`.

    Exempting BN and bias parameters is standard practice (decaying a BN scale or a shift only
    fights the normalisation); fastai v1's default `bn_wd=True` decays BN weights and biases too
    (`wd_on_bn`); other biases stay exempt either way.
    Frozen parameters are left out; empty groups are dropped. Each group carries a "name" for
    logging and an "lr_scale" that `fit` multiplies into the one-cycle maximum LR.
    """
    body_ids = {id(p) for name, p in model.named_parameters() if name.startswith("body.")}
    buckets: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    seen: set[int] = set()
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            is_bn = isinstance(module, _BatchNorm)
            exempt = not wd_on_bn if is_bn else name == "bias"
            buckets.setdefault((id(p) in body_ids, not exempt), []).append(p)
    groups = []
    for (in_body, decays), params in sorted(buckets.items()):
        groups.append({"params": params, "weight_decay": float(weight_decay) if decays else 0.0,
                       "name": f"{'body_' if in_body else ''}{'decay' if decays else 'no_decay'}",
                       "lr_scale": body_lr_ratio if in_body else 1.0})
    return groups


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
    groups = param_groups(model, settings.weight_decay, settings.body_lr_ratio, settings.wd_on_bn)
    opt = torch.optim.AdamW(groups, lr=settings.lr)
    total = settings.epochs * steps_per_epoch
    # OneCycleLR divides by zero when the warm-up phase is under 1.5 steps (tiny runs): stretch it.
    pct = min(max(settings.pct_start, 1.5 / total), 0.75)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[settings.lr * g["lr_scale"] for g in groups],
                                                total_steps=total, pct_start=pct)
    weight = torch.tensor(settings.class_weights, dtype=torch.float32, device=device) if settings.class_weights else None
    num_classes = _num_classes(model)
    mixup = v2.MixUp(alpha=settings.mixup_alpha, num_classes=num_classes) if settings.mixup_alpha else None

    history: list[dict[str, float]] = []
    best: tuple[float, float] | None = None
    best_epoch, best_state = 1, copy.deepcopy(model.state_dict())
    probe = getattr(model, "epoch_stats", None)
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
        # "lr": the head's (body groups run at body_lr_ratio of it)
        row = {"epoch": epoch, "train_loss": total / max(count, 1), "val_loss": val_loss,
               "lr": max(sched.get_last_lr()), **_val_metrics(labels, probs, num_classes, settings.train_counts)}
        if callable(probe):
            row.update(probe())
        history.append(row)
        key = _selection_key(row, num_classes)
        if best is None or key > best:
            best, best_epoch, best_state = key, epoch, copy.deepcopy(model.state_dict())
        for cb in callbacks:
            cb.on_epoch_end(epoch, dict(row))
    return FitResult(history, best_epoch, best_state, time.perf_counter() - t0, seen)


def _selection_key(row: dict[str, float], num_classes: int) -> tuple[float, float]:
    """Higher is better: (validation AUROC, -class-balanced loss); accuracy for multi-class. Both
    are prevalence-invariant: 7 validation positives cannot swing them as they swing argmax F1."""
    if num_classes != 2:
        return (row["val_accuracy"], -row["val_loss"])
    auc = row["val_auroc"]
    return (auc if np.isfinite(auc) else -np.inf, -row["val_balanced_loss"])


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


def _val_metrics(labels: np.ndarray, probs: np.ndarray, num_classes: int,
                 train_counts: tuple[int, ...] | None = None) -> dict[str, float]:
    acc = float((probs.argmax(1) == labels).mean())
    if num_classes != 2:
        return {"val_accuracy": acc}
    out = {"val_accuracy": acc, "val_minority_f1": metrics.minority_f1(labels, probs.argmax(1)),
           "val_auroc": metrics.auroc(labels, probs), "val_ap": metrics.average_precision(labels, probs),
           "val_balanced_loss": balanced_loss(labels, probs)}
    if train_counts is not None:
        out["val_minority_f1_pc"] = metrics.minority_f1(labels, metrics.prior_corrected_preds(probs, train_counts))
    return out


def balanced_loss(labels: np.ndarray, probs: np.ndarray) -> float:
    """Cross-entropy averaged within each present class, then over classes (prevalence-free)."""
    nll = -np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, 1.0))
    return float(np.mean([nll[labels == c].mean() for c in np.unique(labels)]))


def _num_classes(model: nn.Module) -> int:
    n = getattr(model, "num_classes", None)
    if n is None:
        last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
        n = last.out_features
    return int(n)


def _to(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    x = x.to(device, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last) if device.type == "cuda" else x


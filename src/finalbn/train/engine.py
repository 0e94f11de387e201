"""The training loop: `fit()` and `predict()`. Knows nothing of MLflow or Optuna.

    result = fit(model, plan.inputs, EvalBatches(val_split), FitSettings(epochs=10, lr=3e-3, seed=0),
                 callbacks=[my_logger])     # my_logger.on_epoch_end(epoch, metrics) after each epoch
    labels, probs = predict(model, EvalBatches(test_split), device)

`train` is a function epoch -> batches of (x, target) — target (B,) labels or (B, C) soft labels
(MixUp, drawn by the caller's plan) — or any re-iterable such as a DataLoader; `val` yields (x, y),
or is a function epoch -> such batches (features that change with the epoch).
x may be images for a whole network or a frozen body's features for a head alone: the loop is the
same. One-cycle LR (OneCycleLR) with AdamW; optional class weights (WL), label smoothing and the
imbalance baselines' losses (`LOSSES`; LDAM-DRW's class weights change with the epoch, so the loss's
inputs are made per epoch, `loss_inputs`). With
`settings.seed`, each epoch's dropout draws from its own seeded stream (`finalbn.config.seeds`), so the
same cell gives the same numbers on either path.

The last epoch is the primary result (the paper's protocol); a second epoch is selected on a
prevalence-invariant validation criterion — validation AUROC of P(minority), ties to the lower
class-balanced validation loss (accuracy for multi-class) — and the state training can change
(`model.mutable_state_keys()`: the head, and body BN layers when they train) is kept for it, so the
caller can evaluate both. A model with an `epoch_stats()` method (the final BN's running
statistics, gamma, beta) has them added to each epoch's row (`EpochLedger` records an epoch, for
`fit` and for a stack of cells, `finalbn.train.stacked`). The loss is checked once per epoch
(no host sync per step). Image inputs run channels_last (measured faster on CPU and GPU); on CUDA
with bf16 autocast.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence, Sized
from dataclasses import dataclass
from typing import Any, Protocol, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from tqdm import tqdm

from finalbn.config.seeds import DROPOUT, stream_seed
from finalbn.infra.errors import TrainingDiverged  # re-exported: raised here
from finalbn.stats import metrics

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]
TrainSource = Callable[[int], Batches] | Batches


class Callback(Protocol):
    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None: ...


@dataclass(frozen=True)
class FitSettings:
    epochs: int
    lr: float
    weight_decay: float = 0.0
    class_weights: tuple[float, ...] | None = None  # WL: per-class loss weights
    label_smoothing: float = 0.0
    device: str = "cpu"
    progress: bool = False
    pct_start: float = 0.25  # fastai's fit_one_cycle warm-up fraction
    body_lr_ratio: float = 1.0  # LR of parameters under `body.` / head LR (fastai's slice(lr): 0.1)
    wd_on_bn: bool = False  # decay BN weights and biases too (fastai's bn_wd=True)
    train_counts: tuple[int, ...] | None = None  # (n_majority, n_minority): the logit-adjusted loss's prior
    prior_metrics: bool = True  # log the prior-corrected val F1 (only where the outputs carry the training prior)
    loss: str = "ce"  # `LOSSES` (class weights: WL's or class_balanced's, set by the caller; ldam_drw: its own)
    focal_gamma: float = 2.0
    # LDAM-DRW (Cao et al. 2019). The paper's logits are cosines (normalised features and weights);
    # our head's are not, so s = 30 sharpens raw logits: a value to tune, not a given.
    ldam_scale: float = 30.0  # s: the margined logits' scale (the paper's 30)
    ldam_max_margin: float = 0.5  # the largest margin, the rarest class's (the paper's 0.5)
    drw_start: float = 0.8  # re-weighted from the epoch after round(drw_start * epochs) (the paper: 160 of 200)
    drw_beta: float = 0.9999  # DRW's effective-number beta (the paper's, after Cui et al. 2019)
    seed: int | None = None  # dropout's own stream per epoch (None: the global generator as it is)
    channels_last: bool = True  # image inputs and the network in channels_last
    bf16: bool | None = None  # autocast to bf16; None = on CUDA only (measured slower on CPU)


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


def param_groups(
    model: nn.Module, weight_decay: float, body_lr_ratio: float = 1.0, wd_on_bn: bool = False
) -> list[dict[str, Any]]:
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
        groups.append(
            {
                "params": params,
                "weight_decay": float(weight_decay) if decays else 0.0,
                "name": f"{'body_' if in_body else ''}{'decay' if decays else 'no_decay'}",
                "lr_scale": body_lr_ratio if in_body else 1.0,
            }
        )
    return groups


def autocast(device: torch.device, bf16: bool | None):
    """bf16 autocast on `device` when `bf16` says (None: on CUDA only), else a no-op context."""
    on = device.type == "cuda" if bf16 is None else bf16
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=on)


def epoch_source(train: TrainSource) -> Callable[[int], Batches]:
    """`train` as a function epoch -> batches (a re-iterable: the same batches every epoch)."""
    return train if callable(train) else (lambda epoch: train)


def _optimiser(model: nn.Module, settings: FitSettings, steps_per_epoch: int):
    """AdamW over the model's parameter groups and its one-cycle schedule."""
    groups = param_groups(model, settings.weight_decay, settings.body_lr_ratio, settings.wd_on_bn)
    return adamw_one_cycle(groups, settings, steps_per_epoch)


def adamw_one_cycle(groups: list[dict[str, Any]], settings: FitSettings, steps_per_epoch: int):
    """(AdamW, OneCycleLR) over `param_groups`-style `groups` (each with its "lr_scale"): the
    schedule's maximum LR is `settings.lr` x the group's scale, warm-up `settings.pct_start`."""
    # fused AdamW: one kernel for all parameters (measured ~1.5x faster per head step on CPU)
    fused = all(p.dtype.is_floating_point and p.device.type in ("cpu", "cuda") for g in groups for p in g["params"])
    opt = torch.optim.AdamW(groups, lr=settings.lr, fused=fused or None)
    total_steps = settings.epochs * steps_per_epoch
    # OneCycleLR divides by zero when the warm-up phase is under 1.5 steps (tiny runs): stretch it.
    pct = min(max(settings.pct_start, 1.5 / total_steps), 0.75)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=[settings.lr * g["lr_scale"] for g in groups], total_steps=total_steps, pct_start=pct
    )
    return opt, sched


def loss_inputs(
    settings: FitSettings, device: torch.device, epoch: int | None = None
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(class weights (C,) or None, per-class logit term (C,) or None) on `device`: what
    `loss_value` needs besides logits and targets in epoch `epoch` (1-based).

    Every loss but ldam_drw: (settings.class_weights, the log training prior for logit_adjusted,
    else None), the same in every epoch (`epoch` unused). ldam_drw: (None before DRW's first epoch
    (`drw_first_epoch`), then Cui et al.'s effective-number weights; LDAM's margins Delta (C,),
    formulas in `_ldam_drw_inputs`): it needs `epoch`, so `fit` calls this once per epoch.
    ValueError (one line): logit_adjusted or ldam_drw without settings.train_counts (ldam_drw: or
    a count of 0); ldam_drw without `epoch`, with class_weights set (DRW brings its own), or with an
    out-of-range ldam_* / drw_* field.
    """
    if settings.loss == "ldam_drw":
        return _ldam_drw_inputs(settings, device, epoch)
    weight = (
        torch.tensor(settings.class_weights, dtype=torch.float32, device=device) if settings.class_weights else None
    )
    log_prior = None
    if settings.loss == "logit_adjusted":
        if not settings.train_counts:
            raise ValueError("loss=logit_adjusted needs the training counts (settings.train_counts)")
        counts = torch.tensor(settings.train_counts, dtype=torch.float32, device=device)
        log_prior = torch.log(counts / counts.sum())
    return weight, log_prior


def _ldam_drw_inputs(
    settings: FitSettings, device: torch.device, epoch: int | None
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """LDAM-DRW's (class weights of epoch `epoch` or None, margins (C,)); `loss_inputs` says when
    it raises. Margins Delta_j = C / n_j^(1/4), C such that the largest (the rarest class's) is
    ldam_max_margin (Cao et al. 2019). DRW's weights: Cui et al. (2019)'s (1 - beta) / (1 -
    beta^n_c), scaled to sum to the number of classes (`cell.class_balanced_weights` from labels)."""
    if epoch is None:
        raise ValueError("loss=ldam_drw re-weights by epoch: call loss_inputs(settings, device, epoch)")
    n = np.asarray(settings.train_counts or (), dtype=np.float64)  # (C,) training counts
    s = settings
    checks = {  # a one-line ValueError for the first that fails
        f"loss=ldam_drw needs the training counts, each positive (settings.train_counts: {s.train_counts})": (
            len(n) > 0 and bool((n > 0).all())
        ),
        "loss=ldam_drw brings its own class weights (DRW): leave settings.class_weights unset": not s.class_weights,
        f"ldam_scale must be > 0 (got {s.ldam_scale})": s.ldam_scale > 0,
        f"ldam_max_margin must be >= 0 (got {s.ldam_max_margin})": s.ldam_max_margin >= 0,
        f"drw_beta must be in [0, 1) (got {s.drw_beta})": 0 <= s.drw_beta < 1,
    }
    for message, ok in checks.items():
        if not ok:
            raise ValueError(message)
    m = n**-0.25
    margins = torch.tensor(s.ldam_max_margin * m / m.max(), dtype=torch.float32, device=device)
    if epoch < drw_first_epoch(s.epochs, s.drw_start):
        return None, margins
    w = (1.0 - s.drw_beta) / (1.0 - np.power(s.drw_beta, n))
    return torch.tensor(w * len(w) / w.sum(), dtype=torch.float32, device=device), margins


def drw_first_epoch(epochs: int, drw_start: float) -> int:
    """DRW's first re-weighted epoch (1-based): the one after int(round(drw_start * epochs)). With
    10 epochs and drw_start 0.8, epochs 9 and 10; with 200, epoch 161 on (the paper's: its 0-based
    epoch 160 on); drw_start 1: never (plain LDAM), 0: every epoch. ValueError outside [0, 1]."""
    if not 0 <= drw_start <= 1:
        raise ValueError(f"drw_start must be a fraction of the epochs in [0, 1] (got {drw_start})")
    return int(round(drw_start * epochs)) + 1


def _train_epoch(
    model: nn.Module,
    batches,
    opt,
    sched,
    settings: FitSettings,
    device: torch.device,
    weight,
    log_prior,
    epoch: int,
    steps_per_epoch: int,
) -> tuple[torch.Tensor, list[int]]:
    """One epoch of steps; returns the per-step losses (on the CPU) and batch sizes. Raises
    TrainingDiverged at the first non-finite loss (checked once per epoch: no per-step host sync)."""
    model.train()
    losses, sizes = [], []
    bar = tqdm(
        batches,
        desc=f"epoch {epoch}/{settings.epochs}",
        unit="batch",
        leave=False,
        disable=not settings.progress,
        total=steps_per_epoch,
    )
    for x, target in bar:
        if len(target) < 2:
            continue  # BatchNorm cannot train on one sample; the plans avoid this already
        x = to_device(x, device, settings.channels_last)
        target = target.to(device, non_blocking=True)
        with autocast(device, settings.bf16):
            logits = model(x)
        loss = loss_value(logits.float(), target, settings, weight, log_prior)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.detach())
        sizes.append(len(target))
        if settings.progress:  # a host sync per step only when someone watches
            bar.set_postfix(loss=f"{loss.item():.4f}")
    step_losses = torch.stack(losses).float().cpu() if losses else torch.zeros(0)
    check_finite(step_losses, epoch)
    return step_losses, sizes


def check_finite(step_losses: torch.Tensor, epoch: int) -> None:
    """Raise TrainingDiverged naming the epoch and step of the first non-finite loss in
    `step_losses` (steps,)."""
    bad = (~torch.isfinite(step_losses)).nonzero()
    if len(bad):
        i = int(bad[0])
        raise TrainingDiverged(f"loss is {float(step_losses[i])} at epoch {epoch}, step {i + 1}")


def seed_dropout(settings: FitSettings, epoch: int) -> None:
    """Each epoch's dropout draws from its own stream of `settings.seed` (left alone without one)."""
    if settings.seed is not None:
        torch.manual_seed(stream_seed(settings.seed, DROPOUT, epoch))


def fit(
    model: nn.Module, train: TrainSource, val: TrainSource, settings: FitSettings, callbacks: Sequence[Callback] = ()
) -> FitResult:
    """Train `model` for `settings.epochs`; validate after each epoch, keep the epoch selected on
    validation, call each callback's `on_epoch_end(epoch, row)`. Raises TrainingDiverged (NaN loss)."""
    device = torch.device(settings.device)
    model.to(device)
    if settings.channels_last:
        model.to(memory_format=torch.channels_last)
    batches_of, val_of = epoch_source(train), epoch_source(val)
    steps_per_epoch = count_batches(batches_of)
    opt, sched = _optimiser(model, settings, steps_per_epoch)
    ledger = EpochLedger(model, settings, callbacks)
    t0 = time.perf_counter()
    for epoch in range(1, settings.epochs + 1):
        seed_dropout(settings, epoch)
        weight, log_prior = loss_inputs(settings, device, epoch)  # ldam_drw's weights change with the epoch
        step_losses, sizes = _train_epoch(
            model, batches_of(epoch), opt, sched, settings, device, weight, log_prior, epoch, steps_per_epoch
        )
        ledger.end_epoch(epoch, step_losses, sizes, max(sched.get_last_lr()), val_of(epoch))
    return ledger.result(time.perf_counter() - t0)


class EpochLedger:
    """What `fit` records of one model after each training epoch: the epoch's row (train loss,
    validation loss and metrics, the LR, the model's `epoch_stats()` when it has them), the epoch
    selected on validation (`_selection_key`) with a copy of its state (`mutable_state_keys()`, or
    the whole state), and each callback's `on_epoch_end(epoch, row)`. A stacked loop keeps one per
    cell (`finalbn.train.stacked`), so both paths record alike."""

    def __init__(self, model: nn.Module, settings: FitSettings, callbacks: Sequence[Callback] = ()) -> None:
        self.model, self.settings, self.callbacks = model, settings, callbacks
        self.device = torch.device(settings.device)
        self.num_classes = _num_classes(model)
        keys = getattr(model, "mutable_state_keys", None)
        self.keep = set(keys()) if callable(keys) else None
        self.probe = getattr(model, "epoch_stats", None)
        self.history: list[dict[str, float]] = []
        self.best: tuple[float, float] | None = None
        self.best_epoch, self.best_state = 1, _snapshot(model, self.keep)
        self.seen = 0

    def end_epoch(self, epoch: int, step_losses: torch.Tensor, sizes: list[int], lr: float, val: Batches) -> None:
        """Record epoch `epoch`: `step_losses` (steps,) and `sizes` its training steps' losses and
        batch sizes, `lr` the head's LR after it, `val` the validation batches to predict."""
        s = self.settings
        count = sum(sizes)
        self.seen += count
        train_loss = float((step_losses * torch.tensor(sizes, dtype=torch.float32)).sum()) / max(count, 1)
        labels, probs, val_loss = predict(
            self.model, val, self.device, with_loss=True, channels_last=s.channels_last, bf16=s.bf16
        )
        # "lr": the head's (body groups run at body_lr_ratio of it)
        row = {
            "epoch": epoch,
            "train_loss": train_loss,
            "val_loss": val_loss,
            "lr": lr,
            **_val_metrics(labels, probs, self.num_classes, s.train_counts if s.prior_metrics else None),
        }
        if callable(self.probe):
            row.update(self.probe())
        self.history.append(row)
        key = _selection_key(row, self.num_classes)
        if self.best is None or key > self.best:
            self.best, self.best_epoch, self.best_state = key, epoch, _snapshot(self.model, self.keep)
        for cb in self.callbacks:
            cb.on_epoch_end(epoch, dict(row))

    def result(self, seconds: float) -> FitResult:
        """The FitResult of the epochs recorded, `seconds` of training."""
        return FitResult(self.history, self.best_epoch, self.best_state, seconds, self.seen)


LOSSES = ("ce", "focal", "logit_adjusted", "class_balanced", "ldam_drw")


def loss_value(
    logits: torch.Tensor,
    target: torch.Tensor,
    settings: FitSettings,
    weight: torch.Tensor | None,
    log_prior: torch.Tensor | None = None,
) -> torch.Tensor:
    """The training loss (a scalar) of `logits` (B, C): cross-entropy (class-weighted when `weight`
    (C,); class_balanced is CE with Cui et al.'s weights, passed in as `weight`), softmax focal
    loss (Lin et al. 2017: -sum_c t_c (1 - p_c)^gamma log p_c, alpha = `weight`), logit-adjusted
    cross-entropy (Menon et al. 2021: CE on logits + `log_prior` (C,)), or LDAM (Cao et al. 2019:
    CE on s * (logits - t * Delta), `ldam_logits`; the margins Delta (C,) come in the `log_prior`
    slot and DRW's weights as `weight`, both from `loss_inputs(settings, device, epoch)`).
    Prediction uses the plain logits. `target`: (B,) labels or (B, C) soft labels (MixUp); label
    smoothing applies to every form. ValueError for ldam_drw without its margins."""
    if settings.loss == "logit_adjusted":
        logits = logits + log_prior
    elif settings.loss == "ldam_drw":
        if log_prior is None:
            raise ValueError("loss=ldam_drw needs its margins: pass loss_inputs(settings, device, epoch)'s second item")
        logits = ldam_logits(logits, target, log_prior, settings.ldam_scale)
    if settings.loss != "focal":
        return F.cross_entropy(logits, target, weight=weight, label_smoothing=settings.label_smoothing)
    n = logits.shape[1]
    hard = target.dim() == 1
    soft = F.one_hot(target, n).to(logits.dtype) if hard else target
    if settings.label_smoothing:
        soft = soft * (1 - settings.label_smoothing) + settings.label_smoothing / n
    logp = F.log_softmax(logits, dim=1)
    per_class = -soft * (1 - logp.exp()).pow(settings.focal_gamma) * logp
    if weight is None:
        return per_class.sum(1).mean()
    per_class = per_class * weight
    # cross_entropy's conventions, so that gamma = 0 is exactly it: labels -> a mean weighted by
    # each sample's class weight; soft labels -> a plain mean over the batch
    return per_class.sum() / weight[target].sum() if hard else per_class.sum(1).mean()


def ldam_logits(logits: torch.Tensor, target: torch.Tensor, margins: torch.Tensor, scale: float) -> torch.Tensor:
    """LDAM's (B, C) logits s * (z - t * Delta) (Cao et al. 2019; their code's `LDAMLoss`):
    `logits` z (B, C), `target` t (B,) labels (one-hot: the true class's logit less its margin) or
    (B, C) soft labels (each class's logit less its share t_c of its margin), `margins` Delta (C,),
    `scale` s. Hand-written: no library has it."""
    soft = F.one_hot(target, logits.shape[1]).to(logits.dtype) if target.dim() == 1 else target
    return scale * (logits - soft * margins)


def count_batches(batches_of: Callable[[int], Batches]) -> int:
    """Batches per epoch (epoch 1's: a sized source, a plan's index batches, or counted); ValueError
    when there is none."""
    n = _count(batches_of)
    if n == 0:
        raise ValueError("the training loader yields no batch")
    return n


def _count(batches_of: Callable[[int], Batches]) -> int:
    source = batches_of(1)
    if hasattr(source, "__len__"):
        return len(cast(Sized, source))
    owner = getattr(batches_of, "__self__", None)  # a plan's bound `inputs`: count its index batches
    if owner is not None and hasattr(owner, "batches"):
        return len(owner.batches(1))
    return sum(1 for _ in source)


def _snapshot(model: nn.Module, keep: set[str] | None) -> dict[str, torch.Tensor]:
    """A copy of the state training can change (all of it when the model does not say)."""
    return {k: v.detach().clone() for k, v in model.state_dict().items() if keep is None or k in keep}


def _selection_key(row: dict[str, float], num_classes: int) -> tuple[float, float]:
    """Higher is better: (validation AUROC, -class-balanced loss); accuracy for multi-class. Both
    are prevalence-invariant: 7 validation positives cannot swing them as they swing argmax F1."""
    if num_classes != 2:
        return (row["val_accuracy"], -row["val_loss"])
    auc = row["val_auroc"]
    return (auc if np.isfinite(auc) else -np.inf, -row["val_balanced_loss"])


def predict(
    model: nn.Module,
    batches: Batches,
    device: torch.device | str,
    with_loss: bool = False,
    channels_last: bool = True,
    bf16: bool | None = None,
):
    """(labels (N,), softmax probs (N, C)[, mean cross-entropy]) in eval mode, inference mode."""
    device = torch.device(device)
    model.eval()
    ys, logit_parts = [], []
    with torch.inference_mode():
        for x, y in batches:
            with autocast(device, bf16):
                logit_parts.append(model(to_device(x, device, channels_last)).float())
            ys.append(y)
        logits = torch.cat(logit_parts)
        y_all = torch.cat(ys).to(logits.device)
        loss = float(F.cross_entropy(logits, y_all, reduction="mean")) if len(y_all) else 0.0
        probs = torch.softmax(logits, dim=1).cpu().numpy().astype(np.float64)
    labels = y_all.cpu().numpy()
    if with_loss:
        return labels, probs, loss
    return labels, probs


def _val_metrics(
    labels: np.ndarray, probs: np.ndarray, num_classes: int, train_counts: tuple[int, ...] | None = None
) -> dict[str, float]:
    acc = float((probs.argmax(1) == labels).mean())
    if num_classes != 2:
        return {"val_accuracy": acc}
    out = {
        "val_accuracy": acc,
        "val_minority_f1": metrics.minority_f1(labels, probs.argmax(1)),
        "val_auroc": metrics.auroc(labels, probs),
        "val_ap": metrics.average_precision(labels, probs),
        "val_balanced_loss": balanced_loss(labels, probs),
    }
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


def to_device(x: torch.Tensor, device: torch.device, channels_last: bool = True) -> torch.Tensor:
    """`x` on `device`; a 4-D image batch in channels_last when `channels_last`."""
    x = x.to(device, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last) if channels_last and x.dim() == 4 else x

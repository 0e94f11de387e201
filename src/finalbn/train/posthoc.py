"""Post-hoc rivals of the final BN: a trained head's outputs changed after training, with no new
training of the network (`train.posthoc`; the grid runs each as a baseline on a trained cell).

    logits = posthoc.fit("vector_scaling", model, train, val, counts=(1000, 10), seed=0)
    val_probs, params = logits.probs(val), logits.params          # (N, C) softmax, {"w_0": ...}

At inference a final BN is a per-class scale and bias on the logits (its running statistics and
affine parameters); the rivals below fit a scale, a bias, or both, on a model trained without it.
Each is fitted on the training split (its images in eval mode, no augmentation) or on validation,
never on test:

  logit_adjustment   z_c − τ log π_c, π the training prior, τ chosen on validation by balanced
                     accuracy (Menon et al., "Long-tail learning via logit adjustment", ICLR 2021,
                     Eq. 9; ties go to τ nearest 1, their default)
  vector_scaling     w_c z_c + b_c, fitted by the negative log-likelihood on validation (Guo et al.,
                     "On calibration of modern neural networks", ICML 2017, Section 4.2)
  standardisation    (z_c − μ_c) / σ_c with μ, σ of each logit over the training images: what a final
                     BN without affine parameters does at inference, on a model trained without it
  tau_norm           the last Linear's class weights W_c / ‖W_c‖^τ (bias kept), τ chosen on validation
                     by balanced accuracy (Kang et al., "Decoupling representation and classifier for
                     long-tailed recognition", ICLR 2020, Section 4; ties go to the smallest τ)
  crt                the last Linear re-initialised and re-trained on the frozen penultimate features
                     with class-balanced sampling (Kang et al. 2020: cRT; SGD, momentum 0.9, cosine
                     schedule, `epochs` epochs of the training split's size)
  lws                the last Linear's weights times a learned per-class scale f_c (weights and bias
                     fixed), trained as cRT is (Kang et al. 2020: learnable weight scaling)
  remove_final_bn    the network's outputs without its final layer (the last Linear's logits): a
                     final BN trained and removed at inference (Kocaman, Shir & Bäck, ISVC 2021)

Balanced Softmax (Ren et al., NeurIPS 2020) is a training loss, and for one label it is the
logit-adjusted loss with τ = 1 (`engine.loss_value`): softmax over n_c e^{z_c} is softmax over
z_c + log π_c. Pure torch and numpy; knows nothing of MLflow.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from finalbn.config.seeds import POSTHOC, stream_seed
from finalbn.config.study import POSTHOC_METHODS

METHODS = POSTHOC_METHODS  # finalbn.config.study's vocabulary
TAU_GRID = np.round(np.arange(0.0, 3.0 + 1e-9, 0.05), 2)  # logit adjustment's τ candidates
TAU_NORM_GRID = np.round(np.arange(0.0, 2.0 + 1e-9, 0.1), 1)  # τ-normalisation's
CRT_LR, CRT_MOMENTUM, CRT_WD = 0.1, 0.9, 5e-4  # Kang et al.'s cRT: SGD with momentum, weight decay 5e-4

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]


@dataclass
class HeadParts:
    """A network cut at its last Linear: `before` maps the network's input to the penultimate
    features h (B, H), `linear` maps h to logits (B, C) and `final` (the final BN or SELU, or
    nothing) and `tail` (a single logit's [0, z], or nothing) follow it."""

    before: Callable[[torch.Tensor], torch.Tensor]
    linear: nn.Linear
    final: nn.Module
    tail: nn.Module


def head_parts(model: nn.Module) -> HeadParts:
    """The cut of a `HeadOnFeatures` head (input: pooled features) or a `FinalBNNet` network
    (input: images). Raises ValueError for a model with no `head` Sequential holding a Linear."""
    head = getattr(model, "head", None)
    if not isinstance(head, nn.Sequential) or not any(isinstance(m, nn.Linear) for m in head):
        raise ValueError(
            f"post-hoc methods need a finalbn head (a Sequential with a Linear), got {type(model).__name__}"
        )
    layers = list(head)
    i = max(k for k, m in enumerate(layers) if isinstance(m, nn.Linear))
    start = 2 if not hasattr(model, "body") else 0  # HeadOnFeatures: pool and flatten ran before
    prefix = nn.Sequential(*layers[start:i])
    body = getattr(model, "body", None)
    before = prefix if body is None else (lambda x: prefix(body(x)))
    rest = layers[i + 1 :]
    tail = rest.pop() if rest and type(rest[-1]).__name__ == "SigmoidAsSoftmax" else nn.Identity()
    final = rest[0] if rest else nn.Identity()
    return HeadParts(before, layers[i], final, tail)


@torch.inference_mode()
def penultimate(parts: HeadParts, batches: Batches, device: torch.device | str) -> tuple[np.ndarray, torch.Tensor]:
    """(labels (N,) int, h (N, H) float32 on `device`) of every batch, network in eval mode."""
    ys, hs = [], []
    for x, y in batches:
        hs.append(parts.before(x.to(device)).float())
        ys.append(y.cpu())
    return torch.cat(ys).numpy().astype(np.int64), torch.cat(hs)


@dataclass
class Fitted:
    """A fitted post-hoc method: `logits(h)` (N, C) from penultimate features, its fitted values."""

    method: str
    logits: Callable[[torch.Tensor], torch.Tensor]
    params: dict[str, float] = field(default_factory=dict)

    @torch.inference_mode()
    def probs(self, h: torch.Tensor) -> np.ndarray:
        """(N, C) softmax of the method's logits, float64."""
        return torch.softmax(self.logits(h).float(), dim=1).cpu().numpy().astype(np.float64)


def balanced_accuracy(labels: np.ndarray, pred: np.ndarray) -> float:
    """Mean per-class recall over the classes present in `labels`."""
    return float(np.mean([np.mean(pred[labels == c] == c) for c in np.unique(labels)]))


def _choose(candidates: np.ndarray, score: Callable[[float], float], prefer: float) -> float:
    """The candidate of highest score; ties to the one nearest `prefer`."""
    scores = np.array([score(float(t)) for t in candidates])
    best = np.flatnonzero(scores >= scores.max() - 1e-12)
    return float(candidates[best[np.argmin(np.abs(candidates[best] - prefer))]])


def _plain(parts: HeadParts) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda h: parts.tail(parts.final(parts.linear(h)))


def adjusted_logits(z: torch.Tensor, counts: tuple[int, ...], tau: float) -> torch.Tensor:
    """Menon et al.'s post-hoc logit adjustment: z_c − τ log π_c, π the class prior of `counts`;
    z (N, C). At τ = 1 its softmax is the class-balanced posterior p(c|x) / π_c, normalised."""
    prior = torch.tensor(counts, dtype=torch.float32, device=z.device)
    return z - tau * torch.log(prior / prior.sum())


def _logit_adjustment(parts: HeadParts, val: tuple[np.ndarray, torch.Tensor], counts: tuple[int, ...]) -> Fitted:
    z_val = _plain(parts)(val[1])

    def acc(tau: float) -> float:
        return balanced_accuracy(val[0], adjusted_logits(z_val, counts, tau).argmax(1).cpu().numpy())

    tau = _choose(TAU_GRID, acc, prefer=1.0)
    return Fitted("logit_adjustment", lambda h: adjusted_logits(_plain(parts)(h), counts, tau), {"tau": tau})


def _vector_scaling(parts: HeadParts, val: tuple[np.ndarray, torch.Tensor]) -> Fitted:
    with torch.no_grad():
        z = _plain(parts)(val[1]).float()
    y = torch.as_tensor(val[0], device=z.device)
    w = torch.ones(z.shape[1], device=z.device, requires_grad=True)
    b = torch.zeros(z.shape[1], device=z.device, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=0.1, max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = nn.functional.cross_entropy(z * w + b, y)
        loss.backward()
        return loss

    opt.step(closure)
    w_, b_ = w.detach().clone(), b.detach().clone()
    params = {**{f"w_{c}": float(v) for c, v in enumerate(w_)}, **{f"b_{c}": float(v) for c, v in enumerate(b_)}}
    return Fitted("vector_scaling", lambda h: _plain(parts)(h) * w_ + b_, params)


def _standardisation(parts: HeadParts, train: tuple[np.ndarray, torch.Tensor], eps: float = 1e-5) -> Fitted:
    z = _plain(parts)(train[1])
    mu, sd = z.mean(0), torch.sqrt(z.var(0, unbiased=False) + eps)
    params = {**{f"mean_{c}": float(v) for c, v in enumerate(mu)}, **{f"std_{c}": float(v) for c, v in enumerate(sd)}}
    return Fitted("standardisation", lambda h: (_plain(parts)(h) - mu) / sd, params)


def tau_normalised(parts: HeadParts, tau: float) -> Callable[[torch.Tensor], torch.Tensor]:
    """Kang et al.'s τ-normalised classifier: h -> the network's outputs with the last Linear's
    class weights W_c / ‖W_c‖^τ (bias kept). τ = 0 is the network as trained."""
    weight = parts.linear.weight.detach()
    bias = parts.linear.bias.detach() if parts.linear.bias is not None else None
    w = weight / weight.norm(dim=1, keepdim=True).pow(tau)
    return lambda h: parts.tail(parts.final(nn.functional.linear(h, w, bias)))


def _tau_norm(parts: HeadParts, val: tuple[np.ndarray, torch.Tensor]) -> Fitted:
    def acc(tau: float) -> float:
        return balanced_accuracy(val[0], tau_normalised(parts, tau)(val[1]).argmax(1).cpu().numpy())

    tau = _choose(TAU_NORM_GRID, acc, prefer=0.0)
    return Fitted("tau_norm", tau_normalised(parts, tau), {"tau": tau})


def balanced_batches(labels: np.ndarray, batch_size: int, epoch: int, seed: int) -> list[np.ndarray]:
    """One epoch of class-balanced sampling (Kang et al. 2020): len(labels) indices drawn with
    replacement, each class equally likely, then uniformly within it; batches of `batch_size`
    (a last batch of one is dropped)."""
    rng = np.random.default_rng(stream_seed(seed, POSTHOC, 1 + epoch))
    classes = np.unique(labels)
    picked = rng.choice(classes, size=len(labels))
    idx = np.empty(len(labels), dtype=np.int64)
    for c in classes:
        where = np.flatnonzero(labels == c)
        idx[picked == c] = rng.choice(where, size=int(np.sum(picked == c)))
    out = [idx[i : i + batch_size] for i in range(0, len(idx), batch_size)]
    return [b for b in out if len(b) > 1]


def _retrain(
    params: list[torch.Tensor],
    logits: Callable[[torch.Tensor], torch.Tensor],
    train: tuple[np.ndarray, torch.Tensor],
    epochs: int,
    batch_size: int,
    seed: int,
) -> None:
    """Cross-entropy on class-balanced batches of the frozen features, SGD (Kang et al.'s cRT)."""
    labels, h = train
    y = torch.as_tensor(labels, device=h.device)
    opt = torch.optim.SGD(params, lr=CRT_LR, momentum=CRT_MOMENTUM, weight_decay=CRT_WD)
    plan = [balanced_batches(labels, batch_size, e, seed) for e in range(epochs)]
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, sum(len(p) for p in plan)))
    for batches in plan:
        for idx in batches:
            t = torch.as_tensor(idx, device=h.device)
            opt.zero_grad()
            nn.functional.cross_entropy(logits(h[t]), y[t]).backward()
            opt.step()
            sched.step()


def _crt(parts: HeadParts, train: tuple[np.ndarray, torch.Tensor], epochs: int, batch_size: int, seed: int) -> Fitted:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(stream_seed(seed, POSTHOC, 0))
        lin = nn.Linear(parts.linear.in_features, parts.linear.out_features, bias=parts.linear.bias is not None)
    lin.to(train[1].device)
    with torch.enable_grad():
        _retrain(list(lin.parameters()), lambda h: parts.tail(lin(h)), train, epochs, batch_size, seed)
    lin.eval()
    return Fitted("crt", lambda h: parts.tail(lin(h)), {})


def _lws(parts: HeadParts, train: tuple[np.ndarray, torch.Tensor], epochs: int, batch_size: int, seed: int) -> Fitted:
    weight = parts.linear.weight.detach()
    bias = (
        parts.linear.bias.detach()
        if parts.linear.bias is not None
        else torch.zeros(weight.shape[0], device=weight.device)
    )
    scale = torch.ones(weight.shape[0], device=weight.device, requires_grad=True)

    def logits(h: torch.Tensor) -> torch.Tensor:
        return parts.tail(h @ weight.T * scale + bias)

    with torch.enable_grad():
        _retrain([scale], logits, train, epochs, batch_size, seed)
    s = scale.detach().clone()
    return Fitted(
        "lws", lambda h: parts.tail(h @ weight.T * s + bias), {f"scale_{c}": float(v) for c, v in enumerate(s)}
    )


def fit(
    method: str,
    parts: HeadParts,
    train: tuple[np.ndarray, torch.Tensor],
    val: tuple[np.ndarray, torch.Tensor],
    counts: tuple[int, ...],
    *,
    seed: int = 0,
    epochs: int = 10,
    batch_size: int = 64,
) -> Fitted:
    """Fit `method` (one of METHODS) on a trained network's parts: `train` and `val` are
    (labels (N,), penultimate features h (N, H)) of the training split (eval mode) and validation;
    `counts` the training split's class counts (the prior of logit adjustment). cRT and LWS train
    `epochs` epochs of `batch_size` from `seed`'s stream. Raises ValueError for an unknown method or
    a validation split without every class (its balanced accuracy or NLL would choose nothing)."""
    if method not in METHODS:
        raise ValueError(f"train.posthoc must be one of {', '.join(METHODS)} (got {method!r})")
    if method in ("logit_adjustment", "vector_scaling", "tau_norm") and len(np.unique(val[0])) < 2:
        raise ValueError(f"{method} is fitted on validation, which holds one class only")
    parts.linear.eval()
    parts.final.eval()
    with torch.inference_mode(False), torch.no_grad():
        if method == "none":
            return Fitted(method, _plain(parts))
        if method == "remove_final_bn":
            return Fitted(method, lambda h: parts.tail(parts.linear(h)))
        if method == "logit_adjustment":
            return _logit_adjustment(parts, val, counts)
        if method == "vector_scaling":
            with torch.enable_grad():
                return _vector_scaling(parts, val)
        if method == "standardisation":
            return _standardisation(parts, train)
        if method == "tau_norm":
            return _tau_norm(parts, val)
        if method == "crt":
            return _crt(parts, train, epochs, batch_size, seed)
        return _lws(parts, train, epochs, batch_size, seed)


def cell_outputs(
    setup: Any, model: nn.Module, inputs: Any, epoch: int
) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    """A cell's `train.posthoc` fitted on its model as it is (`setup`: a `cell.CellSetup`; `inputs`: its
    `cell.CellInputs`, the training split in eval mode and validation at `epoch`): (test probs (N, 2),
    validation probs (M, 2), the fitted values)."""
    tc, device = setup.cfg.train, setup.device
    parts = head_parts(model)
    train = penultimate(parts, inputs.train_eval(), device)
    val = penultimate(parts, inputs.val_of(epoch), device)
    test = penultimate(parts, inputs.test_of(epoch), device)
    counts = tuple(int(c) for c in np.bincount(np.asarray(setup.train_labels, dtype=np.int64), minlength=2))
    f = fit(tc.posthoc, parts, train, val, counts, seed=setup.seed, epochs=tc.epochs, batch_size=tc.batch_size)
    return f.probs(test[1]), f.probs(val[1]), f.params

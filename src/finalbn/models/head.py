"""The fastai v1 head that sits on the body, and the final layer under study.

    head = create_head(nf=1280, num_classes=2, spec=HeadSpec(final="bn"), seed=0)   # (B, nf, h, w) -> (B, 2)
    HeadSpec.of(cfg.model, "bn")        # a cell's head, from its model config and final layer
    final_bn_stats(head, "bn")          # the final BN's running stats, gamma and beta per class
    HeadOnFeatures(head)                # the same head fed pooled (B, 2nf) features instead

`final` picks what sits after the last Linear: one of `FINAL_LAYERS` ("bn", "selu", "none").
`single_logit=True` gives a binary head one logit z (the last Linear and the final layer one wide)
and returns the logits [0, z]: their softmax is [1 − σ(z), σ(z)] and cross-entropy on them is the
binary cross-entropy of a sigmoid output, so every later step (loss, class weights, metrics, ONNX,
the field) stays as it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from finalbn.config import FINAL_LAYERS
from finalbn.config.schema import ModelConfig
from finalbn.config.seeds import HEAD_INIT, stream_seed


@dataclass(frozen=True)
class HeadSpec:
    """The head's shape and its last layer, fastai v1's defaults (`create_head`): `hidden` units,
    the two dropouts, `final` (one of `FINAL_LAYERS`) with the final BN's momentum, eps and affine,
    the last Linear's bias, and one sigmoid logit or two softmax logits."""

    hidden: int = 512
    dropout: tuple[float, ...] = (0.25, 0.5)
    final: str = "bn"
    final_bn_momentum: float = 0.01
    final_bn_eps: float = 1e-5
    final_bn_affine: bool = True
    final_bias: bool = True
    single_logit: bool = False

    @classmethod
    def of(cls, model: ModelConfig, final: str) -> HeadSpec:
        """A cell's head: its `model` section with the final layer its switches chose
        (`config.final_layer`)."""
        return cls(
            hidden=model.hidden,
            dropout=tuple(model.dropout),
            final=final,
            final_bn_momentum=model.final_bn_momentum,
            final_bn_eps=model.final_bn_eps,
            final_bn_affine=model.final_bn_affine,
            final_bias=model.final_bias,
            single_logit=model.single_logit,
        )


def check_choice(key: str, value: Any, allowed: tuple[str, ...]) -> None:
    """A one-line ValueError naming `key` and what it allows, unless `value` is one of `allowed`."""
    if value not in allowed:
        raise ValueError(f"{key} must be one of {', '.join(allowed)} (got {value!r})")


class AdaptiveConcatPool2d(nn.Module):
    """fastai's concat pooling: max-pool and avg-pool to 1x1, concatenated (max first, as fastai)."""

    def __init__(self) -> None:
        super().__init__()
        self.mp = nn.AdaptiveMaxPool2d(1)
        self.ap = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.mp(x), self.ap(x)], 1)  # (B, 2C, 1, 1)


class SigmoidAsSoftmax(nn.Module):
    """(B, 1) logit z -> (B, 2) logits [0, z]: softmax gives [1 − σ(z), σ(z)] (a single sigmoid
    output, written as the two-class logits the rest of the project reads)."""

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.zeros_like(z), z], 1)


DEFAULT_HEAD = HeadSpec()  # fastai v1's head with a final BN


def create_head(
    nf: int, num_classes: int = 2, spec: HeadSpec = DEFAULT_HEAD, *, seed: int | None = None
) -> nn.Sequential:
    """fastai v1 `create_head(nf, nc, lin_ftrs=[hidden], ps=0.5, bn_final=...)` for `nf` body channels.

    pool(2nf) -> Flatten -> BN(2nf) -> Dropout(p0) -> Linear(2nf, hidden) -> ReLU -> BN(hidden)
    -> Dropout(p1) -> Linear(hidden, num_classes) -> final layer (`spec`, a `HeadSpec`). fastai's
    `bn_final=True` is `final="bn"` with momentum 0.01. A dropout of 0 leaves its layer out, as fastai does.
    `seed`: initialise from this seed's own stream (the global generator is left as it was), so
    the head starts the same whether or not a body was built before it. `single_logit`: one
    sigmoid logit instead of two softmax logits (binary only; module docstring).
    Raises ValueError for an unknown `final` or `single_logit` with num_classes != 2.
    """
    hidden, dropout, final, single_logit = spec.hidden, spec.dropout, spec.final, spec.single_logit
    check_choice("final", final, FINAL_LAYERS)
    if single_logit and num_classes != 2:
        raise ValueError(f"a single logit is a binary head (num_classes is {num_classes})")
    width = 1 if single_logit else num_classes
    layers: list[nn.Module] = [AdaptiveConcatPool2d(), nn.Flatten()]  # (B, 2nf)
    layers += [nn.BatchNorm1d(2 * nf)]
    if dropout[0]:
        layers += [nn.Dropout(dropout[0])]
    layers += [nn.Linear(2 * nf, hidden), nn.ReLU(inplace=True), nn.BatchNorm1d(hidden)]
    if dropout[1]:
        layers += [nn.Dropout(dropout[1])]
    layers += [nn.Linear(hidden, width, bias=spec.final_bias)]  # (B, width) logits before the final layer
    if final == "bn":
        layers += [
            nn.BatchNorm1d(width, eps=spec.final_bn_eps, momentum=spec.final_bn_momentum, affine=spec.final_bn_affine)
        ]
    elif final == "selu":
        layers += [nn.SELU()]
    if single_logit:
        layers += [SigmoidAsSoftmax()]
    head = nn.Sequential(*layers)
    # fastai's create_cnn re-initialises the head: kaiming-normal Linear weights, zero biases,
    # BN layers left at weight 1 / bias 0.
    with torch.random.fork_rng(devices=[], enabled=seed is not None):
        if seed is not None:
            torch.default_generator.manual_seed(stream_seed(seed, HEAD_INIT))
        for m in head.modules():
            if isinstance(m, nn.Linear):
                nn.init.kaiming_normal_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
    return head


def final_layer_of(head: nn.Sequential) -> nn.Module:
    """The module after the last Linear that the study is about (the final BN, SELU or the Linear
    itself), skipping a single logit's `SigmoidAsSoftmax`."""
    return head[-2] if isinstance(head[-1], SigmoidAsSoftmax) else head[-1]


def final_bn_stats(head: nn.Sequential, final: str) -> dict[str, float]:
    """The final BN's running mean and variance, gamma and beta per class (the mechanism under
    study); the engine logs them after every epoch. Empty without a final BN."""
    last = final_layer_of(head)
    if final != "bn" or not isinstance(last, nn.BatchNorm1d):
        return {}
    out: dict[str, float] = {}
    parts = {
        "running_mean": last.running_mean,
        "running_var": last.running_var,
        "gamma": last.weight,
        "beta": last.bias,
    }
    for name, t in parts.items():
        if t is not None:
            out.update({f"final_bn_{name}_{i}": float(v) for i, v in enumerate(t.detach().cpu().tolist())})
    return out


class HeadOnFeatures(nn.Module):
    """A `create_head` head fed the frozen body's pooled features (B, 2nf) instead of its feature
    map: the pool and flatten ran once, where the features were computed (`finalbn.train.features`).
    Its state_dict keys are the full network's (`head.N...`)."""

    def __init__(self, head: nn.Sequential, final: str = "bn") -> None:
        super().__init__()
        if not (isinstance(head[0], AdaptiveConcatPool2d) and isinstance(head[1], nn.Flatten)):
            raise ValueError("HeadOnFeatures needs a create_head head (concat pool, flatten, ...)")
        self.head = head
        self.final = final
        self.num_classes = (
            2
            if isinstance(head[-1], SigmoidAsSoftmax)
            else int(next(m for m in reversed(head) if isinstance(m, nn.Linear)).out_features)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for m in list(self.head)[2:]:
            x = m(x)
        return x

    def epoch_stats(self) -> dict[str, float]:
        return final_bn_stats(self.head, self.final)

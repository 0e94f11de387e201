"""The networks of the study: a pretrained CNN body, a fastai v1 head, and one optional final BN.

The question is whether a `BatchNorm1d(num_classes)` after the last Linear (before the softmax)
rescues the minority class of a 99 %/1 % binary task. `create_model` builds that network from a
torchvision backbone and fastai v1's `create_head`; `final` picks what sits after the last Linear
(`"bn"`, `"selu"` or `"none"`), and the body is frozen as fastai does when fine-tuning the head,
with three ways of treating the body's BatchNorm layers (`bn_policy`, to be logged with a run).
Used by the training engine as::

    model = create_model("resnet34", weights="imagenet", final="bn")
    opt = torch.optim.AdamW(finalbn.engine.param_groups(model, weight_decay=1e-2), lr=1e-3)
    logits = model(images)                      # (B, 2); needs B >= 2 in train mode

`weights` is `"none"` (random init), `"imagenet"` (torchvision's default weights from the torch hub
cache; nothing here falls back to random init when they are missing: `WeightsError` says which file
to fetch) or a path to a `.pt` state_dict of the full torchvision model of the same arch.
"""
from __future__ import annotations

import os
import re
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional, Union

import torch
import torchvision
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = [
    "ARCHS",
    "ArchSpec",
    "AdaptiveConcatPool2d",
    "FinalBNNet",
    "WeightsError",
    "create_model",
    "create_head",
    "trainable_parameters",
]

FINALS = ("bn", "selu", "none")
FROZEN_BN = ("eval", "train")
BN_POLICIES = ("frozen-eval", "frozen-train (fastai)", "unfrozen")


class WeightsError(RuntimeError):
    """Pretrained weights that cannot be had; the message is one line saying what to do."""


@dataclass(frozen=True)
class ArchSpec:
    """How to build one backbone: the torchvision constructor and where its classifier starts.

    Calling the spec builds the full torchvision model with random weights (`weights=None`).
    """

    build: Callable[..., nn.Module]
    family: Literal["resnet", "vgg"]

    @property
    def classifier_prefix(self) -> str:
        # state_dict keys of the ImageNet classifier, dropped when loading a body
        return "fc." if self.family == "resnet" else "classifier."

    def body(self, full: nn.Module) -> nn.Module:
        if self.family == "resnet":
            return nn.Sequential(*list(full.children())[:-2])  # drops avgpool and fc
        return full.features  # type: ignore[return-value]

    def __call__(self, **kwargs: Any) -> nn.Module:
        return self.build(weights=None, **kwargs)


# The torchvision name is the key (it also picks the ImageNet weights). Add an arch here.
ARCHS: dict[str, ArchSpec] = {
    "resnet18": ArchSpec(torchvision.models.resnet18, "resnet"),
    "resnet34": ArchSpec(torchvision.models.resnet34, "resnet"),
    "resnet50": ArchSpec(torchvision.models.resnet50, "resnet"),
    "vgg19_bn": ArchSpec(torchvision.models.vgg19_bn, "vgg"),
    "vgg19": ArchSpec(torchvision.models.vgg19, "vgg"),
}


# ---------------------------------------------------------------- head (fastai v1 create_head)


class AdaptiveConcatPool2d(nn.Module):
    """fastai's concat pooling: max-pool and avg-pool to 1x1, concatenated (max first, as fastai)."""

    def __init__(self) -> None:
        super().__init__()
        self.mp = nn.AdaptiveMaxPool2d(1)
        self.ap = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.mp(x), self.ap(x)], 1)  # (B, 2C, 1, 1)


def create_head(nf: int, num_classes: int = 2, *, hidden: int = 512,
                dropout: tuple[float, float] = (0.25, 0.5), final: str = "bn",
                final_bn_momentum: float = 0.01, final_bn_eps: float = 1e-5,
                final_bn_affine: bool = True, final_bias: bool = True) -> nn.Sequential:
    """fastai v1 `create_head(nf, nc, lin_ftrs=[hidden], ps=0.5, bn_final=...)` for `nf` body channels.

    pool(2nf) -> Flatten -> BN(2nf) -> Dropout(p0) -> Linear(2nf, hidden) -> ReLU -> BN(hidden)
    -> Dropout(p1) -> Linear(hidden, num_classes) -> final layer. fastai's `bn_final=True` is
    `final="bn"` with momentum 0.01. A dropout of 0 leaves its layer out, as fastai does.
    """
    _check_choice("final", final, FINALS)
    layers: list[nn.Module] = [AdaptiveConcatPool2d(), nn.Flatten()]  # (B, 2nf)
    layers += [nn.BatchNorm1d(2 * nf)]
    if dropout[0]:
        layers += [nn.Dropout(dropout[0])]
    layers += [nn.Linear(2 * nf, hidden), nn.ReLU(inplace=True), nn.BatchNorm1d(hidden)]
    if dropout[1]:
        layers += [nn.Dropout(dropout[1])]
    layers += [nn.Linear(hidden, num_classes, bias=final_bias)]  # (B, num_classes) logits before the final layer
    if final == "bn":
        layers += [nn.BatchNorm1d(num_classes, eps=final_bn_eps, momentum=final_bn_momentum,
                                  affine=final_bn_affine)]
    elif final == "selu":
        layers += [nn.SELU()]
    head = nn.Sequential(*layers)
    # fastai's create_cnn re-initialises the head: kaiming-normal Linear weights, zero biases,
    # BN layers left at weight 1 / bias 0.
    for m in head.modules():
        if isinstance(m, nn.Linear):
            nn.init.kaiming_normal_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return head


# ---------------------------------------------------------------- the network


class FinalBNNet(nn.Module):
    """`body` (pretrained features, frozen) -> `head` (fastai head, always trained).

    `bn_policy` says how the body's BatchNorm layers behave, one of `BN_POLICIES`:
      - "frozen-eval": body frozen and its BN layers kept in eval mode under `train()`, so the
        pretrained running statistics are used and never updated;
      - "frozen-train (fastai)": body frozen but its BN layers follow `train()`, so their running
        statistics drift to the new data (fastai v1 with `train_bn=False`);
      - "unfrozen": body BN weight/bias train and their statistics update (fastai v1's default
        `train_bn=True`); every other body parameter stays frozen.
    In train mode every BatchNorm1d of the head needs a batch of at least 2.
    """

    def __init__(self, body: nn.Module, head: nn.Sequential, *, bn_policy: str, arch: str = "",
                 nf: int = 0, final: str = "bn", weights: str = "none") -> None:
        super().__init__()
        _check_choice("bn_policy", bn_policy, BN_POLICIES)
        self.body = body
        self.head = head
        self.bn_policy = bn_policy
        self.arch = arch
        self.nf = nf  # channels out of the body; the head's first Linear takes 2 * nf
        self.final = final
        self.weights = weights  # what the body was loaded from, for the run log
        self._apply_freeze()
        self.train(self.training)

    def _body_bns(self) -> list[_BatchNorm]:
        return [m for m in self.body.modules() if isinstance(m, _BatchNorm)]

    def _apply_freeze(self) -> None:
        for p in self.body.parameters():
            p.requires_grad_(False)
        if self.bn_policy == "unfrozen":
            for m in self._body_bns():
                for p in m.parameters(recurse=False):
                    p.requires_grad_(True)
        for p in self.head.parameters():
            p.requires_grad_(True)

    def train(self, mode: bool = True) -> "FinalBNNet":
        super().train(mode)
        if mode and self.bn_policy == "frozen-eval":
            for m in self._body_bns():
                m.eval()
        return self

    @property
    def final_bn(self) -> Optional[nn.BatchNorm1d]:
        """The BN after the last Linear, or None when `final` is not "bn"."""
        last = self.head[-1]
        return last if self.final == "bn" and isinstance(last, nn.BatchNorm1d) else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))  # (B, num_classes) logits, after the final layer


def create_model(arch: str, *, weights: Union[str, os.PathLike] = "none", num_classes: int = 2,
                 final: str = "bn", final_bn_momentum: float = 0.01, final_bn_eps: float = 1e-5,
                 final_bn_affine: bool = True, final_bias: bool = True, hidden: int = 512,
                 dropout: tuple[float, float] = (0.25, 0.5), unfreeze_bn: bool = False,
                 frozen_bn: str = "eval", progress: bool = False) -> FinalBNNet:
    """Build a frozen pretrained body with a fastai v1 head, e.g.::

        create_model("resnet34", weights="imagenet", final="bn")

    weights: "none" (random init), "imagenet" (torchvision's DEFAULT weights for `arch`, read from
      `torch.hub.get_dir()/checkpoints/`, downloaded only when missing) or a path to a `.pt`
      state_dict of the full torchvision `arch` (its classifier, any shape, is ignored).
      Raises `WeightsError` (one line) when they cannot be had; never falls back to random init.
    final: "bn" (BatchNorm1d(num_classes, final_bn_momentum, final_bn_eps, final_bn_affine) after
      the last Linear), "selu" or "none". With "bn" the Linear's bias is redundant (the BN
      subtracts the batch mean, so its gradient is zero in train mode); `final_bias=False` drops it.
    unfreeze_bn: train the body's BN weight/bias (their statistics update too).
    frozen_bn: with `unfreeze_bn=False`, "eval" keeps the body's BN layers in eval mode (pretrained
      statistics) and "train" lets them follow `model.train()` as fastai does; ignored otherwise.
    progress: show a download progress bar for "imagenet".
    Raises ValueError for an unknown arch or a bad `final` / `frozen_bn` / head size.
    """
    spec = ARCHS.get(arch)
    if spec is None:
        raise ValueError(f"unknown arch {arch!r} (have: {', '.join(ARCHS)})")
    _check_choice("final", final, FINALS)
    _check_choice("frozen_bn", frozen_bn, FROZEN_BN)
    if num_classes < 1 or hidden < 1:
        raise ValueError(f"num_classes and hidden must be >= 1 (got {num_classes}, {hidden})")
    if len(dropout) != 2 or not all(0.0 <= p < 1.0 for p in dropout):
        raise ValueError(f"dropout must be two probabilities in [0, 1) (got {tuple(dropout)})")

    body, source = _build_body(arch, spec, weights, progress=progress)
    nf = _out_channels(body)
    head = create_head(nf, num_classes, hidden=hidden, dropout=tuple(dropout), final=final,
                       final_bn_momentum=final_bn_momentum, final_bn_eps=final_bn_eps,
                       final_bn_affine=final_bn_affine, final_bias=final_bias)
    policy = "unfrozen" if unfreeze_bn else ("frozen-eval" if frozen_bn == "eval" else "frozen-train (fastai)")
    return FinalBNNet(body, head, bn_policy=policy, arch=arch, nf=nf, final=final, weights=source)


# ---------------------------------------------------------------- optimiser helpers


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters the optimiser should see (requires_grad), in module order."""
    return [p for p in model.parameters() if p.requires_grad]



# ---------------------------------------------------------------- building and loading bodies


def _check_choice(key: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{key} must be one of {', '.join(allowed)} (got {value!r})")


def _build_body(arch: str, spec: ArchSpec, weights: Union[str, os.PathLike], *,
                progress: bool) -> tuple[nn.Module, str]:
    """The body of `arch` with the requested weights, and a short description of their source."""
    # Built on the meta device: VGG's 120M-parameter classifier would cost ~3 s and 0.5 GB to
    # initialise only to be thrown away. The body is then materialised and initialised or loaded.
    with torch.device("meta"):
        full = spec()
    body = spec.body(full)
    body.to_empty(device="cpu")

    if isinstance(weights, str) and weights == "none":
        _init_like_torchvision(body)
        return body, "none"
    if isinstance(weights, str) and weights == "imagenet":
        state, source = _imagenet_state_dict(arch, progress=progress)
        _load_body(full, spec, state, where=f"ImageNet weights {source}", arch=arch)
        return body, f"imagenet:{source}"
    path = Path(weights)
    if not _looks_like_path(weights):
        raise WeightsError(
            f"weights must be 'none', 'imagenet' or a path to a .pt state_dict (got {str(weights)!r};"
            f" 'synthetic' must be resolved to its pretrained .pt file before create_model)")
    state = _read_state_dict(path)
    _load_body(full, spec, state, where=f"weights file {path}", arch=arch)
    return body, str(path)


def _looks_like_path(weights: Union[str, os.PathLike]) -> bool:
    if not isinstance(weights, str):
        return True
    return (Path(weights).suffix in (".pt", ".pth", ".bin", ".ckpt") or os.sep in weights
            or "/" in weights or Path(weights).is_file())


def _init_like_torchvision(body: nn.Module) -> None:
    """Random init of a materialised body, as torchvision's ResNet/VGG constructors do it."""
    for m in body.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, _BatchNorm):
            m.reset_parameters()  # weight 1, bias 0, running stats 0 / 1, num_batches_tracked 0
        elif any(True for _ in m.parameters(recurse=False)) or any(True for _ in m.buffers(recurse=False)):
            reset = getattr(m, "reset_parameters", None)
            if reset is None:
                raise TypeError(f"no initialiser for body module {type(m).__name__}")
            reset()


def _out_channels(body: nn.Module) -> int:
    # the last conv of a ResNet/VGG body sets the channels of its (B, nf, H', W') output
    convs = [m for m in body.modules() if isinstance(m, nn.Conv2d)]
    return convs[-1].out_channels


def _imagenet_state_dict(arch: str, *, progress: bool) -> tuple[dict[str, Any], str]:
    w = torchvision.models.get_model_weights(arch).DEFAULT
    url = w.url
    cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urllib.parse.urlparse(url).path)
    was_cached = cached.exists()
    try:
        # torch.hub reads the cache and downloads only when the file is missing
        state = w.get_state_dict(progress=progress, check_hash=True, map_location="cpu", weights_only=True)
    except Exception as exc:  # URLError/OSError offline, RuntimeError on a bad hash, anything from torch.load
        reason = _one_line(exc)
        others = "or set model.weights=<file.pt>, model.weights=synthetic or model.weights=none"
        if was_cached:
            raise WeightsError(
                f"ImageNet weights for {arch}: cached file {cached} could not be read ({reason});"
                f" delete it and download {url} to {cached} on a connected machine, {others}") from exc
        raise WeightsError(
            f"ImageNet weights for {arch} are not cached and could not be downloaded ({reason}):"
            f" download {url} to {cached} on a connected machine, {others}") from exc
    return state, f"{w}"


def _read_state_dict(path: Path) -> Mapping[str, Any]:
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load raises many kinds for a corrupt or foreign file
        raise WeightsError(f"weights file {path} could not be read: {_one_line(exc)}") from exc
    if not isinstance(state, Mapping) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                 for k, v in state.items()):
        raise WeightsError(f"weights file {path} could not be read: it holds a {type(state).__name__},"
                           f" not a state_dict of tensors")
    return state


def _load_body(full: nn.Module, spec: ArchSpec, state: Mapping[str, Any], *, where: str, arch: str) -> None:
    """Copy the body keys of a full-model state_dict into `full` (whose body is materialised)."""
    prefix = spec.classifier_prefix
    want = {k: v for k, v in full.state_dict().items() if not k.startswith(prefix)}
    got = {k: v for k, v in state.items() if not k.startswith(prefix)}
    for k in want:
        # old torchvision checkpoints (e.g. the 2017 VGG files) predate BN's num_batches_tracked
        if k not in got and k.endswith("num_batches_tracked"):
            got[k] = torch.tensor(0, dtype=torch.long)
    missing = [k for k in want if k not in got]
    unexpected = [k for k in got if k not in want]
    if missing:
        raise WeightsError(f"{where} does not match arch {arch}: missing key {missing[0]!r}"
                           f" ({len(missing)} missing, {len(unexpected)} unexpected)")
    if unexpected:
        raise WeightsError(f"{where} does not match arch {arch}: unexpected key {unexpected[0]!r}"
                           f" ({len(unexpected)} unexpected)")
    for k, v in want.items():
        if tuple(got[k].shape) != tuple(v.shape):
            raise WeightsError(f"{where} does not match arch {arch}: key {k!r} has shape"
                               f" {tuple(got[k].shape)}, the model needs {tuple(v.shape)}")
    result = full.load_state_dict(got, strict=False)  # copies into the body; classifier stays meta
    assert not result.unexpected_keys and all(k.startswith(prefix) for k in result.missing_keys)


def _one_line(exc: BaseException) -> str:
    text = re.sub(r"\s+", " ", str(exc)).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__

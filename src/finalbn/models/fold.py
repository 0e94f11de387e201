"""The final BN folded into the last Linear, for export: the same eval-mode function, one layer fewer.

    shipped = fold_final_bn(model)    # a copy, in eval mode; `model` is untouched
    shipped.head                      # ... -> Linear(hidden, width) [-> SigmoidAsSoftmax]: no final BN

In eval mode the final `BatchNorm1d` normalises with its running statistics, so Linear -> BN is one
affine map and one Linear computes it exactly (up to float rounding). The fold is done here, on
the network, so the file shipped does not depend on whether an ONNX optimiser happens to fuse it.
Not imported by `finalbn.models` on purpose: the training code (a cell's key) does not need it.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from finalbn.models.network import FinalBNNet


def folded_linear(linear: nn.Linear, bn: nn.BatchNorm1d) -> nn.Linear:
    """One Linear equal to `bn(linear(x))` with `bn` in eval mode (its running statistics).

    With s = gamma / sqrt(running_var + eps) (per output unit, shape (out,)):
        W' = diag(s) W                       (out, in)
        b' = s * (b - running_mean) + beta   (out,)
    gamma = 1 and beta = 0 when `bn.affine` is False; b = 0 when the Linear has no bias (the folded
    Linear always has one). Computed in float64, stored in the Linear's dtype and device. This is
    the standard BN folding of inference engines (e.g. Jacob et al. 2018, "Quantization and Training
    of Neural Networks for Efficient Integer-Arithmetic-Only Inference", section 3.2), here for a BN
    after a Linear. Raises ValueError when `bn` keeps no running statistics (it would normalise by
    the batch in eval mode: no fixed affine map) or its width is not the Linear's outputs.
    """
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("the final BN keeps no running statistics (track_running_stats=False): it cannot be folded")
    if bn.num_features != linear.out_features:
        raise ValueError(f"the final BN has {bn.num_features} features, the last Linear {linear.out_features} outputs")
    with torch.no_grad():
        w = linear.weight.detach().double()
        b = linear.bias.detach().double() if linear.bias is not None else torch.zeros_like(w[:, 0])
        gamma = bn.weight.detach().double() if bn.affine else torch.ones_like(b)
        beta = bn.bias.detach().double() if bn.affine else torch.zeros_like(b)
        s = gamma / torch.sqrt(bn.running_var.detach().double() + bn.eps)
        out = nn.Linear(
            linear.in_features, linear.out_features, bias=True, device=linear.weight.device, dtype=linear.weight.dtype
        )
        out.weight.copy_(s[:, None] * w)
        out.bias.copy_(s * (b - bn.running_mean.detach().double()) + beta)
    return out


def fold_final_bn(model: FinalBNNet) -> FinalBNNet:
    """A copy of `model`, in eval mode, whose head's final BN is folded into the last Linear
    (`folded_linear`: W' = diag(gamma / sqrt(var + eps)) W, b' = gamma (b - mean) / sqrt(var + eps)
    + beta) and removed: `... -> Linear(hidden, width) -> BatchNorm1d(width) [-> SigmoidAsSoftmax]`
    becomes `... -> Linear'(hidden, width) [-> SigmoidAsSoftmax]`. Its eval-mode logits (B, 2) equal
    `model`'s up to float rounding; the copy keeps `final` ("bn": what was trained) and has no
    `final_bn`. A head without a final BN ("selu", "none", or one already folded) comes back as an
    unchanged copy. `model` itself (weights, mode, layers) is untouched.
    Raises TypeError when `model` is not a FinalBNNet, ValueError when the final BN does not follow
    a Linear or cannot be folded (`folded_linear`).
    """
    if not isinstance(model, FinalBNNet):
        raise TypeError(f"fold_final_bn needs a FinalBNNet (got {type(model).__name__})")
    out = copy.deepcopy(model).eval()
    bn = out.final_bn
    if bn is None:
        return out
    layers = list(out.head)
    i = next(k for k, m in enumerate(layers) if m is bn)
    if i == 0 or not isinstance(layers[i - 1], nn.Linear):
        before = type(layers[i - 1]).__name__ if i else "nothing"
        raise ValueError(f"the final BN follows {before}, not a Linear: there is nothing to fold it into")
    layers[i - 1 : i + 1] = [folded_linear(layers[i - 1], bn)]
    out.head = nn.Sequential(*layers).eval()
    return out

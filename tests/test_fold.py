"""The final BN folded into the last Linear at export: the same probabilities, no BN left in the graph."""

from __future__ import annotations

import itertools

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from finalbn.models import FinalBNNet, HeadSpec, create_head
from finalbn.models.fold import fold_final_bn, folded_linear
from finalbn.models.head import SigmoidAsSoftmax
from finalbn.stages import export
from finalbn.stages.export.onnx import outputs

SIZE = 16


def tiny_net(spec: HeadSpec, seed: int = 0) -> FinalBNNet:
    """A FinalBNNet on an 8-channel conv body, its head's BN statistics and Linear biases drawn far
    from the identity (running mean ±2, variance 0.05-4, gamma 0.3-3, beta ±1), so a BN that were
    dropped, or kept unfolded, would move the probabilities by far more than 1e-5."""
    torch.manual_seed(seed)
    body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
    net = FinalBNNet(body, create_head(8, 2, spec, seed=seed), bn_policy="frozen-eval", final=spec.final)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for m in net.head.modules():
            if isinstance(m, nn.BatchNorm1d):
                n = m.num_features
                m.running_mean.copy_((torch.rand(n, generator=g) - 0.5) * 4)
                m.running_var.copy_(0.05 + torch.rand(n, generator=g) * 4)
                if m.affine:
                    m.weight.copy_(0.3 + torch.rand(n, generator=g) * 2.7)
                    m.bias.copy_(torch.rand(n, generator=g) * 2 - 1)
            elif isinstance(m, nn.Linear) and m.bias is not None:
                m.bias.copy_(torch.rand(m.out_features, generator=g) - 0.5)
    return net.eval()


def probs(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return torch.softmax(net(x), 1)


def images(n: int = 24, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 3, SIZE, SIZE)).astype(np.float32)


def last_linear_then(head: nn.Sequential) -> tuple[nn.Linear, list[nn.Module]]:
    """The head's last Linear and the modules after it."""
    i = max(k for k, m in enumerate(head) if isinstance(m, nn.Linear))
    return head[i], list(head)[i + 1 :]


@pytest.mark.parametrize(
    ("affine", "bias", "single_logit"),
    list(itertools.product((True, False), (True, False), (False, True))),
)
def test_folding_keeps_the_probabilities_within_1e_5_and_leaves_no_bn_after_the_last_linear(affine, bias, single_logit):
    net = tiny_net(HeadSpec(final="bn", hidden=16, final_bn_affine=affine, final_bias=bias, single_logit=single_logit))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x = torch.from_numpy(images())
    folded = fold_final_bn(net)
    linear, after = last_linear_then(folded.head)
    assert not any(isinstance(m, nn.BatchNorm1d) for m in after) and folded.final_bn is None
    assert [type(m) for m in after] == ([SigmoidAsSoftmax] if single_logit else [])
    assert linear.bias is not None  # the fold's shift lands in a bias, which the Linear gains if it had none
    assert (probs(folded, x) - probs(net, x)).abs().max() <= 1e-5
    # the BN matters: the head without it (Linear unfolded) is far off, so the check above has teeth
    unfolded, _ = last_linear_then(net.head)
    dropped = nn.Sequential(*list(net.head)[: list(net.head).index(unfolded) + 1], *after)
    assert (probs(nn.Sequential(net.body, dropped), x) - probs(net, x)).abs().max() > 1e-2
    # the original is untouched: its BN, its weights, its mode
    assert isinstance(net.final_bn, nn.BatchNorm1d) and (net.head[-1] is net.final_bn) is not single_logit
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())


def test_the_fold_is_the_formula():
    net = tiny_net(HeadSpec(final="bn", hidden=16))
    linear, (bn,) = last_linear_then(net.head)
    s = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    got = folded_linear(linear, bn)
    torch.testing.assert_close(got.weight, s[:, None] * linear.weight)
    torch.testing.assert_close(got.bias, s * (linear.bias - bn.running_mean) + bn.bias)


@pytest.mark.parametrize("final", ["selu", "none"])
def test_other_final_layers_come_back_as_an_unchanged_copy(final):
    net = tiny_net(HeadSpec(final=final, hidden=16)).train()
    out = fold_final_bn(net)
    assert out is not net and [type(m) for m in out.head] == [type(m) for m in net.head]
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in out.state_dict().items())
    assert net.training and not out.training  # the copy is in eval mode, the original as it was


def test_what_cannot_be_folded_is_said_in_one_line():
    net = tiny_net(HeadSpec(final="bn", hidden=16))
    linear, (bn,) = last_linear_then(net.head)
    with pytest.raises(ValueError, match="keeps no running statistics"):
        folded_linear(linear, nn.BatchNorm1d(2, track_running_stats=False))
    with pytest.raises(ValueError, match="the final BN has 3 features, the last Linear 2 outputs"):
        folded_linear(linear, nn.BatchNorm1d(3))
    with pytest.raises(TypeError, match="needs a FinalBNNet"):
        fold_final_bn(net.head)  # type: ignore[arg-type]


@pytest.mark.parametrize("single_logit", [False, True])
def test_the_shipped_onnx_has_no_bn_after_its_last_gemm_and_matches_the_unfolded_network(single_logit, tmp_path):
    net = tiny_net(HeadSpec(final="bn", hidden=16, single_logit=single_logit))
    info = export.export_onnx(net, SIZE, tmp_path / "m.onnx")
    assert info["final_bn"] == "folded into the last Linear"
    proto = onnx.load(str(tmp_path / "m.onnx"))
    ops = [n.op_type for n in proto.graph.node]
    assert "BatchNormalization" in ops and ("Gemm" in ops or "MatMul" in ops)  # the head's inner BNs stay
    assert export.bn_after_last_matmul(proto) == []
    x = images()
    assert np.abs(outputs(tmp_path / "m.onnx", x)["probs"] - probs(net, torch.from_numpy(x)).numpy()).max() <= 1e-5
    check = export.parity(net, tmp_path / "m.onnx", x, batch_sizes=(1, 5))
    fold = check["fold"]
    assert check["passed"] and fold["folded"] and fold["max_abs_diff_probs"] <= export.FOLD_TOLERANCE == 1e-5
    assert fold["onnx_within_tolerance"] and fold["onnx_max_abs_diff_probs"] <= 1e-5


def test_the_fold_is_ours_not_the_onnx_optimisers(tmp_path):
    """torch's ONNX optimiser may fuse a BN into a Gemm on its own: the graph as exported, before
    it runs, has no BN after the last Gemm because the network was folded, and has one without."""
    net = tiny_net(HeadSpec(final="bn", hidden=16))
    raw = export.export_onnx(net, SIZE, tmp_path / "raw.onnx", optimize=False)
    kept = export.export_onnx(net, SIZE, tmp_path / "kept.onnx", fold=False, optimize=False)
    assert raw["final_bn"] == "folded into the last Linear" and kept["final_bn"] == "kept"
    assert export.bn_after_last_matmul(onnx.load(str(tmp_path / "raw.onnx"))) == []
    assert len(export.bn_after_last_matmul(onnx.load(str(tmp_path / "kept.onnx")))) == 1
    x = images(8)
    got = {k: outputs(tmp_path / f"{k}.onnx", x)["probs"] for k in ("raw", "kept")}
    assert np.abs(got["raw"] - got["kept"]).max() <= 1e-5


def test_a_network_without_a_final_bn_has_nothing_to_fold():
    net = tiny_net(HeadSpec(final="none", hidden=16))
    assert export.fold_parity(net, images(4)) == {"folded": False, "tolerance": 1e-5, "passed": True}


def test_the_card_says_whether_the_final_bn_is_folded():
    folded = export.final_bn_note("bn", "folded into the last Linear")
    assert folded["folded"] and "folded into the last Linear" in folded["how"] and "1e-05" in folded["how"]
    assert export.final_bn_note("bn", "kept") == {
        "folded": False,
        "how": "the final BN is a BatchNormalization node of model.onnx (not folded)",
    }
    assert not export.final_bn_note("selu", "none")["folded"]

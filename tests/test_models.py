"""finalbn.models: every registered arch builds, trains only what it should, and loads weights safely.

No test touches the network: an autouse fixture makes torch.hub's downloader raise.
"""

from __future__ import annotations

import urllib.error

import pytest
import torch
import torchvision
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from finalbn.models import (
    ARCHS,
    AdaptiveConcatPool2d,
    FinalBNNet,
    HeadSpec,
    WeightsError,
    create_model,
    get_spec,
    trainable_parameters,
)
from finalbn.train.engine import param_groups

# Every per-arch check runs in about a second on 2 cores (create_model skips VGG's 120M-parameter
# classifier), so no arch needs the `slow` marker.
ALL_ARCHS = list(ARCHS)
BN_ARCHS = [a for a in ARCHS if a != "vgg19"]  # vgg19 has no BatchNorm in its body
X_SHAPE = (4, 3, 64, 64)
Y = torch.tensor([0, 1, 0, 1])


@pytest.fixture(autouse=True)
def _offline_and_seeded(monkeypatch):
    def no_download(url, dst, *args, **kwargs):
        raise urllib.error.URLError("network disabled in tests")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    torch.manual_seed(0)


def _x() -> torch.Tensor:
    return torch.randn(*X_SHAPE)


def _body_bns(model: FinalBNNet) -> list[_BatchNorm]:
    return [m for m in model.body.modules() if isinstance(m, _BatchNorm)]


def _stats(bns) -> list[torch.Tensor]:
    return [t.clone() for m in bns for t in (m.running_mean, m.running_var)]


def _step(model: FinalBNNet) -> None:
    model.train()
    opt = torch.optim.AdamW(param_groups(model, weight_decay=0.01), lr=1e-2)
    opt.zero_grad()
    nn.functional.cross_entropy(model(_x()), Y).backward()
    opt.step()


# ---------------------------------------------------------------- registry and arguments


def test_registry_has_the_study_archs():
    assert {"efficientnet_lite0", "resnet18", "resnet34", "resnet50", "vgg19_bn", "vgg19"} <= set(ARCHS)
    assert all(callable(spec) for spec in ARCHS.values())


@pytest.mark.parametrize(
    "arch, nf", [("mobilenet_v3_small", 576), ("regnet_y_400mf", 440), ("convnext_tiny", 768), ("densenet121", 1024)]
)
def test_any_torchvision_model_by_name(arch, nf):
    """Not only the registered archs: the body is cut generically (features, or up to the pool)."""
    model = create_model(arch).eval()
    assert model.nf == nf and model(_x()).shape == (4, 2)
    assert get_spec(arch).mean == (0.485, 0.456, 0.406)


def test_preprocessing_is_per_arch_metadata():
    lite, resnet = get_spec("efficientnet_lite0"), get_spec("resnet34")
    assert lite.mean == lite.std == (0.5, 0.5, 0.5)  # TF-trained: inputs in [-1, 1]
    assert resnet.mean == (0.485, 0.456, 0.406) and resnet.std == (0.229, 0.224, 0.225)
    assert lite.preprocessing()["mean"] == [0.5, 0.5, 0.5]


def test_a_model_without_a_convolutional_body_is_refused():
    with pytest.raises(ValueError, match="has no convolutional body"):
        create_model("vit_b_16")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"arch": "resnet9"}, r"unknown arch 'resnet9' \(have: efficientnet_lite0, resnet18, .*any torchvision"),
        ({"head": HeadSpec(final="batchnorm")}, "final must be one of bn, selu, none"),
        ({"frozen_bn": "off"}, "frozen_bn must be one of eval, train"),
        ({"head": HeadSpec(dropout=(0.25, 1.0))}, "dropout"),
        ({"head": HeadSpec(hidden=0)}, "hidden"),
    ],
)
def test_bad_arguments_raise_value_error(kwargs, match):
    kwargs = {"arch": "resnet18", **kwargs}
    with pytest.raises(ValueError, match=match):
        create_model(kwargs.pop("arch"), **kwargs)


# ---------------------------------------------------------------- every arch (timm-style)


@pytest.mark.parametrize("arch", ALL_ARCHS)
def test_forward_and_one_step_default(arch):
    """UF off, frozen-eval: the head trains, the body and its BN statistics stay bit-identical."""
    model = create_model(arch)
    assert isinstance(model, FinalBNNet) and model.bn_policy == "frozen-eval"
    body_out = model.body(_x())  # (4, nf, 2, 2)
    assert model.nf == body_out.shape[1] == {"resnet50": 2048, "efficientnet_lite0": 1280}.get(arch, 512)
    assert next(m for m in model.head if isinstance(m, nn.Linear)).in_features == 2 * model.nf

    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    stats = _stats(_body_bns(model))
    assert frozen and all(n.startswith("body.") for n in frozen)
    assert all(n.startswith("head.") for n, p in model.named_parameters() if p.requires_grad)

    model.train()
    out = model(_x())
    assert out.shape == (4, 2) and torch.isfinite(out).all()
    opt = torch.optim.AdamW(param_groups(model, weight_decay=0.01), lr=1e-2)
    nn.functional.cross_entropy(out, Y).backward()
    final_linear = model.head[-2]
    for name, p in model.named_parameters():
        if not p.requires_grad:
            assert p.grad is None, name
        elif p is final_linear.bias:
            # the final BN subtracts the batch mean, so the bias before it gets no gradient
            assert p.grad is not None and p.grad.abs().max() < 1e-5, name
        else:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
    opt.step()
    for name, p in model.named_parameters():
        if name in frozen:
            assert torch.equal(p, frozen[name]), name
    assert all(torch.equal(a, b) for a, b in zip(stats, _stats(_body_bns(model))))


@pytest.mark.parametrize("arch", BN_ARCHS)
def test_frozen_train_policy_updates_body_statistics_only(arch):
    model = create_model(arch, frozen_bn="train")
    assert model.bn_policy == "frozen-train (fastai)"
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    assert all(n.startswith("body.") for n in frozen) and len(frozen) == len(list(model.body.parameters()))
    bns = _body_bns(model)
    stats = _stats(bns)
    _step(model)
    assert all(m.training for m in bns)
    assert not all(torch.equal(a, b) for a, b in zip(stats, _stats(bns)))
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)


@pytest.mark.parametrize("arch", BN_ARCHS)
def test_unfreeze_bn_trains_body_bn_but_not_convs(arch):
    model = create_model(arch, unfreeze_bn=True, frozen_bn="eval")  # frozen_bn is ignored here
    assert model.bn_policy == "unfrozen"
    bns = _body_bns(model)
    conv = next(m for m in model.body.modules() if isinstance(m, nn.Conv2d))
    assert all(m.weight.requires_grad and m.bias.requires_grad for m in bns)
    assert not conv.weight.requires_grad
    trainable = {id(p) for p in trainable_parameters(model)}
    assert {id(p) for m in bns for p in (m.weight, m.bias)} <= trainable
    bn_w, conv_w, stats = bns[0].weight.detach().clone(), conv.weight.detach().clone(), _stats(bns)
    _step(model)
    assert all(m.training for m in bns)
    assert not torch.equal(bns[0].weight, bn_w)
    assert torch.equal(conv.weight, conv_w)
    assert not all(torch.equal(a, b) for a, b in zip(stats, _stats(bns)))


def test_vgg19_has_no_body_bn_and_policies_still_build():
    for kw in ({}, {"frozen_bn": "train"}, {"unfreeze_bn": True}):
        model = create_model("vgg19", **kw)
        assert not _body_bns(model)
        assert all(not p.requires_grad for p in model.body.parameters())


# ---------------------------------------------------------------- modes and the head


def test_train_keeps_frozen_body_bn_in_eval_but_head_follows():
    model = create_model("resnet18")
    head_bns = [m for m in model.head if isinstance(m, nn.BatchNorm1d)]
    for mode in (True, False, True):
        model.train(mode)
        assert not any(m.training for m in _body_bns(model))
        assert all(m.training == mode for m in head_bns)
    model.eval()
    assert not any(m.training for m in model.modules())
    stats = _stats(head_bns)
    model.train()(_x())
    assert not any(torch.equal(a, b) for a, b in zip(stats, _stats(head_bns)))


def test_head_is_fastai_create_head():
    model = create_model("resnet18")
    kinds = [type(m) for m in model.head]
    assert kinds == [
        AdaptiveConcatPool2d,
        nn.Flatten,
        nn.BatchNorm1d,
        nn.Dropout,
        nn.Linear,
        nn.ReLU,
        nn.BatchNorm1d,
        nn.Dropout,
        nn.Linear,
        nn.BatchNorm1d,
    ]
    assert [model.head[3].p, model.head[7].p] == [0.25, 0.5]
    assert model.head[2].num_features == 1024 and model.head[4].in_features == 1024
    assert model.head[4].out_features == 512 and model.head[8].out_features == 2
    last = model.head[-1]
    assert isinstance(last, nn.BatchNorm1d) and last is model.final_bn
    assert (last.num_features, last.momentum, last.eps, last.affine) == (2, 0.01, 1e-5, True)
    feats = torch.randn(3, 8, 4, 4)
    pooled = AdaptiveConcatPool2d()(feats).flatten(1)  # (3, 16): max then avg, as fastai
    assert torch.equal(pooled, torch.cat([feats.amax((2, 3)), feats.mean((2, 3))], 1))


def test_final_bn_options_pass_through():
    model = create_model(
        "resnet18",
        head=HeadSpec(final_bn_momentum=0.1, final_bn_eps=1e-3, final_bn_affine=False, hidden=64, dropout=(0.0, 0.1)),
        num_classes=3,
    )
    last = model.head[-1]
    assert (last.num_features, last.momentum, last.eps, last.affine) == (3, 0.1, 1e-3, False)
    assert last.weight is None and last.bias is None
    assert sum(isinstance(m, nn.Dropout) for m in model.head) == 1  # p=0 leaves the layer out
    assert model.head[-2].in_features == 64
    model.eval()
    assert model(_x()).shape == (4, 3)


@pytest.mark.parametrize("final, kind", [("none", nn.Linear), ("selu", nn.SELU)])
def test_other_final_layers(final, kind):
    model = create_model("resnet18", head=HeadSpec(final=final))
    assert type(model.head[-1]) is kind and model.final_bn is None
    assert model.train()(_x()).shape == (4, 2)


def test_a_single_sigmoid_logit_is_the_two_class_logits_zero_and_z():
    model = create_model("resnet18", head=HeadSpec(single_logit=True)).train()
    linear, bn = model.head[-3], model.head[-2]
    assert linear.out_features == 1 and isinstance(bn, nn.BatchNorm1d) and bn.num_features == 1
    assert model.final_bn is bn and "final_bn_running_mean_0" in model.epoch_stats()
    out = model(_x())
    assert out.shape == (4, 2) and torch.equal(out[:, 0], torch.zeros(4))
    z = out[:, 1]
    y = torch.tensor([1, 0, 1, 0])
    # softmax over [0, z] is the sigmoid of z, and cross-entropy is the binary cross-entropy
    assert torch.allclose(out.softmax(1)[:, 1], torch.sigmoid(z))
    assert torch.allclose(
        nn.functional.cross_entropy(out, y), nn.functional.binary_cross_entropy_with_logits(z, y.float())
    )
    with pytest.raises(ValueError, match="a single logit is a binary head"):
        create_model("resnet18", head=HeadSpec(single_logit=True), num_classes=3)


def test_final_bias_false_removes_the_last_linear_bias():
    model = create_model("resnet18", head=HeadSpec(final_bias=False))
    assert isinstance(model.head[-2], nn.Linear) and model.head[-2].bias is None
    model = create_model("resnet18", head=HeadSpec(final="none", final_bias=False))
    assert model.head[-1].bias is None


def test_batch_of_one_raises_in_train_mode_only():
    """The head's BatchNorm1d layers need B >= 2 in train mode; the engine drops such batches."""
    model = create_model("resnet18", head=HeadSpec(final="bn")).train()
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        model(torch.randn(1, 3, 64, 64))
    assert model.eval()(torch.randn(1, 3, 64, 64)).shape == (1, 2)


# ---------------------------------------------------------------- optimiser helpers


@pytest.mark.parametrize("unfreeze_bn", [False, True])
def test_param_groups_exempt_bn_and_bias_from_weight_decay(unfreeze_bn):
    model = create_model("resnet18", unfreeze_bn=unfreeze_bn)
    groups = param_groups(model, weight_decay=0.05)
    assert all(g["weight_decay"] == (0.05 if g["name"] in ("decay", "body_decay") else 0.0) for g in groups)
    decay = {id(p) for g in groups if g["name"] in ("decay", "body_decay") for p in g["params"]}
    no_decay = {id(p) for g in groups if g["name"] in ("no_decay", "body_no_decay") for p in g["params"]}
    assert not decay & no_decay
    assert decay | no_decay == {id(p) for p in trainable_parameters(model)}
    linears = [m for m in model.head if isinstance(m, nn.Linear)]
    assert decay == {id(m.weight) for m in linears}
    bns = [m for m in model.modules() if isinstance(m, _BatchNorm) and m.weight is not None and m.weight.requires_grad]
    assert {id(m.weight) for m in bns} <= no_decay and {id(m.bias) for m in linears} <= no_decay
    assert len(bns) == (3 + 20 if unfreeze_bn else 3)  # resnet18 has 20 BatchNorm2d
    assert all(g["lr_scale"] == 1.0 for g in groups)
    torch.optim.AdamW(param_groups(model, 0.05))  # accepted as is


def test_param_groups_fastai_semantics_body_lr_and_bn_decay():
    """The paper profile: body BN params at a tenth of the head's LR (slice(lr)), BN decayed too."""
    model = create_model("resnet18", unfreeze_bn=True)
    groups = {g["name"]: g for g in param_groups(model, 0.05, body_lr_ratio=0.1, wd_on_bn=True)}
    assert set(groups) == {"body_decay", "decay", "no_decay"}  # head biases only stay exempt
    assert groups["body_decay"]["lr_scale"] == 0.1 and groups["decay"]["lr_scale"] == 1.0
    body_bn = {id(p) for m in model.body.modules() if isinstance(m, _BatchNorm) for p in m.parameters()}
    assert {id(p) for p in groups["body_decay"]["params"]} == body_bn
    lr = {g["name"]: g["lr"] for g in torch.optim.AdamW(list(groups.values()), lr=1.0).param_groups}
    sched_groups = list(groups.values())
    opt = torch.optim.AdamW(sched_groups, lr=1e-3)
    torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[1e-3 * g["lr_scale"] for g in sched_groups], total_steps=10)
    peaks = {g["name"]: g["max_lr"] for g in opt.param_groups}
    assert peaks["body_decay"] == pytest.approx(1e-4) and peaks["decay"] == pytest.approx(1e-3)
    assert lr  # the groups are plain AdamW groups


# ---------------------------------------------------------------- weights


def _resnet_state(arch: str, num_classes: int = 5) -> dict[str, torch.Tensor]:
    return getattr(torchvision.models, arch)(weights=None, num_classes=num_classes).state_dict()


def _assert_body_equals(model: FinalBNNet, state: dict[str, torch.Tensor]) -> None:
    body = {k: v for k, v in state.items() if not k.startswith("fc.")}
    # the ResNet body is Sequential(conv1, bn1, relu, maxpool, layer1..4): map its keys back
    names = ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"]
    got = {}
    for k, v in model.body.state_dict().items():
        idx, rest = k.split(".", 1)
        got[f"{names[int(idx)]}.{rest}"] = v
    assert got.keys() == body.keys()
    assert all(torch.equal(got[k], body[k]) for k in body)


def test_local_weights_round_trip(tmp_path):
    state = _resnet_state("resnet18", num_classes=5)
    for k, v in state.items():  # BN values no init produces, so a silent re-init would show
        if k.endswith(("running_mean", "bn1.bias")):
            v.copy_(0.1 * torch.randn_like(v))
        elif k.endswith(("running_var", "bn1.weight")):
            v.copy_(0.5 + torch.rand_like(v))
    path = tmp_path / "r18.pt"
    torch.save(state, path)
    model = create_model("resnet18", weights=str(path))
    _assert_body_equals(model, state)
    assert model.weights == str(path)
    assert all(not p.requires_grad for p in model.body.parameters())
    model.eval()
    assert torch.isfinite(model(_x())).all()


def test_local_weights_without_num_batches_tracked_load(tmp_path):
    """Old torchvision checkpoints (the 2017 VGG files) predate BN's num_batches_tracked."""
    state = {k: v for k, v in _resnet_state("resnet18").items() if not k.endswith("num_batches_tracked")}
    torch.save(state, tmp_path / "old.pt")
    model = create_model("resnet18", weights=str(tmp_path / "old.pt"))
    assert all(int(m.num_batches_tracked) == 0 for m in _body_bns(model))


def test_local_weights_of_another_arch_raise(tmp_path):
    path = tmp_path / "r34.pt"
    torch.save(_resnet_state("resnet34"), path)
    with pytest.raises(WeightsError, match=r"does not match arch resnet18: unexpected key 'layer1\.2\."):
        create_model("resnet18", weights=str(path))
    with pytest.raises(WeightsError, match=r"does not match arch resnet50: .*key"):
        create_model("resnet50", weights=path)


def test_local_weights_with_a_wrong_shape_raise(tmp_path):
    state = _resnet_state("resnet18")
    state["conv1.weight"] = torch.zeros(64, 3, 3, 3)
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(WeightsError, match=r"'conv1.weight' has shape \(64, 3, 3, 3\)"):
        create_model("resnet18", weights=str(tmp_path / "bad.pt"))


def test_missing_garbage_and_non_state_dict_files_raise(tmp_path):
    with pytest.raises(WeightsError, match=r"weights file .*nope\.pt does not exist"):
        create_model("resnet18", weights=str(tmp_path / "nope.pt"))
    (tmp_path / "garbage.pt").write_bytes(b"this is not a checkpoint\n" * 10)
    with pytest.raises(WeightsError, match=r"weights file .*garbage\.pt could not be read: "):
        create_model("resnet18", weights=str(tmp_path / "garbage.pt"))
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(WeightsError, match=r"could not be read: it holds a list"):
        create_model("resnet18", weights=str(tmp_path / "list.pt"))


def test_unresolved_weights_name_raises():
    with pytest.raises(WeightsError, match=r"'none', 'imagenet' or a path .*got 'synthetic'"):
        create_model("resnet18", weights="synthetic")


def _expected_cache(tmp_path, arch="resnet18"):
    url = torchvision.models.get_model_weights(arch).DEFAULT.url
    return url, tmp_path / "hub" / "checkpoints" / url.rsplit("/", 1)[1]


def test_imagenet_offline_raises_naming_cache_path_and_choices(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(url, *args, **kwargs):
        raise urllib.error.URLError("no network")

    # torchvision's WeightsEnum.get_state_dict looks the loader up in its own module
    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", offline)
    url, cached = _expected_cache(tmp_path)
    with pytest.raises(WeightsError) as info:
        create_model("resnet18", weights="imagenet")
    msg = str(info.value)
    assert "\n" not in msg
    assert str(cached) in msg and url in msg and "model.weights" in msg
    assert "synthetic" in msg and "none" in msg


def test_imagenet_cache_path_is_the_one_torch_hub_uses(tmp_path, monkeypatch, capsys):
    """Only the downloader is patched (autouse): torch.hub itself computes the cache path."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    url, cached = _expected_cache(tmp_path)
    with pytest.raises(WeightsError, match="not cached") as info:
        create_model("resnet18", weights="imagenet")
    assert f"download {url} to {cached}" in str(info.value)
    assert str(cached) in capsys.readouterr().out  # torch.hub's own "Downloading: ... to <path>"

    state = _resnet_state("resnet18", num_classes=1000)
    cached.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, cached)  # a stand-in for the real file: loaded from the cache, no download
    model = create_model("resnet18", weights="imagenet")
    _assert_body_equals(model, state)
    assert model.weights.startswith("imagenet:")

    cached.write_bytes(b"truncated")
    with pytest.raises(WeightsError, match=rf"cached file {cached} could not be read .*delete it"):
        create_model("resnet18", weights="imagenet")

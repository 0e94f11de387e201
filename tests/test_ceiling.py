"""The separability ceiling: a probe with a known answer, and the stage on tiny images."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pytest

from conftest import ROOT
from finalbn.cli import main
from finalbn.data.splits import DataError, read_manifest
from finalbn.stages import ceiling
from finalbn.stats import separability


def test_probe_knows_separable_from_noise():
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 60)
    noise = rng.normal(size=(120, 20))
    separable = noise.copy()
    separable[:, 3] += 4.0 * labels  # one feature carries the class
    assert ceiling.probe_auroc(separable, labels)["auroc"] > 0.98
    chance = ceiling.probe_auroc(noise, labels)
    assert 0.3 < chance["auroc"] < 0.7 and chance["folds"] == 5 and len(chance["fold_auroc"]) == 5


def test_probe_needs_two_of_each_class():
    with pytest.raises(DataError, match=r"at least 2 images of each class \(got \[5, 1\]\)"):
        ceiling.probe_auroc(np.zeros((6, 3)), np.array([0] * 5 + [1]))


def test_ceiling_stage_on_tiny_images(prepared, capsys, monkeypatch):
    load, overrides = prepared
    args = [
        "ceiling",
        "--params",
        str(ROOT / "params.yaml"),
        *[x for o in overrides for x in ("--set", o)],
        "--set",
        "ceiling.folds=2",
    ]
    # 12 healthy + 8 diseased, the split takes 8 + 5: too few spares, so the test split (2 + 2) is used
    assert main(args + ["--out", "results/ceiling/a.json"]) == 0
    out = capsys.readouterr().out
    assert "Separability ceiling (synthetic-apple, efficientnet_lite0 at 32 px)" in out and "test images" in out
    (result,) = json.loads(Path("results/ceiling/a.json").read_text())["ceilings"]
    assert result["n"] == 4 and 0.0 <= result["auroc"] <= 1.0 and result["feature_dim"] == 2 * 1280
    (run,) = mlflow.search_runs(
        experiment_names=["finalbn/ceiling"], output_format="list", filter_string="tags.`finalbn.ceiling` = 'true'"
    )
    assert run.data.metrics["ceiling_auroc"] == pytest.approx(result["auroc"])
    # with spares allowed down to 3 per class, the images outside the split are used instead
    monkeypatch.setattr(ceiling, "MIN_PER_CLASS", 3)
    paths, labels, source = ceiling.probe_images(load(), "synthetic-apple", Path("data/splits"), per_class=50)
    assert source == "3 + 3 spare images outside the split"  # 12 - 8 healthy and 8 - 5 diseased spares
    used = {r["path"] for r in read_manifest("data/splits/synthetic-apple/0/manifest.csv")}
    assert not set(paths) & used and np.bincount(labels).tolist() == [3, 3]


def test_low_ceiling_is_said_plainly():
    low = separability.ceiling_sentence(
        {"dataset": "d", "arch": "a", "image_size": 32, "auroc": 0.65, "auroc_std": 0.05, "images": "x"}
    )
    assert "barely see the cue" in low and "mostly noise" in low
    high = separability.ceiling_sentence(
        {"dataset": "d", "arch": "a", "image_size": 64, "auroc": 0.95, "auroc_std": 0.01, "images": "x"}
    )
    assert "do see the cue" in high

"""The same cell code on CUDA (bf16 autocast, channels_last, pinned memory). Skipped without a GPU."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from conftest import ROOT
from finalbn.cli import main
from finalbn.train import features
from finalbn.train.cell import run_cell

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.mark.parametrize(
    "toggles",
    [
        ["ablation.bn=true"],
        ["ablation.bn=false", "ablation.uf=true", "ablation.mx=true", "ablation.da=true", "ablation.wl=true"],
    ],
)
def test_cell_trains_on_cuda(prepared, toggles):
    load, _ = prepared
    result = run_cell(load(["train.device=cuda", *toggles]), "synthetic-apple", Path("data/splits"))
    assert result.device == "cuda"
    assert next(result.model.parameters()).is_cuda
    assert all(math.isfinite(v) for row in result.fit.history for v in row.values())
    assert len(result.predictions) == 4 and 0.0 <= result.test_last["f1_1"] <= 1.0


def test_auto_picks_cuda(prepared):
    load, _ = prepared
    assert (
        run_cell(load(["train.device=auto", "train.epochs=1"]), "synthetic-apple", Path("data/splits")).device == "cuda"
    )


def test_shared_features_live_on_the_gpu(prepared):
    load, _ = prepared
    features.CACHE.clear()
    a = run_cell(load(["train.device=cuda", "ablation.da=true"]), "synthetic-apple", Path("data/splits"))
    b = run_cell(
        load(["train.device=cuda", "ablation.da=true", "ablation.wl=true"]), "synthetic-apple", Path("data/splits")
    )
    assert a.features == "shared" and b.body_images == 0
    shared = next(iter(features.CACHE._features.values()))
    assert shared.val[0][0].is_cuda and shared.train(1)[0][0].is_cuda


def test_bench_on_cuda_projects_the_paper_study(prepared, tmp_path):
    _, overrides = prepared
    out = tmp_path / "bench.json"
    assert (
        main(
            [
                "bench",
                "--params",
                str(ROOT / "params.yaml"),
                *[x for o in overrides for x in ("--set", o)],
                "--device",
                "cuda",
                "--archs",
                "efficientnet_lite0",
                "resnet34",
                "--sizes",
                "224",
                "--seconds",
                "0.2",
                "--no-grid",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    result = json.loads(out.read_text())
    assert set(result["projection"]) == {"efficientnet_lite0", "resnet34"}
    assert result["projection"]["resnet34"]["cells"] == 1920

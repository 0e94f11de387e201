"""The same cell code on CUDA (bf16 autocast, channels_last, pinned memory). Skipped without a GPU."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from finalbn.cells import run_cell

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.mark.parametrize("toggles", [["ablation.bn=true"], ["ablation.bn=false", "ablation.uf=true", "ablation.mx=true",
                                                            "ablation.da=true", "ablation.wl=true"]])
def test_cell_trains_on_cuda(prepared, toggles):
    load, _ = prepared
    result = run_cell(load(["train.device=cuda", *toggles]), "synthetic-apple", Path("data/splits"))
    assert result.device == "cuda"
    assert next(result.info["model"].parameters()).is_cuda
    assert all(math.isfinite(v) for row in result.fit.history for v in row.values())
    assert len(result.predictions) == 4 and 0.0 <= result.test_last["f1_1"] <= 1.0


def test_auto_picks_cuda(prepared):
    load, _ = prepared
    assert run_cell(load(["train.device=auto", "train.epochs=1"]), "synthetic-apple", Path("data/splits")).device == "cuda"

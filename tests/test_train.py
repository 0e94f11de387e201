"""One training cell end to end on tiny images: toggles, determinism, failures, MLflow content."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
import yaml
from torch import nn

from conftest import ROOT
from finalbn.cli import main
from finalbn.config import ablation_from_id, config_id, config_name
from finalbn.data.tensors import TrainPlan, eval_transform, load_splits, make_loaders
from finalbn.models import WeightsError
from finalbn.stages.cellrun import CellRun, track_cell
from finalbn.stages.tracker import MemoryTracker
from finalbn.tracking import names
from finalbn.tracking.adapter import MLFLOW
from finalbn.train import cell as cells
from finalbn.train.cell import fit_settings, run_cell
from finalbn.train.engine import FitSettings, TrainingDiverged, fit

SPLITS = Path("data/splits")


def test_config_ids_match_the_paper():
    # Paper Table III: 31 = BN only, 48 = DA+MX+UF+WD, 28 = BN+UF+WD; 63 = nothing.
    assert config_name(ablation_from_id(31)) == "BN"
    assert config_name(ablation_from_id(48)) == "DA+MX+UF+WD"
    assert config_name(ablation_from_id(28)) == "BN+UF+WD"
    assert config_name(ablation_from_id(63)) == "none"
    assert all(config_id(ablation_from_id(i)) == i for i in range(64))
    assert len({config_name(ablation_from_id(i)) for i in range(64)}) == 64


def test_toggles_change_what_they_should(prepared):
    load, _ = prepared
    labels = np.array([0] * 4 + [1] * 2)
    off = fit_settings(load(["ablation.wl=false", "ablation.mx=false", "ablation.wd=false"]), labels)
    assert off.class_weights is None and off.weight_decay == 0.0
    on = fit_settings(load(["ablation.wl=true", "ablation.mx=true", "ablation.wd=true"]), labels)
    assert on.class_weights == pytest.approx((6 / 8, 6 / 4))  # n / (k * count)
    assert on.weight_decay == 0.01

    bn = cells.build_model(load(["ablation.bn=true"]))
    nobn = cells.build_model(load(["ablation.bn=false"]))
    assert isinstance(bn.head[-1], nn.BatchNorm1d) and bn.head[-1].momentum == 0.01
    assert isinstance(nobn.head[-1], nn.Linear)
    selu = cells.build_model(load(["model.final_variant=selu"]))
    assert isinstance(selu.head[-1], nn.SELU)

    uf = cells.build_model(load(["ablation.uf=true"])).train()
    frozen = cells.build_model(load(["ablation.uf=false"])).train()

    def body_bn(m):
        return [x for x in m.body.modules() if isinstance(x, nn.BatchNorm2d)]

    assert all(x.weight.requires_grad and x.training for x in body_bn(uf))
    assert all(not x.weight.requires_grad and not x.training for x in body_bn(frozen))
    fastai = cells.build_model(load(["ablation.uf=false", "model.frozen_bn=train"])).train()
    assert all(not x.weight.requires_grad and x.training for x in body_bn(fastai))
    assert {uf.bn_policy, frozen.bn_policy, fastai.bn_policy} == {"unfrozen", "frozen-eval", "frozen-train (fastai)"}

    tensors = load_splits(SPLITS / "synthetic-apple" / "0" / "manifest.csv", 32)
    plain = cells.train_plan(load(["ablation.da=false", "ablation.mx=false"]), tensors["train"], seed=0)
    augmented = cells.train_plan(load(["ablation.da=true", "ablation.mx=false"]), tensors["train"], seed=0)
    assert not plain.varies and augmented.varies
    norm = eval_transform(plain.mean, plain.std)
    for epoch in (1, 2):  # no augmentation: the split's images, in the epoch's order
        assert all(
            torch.equal(x, norm(tensors["train"].images[idx]))
            for (x, _), idx in zip(plain.inputs(epoch), plain.batches(epoch))
        )
    assert not all(torch.equal(a[0], b[0]) for a, b in zip(augmented.inputs(1), plain.inputs(1)))


def test_mixup_feeds_soft_targets(prepared):
    load, _ = prepared
    tensors = load_splits(SPLITS / "synthetic-apple" / "0" / "manifest.csv", 32)
    mixed = cells.train_plan(load(["ablation.mx=true"]), tensors["train"], seed=0)
    x, target = next(iter(mixed.inputs(1)))
    assert target.shape == (len(x), 2) and target.dtype.is_floating_point  # (B, C) mixed labels
    assert torch.allclose(target.sum(1), torch.ones(len(x)))
    plain = cells.train_plan(load(["ablation.mx=false"]), tensors["train"], seed=0)
    _, target = next(iter(plain.inputs(1)))
    assert target.dtype == torch.int64 and target.dim() == 1


def test_never_a_training_batch_of_one(prepared):
    tensors = load_splits(SPLITS / "synthetic-apple" / "0" / "manifest.csv", 32)  # 6 training images
    loader = make_loaders(tensors, 5, None, seed=0)["train"]
    assert [len(y) for _, y in loader] == [5]
    plan = TrainPlan(tensors["train"], batch_size=5, seed=0)
    assert [len(y) for _, y in plan.inputs(1)] == [5] and [len(b) for b in plan.batches(3)] == [5]


def test_same_cell_twice_same_metrics(prepared):
    load, _ = prepared
    cfg = load(["ablation.da=true", "ablation.mx=true"])
    a = run_cell(cfg, "synthetic-apple", SPLITS)
    b = run_cell(cfg, "synthetic-apple", SPLITS)
    assert a.fit.history == b.fit.history
    assert a.test_sel == b.test_sel and a.test_last == b.test_last and a.predictions == b.predictions
    c = run_cell(load(["ablation.da=true", "ablation.mx=true", "train.seed=1"]), "synthetic-apple", SPLITS)
    assert c.fit.history != a.fit.history
    # another replicate: another split and another seed
    d = run_cell(cfg, "synthetic-apple", SPLITS, replicate=1)
    assert d.replicate == 1 and d.seed == cfg.train.seed + 1
    assert {p["path"] for p in d.predictions} != {p["path"] for p in a.predictions}


def test_nan_loss_stops_with_epoch_and_step():
    class Broken(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(12, 2)

        def forward(self, x):
            return self.lin(x.flatten(1)) * float("nan")

    data = torch.utils.data.TensorDataset(torch.randn(8, 3, 2, 2), torch.tensor([0, 1] * 4))
    loader = torch.utils.data.DataLoader(data, batch_size=4)
    with pytest.raises(TrainingDiverged, match="at epoch 1, step 1"):
        fit(Broken(), loader, loader, FitSettings(epochs=2, lr=1e-3))


def test_failed_cell_run_ends_failed_and_cli_says_why(prepared, monkeypatch, capsys):
    _, overrides = prepared

    def diverge(*a, **k):
        raise TrainingDiverged("loss is nan at epoch 2, step 3")

    monkeypatch.setattr(cells, "fit", diverge)
    assert main(["train", "--params", str(ROOT / "params.yaml"), *[f"--{o}" for o in overrides]]) == 1
    assert "loss is nan at epoch 2, step 3" in capsys.readouterr().err
    runs = mlflow.search_runs(experiment_names=["finalbn/train"], output_format="list")
    assert [r.info.status for r in runs] == ["FAILED"]


def test_interrupted_cell_run_ends_killed(prepared, monkeypatch):
    load, _ = prepared

    def interrupt(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(cells, "fit", interrupt)
    with pytest.raises(KeyboardInterrupt):
        track_cell(load(), "synthetic-apple", SPLITS, CellRun("train"), MLFLOW)
    runs = mlflow.search_runs(experiment_names=["finalbn/train"], output_format="list")
    assert [r.info.status for r in runs] == ["KILLED"]
    memory = MemoryTracker()  # the in-memory tracker ends it the same way
    with pytest.raises(KeyboardInterrupt):
        track_cell(load(), "synthetic-apple", SPLITS, CellRun("train"), memory)
    assert [(r.status, r.tags["stage"]) for r in memory.runs.values()] == [("KILLED", "train")]


def test_synthetic_weights_missing_says_what_to_run(prepared, capsys):
    _, overrides = prepared
    args = ["train", "--params", str(ROOT / "params.yaml"), *sum([["--set", o] for o in overrides], [])]
    assert main(args + ["--set", "model.weights=synthetic"]) == 2
    err = capsys.readouterr().err.strip()
    assert "finalbn pretrain" in err and len(err.splitlines()) == 1
    with pytest.raises(WeightsError, match="does not exist"):
        cells.build_model(prepared[0](["model.weights=missing.pt"]))


def test_mlflow_run_holds_params_metrics_by_step_and_artifacts(prepared, capsys):
    _, overrides = prepared
    args = ["train", "--params", str(ROOT / "params.yaml"), *sum([["--set", o] for o in overrides], [])]
    assert main(args + ["--set", "ablation.wl=true", "--set", "train.log_model=true"]) == 0
    out = capsys.readouterr().out
    assert "train synthetic-apple BN+WL (config 15)" in out and "minority P" in out
    client = mlflow.MlflowClient()
    (run,) = mlflow.search_runs(experiment_names=["finalbn/train"], output_format="list")
    assert run.info.status == "FINISHED"
    p, tags = run.data.params, run.data.tags
    m = {names.read(k): v for k, v in run.data.metrics.items()}  # stored grouped: `test/f1_1` (`tracking.names`)
    assert p["train.epochs"] == "2" and p["model.final_bn_momentum"] == "0.01" and p["ablation.wl"] == "true"
    assert "class_weight_1" in p
    assert tags["BN"] == "true" and tags["WL"] == "true" and tags["DA"] == "false" and tags["config_id"] == "15"
    assert tags["bn_policy"] == "frozen-eval" and len(tags["manifest_sha256"]) == 64
    assert tags["replicate"] == "0" and tags["seed"] == "0"
    # what differs leads the name; the params are what the cell used (no other stage's keys, no
    # setting its switches leave unused); the split manifest is its dataset input
    assert run.info.run_name == "BN+WL r0" and tags["stage"] == "train"
    assert tags["mlflow.note.content"].startswith(
        "Configuration 15 (BN+WL): BN, WL on; DA, MX, UF, WD off. Replicate 0"
    )
    assert not [
        k
        for k in p
        if k.split(".")[0]
        in ("search", "grid", "report", "sensitivity", "datasets", "tracking", "selection", "ceiling", "synthetic")
    ]
    assert p["dataset.name"] == "synthetic-apple" and "train.mixup_alpha" not in p and "train.augment.rotate" not in p
    (ds,) = run.inputs.dataset_inputs
    assert ds.dataset.name == "synthetic-apple r0" and ds.dataset.digest == tags["manifest_sha256"][:32]
    assert {t.key: t.value for t in ds.tags}["mlflow.data.context"] == "training"
    assert [x.step for x in client.get_metric_history(run.info.run_id, "val/loss")] == [1, 2]
    # the mechanism under study, per epoch: the final BN's running statistics, gamma and beta
    for key in (
        "val_auroc",
        "val_balanced_loss",
        "final_bn_running_mean_1",
        "final_bn_running_var_0",
        "final_bn_gamma_1",
        "final_bn_beta_0",
    ):
        assert [x.step for x in client.get_metric_history(run.info.run_id, names.stored(key))] == [1, 2], key
    for key in (
        "test_f1_1",
        "test_sel_f1_1",
        "test_ece",
        "test_brier",
        "selected_epoch",
        "test_auroc",
        "test_ap",
        "test_balanced_accuracy",
        "test_f1_1_vt",
        "val_last_auroc",
        "val_last_balanced_loss",
        "val_sel_auroc",
    ):
        assert key in m, key
    # BN+WL: the training-count prior correction is not valid for its outputs, and is not logged
    assert "test_f1_1_pc" not in m and "val_last_f1_1_pc" not in m
    assert len(tags["config_key"]) == 32
    assert {k for k in m if k.startswith("test_recall_1__")} == {
        "test_recall_1__Apple___Scab",
        "test_recall_1__Apple___Rot",
    }
    arts = {a.path for d in ("", "plots", "predictions") for a in client.list_artifacts(run.info.run_id, d or None)}
    for path in (
        "config.yaml",
        "history.csv",
        "reliability.json",
        "plots/loss_curves.png",
        "plots/softmax_scatter.png",
        "plots/reliability_selected.png",
        "plots/confusion_matrix.png",
        "predictions/test_predictions.csv",
        "predictions/val_predictions.csv",
    ):
        assert path in arts, path
    local = Path(client.download_artifacts(run.info.run_id, "predictions/test_predictions.csv"))
    assert len(local.read_text().splitlines()) == 1 + 4  # header + 4 test images
    logged = mlflow.pytorch.load_model(tags["model_uri"])  # MLflow 3 keeps models beside the run
    assert logged(torch.zeros(2, 3, 32, 32)).shape == (2, 2)


def test_mlproject_parameters_are_all_used():
    spec = yaml.safe_load((ROOT / "MLproject").read_text())
    assert spec["conda_env"] == "conda.yaml"
    assert {"train", "main", "prepare"} <= set(spec["entry_points"])
    for name, ep in spec["entry_points"].items():
        for param in ep.get("parameters", {}):
            assert "{" + param + "}" in ep["command"], f"{name}: {param} declared but unused"


@pytest.mark.slow
def test_mlflow_run_entry_point(prepared, tmp_path):
    """`mlflow run . --env-manager local -e train -P a.b=v` trains one cell as the project's run."""
    _, overrides = prepared
    for name in ("MLproject", "conda.yaml", "params.yaml"):
        shutil.copy(ROOT / name, tmp_path)
    bindir = Path(sys.executable).parent
    cmd = [
        str(bindir / "mlflow"),
        "run",
        str(tmp_path),
        "--env-manager",
        "local",
        "-e",
        "train",
        "--experiment-name",
        "finalbn",
        *[x for o in overrides + ["ablation.bn=false"] for x in ("-P", o)],
    ]
    out = subprocess.run(
        cmd,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}"},
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "train synthetic-apple none (config 63)" in out.stdout
    assert "(experiment finalbn)" in out.stdout  # the experiment `mlflow run` put the run in
    (run,) = mlflow.search_runs(experiment_names=["finalbn"], output_format="list")
    assert run.info.status == "FINISHED" and run.data.tags["BN"] == "false"
    assert run.data.params["ablation.bn"] == "false" and "test/sel_f1_1" in run.data.metrics

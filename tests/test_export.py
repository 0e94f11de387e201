"""`finalbn export`: the best final-BN run on validation, to ONNX, checked against torch, registered."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import onnx
import pytest
import torch

from conftest import ROOT
from finalbn import tracking
from finalbn.cli import main
from finalbn.models import ARCHS, HeadSpec, create_model
from finalbn.stages import export, grid
from finalbn.tracking import RunRecord

SPLITS = Path("data/splits")
# resnet18: the export's graph is a third of efficientnet_lite0's (torch.export's decompositions
# take seconds per export); every backbone's export is checked on its own below
GRID = [
    "grid.configs=[31, 63]",
    "grid.replicates=2",
    "grid.headline.configs=[]",
    "grid.workers=1",
    "grid.archs=[resnet18]",
    "selection.replicates=2",
]


def _args(overrides, *extra):
    return ["export", "--params", str(ROOT / "params.yaml"), *[x for o in overrides for x in ("--set", o)], *extra]


@pytest.fixture
def gridded(prepared):
    load, overrides = prepared
    cfg = load(GRID)
    grid.run_shard(cfg, SPLITS, log=lambda m: None)
    return load, overrides + GRID


def test_the_best_final_bn_configuration_is_chosen_over_replicates_on_validation_only():
    def R(rid, key, rep, bn, auroc, test, t, final="bn", loss=0.5, **params):  # noqa: N802 - a run record, as the store gives it
        return RunRecord(
            run_id=rid,
            name=rid,
            status="FINISHED",
            start_time=t,
            end_time=t,
            tags={
                "BN": "true" if bn else "false",
                "config_key": key,
                "replicate": str(rep),
                "config_id": "31",
                "config_name": key,
            },
            params={"model.final_variant": final, **params},
            metrics={"val_last_auroc": auroc, "val_last_balanced_loss": loss, "test_f1_1": test},
        )

    runs = [
        R("nobn0", "nobn", 0, False, 1.0, 0.99, 1),
        R("nobn1", "nobn", 1, False, 1.0, 0.99, 2),
        R("selu0", "selu", 0, True, 1.0, 0.99, 3, final="selu"),
        R("selu1", "selu", 1, True, 1.0, 0.99, 4, final="selu"),
        R("lucky0", "lucky", 0, True, 1.0, 0.99, 5),  # one replicate only: never a candidate
        R("a0", "a", 0, True, 0.9, 0.99, 6),
        R("a1", "a", 1, True, 0.9, 0.99, 7),
        R("b0", "b", 0, True, 0.95, 0.10, 8),
        R("b1", "b", 1, True, 0.95, 0.10, 9),
        R("c0", "c", 0, True, 0.95, 0.20, 10, loss=0.6),
        R("c1", "c", 1, True, 0.95, 0.20, 11, loss=0.6),
        R("b1-again", "b", 1, True, 0.95, 0.10, 12),  # a later run of the same cell: the latest counts
        # rivals with the best validation AUROC: their numbers are not their network's own (a post-hoc step,
        # the final BN removed at inference; PatchCore): never candidates
        R("removed0", "removed", 0, True, 0.99, 0.99, 13, **{"train.posthoc": "remove_final_bn"}),
        R("removed1", "removed", 1, True, 0.99, 0.99, 14, **{"train.posthoc": "remove_final_bn"}),
        R("pc0", "pc", 0, True, 0.99, 0.99, 15, **{"train.detector": "patchcore"}),
        R("pc1", "pc", 1, True, 0.99, 0.99, 16, **{"train.detector": "patchcore"}),
    ]
    c = export.choose(runs, k=2)
    assert (c.key, c.run.run_id, sorted(c.runs)) == ("b", "b0", [0, 1])  # tie on AUROC: the lower balanced loss
    assert c.runs[1].run_id == "b1-again" and "1 seen on fewer replicates" in c.how
    assert export.choose(runs, k=2, run_id="a1").runs == {0: runs[5], 1: runs[6]}
    assert export.choose(runs, k=2, run_id="lucky0").runs == {0: runs[4]}
    with pytest.raises(export.ExportError, match="not a FINISHED cell run"):
        export.choose(runs, k=2, run_id="zzz")
    with pytest.raises(export.ExportError, match="no FINISHED cell run with a final BN"):
        export.choose(runs[:4], k=2)
    with pytest.raises(export.ExportError, match="has FINISHED runs on all 3 replicates"):
        export.choose(runs, k=3)


def test_export_writes_a_checked_model_and_registers_it(gridded, tmp_path, capsys):
    load, overrides = gridded
    assert main(_args(overrides, "--out", str(tmp_path / "models"))) == 0
    out = capsys.readouterr().out
    assert "kept no weights: training its cell again" in out and "parity at batch 32" in out
    models = tmp_path / "models"
    assert sorted(p.name for p in models.iterdir()) == [
        "metrics.json",
        "model.json",
        "model.onnx",
        "parity.json",
    ]  # no .data
    assert json.loads((models / "metrics.json").read_text())["parity_ok"] is True  # what `dvc metrics show` prints
    proto = onnx.load(str(models / "model.onnx"))
    onnx.checker.check_model(proto)
    assert [i.name for i in proto.graph.input] == ["image"] and [o.name for o in proto.graph.output] == [
        "logits",
        "probs",
    ]
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    parity = json.loads((models / "parity.json").read_text())
    assert parity["passed"] and set(parity["batches"]) == {"1", "32"}
    assert all(b["max_abs_diff_probs"] <= 1e-4 and b["labels_identical"] for b in parity["batches"].values())
    # the final BN is folded into the last Linear: none left after the last Gemm, the same probabilities
    assert export.bn_after_last_matmul(proto) == [] and "final BN folded into the last Linear" in out
    assert parity["fold"]["folded"] and parity["fold"]["max_abs_diff_probs"] <= 1e-5
    card = json.loads((models / "model.json").read_text())
    assert card["final_bn"]["folded"] and card["onnx"]["final_bn"] == "folded into the last Linear"
    assert card["classes"] == ["healthy", "diseased"] and card["configuration"]["BN"] is True
    assert card["input"]["shape"] == ["batch", 3, 32, 32] and card["preprocessing"]["size"] == 32
    dec, sel = card["decision"], card["selection"]
    assert dec["default"] == "argmax" and [r["prevalence"] for r in dec["at_prevalence"]] == [
        0.5,
        0.1,
        0.05,
        0.02,
        0.01,
    ]
    assert sel["replicates"] == [0, 1] and sel["model_replicate"] == 0 and sel["config_id"] == 31
    assert sel["val_positives"] == 2 == dec["operating_curve"]["positives"]  # 1 per tiny validation split, pooled
    assert dec["operating_curve"]["negatives"] == 4 and dec["prior_correction"]["applies"] is False
    assert set(sel["test_minority_f1"]) == {"mean", "ci95", "n"} and sel["test_minority_f1"]["n"] == 2
    assert card["source_run_id"] == sel["run_ids"]["0"]
    # replicates 0-1 chose it and set the cuts: nothing is held out, and the card says so in one sentence
    held = card["operating_points_held_out"]
    assert held["measured"] is False and held["pool"] == [0, 1] and "beyond 0-1" in held["why"]
    assert (
        "replicates 0-1 (the replicates that chose the configuration; the shipped model is replicate 0's" in dec["how"]
    )
    # the retrained cell reproduces the chosen run's validation metrics
    assert parity["retrained_vs_source_validation_abs_diff"]["auroc"] < 1e-6
    src = mlflow.get_run(card["source_run_id"])
    assert src.data.tags["BN"] == "true" and src.data.tags.get("finalbn.export") is None
    assert mlflow.get_run(card["model_run_id"]).data.tags["export_source"] == card["source_run_id"]
    mv = mlflow.MlflowClient().get_model_version_by_alias("finalbn", "champion")
    model = mlflow.pyfunc.load_model("models:/finalbn@champion")
    x = np.zeros((2, 3, 32, 32), dtype=np.float32)
    got = model.predict(x)
    assert set(got) == {"logits", "probs"} and got["probs"].shape == (2, 2) and int(mv.version) >= 1
    # the card pins its file, and the registry serves those very bytes (finalbn-field checks the digest)
    digest = hashlib.sha256((models / "model.onnx").read_bytes()).hexdigest()
    assert card["onnx"]["sha256"] == digest and card["onnx"]["size"] == (models / "model.onnx").stat().st_size
    assert mv.tags["onnx_sha256"] == digest and mv.tags["onnx_size"] == str(card["onnx"]["size"])
    # the grid's parents carry the choice's own number and rank: sorting the UI by selection rank shows the champion
    parents = {r.tags["config_name"]: r for r in tracking.search("finalbn/grid", "tags.`finalbn.parent` = 'true'")}
    bn, none = parents["BN"], parents["none"]
    assert (
        bn.metrics["selection_rank"] == 1
        and bn.tags["selection.chosen"] == "true"
        and "selection_rank" not in none.metrics
    )
    assert none.tags["selection.candidate"] == "false" and none.tags["selection.why"] == "no final BN"
    assert bn.metrics["selection_val_auroc"] == pytest.approx(sel["validation_auroc"]["mean"], abs=1e-4)
    served = Path(mlflow.artifacts.download_artifacts("models:/finalbn@champion", dst_path=str(tmp_path / "served")))
    assert hashlib.sha256((served / "model.onnx").read_bytes()).hexdigest() == digest
    assert json.loads((served / "extra_files" / "model.json").read_text()) == card
    sys.path.insert(0, str(ROOT / "deploy" / "field"))
    from finalbn_field.predict import FieldModel  # here: after sys.path gets deploy/field (the folder's package)

    assert FieldModel.open(served).unverified is None  # the downloaded folder passes the field's check
    # again: the retrained model is found and loaded, not trained a third time; a new version is champion
    every = ["finalbn/grid", "finalbn/search", "finalbn/export"]
    runs_before = len(mlflow.search_runs(experiment_names=every, output_format="list"))
    assert main(_args(overrides, "--out", str(tmp_path / "models"))) == 0
    assert f"using its retrained model from run {card['model_run_id']}" in capsys.readouterr().out
    assert len(mlflow.search_runs(experiment_names=every, output_format="list")) == runs_before
    again = json.loads((models / "parity.json").read_text())
    # the same model (torch's CPU kernels may round the last bits differently from one process to the next)
    assert again["model_run_id"] == parity["model_run_id"] and again["passed"]
    assert again["batches"]["1"]["max_abs_diff_probs"] == pytest.approx(
        parity["batches"]["1"]["max_abs_diff_probs"], abs=1e-6
    )
    assert int(mlflow.MlflowClient().get_model_version_by_alias("finalbn", "champion").version) == int(mv.version) + 1


def test_parity_past_the_tolerance_exits_1_and_keeps_the_old_model(gridded, tmp_path, monkeypatch, capsys):
    load, overrides = gridded
    models = tmp_path / "models"
    models.mkdir()
    (models / "model.onnx").write_bytes(b"the champion before")
    monkeypatch.setattr(export.onnx, "TOLERANCE", -1.0)  # no model can pass
    monkeypatch.setattr(export.onnx, "FOLD_TOLERANCE", -1.0)  # nor the final BN's fold: both said, in one line
    assert main(_args(overrides, "--out", str(models), "--no-register")) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "onnxruntime and torch disagree" in err[0] and "was not replaced" in err[0]
    assert "; the final BN folded into the last Linear changes the probabilities: max |Δprob|" in err[0]
    assert (models / "model.onnx").read_bytes() == b"the champion before"
    parity = json.loads((models / "parity.json").read_text())
    assert not (models / "model.json").exists() and parity["passed"] is False and parity["fold"]["passed"] is False
    assert not [p for p in models.iterdir() if p.name.startswith(".export-")]  # no temporary left behind


def test_an_unknown_run_is_one_line(gridded, tmp_path, capsys):
    _, overrides = gridded
    assert main(_args(overrides, "--run-id", "0123", "--out", str(tmp_path / "m"))) == 1
    err = capsys.readouterr().err.strip()
    assert err == "finalbn export: failed: run 0123 is not a FINISHED cell run of the experiment"


def test_int8_is_measured_and_kept_only_when_accurate_and_faster(gridded, tmp_path, capsys):
    _, overrides = gridded
    models = tmp_path / "models"
    assert main(_args(overrides, "--out", str(models), "--no-register", "--quantize")) == 0
    q = json.loads((models / "model.json").read_text())["int8"]
    for k in ("fp32_val_auroc", "int8_val_auroc", "fp32_ms_per_image_batch1", "int8_ms_per_image_batch32"):
        assert k in q and q[k] == q[k], k
    drop_ok = q["fp32_val_auroc"] - q["int8_val_auroc"] <= q["max_auroc_drop"]
    faster = q["int8_ms_per_image_batch32"] < q["fp32_ms_per_image_batch32"]
    assert q["kept"] == (drop_ok and faster) == (models / "model.int8.onnx").is_file()
    assert "export: INT8 " in capsys.readouterr().out
    if q["kept"]:  # the field runs it with the same card
        proto = onnx.load(str(models / "model.int8.onnx"))
        assert any(n.op_type == "QuantizeLinear" for n in proto.graph.node)
        data = (models / "model.int8.onnx").read_bytes()  # pinned by the card, as model.onnx is
        assert (q["sha256"], q["size"]) == (hashlib.sha256(data).hexdigest(), len(data))


@pytest.mark.slow
def test_the_champion_is_served_on_loopback(gridded, tmp_path):
    """`mlflow models serve -m models:/finalbn@champion --env-manager local` answers a 4-D tensor."""
    _, overrides = gridded
    assert main(_args(overrides, "--out", str(tmp_path / "models"))) == 0
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mlflow_bin = str(Path(sys.executable).parent / "mlflow")
    server = subprocess.Popen(
        [
            mlflow_bin,
            "models",
            "serve",
            "-m",
            "models:/finalbn@champion",
            "--env-manager",
            "local",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # the venv on PATH: uvicorn
        env={**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"},
    )
    try:
        deadline, ready = time.time() + 180, False
        while time.time() < deadline and server.poll() is None:
            try:
                ready = urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2).status == 200
            except OSError:
                time.sleep(1)
            if ready:
                break
        assert ready, server.stderr.read()[-3000:] if server.poll() is not None else "the server did not answer /ping"
        body = json.dumps({"inputs": {"image": np.zeros((2, 3, 32, 32), dtype=np.float32).tolist()}}).encode()  # named
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations", data=body, headers={"Content-Type": "application/json"}
        )
        answer = json.loads(urllib.request.urlopen(req, timeout=60).read())
        probs = np.array(answer["predictions"]["probs"])
        assert probs.shape == (2, 2) and np.allclose(probs.sum(1), 1, atol=1e-5)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


# One arch per body family: what can break the export is the body's layer kinds and its feature map
# at the input size (the concat pool must divide it), and within a family those are the same (resnet18
# for resnet34/50: BasicBlock and Bottleneck are conv/BN/ReLU/add at the same strides; vgg19_bn for
# vgg19, which only drops the BN). Each export costs 10-20 s of `make test`.
FAMILIES = {"efficientnet_lite0": "timm EfficientNet", "resnet18": "torchvision ResNet", "vgg19_bn": "torchvision VGG"}


def test_every_registered_arch_has_an_export_family():
    stem = lambda name: name.rstrip("0123456789_bn")  # noqa: E731  resnet34 -> resnet, vgg19_bn -> vgg
    orphans = [a for a in ARCHS if stem(a) not in {stem(f) for f in FAMILIES}]
    assert not orphans, f"{orphans}: add an arch of their family to FAMILIES (its export is not tested)"
    assert set(FAMILIES) <= set(ARCHS)


@pytest.mark.slow
@pytest.mark.parametrize("arch", sorted(FAMILIES))
def test_every_registered_backbone_exports_with_parity_and_no_source_paths(arch, tmp_path):
    """The concat pool stays at 1x1 (AdaptiveMaxPool2d exports only when its output divides the
    map): each body family's arch, with the final BN, exports and matches torch at batch 1 and 3.
    torch's exporter records each node's stack trace with absolute source paths (a user's home
    folder, in a file shipped to the field; another digest for the same model exported elsewhere):
    export_onnx removes them."""
    torch.manual_seed(0)
    net = create_model(arch, weights="none", head=HeadSpec(final="bn", hidden=16)).eval()
    info = export.export_onnx(net, 32, tmp_path / "m.onnx")
    assert info["opset"] >= 18
    data = (tmp_path / "m.onnx").read_bytes()
    assert str(ROOT).encode() not in data and b"/finalbn/" not in data and b"stack_trace" not in data
    x = np.random.default_rng(0).normal(size=(3, 3, 32, 32)).astype(np.float32)
    check = export.parity(net, tmp_path / "m.onnx", x, batch_sizes=(1, 3))
    assert check["passed"], check

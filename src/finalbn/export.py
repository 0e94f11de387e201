"""Ship the winner: the best final-BN model to ONNX, checked against PyTorch, for onnxruntime.

    finalbn export                     # the best final-BN run on validation -> models/
    finalbn export --run-id <id>       # that run

Which model: by default the FINISHED cell run (grid cells and search runs of the experiment) with
a final BN before the softmax that ranks first on validation — AUROC at the last epoch, ties to
validation AP, then minority F1, then the earlier run; test metrics never decide. The grid keeps
no weights (`train.log_model: false`), so the run's cell is trained again — the same
configuration (its logged config.yaml), replicate and seed, which reproduce it — as a tracked
run with its weights saved as an artifact, linked to the source by the `export_source` tag; the export says
so, and checks that the retrained model's validation metrics match the source run's.

The file: `models/model.onnx`, one self-contained file (`torch.onnx.export(dynamo=True,
external_data=False)`), eval mode, input `image` (float32, N x 3 x H x W, normalised as
`model.json` says) with a dynamic batch axis, outputs `logits` and `probs`. Beside it
`models/model.json` (classes, arch, input size and preprocessing, the source run, manifest hash,
validation metrics, the decision rules) and `models/parity.json`: onnxruntime against torch on
the real test images at batch 1 and batch 32. Past the tolerance the export exits 1 and the
model is not promoted (nothing in models/ is replaced). Then the ONNX model is logged to MLflow
on the export's run (`mlflow.onnx.log_model`), registered as `finalbn` and given the alias
`champion`.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from finalbn.config import Config, ConfigError, validate

REGISTERED_NAME = "finalbn"
ALIAS = "champion"
TOLERANCE = 1e-4  # max |P_ort - P_torch| over the test images, at batch 1 and 32
INPUT, OUTPUTS = "image", ("logits", "probs")
CLASSES = ("healthy", "diseased")  # label 0 (majority) and 1 (minority) of every split
RANK = ("val_last_auroc", "val_last_ap", "val_last_f1_1")


class ExportError(RuntimeError):
    """The export cannot go on: no candidate, an unknown run, parity past the tolerance."""


class Exported(nn.Module):
    """The network as the field sees it: image -> (logits, softmax probabilities)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.net(image)
        return logits, torch.softmax(logits, dim=1)


# ---------------------------------------------------------------- which run


def is_final_bn(run: Any) -> bool:
    """A run whose network ends in BatchNorm1d before the softmax."""
    p = run.data.params
    return run.data.tags.get("BN") == "true" and p.get("model.final_variant", "bn") == "bn"


def rank_key(run: Any) -> tuple:
    m = run.data.metrics
    vals = tuple(m.get(k, -math.inf) for k in RANK)
    return (*(v if v == v else -math.inf for v in vals), -(run.info.start_time or 0))


def choose_run(runs: list, run_id: str | None = None) -> Any:
    """`run_id`'s run, or the best final-BN run on validation (`rank_key`)."""
    if run_id:
        found = [r for r in runs if r.info.run_id == run_id]
        if not found:
            raise ExportError(f"run {run_id} is not a FINISHED cell run of the experiment")
        return found[0]
    bn = [r for r in runs if is_final_bn(r) and "val_last_auroc" in r.data.metrics]
    if not bn:
        raise ExportError("no FINISHED cell run with a final BN and a validation AUROC: run `finalbn grid` first")
    return max(bn, key=rank_key)


def run_config(run: Any) -> Config:
    """The configuration the run trained with, from its config.yaml artifact."""
    import yaml

    from finalbn import tracking

    text = tracking.artifact_text(run.info.run_id, "config.yaml")
    if text is None:
        raise ExportError(f"run {run.info.run_id} has no config.yaml artifact: cannot rebuild its model")
    try:
        return validate(yaml.safe_load(text))
    except ConfigError as exc:
        raise ExportError(f"run {run.info.run_id}'s config.yaml no longer validates: {exc}") from None


# ---------------------------------------------------------------- the model


@dataclass
class Source:
    run_id: str  # the chosen run
    model_run_id: str  # the run that holds the weights exported (the retrained one)
    cfg: Config
    dataset: str
    replicate: int
    model: nn.Module
    val: dict[str, float]  # the exported model's validation metrics (last epoch)
    source_val: dict[str, float]  # the chosen run's, as logged
    manifest_sha256: str
    retrained: bool


def rebuild(run: Any, splits: Path, log=print) -> Source:
    """The run's model: loaded when the run logged it, otherwise its cell trained again (same
    configuration, replicate and seed), its state_dict saved on that run."""
    from finalbn import tracking

    cfg = run_config(run)
    source_val = {k[len("val_last_"):]: v for k, v in run.data.metrics.items() if k.startswith("val_last_")}
    dataset, replicate = run.data.tags.get("dataset"), int(run.data.tags.get("replicate", 0))
    # an earlier export's retraining of this run: its weights (state_dict) are an artifact
    earlier = [r for r in tracking.runs_by_tag(cfg, "export_source").get(run.info.run_id, [])
               if r.info.status == "FINISHED" and r.data.tags.get("export_weights")]
    for holder in sorted(earlier, key=lambda r: -(r.info.end_time or 0)):
        model = _load_weights(cfg, holder, log)
        if model is None:
            continue
        val = {k[len("val_last_"):]: v for k, v in holder.data.metrics.items() if k.startswith("val_last_")}
        log(f"export: run {run.info.run_id} kept no weights; using its retrained model from run {holder.info.run_id}")
        return Source(run.info.run_id, holder.info.run_id, cfg, dataset, replicate, model, val, source_val,
                      run.data.tags.get("manifest_sha256", ""), retrained=True)
    log(f"export: run {run.info.run_id} ({run.info.run_name}) kept no weights: training its cell again "
        f"(replicate {replicate}, seed {run.data.tags.get('seed')}), its weights saved on that run")
    run_id, res = tracking.track_cell(cfg, dataset, splits, run_name=f"export {run.info.run_id[:8]} {run.info.run_name}",
                                      replicate=replicate,
                                      extra_tags={"export_source": run.info.run_id, "finalbn.export": "true"},
                                      on_end=_save_weights)
    return Source(run.info.run_id, run_id, cfg, dataset, replicate, res.info["model"].eval().cpu(),
                  dict(res.val_last), source_val, res.manifest_sha256, retrained=True)


WEIGHTS = "export/state_dict.pt"


def _save_weights(result: Any) -> None:
    """track_cell's on_end: the trained network's state_dict as an artifact of its (active) run."""
    import mlflow

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "state_dict.pt"
        torch.save(result.info["model"].state_dict(), path)
        mlflow.log_artifact(str(path), "export")
    mlflow.set_tag("export_weights", WEIGHTS)


def _load_weights(cfg: Config, holder: Any, log) -> nn.Module | None:
    """The network of `cfg` with the weights an earlier export saved on `holder`, or None."""
    import mlflow

    from finalbn.cells import build_model, cell_seed

    try:
        with tempfile.TemporaryDirectory() as tmp:
            local = mlflow.MlflowClient().download_artifacts(holder.info.run_id, WEIGHTS, tmp)
            state = torch.load(local, map_location="cpu", weights_only=True)
        model = build_model(cfg, seed=cell_seed(cfg, int(holder.data.tags.get("replicate", 0))))
        model.load_state_dict(state, strict=True)
    except Exception as exc:  # a missing or foreign artifact: train the cell again
        log(f"export: the weights saved on run {holder.info.run_id} cannot be loaded ({type(exc).__name__}: {exc})")
        return None
    return model.eval().cpu()


def export_onnx(model: nn.Module, size: int, path: Path) -> dict:
    """One self-contained ONNX file with a dynamic batch axis; returns {opset, ir_version}."""
    import onnx

    wrapped = Exported(model).eval()
    example = torch.zeros((2, 3, size, size), dtype=torch.float32)
    prog = torch.onnx.export(wrapped, (example,), dynamo=True, input_names=[INPUT], output_names=list(OUTPUTS),
                             dynamic_shapes={"image": {0: "batch"}}, external_data=False, optimize=True)
    prog.save(str(path))
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    return {"opset": opset, "ir_version": proto.ir_version}


# ---------------------------------------------------------------- checks


def preprocess(images_uint8: torch.Tensor, mean, std) -> np.ndarray:
    """uint8 N x 3 x H x W -> the float32 input, by training's own evaluation transform
    (torchvision: scale to [0, 1], normalise with mean/std)."""
    from finalbn.data import eval_transform

    return eval_transform(tuple(mean), tuple(std))(images_uint8).numpy()


def session(path: Path, threads: int = 0):
    import onnxruntime as ort

    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def parity(model: nn.Module, onnx_path: Path, x: np.ndarray, batch_sizes=(1, 32)) -> dict:
    """onnxruntime vs torch on the same inputs: max |Δprob|, max |Δlogit|, label agreement."""
    sess = session(onnx_path)
    model = model.eval()
    out: dict[str, Any] = {"images": int(len(x)), "tolerance": TOLERANCE, "batches": {}}
    for bs in batch_sizes:
        p_ort, p_pt, l_ort, l_pt = [], [], [], []
        for i in range(0, len(x), bs):
            xb = x[i:i + bs]
            lo, po = sess.run(list(OUTPUTS), {INPUT: xb})
            with torch.inference_mode():
                lt = model(torch.from_numpy(xb)).float()
            l_ort.append(lo), p_ort.append(po), l_pt.append(lt.numpy()), p_pt.append(torch.softmax(lt, 1).numpy())
        po, pt = np.concatenate(p_ort), np.concatenate(p_pt)
        lo, lt = np.concatenate(l_ort), np.concatenate(l_pt)
        out["batches"][str(bs)] = {"max_abs_diff_probs": float(np.abs(po - pt).max()),
                                   "max_abs_diff_logits": float(np.abs(lo - lt).max()),
                                   "labels_identical": bool((po.argmax(1) == pt.argmax(1)).all()),
                                   "label_disagreements": int((po.argmax(1) != pt.argmax(1)).sum())}
    out["passed"] = all(b["max_abs_diff_probs"] <= TOLERANCE and b["labels_identical"] for b in out["batches"].values())
    return out


# ---------------------------------------------------------------- optional INT8


INT8_MAX_AUROC_DROP = 0.01  # validation AUROC may fall this much at most, or the INT8 model is dropped


class _Calibration:
    """onnxruntime's CalibrationDataReader over training images (never validation or test)."""

    def __init__(self, x: np.ndarray, batch: int = 16) -> None:
        self.batches = iter([{INPUT: x[i:i + batch]} for i in range(0, len(x), batch)])

    def get_next(self):
        return next(self.batches, None)


def latency_ms(path: Path, x: np.ndarray, batch: int, repeats: int = 3, threads: int = 1) -> float:
    """Median over `repeats` passes of the time per image (ms) at `batch`, one thread."""
    import time

    sess = session(path, threads=threads)
    sess.run(list(OUTPUTS), {INPUT: x[:batch]})  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        n = 0
        for i in range(0, len(x) - batch + 1, batch):
            sess.run(list(OUTPUTS), {INPUT: x[i:i + batch]})
            n += batch
        times.append((time.perf_counter() - t0) / max(n, 1) * 1000)
    return float(np.median(times))


def quantize(fp32: Path, out: Path, calib: np.ndarray, x_val: np.ndarray, y_val: np.ndarray) -> dict:
    """Static QDQ INT8 (per-channel, calibrated on training images, `quant_pre_process` first);
    kept only if validation AUROC drops by at most INT8_MAX_AUROC_DROP and it is faster here."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process
    from sklearn.metrics import roc_auc_score

    pre = out.with_name("model.pre.onnx")
    # symbolic shape inference targets transformers and fails on this CNN: ONNX's own is enough
    quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
    quantize_static(str(pre), str(out), _Calibration(calib), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax)
    pre.unlink(missing_ok=True)

    def auroc(path: Path) -> float:
        (p,) = session(path).run(["probs"], {INPUT: x_val})
        return float(roc_auc_score(y_val, p[:, 1])) if len(set(y_val.tolist())) == 2 else float("nan")

    res = {"fp32_val_auroc": auroc(fp32), "int8_val_auroc": auroc(out), "max_auroc_drop": INT8_MAX_AUROC_DROP}
    for bs in (1, 32):
        xb = x_val if len(x_val) >= bs else np.concatenate([x_val] * (bs // max(len(x_val), 1) + 1))
        res[f"fp32_ms_per_image_batch{bs}"] = latency_ms(fp32, xb, bs)
        res[f"int8_ms_per_image_batch{bs}"] = latency_ms(out, xb, bs)
    drop = res["fp32_val_auroc"] - res["int8_val_auroc"]
    faster = res["int8_ms_per_image_batch32"] < res["fp32_ms_per_image_batch32"]
    res["kept"] = bool(drop <= INT8_MAX_AUROC_DROP and faster)
    res["why"] = ("kept: within the AUROC drop and faster" if res["kept"] else
                  f"dropped: AUROC drop {drop:+.4f} (max {INT8_MAX_AUROC_DROP})" if drop > INT8_MAX_AUROC_DROP else
                  "dropped: not faster than FP32 on this CPU")
    return res


# ---------------------------------------------------------------- decision rules


def prior_threshold(train_counts: tuple[int, int], prevalence: float) -> float:
    """P(minority) threshold that corrects the training prior to a stated field prevalence: the
    model's odds carry the training prior n1/n0; argmax at the field prior pi is
    p/(1-p) * (n0/n1) * (pi/(1-pi)) > 1."""
    n0, n1 = train_counts
    k = (n1 / n0) * ((1 - prevalence) / prevalence)  # odds the model must exceed
    return float(k / (1 + k))


def validation_threshold(labels: np.ndarray, p1: np.ndarray) -> tuple[float, float]:
    """The P(minority) threshold with the best validation minority F1 (midpoints between
    distinct scores; ties to the threshold nearest 0.5); returns (threshold, its F1)."""
    from sklearn.metrics import f1_score

    s = np.unique(p1)
    cands = np.concatenate([[0.5], (s[:-1] + s[1:]) / 2]) if len(s) > 1 else np.array([0.5])
    best = max(cands, key=lambda t: (f1_score(labels, (p1 >= t).astype(int), zero_division=0), -abs(t - 0.5)))
    return float(best), float(f1_score(labels, (p1 >= best).astype(int), zero_division=0))


def model_card(src: Source, size: int, spec_pre: dict, onnx_info: dict, val_labels: np.ndarray,
               val_p1: np.ndarray, train_counts: tuple[int, int]) -> dict:
    thr, thr_f1 = validation_threshold(val_labels, val_p1)
    ab = src.cfg.ablation
    return {
        "format": "finalbn-field/1",
        "classes": list(CLASSES), "positive_class": 1,
        "arch": src.cfg.model.arch, "input": {"name": INPUT, "dtype": "float32", "shape": ["batch", 3, size, size],
                                              "layout": "NCHW", "color": "RGB"},
        "outputs": list(OUTPUTS), "image_size": size,
        "preprocessing": {**spec_pre, "size": size},
        "onnx": onnx_info,
        "source_run_id": src.run_id, "model_run_id": src.model_run_id, "retrained": src.retrained,
        "dataset": src.dataset, "replicate": src.replicate, "manifest_sha256": src.manifest_sha256,
        "configuration": {t.upper(): getattr(ab, t) for t in ("bn", "wl", "da", "mx", "uf", "wd")},
        "validation": {k: src.val.get(k) for k in ("auroc", "ap", "f1_1", "balanced_accuracy", "ece")},
        "source_validation": {k: src.source_val.get(k) for k in ("auroc", "ap", "f1_1")},
        "train_counts": list(train_counts),
        "decision": {
            "default": "argmax",
            "argmax": "label 1 when P(diseased) > P(healthy), i.e. P(diseased) > 0.5",
            "prior_correction": {"train_prevalence": train_counts[1] / sum(train_counts),
                                 "rule": "threshold = k / (1 + k), k = (n1 / n0) * (1 - prevalence) / prevalence",
                                 "examples": {str(p): prior_threshold(train_counts, p) for p in (0.01, 0.05, 0.5)}},
            "validation_threshold": {"threshold": thr, "validation_minority_f1": thr_f1,
                                     "how": "the P(diseased) cut with the best minority F1 on the validation split "
                                            f"({int(val_labels.sum())} positives: a noisy choice)"},
        },
    }


# ---------------------------------------------------------------- the whole export


def export(cfg: Config, splits: Path, out_dir: Path, run_id: str | None = None, log=print,
           register: bool = True, int8: bool = False) -> dict:
    """Choose, rebuild, export, check, and (only when parity holds) promote and register."""
    from finalbn import tracking
    from finalbn.data import load_splits
    from finalbn.models import get_spec
    from finalbn.splits import split_dir

    tracking.setup(cfg)
    runs = tracking.finished_cell_runs(cfg.tracking.experiment)
    run = choose_run([r for r in runs if r.data.tags.get("finalbn.export") != "true"], run_id)
    m = run.data.metrics
    log(f"export: run {run.info.run_id} ({run.info.run_name}): validation AUROC {m.get('val_last_auroc', math.nan):.4f}, "
        f"AP {m.get('val_last_ap', math.nan):.4f}, minority F1 {m.get('val_last_f1_1', math.nan):.4f}"
        + ("" if run_id else " — the best final-BN run on validation"))
    src = rebuild(run, splits, log=log)
    ds = src.cfg.dataset(src.dataset)
    size = ds.image_size
    spec = get_spec(src.cfg.model.arch)
    diffs = {k: abs(float(src.val.get(k, math.nan)) - float(src.source_val.get(k, math.nan)))
             for k in ("auroc", "f1_1")}
    log(f"export: retrained validation AUROC {src.val.get('auroc', math.nan):.4f} (source "
        f"{src.source_val.get('auroc', math.nan):.4f}), minority F1 {src.val.get('f1_1', math.nan):.4f} "
        f"(source {src.source_val.get('f1_1', math.nan):.4f})")

    tensors = load_splits(split_dir(splits, src.dataset, src.replicate) / "manifest.csv", size)
    x_test = preprocess(tensors["test"].images, spec.mean, spec.std)
    x_val = preprocess(tensors["val"].images, spec.mean, spec.std)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".export-") as tmp:
        tmp_onnx = Path(tmp) / "model.onnx"
        info = export_onnx(src.model, size, tmp_onnx)
        check = parity(src.model, tmp_onnx, x_test)
        check.update({"source_run_id": src.run_id, "model_run_id": src.model_run_id, "opset": info["opset"],
                      "retrained_vs_source_validation_abs_diff": diffs})
        with torch.inference_mode():
            val_p1 = torch.softmax(src.model(torch.from_numpy(x_val)), 1)[:, 1].numpy()
        counts = tuple(int(c) for c in np.bincount(tensors["train"].labels.numpy(), minlength=2))
        card = model_card(src, size, spec.preprocessing(), info, tensors["val"].labels.numpy(), val_p1, counts)
        (Path(tmp) / "parity.json").write_text(json.dumps(check, indent=2) + "\n")
        shutil.move(str(Path(tmp) / "parity.json"), out_dir / "parity.json")  # written either way: it says why
        if not check["passed"]:
            worst = max(b["max_abs_diff_probs"] for b in check["batches"].values())
            raise ExportError(f"onnxruntime and torch disagree: max |Δprob| {worst:.2e} (tolerance {TOLERANCE:.0e}) "
                              f"or labels differ — see {out_dir / 'parity.json'}; models/model.onnx was not replaced")
        if int8:
            x_train = preprocess(tensors["train"].images, spec.mean, spec.std)
            q = quantize(tmp_onnx, Path(tmp) / "model.int8.onnx", x_train, x_val, tensors["val"].labels.numpy())
            card["int8"] = q
            log(f"export: INT8 {q['why']}: validation AUROC {q['fp32_val_auroc']:.4f} -> {q['int8_val_auroc']:.4f}, "
                f"{q['fp32_ms_per_image_batch32']:.2f} -> {q['int8_ms_per_image_batch32']:.2f} ms/image at batch 32")
        (Path(tmp) / "model.json").write_text(json.dumps(card, indent=2) + "\n")
        os.replace(tmp_onnx, out_dir / "model.onnx")
        os.replace(Path(tmp) / "model.json", out_dir / "model.json")
        if int8 and card["int8"]["kept"]:
            os.replace(Path(tmp) / "model.int8.onnx", out_dir / "model.int8.onnx")
    for bs, b in check["batches"].items():
        log(f"export: parity at batch {bs}: max |Δprob| {b['max_abs_diff_probs']:.2e}, labels identical "
            f"{b['labels_identical']} ({check['images']} test images)")
    result = {"model": str(out_dir / "model.onnx"), "card": card, "parity": check}
    if register:
        result["registry"] = log_and_register(src.model_run_id, out_dir / "model.onnx", x_test[:2], card)
        log(f"export: registered {REGISTERED_NAME} version {result['registry']['version']}, alias @{ALIAS}")
    return result


def log_and_register(run_id: str, onnx_path: Path, example: np.ndarray, card: dict) -> dict:
    """`mlflow.onnx.log_model` on the model's run, registered, alias `champion`."""
    import mlflow
    import mlflow.onnx
    import onnx
    from mlflow.models import infer_signature

    sess = session(onnx_path)
    outputs = dict(zip(OUTPUTS, sess.run(list(OUTPUTS), {INPUT: example})))
    with mlflow.start_run(run_id=run_id):
        info = mlflow.onnx.log_model(onnx.load(str(onnx_path)), name="model",
                                     signature=infer_signature(example, outputs), input_example=example,
                                     onnx_execution_providers=["CPUExecutionProvider"],
                                     pip_requirements=["onnxruntime", "numpy"], save_as_external_data=False)
        mlflow.log_dict(card, "model.json")
    mv = mlflow.register_model(info.model_uri, REGISTERED_NAME)
    mlflow.MlflowClient().set_registered_model_alias(REGISTERED_NAME, ALIAS, mv.version)
    return {"name": REGISTERED_NAME, "version": mv.version, "alias": ALIAS, "model_uri": info.model_uri,
            "serve": f"models:/{REGISTERED_NAME}@{ALIAS}"}

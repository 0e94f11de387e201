"""Optional static INT8 (`finalbn export --quantize`): onnxruntime's QDQ quantisation, kept only
when it is accurate and faster here.

    res = quantize(Path("model.onnx"), Path("model.int8.onnx"), x_train, x_val, y_val)
    res["kept"], res["why"]      # and, when kept, res["sha256"], res["size"] of the file (the card pins it)
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process
from sklearn.metrics import roc_auc_score

from finalbn.stages.export.onnx import INPUT, OUTPUTS, pin, session

INT8_MAX_AUROC_DROP = 0.01  # validation AUROC may fall this much at most, or the INT8 model is dropped


class _Calibration:
    """onnxruntime's CalibrationDataReader over training images (never validation or test)."""

    def __init__(self, x: np.ndarray, batch: int = 16) -> None:
        self.batches = iter([{INPUT: x[i : i + batch]} for i in range(0, len(x), batch)])

    def get_next(self):
        return next(self.batches, None)


def latency_ms(path: Path, x: np.ndarray, batch: int, repeats: int = 3, threads: int = 1) -> float:
    """Median over `repeats` passes of the time per image (ms) at `batch`, one thread."""
    sess = session(path, threads=threads)
    sess.run(list(OUTPUTS), {INPUT: x[:batch]})  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        n = 0
        for i in range(0, len(x) - batch + 1, batch):
            sess.run(list(OUTPUTS), {INPUT: x[i : i + batch]})
            n += batch
        times.append((time.perf_counter() - t0) / max(n, 1) * 1000)
    return float(np.median(times))


def _val_auroc(path: Path, x_val: np.ndarray, y_val: np.ndarray) -> float:
    (p,) = session(path).run(["probs"], {INPUT: x_val})
    return float(roc_auc_score(y_val, p[:, 1])) if len(set(y_val.tolist())) == 2 else float("nan")


def quantize(fp32: Path, out: Path, calib: np.ndarray, x_val: np.ndarray, y_val: np.ndarray) -> dict:
    """Static QDQ INT8 (per-channel, calibrated on training images, `quant_pre_process` first);
    kept only if validation AUROC drops by at most INT8_MAX_AUROC_DROP and it is faster here."""
    pre = out.with_name("model.pre.onnx")
    # symbolic shape inference targets transformers and fails on this CNN: ONNX's own is enough
    quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
    quantize_static(
        str(pre),
        str(out),
        _Calibration(calib),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax,
    )
    pre.unlink(missing_ok=True)
    res: dict[str, Any] = {
        "fp32_val_auroc": _val_auroc(fp32, x_val, y_val),
        "int8_val_auroc": _val_auroc(out, x_val, y_val),
        "max_auroc_drop": INT8_MAX_AUROC_DROP,
    }
    for bs in (1, 32):
        xb = x_val if len(x_val) >= bs else np.concatenate([x_val] * (bs // max(len(x_val), 1) + 1))
        res[f"fp32_ms_per_image_batch{bs}"] = latency_ms(fp32, xb, bs)
        res[f"int8_ms_per_image_batch{bs}"] = latency_ms(out, xb, bs)
    drop = res["fp32_val_auroc"] - res["int8_val_auroc"]
    faster = res["int8_ms_per_image_batch32"] < res["fp32_ms_per_image_batch32"]
    res["kept"] = bool(drop <= INT8_MAX_AUROC_DROP and faster)
    res["why"] = (
        "kept: within the AUROC drop and faster"
        if res["kept"]
        else f"dropped: AUROC drop {drop:+.4f} (max {INT8_MAX_AUROC_DROP})"
        if drop > INT8_MAX_AUROC_DROP
        else "dropped: not faster than FP32 on this CPU"
    )
    if res["kept"]:  # the card pins the file it keeps: `finalbn-field --model model.int8.onnx` checks it
        res.update(pin(out))
    return res

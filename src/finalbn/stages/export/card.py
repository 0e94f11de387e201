"""models/model.json: what the field needs to use the model — classes, input and preprocessing,
where it came from, its validation metrics, and the decision rules.

    card = model_card(src, size, spec.preprocessing(), onnx_info, val_labels, val_p1, train_counts)
"""
from __future__ import annotations

import numpy as np
from sklearn.metrics import f1_score

from finalbn.config import TOGGLES
from finalbn.stages.export.onnx import INPUT, OUTPUTS
from finalbn.stages.export.select import Source

CLASSES = ("healthy", "diseased")  # label 0 (majority) and 1 (minority) of every split


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
        "configuration": {t.upper(): getattr(ab, t) for t in TOGGLES},
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

"""Test metrics at the prevalence the user will meet: the balanced test set reweighted to π.

    m = at_prevalence(labels, p1, 0.05)          # precision_1, f1_1, accuracy, ..., ap, ece, brier
    table = cell_table(cells, data.prediction, [0.5, 0.1, 0.05, 0.01])   # one row per cell, protocol, π

The test set holds as many diseased as healthy images: its precision, F1, accuracy and calibration
describe a field where half the images are diseased. A classifier's TPR and FPR at a cut (its ROC)
do not depend on the prevalence; the rest do. Under label shift (each class's scores stay as they
are, the prior moves to π; Saerens et al. 2002), each diseased test image stands for π / n₁ of the
field and each healthy one for (1 − π) / n₀, so at the argmax cut (flag when P(diseased) > 0.5):

    precision(π) = π TPR / (π TPR + (1 − π) FPR)       F1(π) = 2 π TPR / (π TPR + (1 − π) FPR + π)
    accuracy(π)  = π TPR + (1 − π)(1 − FPR)            balanced accuracy = (TPR + 1 − FPR) / 2 (free of π)

(`finalbn.decision.precision_at` / `f1_at`, the export's own formulas). AP(π) is the step-wise area
under the reweighted PR curve (scikit-learn's `average_precision_score`, which it equals at the test
set's own prevalence); ECE(π) and Brier(π) put the same image weights into Guo et al.'s (2017) bins
and into the mean of `finalbn.metrics.brier` (summed over both classes). Every function raises
ValueError for a prevalence outside (0, 1) or a test set that lacks a class.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

from finalbn.decision import f1_at, operating_curve, precision_at

PROTOCOLS = {"last": "p1_last", "sel": "p1_sel"}  # the last epoch (primary) and the validation-selected one
METRICS = ("tpr", "fpr", "precision_1", "f1_1", "accuracy", "balanced_accuracy", "ap", "ece", "brier")
N_BINS = 15


def _checked(labels, p1, prevalence: float) -> tuple[np.ndarray, np.ndarray]:
    if not 0 < prevalence < 1:
        raise ValueError(f"a prevalence must lie in (0, 1) (got {prevalence})")
    y = np.asarray(labels).astype(int).ravel()
    p = np.asarray(p1, dtype=float).ravel()
    if y.shape != p.shape:
        raise ValueError(f"labels {y.shape} and scores {p.shape} differ in length")
    if not ((y == 1).any() and (y == 0).any()):
        raise ValueError("reweighting to a prevalence needs both classes in the test set")
    return y, p


def weights(labels, prevalence: float) -> np.ndarray:
    """Per-image weights (N,) summing to 1: π / n₁ for a diseased image, (1 − π) / n₀ for a healthy one."""
    y, _ = _checked(labels, np.zeros(len(np.asarray(labels).ravel())), prevalence)
    n1, n0 = int((y == 1).sum()), int((y == 0).sum())
    return np.where(y == 1, prevalence / n1, (1 - prevalence) / n0)


def average_precision_at(labels, p1, prevalence: float) -> float:
    """Step-wise area under the PR curve reweighted to π: Σ (R_k − R_{k−1}) P_k over the distinct cuts."""
    y, p = _checked(labels, p1, prevalence)
    c = operating_curve(y, p)
    tpr, fpr = np.asarray(c["tpr"]), np.asarray(c["fpr"])
    prec = np.nan_to_num(precision_at(tpr, fpr, prevalence), nan=1.0)
    return float(np.sum(np.diff(tpr) * prec[1:]))


def pr_curve_at(labels, p1, prevalence: float) -> tuple[np.ndarray, np.ndarray]:
    """(recall, precision) of every distinct cut, precision reweighted to π (recall is free of π)."""
    y, p = _checked(labels, p1, prevalence)
    c = operating_curve(y, p)
    tpr, fpr = np.asarray(c["tpr"])[1:], np.asarray(c["fpr"])[1:]
    return tpr, precision_at(tpr, fpr, prevalence)


def reliability_at(labels, p1, prevalence: float, n_bins: int = N_BINS) -> dict[str, list]:
    """Reliability bins (max-probability confidence, equal width, as `finalbn.metrics.reliability_bins`)
    with the images weighted to π: `weight` (summing to 1), accuracy and confidence weighted means
    (None in an empty bin), and the raw image `count`."""
    y, p = _checked(labels, p1, prevalence)
    w = weights(y, prevalence)
    probs = np.column_stack([1 - p, p])
    conf, correct = probs.max(axis=1), (probs.argmax(axis=1) == y).astype(float)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, n_bins - 1)
    out: dict[str, list] = {"lower": edges[:-1].tolist(), "upper": edges[1:].tolist(), "count": [], "weight": [],
                            "accuracy": [], "confidence": []}
    for b in range(n_bins):
        m = idx == b
        wb = float(w[m].sum())
        out["count"].append(int(m.sum()))
        out["weight"].append(wb)
        out["accuracy"].append(float((w[m] * correct[m]).sum() / wb) if wb > 0 else None)
        out["confidence"].append(float((w[m] * conf[m]).sum() / wb) if wb > 0 else None)
    return out


def ece_at(labels, p1, prevalence: float, n_bins: int = N_BINS) -> float:
    """Expected calibration error with the images weighted to π: Σ_b W_b |acc_b − conf_b|."""
    bins = reliability_at(labels, p1, prevalence, n_bins)
    return float(sum(w * abs(a - c) for w, a, c in zip(bins["weight"], bins["accuracy"], bins["confidence"]) if w))


def brier_at(labels, p1, prevalence: float) -> float:
    """Brier score (summed over both classes, as `finalbn.metrics.brier`) with the images weighted to π."""
    y, p = _checked(labels, p1, prevalence)
    return float(np.sum(weights(y, prevalence) * 2 * (p - y) ** 2))


def at_prevalence(labels, p1, prevalence: float) -> dict[str, float]:
    """Every METRICS value at π, at the argmax cut (flag when p1 > 0.5). labels: (N,) 0/1; p1: (N,)
    P(diseased). TPR and FPR are the test set's; the others are reweighted (module docstring)."""
    y, p = _checked(labels, p1, prevalence)
    flag = p > 0.5
    tpr, fpr = float(flag[y == 1].mean()), float(flag[y == 0].mean())
    return {"tpr": tpr, "fpr": fpr, "precision_1": float(precision_at(tpr, fpr, prevalence)),
            "f1_1": float(f1_at(tpr, fpr, prevalence)), "accuracy": prevalence * tpr + (1 - prevalence) * (1 - fpr),
            "balanced_accuracy": (tpr + 1 - fpr) / 2, "ap": average_precision_at(y, p, prevalence),
            "ece": ece_at(y, p, prevalence), "brier": brier_at(y, p, prevalence)}


def prevalence_of(pred: pd.DataFrame) -> float:
    """The share of diseased images in a test prediction table."""
    return float((pred["label"].astype(int) == 1).mean())


def cell_table(cells: pd.DataFrame, predictions_for: Callable[[str], pd.DataFrame | None],
               prevalences: Sequence[float]) -> tuple[pd.DataFrame, list[str]]:
    """One row per (cell run, protocol, π) with METRICS, from each run's test predictions; and notes
    naming the runs that have none. `cells` needs run_id, dataset, arch, config_id, baseline,
    replicate (`report.cells`)."""
    rows, missing = [], 0
    for r in cells.itertuples(index=False):
        pred = predictions_for(r.run_id)
        if pred is None or "label" not in pred:
            missing += 1
            continue
        y = pred["label"].to_numpy(int)
        if not ((y == 1).any() and (y == 0).any()):
            missing += 1
            continue
        for protocol, col in PROTOCOLS.items():
            if col not in pred:
                continue
            p = pred[col].to_numpy(float)
            for pi in prevalences:
                rows.append({"run_id": r.run_id, "dataset": r.dataset, "arch": r.arch, "config_id": int(r.config_id),
                             "baseline": r.baseline, "replicate": int(r.replicate), "protocol": protocol,
                             "prevalence": float(pi), **at_prevalence(y, p, pi)})
    cols = ["run_id", "dataset", "arch", "config_id", "baseline", "replicate", "protocol", "prevalence", *METRICS]
    notes = [f"{missing} cell run(s) without test predictions are left out of the metrics at each prevalence"] \
        if missing else []
    return pd.DataFrame(rows, columns=cols), notes


def column(metric: str, prevalence: float, protocol: str = "last") -> str:
    """The wide column name of a metric at π: `f1_1@0.05` (last epoch), `sel_f1_1@0.05` (selected epoch)."""
    return f"{'' if protocol == 'last' else protocol + '_'}{metric}@{prevalence:g}"


def widen(cells: pd.DataFrame, table: pd.DataFrame, metrics: Sequence[str] = ("f1_1", "precision_1")) -> pd.DataFrame:
    """`cells` with one column per (metric, π, protocol) of `table` (NaN where a run has none)."""
    out = cells.copy()
    for (protocol, pi), g in table.groupby(["protocol", "prevalence"], sort=True):
        vals = g.set_index("run_id")
        for m in metrics:
            out[column(m, pi, protocol)] = out["run_id"].map(vals[m]).astype(float)
    return out


def config_means(table: pd.DataFrame, config_ids: Sequence[int], protocol: str = "last") -> pd.DataFrame:
    """Per (dataset, arch, config, π): mean and replicate count of METRICS over the paper's cells."""
    sub = table[(table["protocol"] == protocol) & (table["baseline"] == "") & table["config_id"].isin(config_ids)]
    g = sub.groupby(["dataset", "arch", "config_id", "prevalence"], sort=True)
    out = g[list(METRICS)].mean()
    out["replicates"] = g.size()
    return out.reset_index()


def fmt_pi(pi: float) -> str:
    """A prevalence as the report writes it: 0.5, 0.05, 0.0099."""
    return f"{pi:.2g}"

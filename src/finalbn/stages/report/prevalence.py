"""Test metrics at the prevalence the user will meet: the test set reweighted to π.

    m = at_prevalence(labels, p1, 0.05)          # precision_1, f1_1, accuracy, ..., ap, ece, brier
    table = cell_table(cells, data.prediction, [0.5, 0.1, 0.05, 0.01])   # one row per cell, protocol, π

The test set's own mix of classes (the default: 1000 healthy, 150 diseased) is nobody's field: its
precision, F1, accuracy and calibration describe a field with that prevalence. A classifier's TPR and FPR at a cut (its ROC)
do not depend on the prevalence; the rest do. Under label shift (each class's scores stay as they
are, the prior moves to π; Saerens et al. 2002), each diseased test image stands for π / n₁ of the
field and each healthy one for (1 − π) / n₀, so at the argmax cut (flag when P(diseased) > 0.5):

    precision(π) = π TPR / (π TPR + (1 − π) FPR)       F1(π) = 2 π TPR / (π TPR + (1 − π) FPR + π)
    accuracy(π)  = π TPR + (1 − π)(1 − FPR)            balanced accuracy = (TPR + 1 − FPR) / 2 (free of π)

(`finalbn_field.decision.precision_at` / `f1_at`, the export's own formulas). The argmax cut suits
balanced classes only; the `cut_*` metrics use the cut a user would ship for π instead: the one with
the best F1 at π on the run's own validation predictions (`decision.at_prevalence`, the export's
decision rule), applied to its test images (flag when p1 >= cut). `tpr_at_fpr` is the test TPR at the
loosest cut whose test FPR is at most LOW_FPR (a point of the ROC: free of π and of any cut);
`negatives`/`positives` count the healthy/diseased test images a row rests on. AP(π) is the step-wise area
under the reweighted PR curve (scikit-learn's `average_precision_score`, which it equals at the test
set's own prevalence); ECE(π) and Brier(π) put the same image weights into Guo et al.'s (2017) bins
and into the mean of `finalbn.stats.metrics.brier` (summed over both classes). Every function raises
ValueError for a prevalence outside (0, 1) or a test set that lacks a class.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from finalbn_field.decision import at_prevalence as at_prevalence_rule
from finalbn_field.decision import f1_at, operating_curve, precision_at

PROTOCOLS = {"last": "p1_last", "sel": "p1_sel"}  # the last epoch (primary) and the validation-selected one
CUT_METRICS = ("cut_threshold", "cut_tpr", "cut_fpr", "cut_precision_1", "cut_f1_1")
METRICS = (
    "tpr",
    "fpr",
    "precision_1",
    "f1_1",
    "accuracy",
    "balanced_accuracy",
    "ap",
    "ece",
    "brier",
    *CUT_METRICS,
    "tpr_at_fpr",
    "negatives",
    "positives",
)
LOW_FPR = 0.01  # the false-alarm rate of `tpr_at_fpr`: 1 healthy image in 100 flagged
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
    """Reliability bins (max-probability confidence, equal width, as `finalbn.stats.metrics.reliability_bins`)
    with the images weighted to π: `weight` (summing to 1), accuracy and confidence weighted means
    (None in an empty bin), and the raw image `count`."""
    y, p = _checked(labels, p1, prevalence)
    w = weights(y, prevalence)
    probs = np.column_stack([1 - p, p])
    conf, correct = probs.max(axis=1), (probs.argmax(axis=1) == y).astype(float)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, n_bins - 1)
    out: dict[str, list] = {
        "lower": edges[:-1].tolist(),
        "upper": edges[1:].tolist(),
        "count": [],
        "weight": [],
        "accuracy": [],
        "confidence": [],
    }
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
    """Brier score (summed over both classes, as `finalbn.stats.metrics.brier`) with the images weighted to π."""
    y, p = _checked(labels, p1, prevalence)
    return float(np.sum(weights(y, prevalence) * 2 * (p - y) ** 2))


def at_prevalence(labels, p1, prevalence: float) -> dict[str, float]:
    """Every METRICS value at π, at the argmax cut (flag when p1 > 0.5). labels: (N,) 0/1; p1: (N,)
    P(diseased). TPR and FPR are the test set's; the others are reweighted (module docstring)."""
    y, p = _checked(labels, p1, prevalence)
    flag = p > 0.5
    tpr, fpr = float(flag[y == 1].mean()), float(flag[y == 0].mean())
    return {
        "tpr": tpr,
        "fpr": fpr,
        "precision_1": float(precision_at(tpr, fpr, prevalence)),
        "f1_1": float(f1_at(tpr, fpr, prevalence)),
        "accuracy": prevalence * tpr + (1 - prevalence) * (1 - fpr),
        "balanced_accuracy": (tpr + 1 - fpr) / 2,
        "ap": average_precision_at(y, p, prevalence),
        "ece": ece_at(y, p, prevalence),
        "brier": brier_at(y, p, prevalence),
    }


def at_validation_cut(val_labels, val_p1, labels, p1, prevalence: float) -> dict[str, float]:
    """CUT_METRICS at π: the cut with the best F1 at π on validation (`decision.at_prevalence`;
    ties to the stricter cut), applied to the test images; TPR and FPR as measured there, precision
    and F1 reweighted to π. NaN everywhere when validation lacks a class."""
    y, p = _checked(labels, p1, prevalence)
    vy = np.asarray(val_labels).astype(int).ravel()
    if not ((vy == 1).any() and (vy == 0).any()):
        return dict.fromkeys(CUT_METRICS, float("nan"))
    cut = at_prevalence_rule(operating_curve(vy, np.asarray(val_p1, dtype=float)), prevalence)["threshold"]
    flag = p >= cut
    tpr, fpr = float(flag[y == 1].mean()), float(flag[y == 0].mean())
    return {
        "cut_threshold": float(cut),
        "cut_tpr": tpr,
        "cut_fpr": fpr,
        "cut_precision_1": float(precision_at(tpr, fpr, prevalence)),
        "cut_f1_1": float(f1_at(tpr, fpr, prevalence)),
    }


def tpr_at_fpr(labels, p1, max_fpr: float = LOW_FPR) -> float:
    """The test TPR at the loosest cut whose FPR is at most `max_fpr` (0 when no cut flags a
    diseased image before a healthy one beyond that rate)."""
    y, p = _checked(labels, p1, 0.5)
    c = operating_curve(y, p)
    tpr, fpr = np.asarray(c["tpr"]), np.asarray(c["fpr"])
    return float(tpr[fpr <= max_fpr + 1e-12].max())


def prevalence_of(pred: pd.DataFrame) -> float:
    """The share of diseased images in a test prediction table."""
    return float((pred["label"].astype(int) == 1).mean())


def cell_table(
    cells: pd.DataFrame,
    predictions_for: Callable[[str], pd.DataFrame | None],
    prevalences: Sequence[float],
    val_predictions_for: Callable[[str], pd.DataFrame | None] | None = None,
) -> tuple[pd.DataFrame, list[str]]:
    """One row per (cell run, protocol, π) with METRICS, from each run's test predictions (the
    `cut_*` ones, last epoch only, from its validation predictions too: NaN without them); and notes
    naming the runs that have none. `cells` needs run_id, dataset, arch, config_id, baseline,
    replicate (`report.cells`)."""
    rows, missing, no_val = [], 0, 0
    for r in cells.itertuples(index=False):
        pred = predictions_for(r.run_id)
        if pred is None or "label" not in pred:
            missing += 1
            continue
        y = pred["label"].to_numpy(int)
        if not ((y == 1).any() and (y == 0).any()):
            missing += 1
            continue
        # a table or None: `has_val` says which (pandas reads as Any, so this is Any | None)
        val: Any = val_predictions_for(r.run_id) if val_predictions_for is not None else None
        has_val = val is not None and "p1_last" in val and "label" in val
        no_val += not has_val
        for protocol, col in PROTOCOLS.items():
            if col not in pred:
                continue
            p = pred[col].to_numpy(float)
            low = tpr_at_fpr(y, p)
            for pi in prevalences:
                cut = (
                    at_validation_cut(val["label"], val["p1_last"], y, p, pi)
                    if has_val and protocol == "last"
                    else dict.fromkeys(CUT_METRICS, float("nan"))
                )
                rows.append(
                    {
                        "run_id": r.run_id,
                        "dataset": r.dataset,
                        "arch": r.arch,
                        "config_id": int(r.config_id),
                        "baseline": r.baseline,
                        "replicate": int(r.replicate),
                        "protocol": protocol,
                        "prevalence": float(pi),
                        **at_prevalence(y, p, pi),
                        **cut,
                        "tpr_at_fpr": low,
                        "negatives": int((y == 0).sum()),
                        "positives": int((y == 1).sum()),
                    }
                )
    cols = ["run_id", "dataset", "arch", "config_id", "baseline", "replicate", "protocol", "prevalence", *METRICS]
    notes = (
        [f"{missing} cell run(s) without test predictions are left out of the metrics at each prevalence"]
        if missing
        else []
    )
    if val_predictions_for is not None and no_val:
        notes.append(f"{no_val} cell run(s) without validation predictions have no metric at the validation cut")
    return pd.DataFrame(rows, columns=cols), notes


def column(metric: str, prevalence: float, protocol: str = "last") -> str:
    """The wide column name of a metric at π: `f1_1@0.05` (last epoch), `sel_f1_1@0.05` (selected epoch)."""
    return f"{'' if protocol == 'last' else protocol + '_'}{metric}@{prevalence:g}"


def widen(cells: pd.DataFrame, table: pd.DataFrame, metrics: Sequence[str] = ("f1_1", "precision_1")) -> pd.DataFrame:
    """`cells` with one column per (metric, π, protocol) of `table` (NaN where a run has none)."""
    cols = {}
    for (protocol, pi), g in table.groupby(["protocol", "prevalence"], sort=True):
        vals = g.set_index("run_id")
        for m in metrics:
            cols[column(m, pi, protocol)] = cells["run_id"].map(vals[m]).astype(float)
    return pd.concat(
        [cells.drop(columns=[c for c in cols if c in cells]), pd.DataFrame(cols, index=cells.index)], axis=1
    )


def means_at_prevalence(table: pd.DataFrame, config_ids: Sequence[int], protocol: str = "last") -> pd.DataFrame:
    """Per (dataset, arch, config, π): mean and replicate count of METRICS over the paper's cells."""
    sub = table[(table["protocol"] == protocol) & (table["baseline"] == "") & table["config_id"].isin(config_ids)]
    g = sub.groupby(["dataset", "arch", "config_id", "prevalence"], sort=True)
    out = g[list(METRICS)].mean()
    out["replicates"] = g.size()
    return out.reset_index()


def fmt_pi(pi: float) -> str:
    """A prevalence as the report writes it: 0.5, 0.05, 0.0099."""
    return f"{pi:.2g}"

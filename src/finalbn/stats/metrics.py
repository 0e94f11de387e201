"""Classification and calibration metrics for the imbalanced binary study (pure numpy, no I/O).

Conventions used by every function here:

* ``y_true`` / ``y_pred`` are 1-D integer class indices (0 = majority/healthy, 1 = minority/diseased).
* ``probs`` is an ``(N, C)`` array of softmax probabilities; column ``j`` is the probability of
  class ``j`` and the prediction is ``argmax`` over columns. Rows must sum to 1 within ``1e-3``
  (float32 softmax output passes); they are then renormalised in float64 so every metric sees
  exact probability vectors.
* Every bad input (empty, wrong shape, length mismatch, NaN, rows not summing to 1, labels out of
  range) raises ``ValueError`` with a one-line message.

Which metric is which:

* precision / recall / F1 / support, accuracy, confusion matrix and NLL come from scikit-learn
  (``precision_recall_fscore_support`` with ``zero_division=0``, ``accuracy_score``,
  ``confusion_matrix``, ``log_loss``; the last clips probabilities to ``[eps, 1 - eps]``).
* ``brier`` is the *multi-class* Brier score of the paper: the squared error between the
  probability vector and the one-hot target, **summed over classes** and averaged over samples.
  It lies in ``[0, 2]``; for two classes it equals twice the usual binary Brier score
  ``mean((y - p_1) ** 2)``. It is computed as the sum of scikit-learn's one-vs-rest
  ``brier_score_loss`` per class, which is the same quantity on every scikit-learn version.
* Threshold-free ranking metrics of P(minority): ``auroc`` (``roc_auc_score``) and ``average_precision``
  (``average_precision_score``); ``nan`` when only one class is present. ``balanced_accuracy`` is
  scikit-learn's (mean per-class recall).
* ``prior_corrected_preds`` is post-hoc logit adjustment (Menon et al. 2021) to a uniform prior:
  ``log(n_majority / n_minority)`` of the *training* counts is added to the minority logit, i.e.
  predict the minority when ``p1 / p0 > n_minority / n_majority``. It needs no training and no
  validation or test information: the free baseline a final BN has to beat.
* ``ece`` and ``reliability_bins`` are written by hand (scikit-learn has neither): Guo et al.
  2017, "On Calibration of Modern Neural Networks" -- confidence is the max probability, bins are
  ``n_bins`` equal-width intervals ``(lower, upper]`` over ``[0, 1]`` (a confidence of exactly 0
  goes in the first bin), and ECE is ``sum_b |B_b| / N * |acc(B_b) - conf(B_b)|``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    balanced_accuracy_score,
    brier_score_loss,
    confusion_matrix,
    log_loss,
    precision_recall_fscore_support,
    roc_auc_score,
)

__all__ = [
    "auroc",
    "average_precision",
    "brier",
    "prior_corrected_preds",
    "classification_report",
    "confusion",
    "ece",
    "minority_f1",
    "reliability_bins",
]

MINORITY = 1
ROW_SUM_TOL = 1e-3


# --------------------------------------------------------------------------- validation


def _as_labels(y, name: str) -> np.ndarray:
    """A non-empty 1-D array of integer class indices (ints, bools or integral floats)."""
    arr = np.asarray(y)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty")
    if arr.dtype == bool:
        return arr.astype(np.int64)
    if np.issubdtype(arr.dtype, np.integer):
        return arr.astype(np.int64)
    if np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise ValueError(f"{name} must hold integer class indices, got non-integer values")
        return arr.astype(np.int64)
    raise ValueError(f"{name} must hold integer class indices, got dtype {arr.dtype}")


def _as_probs(probs) -> np.ndarray:
    """A non-empty (N, C>=2) float64 array of probability rows, renormalised to sum to 1."""
    try:
        arr = np.asarray(probs, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"probs must be a numeric (N, C) array: {exc}") from None
    if arr.ndim != 2:
        raise ValueError(f"probs must be 2-D (N, C), got shape {arr.shape}")
    if arr.shape[0] == 0:
        raise ValueError("probs is empty")
    if arr.shape[1] < 2:
        raise ValueError(f"probs needs at least 2 class columns, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError("probs contains NaN or inf")
    if arr.min() < -ROW_SUM_TOL or arr.max() > 1 + ROW_SUM_TOL:
        raise ValueError(f"probs must lie in [0, 1], got min {arr.min():.4g} and max {arr.max():.4g}")
    sums = arr.sum(axis=1)
    worst = int(np.argmax(np.abs(sums - 1.0)))
    if abs(sums[worst] - 1.0) > ROW_SUM_TOL:
        raise ValueError(f"probs rows must sum to 1 (tolerance {ROW_SUM_TOL}); row {worst} sums to {sums[worst]:.6g}")
    arr = np.clip(arr, 0.0, 1.0)
    return arr / arr.sum(axis=1, keepdims=True)


def _pair_probs(y_true, probs) -> tuple[np.ndarray, np.ndarray]:
    y = _as_labels(y_true, "y_true")
    p = _as_probs(probs)
    if y.shape[0] != p.shape[0]:
        raise ValueError(f"y_true has {y.shape[0]} samples but probs has {p.shape[0]} rows")
    n_classes = p.shape[1]
    if y.min() < 0 or y.max() >= n_classes:
        raise ValueError(
            f"y_true values must be class indices in [0, {n_classes - 1}] for {n_classes} probability "
            f"columns, got range [{y.min()}, {y.max()}]"
        )
    return y, p


def _pair_preds(y_true, y_pred) -> tuple[np.ndarray, np.ndarray]:
    y = _as_labels(y_true, "y_true")
    yp = _as_labels(y_pred, "y_pred")
    if y.shape[0] != yp.shape[0]:
        raise ValueError(f"y_true has {y.shape[0]} samples but y_pred has {yp.shape[0]}")
    return y, yp


def _check_labels(labels: Sequence[int], n_classes: int | None = None) -> list[int]:
    out = [int(v) for v in labels]
    if not out:
        raise ValueError("labels is empty")
    if len(set(out)) != len(out):
        raise ValueError(f"labels must be distinct, got {out}")
    if n_classes is not None and (min(out) < 0 or max(out) >= n_classes):
        raise ValueError(f"labels must be class indices in [0, {n_classes - 1}], got {out}")
    return out


def _check_n_bins(n_bins: int) -> int:
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive int, got {n_bins!r}")
    return int(n_bins)


# --------------------------------------------------------------------------- metrics


def auroc(y_true, probs) -> float:
    """AUROC of P(minority) against the minority label; nan when one class is absent."""
    y, p = _pair_probs(y_true, probs)
    if len(np.unique(y)) < 2:
        return float("nan")
    return float(roc_auc_score((y == MINORITY).astype(np.int64), p[:, MINORITY]))


def average_precision(y_true, probs) -> float:
    """Average precision (area under the precision-recall curve) of P(minority); nan without positives."""
    y, p = _pair_probs(y_true, probs)
    if not (y == MINORITY).any():
        return float("nan")
    return float(average_precision_score((y == MINORITY).astype(np.int64), p[:, MINORITY]))


def prior_corrected_preds(probs, train_counts: Sequence[int]) -> np.ndarray:
    """Binary predictions after logit adjustment to a uniform prior from the training counts
    (n_majority, n_minority): minority iff log p1 - log p0 + log(n0 / n1) > 0."""
    p = _as_probs(probs)
    if p.shape[1] != 2:
        raise ValueError(f"prior correction is for two classes, got {p.shape[1]}")
    n0, n1 = (float(c) for c in train_counts)
    if n0 <= 0 or n1 <= 0:
        raise ValueError(f"train_counts must both be positive, got {list(train_counts)}")
    with np.errstate(divide="ignore"):
        margin = np.log(p[:, 1]) - np.log(p[:, 0]) + np.log(n0 / n1)
    return (margin > 0).astype(np.int64)


def minority_f1(y_true, y_pred) -> float:
    """F1 of the minority class (label 1); 0.0 when it is never predicted or never present."""
    y, yp = _pair_preds(y_true, y_pred)
    _, _, f1, _ = precision_recall_fscore_support(y, yp, labels=[MINORITY], average=None, zero_division=0)
    return float(f1[0])


def confusion(y_true, y_pred, labels: Sequence[int] = (0, 1)) -> np.ndarray:
    """Confusion matrix, rows = true class, columns = predicted class, in ``labels`` order.

    Every value of ``y_true`` and ``y_pred`` must be one of ``labels`` (so the counts sum to N).
    """
    y, yp = _pair_preds(y_true, y_pred)
    labs = _check_labels(labels)
    for name, arr in (("y_true", y), ("y_pred", yp)):
        extra = sorted(set(np.unique(arr).tolist()) - set(labs))
        if extra:
            raise ValueError(f"{name} has values {extra} not in labels {labs}")
    return confusion_matrix(y, yp, labels=labs)


def brier(y_true, probs) -> float:
    """Multi-class Brier score: mean over samples of sum over classes of (p_c - onehot_c)^2.

    Range [0, 2]; 0 for perfect one-hot predictions. For C = 2 it is twice the binary Brier score.
    """
    y, p = _pair_probs(y_true, probs)
    # Sum of per-class one-vs-rest binary Brier scores (each is mean((1[y==c] - p_c)^2)).
    return float(sum(brier_score_loss((y == c).astype(np.int64), p[:, c], pos_label=1) for c in range(p.shape[1])))


def reliability_bins(y_true, probs, n_bins: int = 15) -> dict[str, list]:
    """Per-bin statistics of the reliability diagram (Guo et al. 2017).

    Returns a dict of equal-length lists, one entry per bin (``n_bins`` of them, in order):
    ``lower``, ``upper`` (bin edges, floats), ``count`` (ints, summing to N), ``accuracy`` and
    ``confidence`` (mean of correctness and of max probability in the bin; ``None`` for an empty
    bin, so the dict serialises to JSON as ``null``).
    """
    # Written by hand: scikit-learn has no multi-class reliability binning.
    y, p = _pair_probs(y_true, probs)
    n_bins = _check_n_bins(n_bins)
    conf = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # bin b holds conf in (edges[b], edges[b+1]]; conf == 0 goes in bin 0
    idx = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, n_bins - 1)
    out: dict[str, list] = {"lower": [], "upper": [], "count": [], "accuracy": [], "confidence": []}
    for b in range(n_bins):
        mask = idx == b
        count = int(mask.sum())
        out["lower"].append(float(edges[b]))
        out["upper"].append(float(edges[b + 1]))
        out["count"].append(count)
        out["accuracy"].append(float(correct[mask].mean()) if count else None)
        out["confidence"].append(float(conf[mask].mean()) if count else None)
    return out


def ece(y_true, probs, n_bins: int = 15) -> float:
    """Expected calibration error (Guo et al. 2017), max-probability confidence, equal-width bins."""
    # Written by hand on top of reliability_bins: sum_b |B_b|/N * |acc_b - conf_b|.
    bins = reliability_bins(y_true, probs, n_bins)
    n = sum(bins["count"])
    total = 0.0
    for count, acc, conf in zip(bins["count"], bins["accuracy"], bins["confidence"]):
        if count:
            total += count / n * abs(acc - conf)
    return float(total)


def classification_report(
    y_true, probs, labels: Sequence[int] = (0, 1), train_counts: Sequence[int] | None = None
) -> dict[str, float]:
    """All scalar metrics of one evaluation, as plain floats (ready for logging).

    Keys: ``accuracy``, ``balanced_accuracy``; for each class ``l`` in ``labels``: ``precision_l``,
    ``recall_l``, ``f1_l``, ``support_l`` (count of true samples, as a float); ``f1_macro``
    (unweighted mean of the per-class F1 over ``labels``); ``ece`` (15 bins); ``brier``
    (multi-class, see ``brier``); ``nll`` (mean cross-entropy, probabilities clipped);
    ``minority_f1`` (= ``f1_1``); for two classes ``auroc`` and ``ap`` of P(minority), and with
    ``train_counts`` ``f1_1_pc`` / ``recall_1_pc`` / ``balanced_accuracy_pc``: the same after
    prior correction (see ``prior_corrected_preds``).
    Precision/recall/F1 of a class that is never predicted (or never present) are 0, without warning.
    """
    y, p = _pair_probs(y_true, probs)
    labs = _check_labels(labels, p.shape[1])
    y_pred = p.argmax(axis=1)
    prec, rec, f1, sup = precision_recall_fscore_support(y, y_pred, labels=labs, average=None, zero_division=0)
    report: dict[str, float] = {"accuracy": float(accuracy_score(y, y_pred))}
    for i, lab in enumerate(labs):
        report[f"precision_{lab}"] = float(prec[i])
        report[f"recall_{lab}"] = float(rec[i])
        report[f"f1_{lab}"] = float(f1[i])
        report[f"support_{lab}"] = float(sup[i])
    report["f1_macro"] = float(np.mean(f1))
    report["ece"] = ece(y, p)
    report["brier"] = brier(y, p)
    report["nll"] = float(log_loss(y, p, labels=list(range(p.shape[1]))))
    report["minority_f1"] = minority_f1(y, y_pred)
    report["balanced_accuracy"] = float(balanced_accuracy_score(y, y_pred)) if len(np.unique(y)) > 1 else float("nan")
    if p.shape[1] == 2:
        report["auroc"] = auroc(y, p)
        report["ap"] = average_precision(y, p)
        if train_counts is not None:
            pc = prior_corrected_preds(p, train_counts)
            _, rec_pc, f1_pc, _ = precision_recall_fscore_support(
                y, pc, labels=[MINORITY], average=None, zero_division=0
            )
            report["f1_1_pc"] = float(f1_pc[0])
            report["recall_1_pc"] = float(rec_pc[0])
            report["balanced_accuracy_pc"] = (
                float(balanced_accuracy_score(y, pc)) if len(np.unique(y)) > 1 else float("nan")
            )
    return report


def fit_temperature(y_true, probs, bounds: tuple[float, float] = (0.05, 20.0)) -> float:
    """Post-hoc temperature scaling (Guo et al. 2017): the T > 0 that minimises the NLL of
    softmax(log p / T) on held-out (validation) labels. Argmax, hence F1, is unchanged by T."""
    from scipy.optimize import minimize_scalar  # lazy: scipy.optimize adds ~0.3 s to every import of metrics

    y, p = _pair_probs(y_true, probs)
    logp = np.log(np.clip(p, 1e-12, 1.0))

    def nll(log_t: float) -> float:
        z = logp / np.exp(log_t)
        z = z - z.max(1, keepdims=True)
        lse = np.log(np.exp(z).sum(1))
        return float(np.mean(lse - z[np.arange(len(y)), y]))

    res = minimize_scalar(nll, bounds=(np.log(bounds[0]), np.log(bounds[1])), method="bounded")
    return float(np.exp(res.x))


def apply_temperature(probs, temperature: float) -> np.ndarray:
    """softmax(log p / T): the same ranking and argmax, softer (T > 1) or sharper probabilities."""
    p = _as_probs(probs)
    z = np.log(np.clip(p, 1e-12, 1.0)) / float(temperature)
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)

"""Decision rules for a binary screen at the prevalence the user will meet (numpy only).

    curve = operating_curve(val_labels, val_p1)          # every cut's TPR and FPR on validation
    rule = at_prevalence(curve, 0.02)                     # the cut with the best F1 at 2 % diseased
    rule["threshold"], rule["fpr"], rule["fpr_upper95"]   # flag P(diseased) >= threshold

A classifier's ROC (TPR and FPR at each cut) does not depend on the prevalence; precision and F1
do. At a field prevalence pi, per image: TP = pi TPR, FP = (1 - pi) FPR, FN = pi (1 - TPR), so
precision = pi TPR / (pi TPR + (1 - pi) FPR) and F1 = 2 pi TPR / (pi TPR + (1 - pi) FPR + pi)
(F1 = 2 TP / (2 TP + FP + FN)). The cut is chosen on validation predictions, reweighted to pi;
with a cost ratio, it minimises the expected cost (1 - pi) FPR + miss_cost pi (1 - TPR) instead
(Elkan 2001, "The foundations of cost-sensitive learning"). This needs no assumption about what
prior the model's outputs carry, which the training-count rule (`prior_threshold`) does: it is
right only for a model trained with plain cross-entropy on the training prior and no layer that
re-centres the logits (a final BN or SELU), see `prior_rule_applies`.

One source: finalbn's export, report and cells import this module from the field package, so the
field command applies the exported card exactly as the export computed it.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

Z95 = 1.959963984540054  # the normal quantile of a two-sided 95 % interval


def operating_curve(labels, p1) -> dict[str, Any]:
    """TPR and FPR of every distinct cut "flag when P(diseased) >= threshold".

    labels: (N,) 0/1; p1: (N,) P(diseased). Returns {"threshold", "tpr", "fpr"} as lists from the
    strictest cut (flags nothing: threshold above every score) to the loosest (flags every image),
    with "positives" and "negatives" counted. Raises ValueError when a class is missing or the
    shapes differ."""
    y = np.asarray(labels).astype(int).ravel()
    p = np.asarray(p1, dtype=float).ravel()
    if y.shape != p.shape:
        raise ValueError(f"labels {y.shape} and scores {p.shape} differ in length")
    if not np.isfinite(p).all():
        raise ValueError("a score is NaN or infinite")
    pos, neg = int((y == 1).sum()), int((y == 0).sum())
    if pos == 0 or neg == 0:
        raise ValueError(f"an operating curve needs both classes (positives {pos}, negatives {neg})")
    order = np.argsort(-p, kind="mergesort")
    ps, ys = p[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(ps) != 0), len(ps) - 1]  # the last image of each distinct score
    tp, fp = np.cumsum(ys)[last], np.cumsum(1 - ys)[last]
    thresholds = np.r_[np.nextafter(ps[0], np.inf), ps[last]]
    return {
        "threshold": thresholds.tolist(),
        "tpr": np.r_[0.0, tp / pos].tolist(),
        "fpr": np.r_[0.0, fp / neg].tolist(),
        "positives": pos,
        "negatives": neg,
    }


def f1_at(tpr, fpr, prevalence: float) -> np.ndarray:
    """Minority F1 at a prevalence from TPR and FPR (module docstring); 0 where nothing is flagged."""
    tpr, fpr = np.asarray(tpr, dtype=float), np.asarray(fpr, dtype=float)
    den = prevalence * tpr + (1 - prevalence) * fpr + prevalence
    return np.where(den > 0, 2 * prevalence * tpr / np.where(den > 0, den, 1), 0.0)


def precision_at(tpr, fpr, prevalence: float) -> np.ndarray:
    """Precision at a prevalence from TPR and FPR; NaN where nothing is flagged."""
    tpr, fpr = np.asarray(tpr, dtype=float), np.asarray(fpr, dtype=float)
    flagged = prevalence * tpr + (1 - prevalence) * fpr
    return np.where(flagged > 0, prevalence * tpr / np.where(flagged > 0, flagged, 1), math.nan)


def wilson(k: float, n: int) -> tuple[float, float]:
    """The 95 % Wilson score interval of a proportion k/n (Wilson 1927); NaN for n = 0."""
    if n <= 0:
        return math.nan, math.nan
    p = k / n
    centre = p + Z95**2 / (2 * n)
    half = Z95 * math.sqrt(p * (1 - p) / n + Z95**2 / (4 * n * n))
    return max(0.0, (centre - half) / (1 + Z95**2 / n)), min(1.0, (centre + half) / (1 + Z95**2 / n))


def wilson_upper(k: float, n: int) -> float:
    """Upper end of the 95 % Wilson score interval of a proportion k/n."""
    return wilson(k, n)[1]


def at_prevalence(curve: dict, prevalence: float, miss_cost: float | None = None) -> dict[str, Any]:
    """The cut for a field prevalence: best F1 at that prevalence, or, with `miss_cost` (a missed
    diseased image's cost in false alarms), the least expected cost. Ties go to the stricter cut
    (fewer healthy images flagged). Returns threshold, tpr with its 95 % lower bound and fpr with its
    95 % upper bound (Wilson, on the curve's positives and negatives), precision and F1 at the
    prevalence, and the rule used.
    Raises ValueError for a prevalence outside (0, 1) or a cost <= 0."""
    if not 0 < prevalence < 1:
        raise ValueError(f"prevalence must lie in (0, 1) (got {prevalence})")
    tpr, fpr = np.asarray(curve["tpr"], dtype=float), np.asarray(curve["fpr"], dtype=float)
    if miss_cost is None:
        score, rule = f1_at(tpr, fpr, prevalence), "best F1 at the prevalence"
    else:
        if not miss_cost > 0:
            raise ValueError(f"the cost of a miss must be > 0 (got {miss_cost})")
        score = -((1 - prevalence) * fpr + miss_cost * prevalence * (1 - tpr))
        rule = f"least expected cost, a miss costing {miss_cost:g} false alarms"
    i = int(np.flatnonzero(score >= score.max() - 1e-12)[0])  # the strictest of the best cuts
    neg, pos = int(curve["negatives"]), int(curve["positives"])
    return {
        "prevalence": float(prevalence),
        "threshold": float(curve["threshold"][i]),
        "tpr": float(tpr[i]),
        "tpr_lower95": wilson(round(tpr[i] * pos), pos)[0],
        "fpr": float(fpr[i]),
        "fpr_upper95": wilson_upper(round(fpr[i] * neg), neg),
        "precision": float(precision_at(tpr[i], fpr[i], prevalence)),
        "f1": float(f1_at(tpr[i], fpr[i], prevalence)),
        "rule": rule,
    }


def prior_threshold(train_counts, prevalence: float) -> float:
    """The training-count rule: the P(diseased) cut that moves a training prior n1/n0 to a field
    prevalence pi, k / (1 + k) with k = (n1 / n0) (1 - pi) / pi (Saerens et al. 2002). Valid only
    when the outputs carry the training prior (`prior_rule_applies`)."""
    n0, n1 = train_counts
    k = (n1 / n0) * ((1 - prevalence) / prevalence)
    return float(k / (1 + k))


def prior_rule_applies(final_layer: str, weighted_loss: bool, loss: str) -> tuple[bool, str]:
    """Whether the training-count rule is valid for a model: its softmax must still carry the
    training prior, i.e. plain cross-entropy, no class weights, and no final BN or SELU (which
    re-centre the logits on each batch's mix and remove the prior). Returns (valid, why)."""
    if final_layer != "none":
        return False, f"the final {final_layer.upper()} re-centres the logits: the outputs carry no training prior"
    if weighted_loss:
        return False, "class weights (WL) move the outputs toward balanced classes: they carry no training prior"
    if loss != "ce":
        return False, f"the {loss} loss changes what the outputs estimate: they carry no training prior"
    return True, "plain cross-entropy without a final BN: the outputs carry the training prior"

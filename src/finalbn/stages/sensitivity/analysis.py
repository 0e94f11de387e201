"""The sensitivity stage's numbers: the headline contrast per level, and the bias-shift rival.

    d = contrasts(cells, prevalences=[0.5, 0.01])     # one row per (factor, level, π): 31 − 63, t interval
    b = fit_logit_bias(val_labels, val_p1, 0.01)      # the minority-logit bias learned on validation for π

Minority F1 at a prevalence π comes from each cell's test TPR and FPR (`finalbn_field.decision.f1_at`,
the reweighting of `report.prevalence`); the contrast is paired by replicate (same split, same
seed) with a t interval clipped to [-1, 1] (`inference.clipped`), and `detectable` is the smallest paired difference a t test finds with
80 % power at that replicate count and spread (`finalbn.stats.inference.detectable_difference`).

Every non-reference row with a p-value is one Holm family, `sensitivity` (Holm 1979): `p_holm` and
`direction` read the table as a whole, every level at every π, in both directions. A comparison in
which either model flags almost no diseased image or almost every image is `collapsed`: its F1
difference measures two broken classifiers, not a gain.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy.optimize import minimize_scalar
from scipy.special import expit

from finalbn.stats.inference import clipped, detectable_difference, holm, t_interval
from finalbn_field.decision import f1_at

BN_ID, NONE_ID = 31, 63
FAMILY = "sensitivity"  # the Holm family of every non-reference (factor, level, π) row
ALPHA = 0.05
# A model whose mean test TPR or TNR is below this flags almost nothing or almost everything: its
# minority F1 is that of a constant classifier, and a difference against it is no gain.
COLLAPSE_RATE = 0.1
COLUMNS = [
    "factor",
    "level",
    "reference",
    "prevalence",
    "f1_bn",
    "f1_rival",
    "estimate",
    "ci_low",
    "ci_high",
    "p",
    "n",
    "sd",
    "detectable",
    "rival",
    "p_holm",
    "family",
    "direction",
    "tpr_bn",
    "tpr_rival",
    "tnr_bn",
    "tnr_rival",
    "collapsed",
    "fitted_prevalence",
]
# the argmax metrics of a cell, recomputed on shifted predictions (`shifted_metrics`); AUROC and AP
# do not move under a shift of the logit, every other metric of a shifted row is left empty
ARGMAX = ("precision_0", "recall_0", "f1_0", "precision_1", "recall_1", "f1_1", "accuracy", "balanced_accuracy")
SHIFT_INVARIANT = ("auroc", "ap")


def f1_at_prevalence(tpr: np.ndarray, tnr: np.ndarray, pi: float) -> np.ndarray:
    """Minority F1 at prevalence π from test TPR (recall of the minority) and TNR per cell."""
    return f1_at(np.asarray(tpr, dtype=float), 1 - np.asarray(tnr, dtype=float), pi)


def fit_logit_bias(labels, p1, prevalence: float = 0.5, bounds: tuple[float, float] = (-20.0, 20.0)) -> float:
    """The bias b added to the minority logit log(p1 / (1 − p1)) that minimises the negative
    log-likelihood on (validation) images with the classes weighted as at the prevalence π the rival
    is judged at: π × (the diseased images' mean −log P(true class)) + (1 − π) × (the healthy ones').
    This is the validation set reweighted to prior π, the prior shift of Saerens et al. (2002); at
    π = 0.5 it is the class-balanced likelihood, and a smaller π moves b down by about
    log(π / (1 − π)). The simplest post-hoc rival of a final BN, which also moves the minority
    logit. labels: (N,) 0/1; p1: (N,) P(diseased). Raises ValueError without both classes or with π
    outside (0, 1)."""
    y = np.asarray(labels).astype(int).ravel()
    p = np.clip(np.asarray(p1, dtype=float).ravel(), 1e-12, 1 - 1e-12)
    if not ((y == 1).any() and (y == 0).any()):
        raise ValueError("fitting a bias needs both classes")
    if not 0 < prevalence < 1:
        raise ValueError(f"fitting a bias needs a prevalence in (0, 1), got {prevalence}")
    z = np.log(p) - np.log1p(-p)

    def loss(b: float) -> float:
        s = z + b
        nll_pos = np.logaddexp(0.0, -s[y == 1]).mean()  # -log sigmoid(s)
        nll_neg = np.logaddexp(0.0, s[y == 0]).mean()  # -log (1 - sigmoid(s))
        return float(prevalence * nll_pos + (1 - prevalence) * nll_neg)  # at π = 0.5 the balanced mean

    return float(minimize_scalar(loss, bounds=bounds, method="bounded").x)


def shifted_rates(labels, p1, bias: float) -> tuple[float, float]:
    """(TPR, TNR) of the argmax after adding `bias` to the minority logit."""
    y = np.asarray(labels).astype(int).ravel()
    p = np.clip(np.asarray(p1, dtype=float).ravel(), 1e-12, 1 - 1e-12)
    flag = (np.log(p) - np.log1p(-p) + bias) > 0
    return float(flag[y == 1].mean()), float(1 - flag[y == 0].mean())


def shifted_metrics(labels, p1, bias: float, prefix: str = "test_") -> dict[str, float]:
    """The argmax metrics of `ARGMAX` (as `finalbn.stats.metrics.classification_report` defines them: 0
    where undefined) and the Brier score (summed over both classes) after adding `bias` to the
    minority logit, keyed `<prefix><metric>`; the argmax is the one `shifted_rates` counts."""
    y = np.asarray(labels).astype(int).ravel()
    p = np.clip(np.asarray(p1, dtype=float).ravel(), 1e-12, 1 - 1e-12)
    s = np.log(p) - np.log1p(-p) + bias
    flag = s > 0
    out = {}
    for c, pred in ((1, flag), (0, ~flag)):
        tp, fp, fn = int((pred & (y == c)).sum()), int((pred & (y != c)).sum()), int((~pred & (y == c)).sum())
        out[f"precision_{c}"] = tp / (tp + fp) if tp + fp else 0.0
        out[f"recall_{c}"] = tp / (tp + fn) if tp + fn else 0.0
        out[f"f1_{c}"] = 2 * tp / (2 * tp + fp + fn) if tp else 0.0
    out["accuracy"] = float((flag == (y == 1)).mean())
    out["balanced_accuracy"] = (
        (out["recall_0"] + out["recall_1"]) / 2 if (y == 1).any() and (y == 0).any() else math.nan
    )
    out["brier"] = float(2 * np.mean((expit(s) - y) ** 2))
    return {f"{prefix}{k}": float(v) for k, v in out.items()}


def contrasts(cells: pd.DataFrame, prevalences: Sequence[float]) -> pd.DataFrame:
    """31 − 63 (or 31 − the level's rival) per (factor, level, π), paired on (dataset, arch,
    replicate). `cells`: factor, level, reference, replicate (dataset, arch), config_id (31, 63, or "rival" rows with config_id 63 and `rival` set),
    test_recall_1, test_recall_0; optionally `fitted_prevalence`: a row that carries one (the
    bias-shift rival, fitted for that π) is used only at that π.

    Added to each row: the mean test TPR and TNR of both sides (`tpr_bn`, `tpr_rival`, `tnr_bn`,
    `tnr_rival`), `collapsed` (either side's mean TPR or TNR below `COLLAPSE_RATE`), and the
    family columns of `holm_family`."""
    rows = []
    for (factor, level), g in cells.groupby(["factor", "level"], sort=False):
        ref = bool(g["reference"].iloc[0])
        rival_name = next((r for r in g.get("rival", pd.Series(dtype=str)).fillna("") if r), "")
        key = [c for c in ("dataset", "arch", "replicate") if c in g]  # pairs: same split, same seed
        fitted = g["fitted_prevalence"] if "fitted_prevalence" in g else pd.Series(math.nan, index=g.index)
        for pi in prevalences:
            at = g[fitted.isna() | np.isclose(fitted.astype(float), pi)]  # a rival fitted for π is judged at π only
            a = at[at["config_id"] == BN_ID].set_index(key)
            b = at[at["config_id"] == NONE_ID].set_index(key)
            both = sorted(set(a.index) & set(b.index))
            fa = f1_at_prevalence(a.loc[both, "test_recall_1"], a.loc[both, "test_recall_0"], pi)
            fb = f1_at_prevalence(b.loc[both, "test_recall_1"], b.loc[both, "test_recall_0"], pi)
            t = clipped(t_interval(fa - fb), -1.0, 1.0)  # F1 − F1: the interval in [-1, 1], p and sd as computed
            rates = {
                f"{m}_{side}": float(np.mean(x.loc[both, col])) if len(both) else math.nan
                for side, x in (("bn", a), ("rival", b))
                for m, col in (("tpr", "test_recall_1"), ("tnr", "test_recall_0"))
            }
            fit = b.loc[both, "fitted_prevalence"] if len(both) and "fitted_prevalence" in b else pd.Series(dtype=float)
            rows.append(
                {
                    "factor": factor,
                    "level": level,
                    "reference": ref,
                    "prevalence": float(pi),
                    "f1_bn": float(np.mean(fa)) if len(both) else math.nan,
                    "f1_rival": float(np.mean(fb)) if len(both) else math.nan,
                    **{k: t[k] for k in ("estimate", "ci_low", "ci_high", "p", "n", "sd")},
                    "detectable": detectable_difference(t["sd"], t["n"]),
                    "rival": rival_name or "none (63)",
                    **rates,
                    "collapsed": any(v < COLLAPSE_RATE for v in rates.values()),
                    "fitted_prevalence": float(fit.dropna().iloc[0]) if fit.notna().any() else math.nan,
                }
            )
    return holm_family(pd.DataFrame(rows, columns=[c for c in COLUMNS if c not in ("p_holm", "family", "direction")]))


def holm_family(table: pd.DataFrame) -> pd.DataFrame:
    """`table` with its family columns, in `COLUMNS` order: `p_holm`, Holm's step-down adjustment
    (Holm 1979; `finalbn.stats.inference.holm`) of `p` over the `sensitivity` family, every non-reference row
    with a finite p (every level at every π: the reference level is the grid's headline contrast,
    tested in the report's own family); `family` ("sensitivity", empty outside it); `direction`:
    "above zero" or "below zero" where p_holm < 0.05 (the sign of the estimate), "reference" for
    the reference level, else "not distinguishable"."""
    out = table.copy()
    ref = out["reference"].astype(bool).to_numpy()
    p = np.where(ref, math.nan, out["p"].to_numpy(float))
    out["p_holm"] = holm(p)
    out["family"] = np.where(np.isfinite(p), FAMILY, "")
    sig = (out["p_holm"] < ALPHA).to_numpy()
    est = out["estimate"].to_numpy(float)
    out["direction"] = np.select(
        [ref, sig & (est > 0), sig & (est < 0)], ["reference", "above zero", "below zero"], "not distinguishable"
    )
    return out[COLUMNS]

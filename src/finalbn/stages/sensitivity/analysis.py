"""The sensitivity stage's numbers: the headline contrast per level, and the bias-shift rival.

    d = contrasts(cells, prevalences=[0.5, 0.01])     # one row per (factor, level, π): 31 − 63, t interval
    b = fit_logit_bias(val_labels, val_p1)            # the minority-logit bias learned on validation

Minority F1 at a prevalence π comes from each cell's test TPR and FPR (`finalbn.decision.f1_at`,
the reweighting of `report.prevalence`); the contrast is paired by replicate (same split, same
seed) with a t interval, and `detectable` is the smallest paired difference a t test finds with
80 % power at that replicate count and spread (`finalbn.stats.detectable_difference`).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy.optimize import minimize_scalar

from finalbn.decision import f1_at
from finalbn.stats import detectable_difference, t_interval

BN_ID, NONE_ID = 31, 63
COLUMNS = ["factor", "level", "reference", "prevalence", "f1_bn", "f1_rival", "estimate", "ci_low", "ci_high", "p",
           "n", "sd", "detectable", "rival"]


def f1_at_prevalence(tpr: np.ndarray, tnr: np.ndarray, pi: float) -> np.ndarray:
    """Minority F1 at prevalence π from test TPR (recall of the minority) and TNR per cell."""
    return f1_at(np.asarray(tpr, dtype=float), 1 - np.asarray(tnr, dtype=float), pi)


def fit_logit_bias(labels, p1, bounds: tuple[float, float] = (-20.0, 20.0)) -> float:
    """The bias b added to the minority logit log(p1 / (1 − p1)) that minimises the class-balanced
    negative log-likelihood on (validation) images: the mean over the two classes of each class's
    mean −log P(true class). The simplest post-hoc rival of a final BN, which also moves the
    minority logit. labels: (N,) 0/1; p1: (N,) P(diseased). Raises ValueError without both classes."""
    y = np.asarray(labels).astype(int).ravel()
    p = np.clip(np.asarray(p1, dtype=float).ravel(), 1e-12, 1 - 1e-12)
    if not ((y == 1).any() and (y == 0).any()):
        raise ValueError("fitting a bias needs both classes")
    z = np.log(p) - np.log1p(-p)

    def loss(b: float) -> float:
        s = z + b
        nll_pos = np.logaddexp(0.0, -s[y == 1]).mean()  # -log sigmoid(s)
        nll_neg = np.logaddexp(0.0, s[y == 0]).mean()   # -log (1 - sigmoid(s))
        return float((nll_pos + nll_neg) / 2)

    return float(minimize_scalar(loss, bounds=bounds, method="bounded").x)


def shifted_rates(labels, p1, bias: float) -> tuple[float, float]:
    """(TPR, TNR) of the argmax after adding `bias` to the minority logit."""
    y = np.asarray(labels).astype(int).ravel()
    p = np.clip(np.asarray(p1, dtype=float).ravel(), 1e-12, 1 - 1e-12)
    flag = (np.log(p) - np.log1p(-p) + bias) > 0
    return float(flag[y == 1].mean()), float(1 - flag[y == 0].mean())


def contrasts(cells: pd.DataFrame, prevalences: Sequence[float]) -> pd.DataFrame:
    """31 − 63 (or 31 − the level's rival) per (factor, level, π), paired on (dataset, arch,
    replicate). `cells`: factor, level, reference, replicate (dataset, arch), config_id (31, 63, or "rival" rows with config_id 63 and `rival` set),
    test_recall_1, test_recall_0."""
    rows = []
    for (factor, level), g in cells.groupby(["factor", "level"], sort=False):
        ref = bool(g["reference"].iloc[0])
        rival_name = next((r for r in g.get("rival", pd.Series(dtype=str)).fillna("") if r), "")
        key = [c for c in ("dataset", "arch", "replicate") if c in g]  # pairs: same split, same seed
        a = g[g["config_id"] == BN_ID].set_index(key)
        b = g[(g["config_id"] == NONE_ID)].set_index(key)
        both = sorted(set(a.index) & set(b.index))
        for pi in prevalences:
            fa = f1_at_prevalence(a.loc[both, "test_recall_1"], a.loc[both, "test_recall_0"], pi)
            fb = f1_at_prevalence(b.loc[both, "test_recall_1"], b.loc[both, "test_recall_0"], pi)
            t = t_interval(fa - fb)
            rows.append({"factor": factor, "level": level, "reference": ref, "prevalence": float(pi),
                         "f1_bn": float(np.mean(fa)) if len(both) else math.nan,
                         "f1_rival": float(np.mean(fb)) if len(both) else math.nan,
                         **{k: t[k] for k in ("estimate", "ci_low", "ci_high", "p", "n", "sd")},
                         "detectable": detectable_difference(t["sd"], t["n"]), "rival": rival_name or "none (63)"})
    return pd.DataFrame(rows, columns=COLUMNS)

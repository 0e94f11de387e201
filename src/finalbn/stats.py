"""Generic statistics of the study: a paired t interval, Holm's adjustment, Lenth's PSE.

    r = t_interval(diffs)                 # {"estimate", "ci_low", "ci_high", "p", "n", "note"}
    p_adj = holm(p_values)                # NaN stays NaN and is left out of the family
    pse = lenth_pse(effects)              # unreplicated two-level factorial

Leaf module (numpy, scipy, statsmodels only): the report's effects and the Optuna search's
comparison share these, so a number means the same in both.
"""
from __future__ import annotations

import math

import numpy as np
from scipy import stats
from statsmodels.stats.multitest import multipletests

ZERO_TOL = 1e-12  # |difference| below this is float noise of logged metrics, i.e. zero


def t_interval(d: np.ndarray) -> dict:
    """Mean of per-replicate differences, its 95 % t interval and two-sided one-sample t p-value."""
    d = np.asarray(d, dtype=float)
    d = d[np.isfinite(d)]
    n = int(d.size)
    out = {"estimate": math.nan, "ci_low": math.nan, "ci_high": math.nan, "p": math.nan, "n": n, "note": ""}
    if n == 0:
        out["note"] = "no replicate has both configurations"
        return out
    out["estimate"] = float(d.mean())
    if n < 2:
        out["note"] = "one replicate: no interval"
        return out
    sd = float(d.std(ddof=1))
    if sd <= ZERO_TOL:
        out["ci_low"] = out["ci_high"] = out["estimate"]
        out["p"] = 1.0 if out["estimate"] == 0 else 0.0
        out["note"] = "all differences equal"
        return out
    half = stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n)
    out["ci_low"], out["ci_high"] = out["estimate"] - half, out["estimate"] + half
    out["p"] = float(2 * stats.t.sf(abs(out["estimate"]) / (sd / math.sqrt(n)), n - 1))
    return out


def holm(p: np.ndarray) -> np.ndarray:
    """Holm-adjusted p-values of the finite entries of `p`; NaN where `p` is not finite."""
    p = np.asarray(p, dtype=float)
    out = np.full(p.shape, math.nan)
    ok = np.isfinite(p)
    if ok.any():
        out[ok] = multipletests(p[ok], method="holm")[1]
    return out


def lenth_pse(contrasts: np.ndarray) -> float:
    """Lenth's (1989) pseudo standard error of the effects of an unreplicated two-level factorial."""
    c = np.abs(np.asarray(contrasts, dtype=float))
    s0 = 1.5 * np.median(c)
    trimmed = c[c < 2.5 * s0]
    return float(1.5 * np.median(trimmed)) if trimmed.size else float(s0)

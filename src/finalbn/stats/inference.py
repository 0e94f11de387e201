"""Generic statistics of the study: a paired t interval, Holm's adjustment, the detectable difference.

    r = t_interval(diffs)                 # {"estimate", "ci_low", "ci_high", "p", "n", "sd", "note"}
    p_adj = holm(p_values)                # NaN stays NaN and is left out of the family
    d = detectable_difference(sd, n)      # smallest paired difference found with 80 % power

Leaf module (numpy, scipy, statsmodels only): the report's effects and the Optuna search's
comparison share these, so a number means the same in both.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, cast

import numpy as np
from scipy import stats
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import TTestPower

ZERO_TOL = 1e-12  # |difference| below this is float noise of logged metrics, i.e. zero


def clipped(r: dict, low: float, high: float) -> dict:
    """`t_interval`'s result with its interval clipped to [low, high], the range of the quantity
    (an AUROC or an F1 lies in [0, 1], their paired difference in [-1, 1]): a t interval is symmetric
    and can cross a bound it cannot exceed. `clipped` True where it did."""
    out = dict(r)
    lo, hi = out.get("ci_low", math.nan), out.get("ci_high", math.nan)
    out["clipped"] = bool((math.isfinite(lo) and lo < low) or (math.isfinite(hi) and hi > high))
    if math.isfinite(lo):
        out["ci_low"] = min(max(lo, low), high)
    if math.isfinite(hi):
        out["ci_high"] = max(min(hi, high), low)
    return out


def t_interval(d: np.ndarray | Sequence[float]) -> dict:
    """Mean of per-replicate differences, its 95 % t interval and two-sided one-sample t p-value
    (`clipped` bounds the interval to the quantity's range)."""
    d = np.asarray(d, dtype=float)
    d = cast(np.ndarray, d[np.isfinite(d)])  # numpy's stubs type a mask index as Any
    n = int(d.size)
    out: dict[str, Any] = {
        "estimate": math.nan,
        "ci_low": math.nan,
        "ci_high": math.nan,
        "p": math.nan,
        "n": n,
        "sd": math.nan,
        "note": "",
    }
    if n == 0:
        out["note"] = "no replicate has both configurations"
        return out
    out["estimate"] = float(d.mean())
    if n < 2:
        out["note"] = "one replicate: no interval"
        return out
    sd = out["sd"] = float(d.std(ddof=1))
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


def detectable_difference(sd: float, n: int, power: float = 0.8, alpha: float = 0.05) -> float:
    """The smallest true mean of n paired differences with standard deviation `sd` that a two-sided
    one-sample t test at level `alpha` detects with probability `power` (statsmodels' TTestPower,
    noncentral t); NaN for n < 2 or sd not finite."""
    if n < 2 or not math.isfinite(sd):
        return math.nan
    d = TTestPower().solve_power(effect_size=None, nobs=n, alpha=alpha, power=power, alternative="two-sided")
    return float(d * sd)

"""The data-needs planner: how many minority images reach a target metric, and beyond how many
the final BN stops mattering.

    curve = fit_curve(n, f1)                          # inverse power law (Figueroa et al. 2012, Eq. 1)
    need = n_needed(frame, "final BN", target=0.80)   # point n + replicate-bootstrap interval
    matters = bn_matters_until(frame)                 # paired a - b per n, M = where it stops mattering
    print(sentence(0.80, 0.01, need, matters, "the final BN"))

`frame` has one row per (method, n, replicate) with the metric (default column "f1"); a replicate
index names one split draw + seed, so the same index across methods is a paired comparison.
Pure functions (numpy, scipy, pandas): no file I/O, no torch.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
from scipy import optimize, stats

from finalbn.stats.inference import t_interval

# Start values of the decay rate c tried before curve_fit refines: for a fixed c the model is linear
# in (asymptote, b), so each is one closed-form weighted least squares (a robust start for a 3-parameter fit).
_C_GRID = np.geomspace(0.02, 8.0, 80)
_LABELS = {"f1": "minority F1", "auroc": "AUROC"}  # metric column -> its name in a sentence
_EDGE = 1e-9  # start values sit this far inside the bounds (trf starts from a strictly feasible point)


@dataclass(frozen=True)
class Curve:
    """A fitted inverse power-law learning curve Y(x) = (1 - a) - b * x**(-c) (Figueroa et al.,
    BMC Med Inform Decis Mak 2012, Eq. 1): a the asymptotic error, b the learning rate, c the decay
    rate; x the number of minority training images, Y the metric (e.g. minority F1 in [0, 1])."""

    a: float
    b: float
    c: float
    n_min: float  # smallest n measured
    n_max: float  # largest n measured
    n_points: int  # finite points the fit used

    @property
    def asymptote(self) -> float:
        """The metric as n -> inf, 1 - a (in [0, 1])."""
        return 1.0 - self.a

    @property
    def params(self) -> dict[str, float]:
        """{"a", "b", "c"} of Eq. 1."""
        return {"a": self.a, "b": self.b, "c": self.c}

    def predict(self, n: float | Sequence[float] | np.ndarray) -> np.ndarray:
        """The curve at `n` (> 0, any shape); an array of the same shape."""
        return _power_law(np.asarray(n, dtype=float), self.a, self.b, self.c)

    def n_for(self, target: float) -> float:
        """The smallest n > 0 where the curve reaches `target`: (b / ((1 - a) - target))**(1 / c);
        inf when the asymptote is at or below `target`. A value outside the measured range is
        returned as is: `where(n)` says "below" or "above" (extrapolated)."""
        gap = self.asymptote - target
        if gap <= 0:
            return math.inf
        if self.b == 0 or self.c == 0:  # a flat curve at (1 - a) - b: reached at every n or never
            return 0.0 if self.asymptote - self.b >= target else math.inf
        return float((self.b / gap) ** (1.0 / self.c))

    def where(self, n: float) -> Literal["below", "within", "above"]:
        """Where `n` lies against the measured range [n_min, n_max]: "below" or "above" flag an extrapolation."""
        return "below" if n < self.n_min else "above" if n > self.n_max else "within"


def _power_law(x: np.ndarray, a: float, b: float, c: float) -> np.ndarray:
    return (1.0 - a) - b * np.power(x, -c)


def _start(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> tuple[float, float, float]:
    """(a, b, c) start: for each c of _C_GRID the weighted least-squares (asymptote, b) of y = A - b z,
    z = x**-c (closed form), clipped into the bounds; the c with the smallest weighted residual."""
    z = np.power(x[None, :], -_C_GRID[:, None])  # (G, N)
    wn = w / w.sum()
    zbar, ybar = z @ wn, float(y @ wn)
    var = ((z - zbar[:, None]) ** 2) @ wn
    cov = ((z - zbar[:, None]) * (y - ybar)) @ wn
    b = np.clip(-cov / np.where(var > 0, var, np.inf), 0.0, None)
    asym = np.clip(ybar + b * zbar, 0.0, 1.0)
    sse = ((y[None, :] - (asym[:, None] - b[:, None] * z)) ** 2) @ w
    k = int(np.argmin(sse))
    return float(np.clip(1.0 - asym[k], _EDGE, 1 - _EDGE)), float(b[k] + _EDGE), float(_C_GRID[k])


def fit_curve(
    n: Sequence[float] | np.ndarray,
    y: Sequence[float] | np.ndarray,
    weights: Sequence[float] | np.ndarray | None = None,
) -> Curve:
    """Fit Figueroa et al.'s Eq. 1, Y = (1 - a) - b * n**(-c), by (weighted) non-linear least squares
    (scipy.optimize.curve_fit, trf, bounds a in [0, 1], b >= 0, c >= 0) on the per-replicate points.

    n, y: (N,) image counts (> 0) and metric values (NaN points are dropped); weights: (N,) relative
    weights (> 0; larger = trusted more, passed as sigma = 1 / sqrt(w)), None = unweighted.
    Raises ValueError (shapes differ, n <= 0, bad weights, all y NaN, fewer than 3 distinct n) and
    RuntimeError when curve_fit does not converge.
    """
    x, yy = np.asarray(n, dtype=float).ravel(), np.asarray(y, dtype=float).ravel()
    w = np.ones_like(x) if weights is None else np.asarray(weights, dtype=float).ravel()
    if not x.shape == yy.shape == w.shape:
        raise ValueError(f"n, y and weights differ in length: {x.size}, {yy.size}, {w.size}")
    if not np.all(np.isfinite(x) & (x > 0)):
        raise ValueError("every n must be a finite count > 0")
    if not np.all(np.isfinite(w) & (w > 0)):
        raise ValueError("every weight must be finite and > 0")
    keep = np.isfinite(yy)
    if not keep.any():
        raise ValueError("every y is NaN: nothing to fit")
    x, yy, w = x[keep], yy[keep], w[keep]
    if np.unique(x).size < 3:
        raise ValueError(f"a learning curve needs at least 3 distinct n, got {np.unique(x).size}")
    p0 = _start(x, yy, w)
    with warnings.catch_warnings():
        # an exact fit leaves the covariance undefined (OptimizeWarning); only the parameters are used
        warnings.simplefilter("ignore", optimize.OptimizeWarning)
        try:
            p, _ = optimize.curve_fit(
                _power_law, x, yy, p0=p0, sigma=1.0 / np.sqrt(w), bounds=([0.0, 0.0, 0.0], [1.0, np.inf, np.inf])
            )
        except RuntimeError as e:
            raise RuntimeError(f"curve_fit did not converge: {str(e).splitlines()[0]}") from None
    return Curve(float(p[0]), float(p[1]), float(p[2]), float(x.min()), float(x.max()), int(x.size))


def _check_columns(frame: pd.DataFrame, needed: Sequence[str]) -> None:
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        raise ValueError(f"frame lacks columns {missing} (has {list(frame.columns)})")
    if frame.duplicated(subset=["method", "n", "replicate"]).any():
        raise ValueError("frame has duplicate (method, n, replicate) rows")


def _bootstrap(
    groups: list[tuple[np.ndarray, np.ndarray]], target: float, n_boot: int, seed: int
) -> tuple[np.ndarray, np.ndarray, int]:
    """Refit on whole replicates drawn with replacement: (n_for per fit, asymptote per fit, failed fits)."""
    rng = np.random.default_rng(seed)
    needs, asyms, failed = [], [], 0
    for _ in range(n_boot):
        pick = rng.integers(len(groups), size=len(groups))
        try:
            c = fit_curve(np.concatenate([groups[i][0] for i in pick]), np.concatenate([groups[i][1] for i in pick]))
        except (ValueError, RuntimeError):  # a draw of replicates whose points do not span 3 n, or no convergence
            failed += 1
            continue
        needs.append(c.n_for(target))
        asyms.append(c.asymptote)
    return np.asarray(needs, dtype=float), np.asarray(asyms, dtype=float), failed


def n_needed(
    frame: pd.DataFrame, method: str, target: float, n_boot: int = 1000, seed: int = 0, metric: str = "f1"
) -> dict[str, Any]:
    """The number of minority images where `method`'s learning curve (fit_curve) reaches `target`.

    frame: one row per (method, n, replicate) with column `metric`. Point estimate from the fit on all
    replicates; 95 % percentile bootstrap interval (Efron & Tibshirani 1993, ch. 13) resampling whole
    replicates with replacement (a replicate keeps all its n) and refitting each time. Percentiles use
    numpy's "inverted_cdf" (an observed value, no interpolation into inf): a fit whose asymptote stays
    at or below `target` counts as n = inf, so the upper end is inf exactly when more than 2.5 % of the
    fits never reach it ("share_never").

    Returns {"method", "metric", "target", "n", "ci_low", "ci_high", "share_never", "asymptote",
    "asymptote_low", "asymptote_high", "extrapolated" (n above the largest n measured),
    "below_measured", "n_min", "n_max", "n_replicates", "n_boot", "n_failed", "note", "curve"}.
    With fewer than 2 replicates the interval entries are NaN and "note" says so.
    Raises ValueError: missing columns, duplicate rows, no rows for `method`, n_boot < 1, fit errors.
    """
    _check_columns(frame, ["method", "n", "replicate", metric])
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    sub = frame[frame["method"] == method]
    if sub.empty:
        raise ValueError(f"no rows for method {method!r}")
    curve = fit_curve(sub["n"].to_numpy(dtype=float), sub[metric].to_numpy(dtype=float))
    point = curve.n_for(target)
    groups = [
        (g["n"].to_numpy(dtype=float), g[metric].to_numpy(dtype=float)) for _, g in sub.groupby("replicate", sort=True)
    ]
    out: dict[str, Any] = {
        "method": method,
        "metric": metric,
        "target": float(target),
        "n": point,
        "ci_low": math.nan,
        "ci_high": math.nan,
        "share_never": math.nan,
        "asymptote": curve.asymptote,
        "asymptote_low": math.nan,
        "asymptote_high": math.nan,
        "extrapolated": math.isfinite(point) and curve.where(point) == "above",
        "below_measured": curve.where(point) == "below",
        "n_min": curve.n_min,
        "n_max": curve.n_max,
        "n_replicates": len(groups),
        "n_boot": 0,
        "n_failed": 0,
        "note": "",
        "curve": curve,
    }
    if len(groups) < 2:
        out["note"] = "one replicate: no interval"
        return out
    needs, asyms, failed = _bootstrap(groups, target, n_boot, seed)
    out["n_boot"], out["n_failed"] = int(needs.size), failed
    if needs.size == 0:
        out["note"] = f"all {n_boot} bootstrap fits failed: no interval"
        return out
    out["share_never"] = float(np.mean(np.isinf(needs)))
    out["ci_low"], out["ci_high"] = (float(v) for v in np.quantile(needs, [0.025, 0.975], method="inverted_cdf"))
    if out["share_never"] > 0.025:
        out["ci_high"] = math.inf
    out["asymptote_low"], out["asymptote_high"] = (float(v) for v in np.quantile(asyms, [0.025, 0.975]))
    return out


def _paired_row(d: np.ndarray, n: float, alpha: float) -> dict[str, Any]:
    """One n's row: t_interval of the paired differences, widened/narrowed to 1 - alpha when alpha != 0.05."""
    r = t_interval(d)
    if alpha != 0.05 and r["n"] >= 2 and math.isfinite(r["sd"]) and r["note"] == "":
        half = stats.t.ppf(1 - alpha / 2, r["n"] - 1) * r["sd"] / math.sqrt(r["n"])
        r["ci_low"], r["ci_high"] = r["estimate"] - half, r["estimate"] + half
    has = math.isfinite(r["ci_low"]) and math.isfinite(r["ci_high"])
    return {
        "n": n,
        "estimate": r["estimate"],
        "ci_low": r["ci_low"],
        "ci_high": r["ci_high"],
        "p": r["p"],
        "pairs": r["n"],
        "covers_zero": bool(has and r["ci_low"] <= 0 <= r["ci_high"]),
        "has_interval": has,
        "note": r["note"],
    }


def bn_matters_until(
    frame: pd.DataFrame, a: str = "final BN", b: str = "none", metric: str = "f1", alpha: float = 0.05
) -> dict[str, Any]:
    """Per n, the paired difference a - b over replicates (same replicate index = same split) with a
    1 - alpha t interval (finalbn.stats.inference.t_interval; its 95 % is rescaled for another alpha),
    and M: the smallest measured n from which on (at it and every larger n with an interval) the
    interval covers 0, i.e. "beyond M images the final BN no longer matters".

    Returns {"a", "b", "metric", "alpha", "M", "verdict", "rows"}: M None when the interval excludes 0
    at the largest n (verdict "matters_at_largest") or no n has an interval (verdict "no_interval",
    fewer than 2 paired replicates everywhere); verdict "matters_until" when M is set, "never_matters"
    when M is the smallest n with an interval. rows: DataFrame, one row per n (ascending) with
    estimate, ci_low, ci_high, p, pairs, covers_zero, has_interval, note; an n without an interval is
    skipped by the scan for M. Raises ValueError: missing columns, duplicate rows, alpha not in (0, 1),
    no n where both methods have rows.
    """
    _check_columns(frame, ["method", "n", "replicate", metric])
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    wide = frame[frame["method"].isin([a, b])].pivot(index=["n", "replicate"], columns="method", values=metric)
    if a not in wide.columns or b not in wide.columns:
        raise ValueError(f"no rows for method {a!r} or {b!r}")
    diff = (wide[a] - wide[b]).astype(float)
    rows = pd.DataFrame([_paired_row(g.to_numpy(), float(n), alpha) for n, g in diff.groupby(level="n", sort=True)])
    scored = rows[rows["has_interval"]]
    m: float | None = None
    for _, row in scored[::-1].iterrows():  # from the largest n down, while the interval covers 0
        if not row["covers_zero"]:
            break
        m = float(row["n"])
    if scored.empty:
        verdict = "no_interval"
    elif m is None:
        verdict = "matters_at_largest"
    else:
        verdict = "never_matters" if m == scored["n"].iloc[0] else "matters_until"
    return {"a": a, "b": b, "metric": metric, "alpha": alpha, "M": m, "verdict": verdict, "rows": rows}


def _ceil(x: float) -> str:
    """An image count rounded up (a 1e-9 slack so 23.0000000001 from float error stays 23)."""
    return "unbounded" if math.isinf(x) else str(max(1, math.ceil(x - 1e-9)))


def _need_clause(target: float, need: dict[str, Any]) -> str:
    t = f"{target:.2f}"
    if math.isinf(need["n"]):
        if math.isnan(need["asymptote_low"]):
            ci = f"; {need['note'] or 'no interval'}"
        else:
            ci = f" (95 % interval {need['asymptote_low']:.2f}–{need['asymptote_high']:.2f})"
        return f"the learning curve does not reach {t}: its asymptote is {need['asymptote']:.2f}{ci}"
    k = _ceil(need["n"])
    if math.isnan(need["ci_low"]):
        notes = [need["note"] or "no interval"]
    elif math.isinf(need["ci_high"]):
        notes = [
            f"95 % interval {_ceil(need['ci_low'])} to unbounded: {100 * need['share_never']:.0f} % of"
            f" bootstrap fits never reach {t}"
        ]
    else:
        notes = [f"95 % interval {_ceil(need['ci_low'])}–{_ceil(need['ci_high'])}"]
    if need["extrapolated"]:
        notes.append(f"extrapolated beyond the {need['n_max']:g} measured")
    elif need["below_measured"]:
        notes.append(f"fewer than the {need['n_min']:g} measured: extrapolated")
    return f"label about {k} defect image{'' if k == '1' else 's'} ({'; '.join(notes)})"


def _matters_clause(matters: dict[str, Any], name: str) -> str:
    rows = matters["rows"]
    scored = rows[rows["has_interval"]]
    if matters["verdict"] == "no_interval":
        return f"whether {name} matters is open (fewer than 2 paired replicates at every n: no interval)"
    first, last = scored["n"].iloc[0], scored["n"].iloc[-1]
    if matters["verdict"] == "matters_at_largest":
        if not scored["covers_zero"].any():
            return f"{name} matters at every n measured ({first:g} to {last:g}: its gain's interval excludes 0)"
        return f"{name} still matters at {last:g}, the largest n measured (its gain's interval excludes 0)"
    if matters["verdict"] == "never_matters":
        return f"{name} does not matter at any n measured (its gain's interval covers 0 from {first:g} to {last:g})"
    return f"beyond {matters['M']:g} images {name} no longer matters (its gain's interval covers 0)"


def sentence(target: float, prevalence: float, need: dict[str, Any], matters: dict[str, Any], method_name: str) -> str:
    """One sentence for a user: images to label for `target` (from n_needed, image counts rounded up)
    and where the final BN stops mattering (from bn_matters_until). prevalence: minority share in
    (0, 1], printed as a percentage; method_name e.g. "the final BN". Raises ValueError: prevalence
    out of range."""
    if not 0 < prevalence <= 1:
        raise ValueError(f"prevalence must be in (0, 1], got {prevalence}")
    head = f"{100 * prevalence:g} % prevalence with {method_name}"
    if math.isinf(need["n"]):
        first = f"At a {head}, {_need_clause(target, need)}"
    else:
        label = _LABELS.get(need["metric"], need["metric"])
        first = f"To reach {label} {target:.2f} at a {head}, {_need_clause(target, need)}"
    return f"{first}; {_matters_clause(matters, method_name)}."

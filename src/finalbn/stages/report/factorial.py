"""The 2^6 factorial's effects, and final BN's effect within each (UF, WL) setting.

    eff, how = factorial_effects(cells_of_one_scope)      # OLS cluster-robust, or exploratory estimates
    s = by_setting(cells_of_one_scope, "apple/lite0")     # BN on − off per (UF, WL)

With two or more complete replicates of all 64 configurations: statsmodels OLS (main effects and
all two-way interactions) with standard errors clustered by replicate, one Holm family. With one:
the saturated design's effects as exploratory estimates, without interval or p value (`effects`
module docstring says why not Lenth's). An effect is (mean with the switch on) − (mean with it
off) = 2 × coefficient.
"""

from __future__ import annotations

import itertools
import math
import warnings

import numpy as np
import pandas as pd
import statsmodels.api as sm

from finalbn.config import TOGGLES, AblationConfig, config_id
from finalbn.stages.report.pairs import FACTORIAL, paired_differences
from finalbn.stats.inference import holm, t_interval

SETTING_COLUMNS = [
    "scope",
    "uf",
    "wl",
    "setting",
    "factorial_estimate",
    "factorial_min",
    "factorial_max",
    "factorial_pairs",
    "factorial_replicates",
    "factorial_exploratory",
    "pair",
    "pair_estimate",
    "pair_ci_low",
    "pair_ci_high",
    "pair_replicates",
]


def coded(cells: pd.DataFrame) -> pd.DataFrame:
    """The six switches as ±1 columns named BN, WL, ..."""
    return pd.DataFrame({t.upper(): np.where(cells[t].astype(bool), 1.0, -1.0) for t in TOGGLES}, index=cells.index)


def _report_terms(present) -> list[tuple[str, tuple[str, ...]]]:
    """Main effects and BN x X interactions of the switches in `present` (column names)."""
    names = [t.upper() for t in TOGGLES if t.upper() in set(present)]
    return [(n, (n,)) for n in names] + [(f"BNx{n}", ("BN", n)) for n in names if n != "BN" and "BN" in names]


def factorial_exploratory(y: np.ndarray, x: pd.DataFrame) -> pd.DataFrame:
    """Effects of the saturated two-level design on one complete replicate, as estimates only:
    (mean of y where the product of the term's ±1 columns is +1) − (where it is −1). No interval and
    no p value (module docstring). Adds the simple effects of BN with WL off / on."""
    names = list(x.columns)

    def effect(s):
        return float(2 * np.mean(y * np.prod(x[list(s)].to_numpy(), axis=1)))

    rows = [
        {"effect": name, "estimate": effect(s), "kind": "main" if len(s) == 1 else "interaction"}
        for name, s in _report_terms(names)
    ]
    if "BN" in names and "WL" in names:
        bn, bnwl = effect(("BN",)), effect(("BN", "WL"))
        rows += [
            {"effect": "BN | WL off", "estimate": bn - bnwl, "kind": "simple"},
            {"effect": "BN | WL on", "estimate": bn + bnwl, "kind": "simple"},
        ]
    out = pd.DataFrame(rows)
    for c in ("ci_low", "ci_high", "p", "se", "df"):
        out[c] = math.nan
    return out


def factorial_ols(y: np.ndarray, x: pd.DataFrame, clusters: np.ndarray) -> pd.DataFrame:
    """OLS on the ±1 switches, main effects and all two-way interactions, standard errors
    clustered by replicate (statsmodels, small-sample corrected, t with G − 1 df)."""
    cols = {c: x[c].to_numpy() for c in x.columns}
    for a, b in itertools.combinations(list(x.columns), 2):
        cols[f"{a}x{b}"] = x[a].to_numpy() * x[b].to_numpy()
    design = sm.add_constant(pd.DataFrame(cols, index=x.index), has_constant="add")
    with warnings.catch_warnings():  # few clusters: the report states the method instead
        warnings.simplefilter("ignore")
        res = sm.OLS(np.asarray(y, dtype=float), design).fit(
            cov_type="cluster", cov_kwds={"groups": clusters}, use_t=True
        )
    rows = []

    def add(name, weights: dict[str, float], kind):
        L = np.zeros(len(design.columns))
        for k, w in weights.items():
            L[list(design.columns).index(k)] = 2 * w  # effect = 2 x coefficient
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t = res.t_test(L)
        lo, hi = np.asarray(t.conf_int(alpha=0.05)).ravel()
        rows.append(
            {
                "effect": name,
                "estimate": float(np.asarray(t.effect).ravel()[0]),
                "ci_low": float(lo),
                "ci_high": float(hi),
                "p": float(np.asarray(t.pvalue).ravel()[0]),
                "se": float(np.asarray(t.sd).ravel()[0]),
                "df": float(t.df_denom),
                "kind": kind,
            }
        )

    for name, s in _report_terms(x.columns):
        add(name, {s[0] if len(s) == 1 else f"{s[0]}x{s[1]}": 1.0}, "main" if len(s) == 1 else "interaction")
    if "BN" in x.columns and "WL" in x.columns:
        add("BN | WL off", {"BN": 1.0, "BNxWL": -1.0}, "simple")
        add("BN | WL on", {"BN": 1.0, "BNxWL": 1.0}, "simple")
    return pd.DataFrame(rows)


def complete_replicates(sub: pd.DataFrame, metric: str = "test_f1_1") -> list[int]:
    """The replicates on which all 64 configurations have `metric`."""
    sub = sub.dropna(subset=[metric])
    per_rep = sub.groupby("replicate")["config_id"].nunique()
    return sorted(int(r) for r in per_rep[per_rep == 64].index)


def factorial_effects(sub: pd.DataFrame, metric: str = "test_f1_1") -> tuple[pd.DataFrame, str]:
    """The factorial's effects for one (dataset, arch), and a sentence saying how they were had."""
    complete = complete_replicates(sub, metric)
    if not complete:
        return pd.DataFrame(), "no replicate has all 64 configurations: the factorial is not estimated"
    full = sub.dropna(subset=[metric])
    full = full[full["replicate"].isin(complete)]
    x = coded(full)
    if len(complete) >= 2:
        eff = factorial_ols(full[metric].to_numpy(), x, full["replicate"].to_numpy())
        how = (
            f"OLS on ±1-coded switches (main effects and two-way interactions) over {len(complete)} complete "
            f"replicates of all 64 configurations, standard errors clustered by replicate; Holm across the "
            f"factorial's rows (family `factorial`)"
        )
        eff["method"] = "OLS, cluster-robust by replicate"
        eff["family"] = FACTORIAL
        eff["p_holm"] = holm(eff["p"].to_numpy())
    else:
        eff = factorial_exploratory(full[metric].to_numpy(), x)
        how = (
            f"exploratory: all 64 configurations on one replicate (replicate {complete[0]}), so the factorial's "
            "estimates come without interval or p value (its cells share one split, one training seed and one "
            "test set; replicate the grid, `grid.replicates` ≥ 2, for intervals)"
        )
        eff["method"] = "exploratory, one replicate"
        eff["family"] = ""
        eff["p_holm"] = math.nan
    eff["n"] = len(full)
    return eff, how


def _setting_id(bn: bool, wl: bool, uf: bool) -> int:
    return config_id(AblationConfig(bn=bn, wl=wl, da=False, mx=False, uf=uf, wd=False))


def by_setting(sub: pd.DataFrame, scope: str, metric: str = "test_f1_1") -> pd.DataFrame:
    """BN's effect within each (UF, WL) setting: the factorial's BN pairs on complete replicates
    (mean, min, max over DA x MX x WD x replicates) and the matched pair with the other switches off
    over its replicates (paired t interval). `factorial_replicates`: how many replicates the
    factorial pairs rest on; `factorial_exploratory`: True where that is one (each configuration
    pair has a single replicate: no interval, the numbers are exploratory)."""
    complete = complete_replicates(sub, metric)
    rows = []
    for uf, wl in itertools.product((False, True), (False, True)):
        row = {"scope": scope, "uf": uf, "wl": wl, "setting": f"UF {'on' if uf else 'off'}, WL {'on' if wl else 'off'}"}
        d, reps = np.array([]), 0
        if complete:
            part = sub[sub["replicate"].isin(complete) & (sub["uf"] == uf) & (sub["wl"] == wl)].dropna(subset=[metric])
            key = ["replicate", "da", "mx", "wd"]
            j = part[part["bn"]][key + [metric]].merge(
                part[~part["bn"]][key + [metric]], on=key, suffixes=("_on", "_off")
            )
            d = (j[f"{metric}_on"] - j[f"{metric}_off"]).to_numpy()
            reps = int(j["replicate"].nunique())
        row.update(
            {
                "factorial_estimate": float(d.mean()) if d.size else math.nan,
                "factorial_min": float(d.min()) if d.size else math.nan,
                "factorial_max": float(d.max()) if d.size else math.nan,
                "factorial_pairs": int(d.size),
                "factorial_replicates": reps,
                "factorial_exploratory": bool(d.size) and reps == 1,
            }
        )
        a, b = _setting_id(True, wl, uf), _setting_id(False, wl, uf)
        t = t_interval(paired_differences(sub, a, metric, b, metric)["diff"].to_numpy())
        row.update(
            {
                "pair": f"{a} − {b}",
                "pair_estimate": t["estimate"],
                "pair_ci_low": t["ci_low"],
                "pair_ci_high": t["ci_high"],
                "pair_replicates": t["n"],
            }
        )
        rows.append(row)
    return pd.DataFrame(rows, columns=SETTING_COLUMNS)

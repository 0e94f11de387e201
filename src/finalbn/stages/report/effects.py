"""Effects of the switches with the replicate as the unit, and the neutral verdict built on them.

    eff, lines = study_effects(cells, predictions_for, n_boot=2000, seed=0)

Two kinds of estimate, per (dataset, arch):

* **Paired contrasts** of two configurations (31 − 63: the paper's "final BN alone vs nothing";
  15 − 47: final BN with WL on; 31 − 47: the paper's "BN improvement"; 31 against the free
  prior-corrected baseline of 63): one difference per replicate (same split, same seed), mean
  with a t interval over replicates, and — where per-image test predictions exist — a
  hierarchical bootstrap interval (replicates resampled, then test images within each).
* **The factorial**: minority F1 on ±1-coded switches. With two or more complete replicates of
  all 64 configurations, statsmodels OLS (main effects and all two-way interactions) with standard
  errors clustered by replicate; with one, Lenth's pseudo standard error on the 63 contrasts of the
  saturated 2^6 design — intervals then conditional on one split, one training seed and one test
  set, and said so. An effect is (mean with the switch on) − (mean with it off) = 2 × coefficient.
  Lenth takes the small contrasts for noise; but cells of one replicate share their split and
  seed, so a switch that does nothing (WD here) makes half the contrasts near-duplicates and the
  PSE far too small. So the BN rows also get a *replicate-scale* interval: the estimate ± t × the
  pooled replicate SD of the BN pair differences (31 − 63, 15 − 47). It is conservative: the
  factorial averages 32 pairs that share one split, so it varies between replicates at most as
  much as one pair does.

Multiplicity: Holm across the effects the verdict states, and separately across the factorial's
rows. Wording is neutral ("changes minority F1 by +0.12 [+0.05, +0.19]"; "rules out a gain
larger than +0.03") and set against the paper's reported range.

The generic pieces (t interval, Holm, Lenth's PSE) live in `finalbn.stats`; `t_interval` stays
importable from here too, where `finalbn.search` takes it.
"""
from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Callable

import numpy as np
import pandas as pd
import statsmodels.api as sm
from scipy import stats

from finalbn.config import TOGGLES
from finalbn.stages.report.tables import BN_ID, BNWL_ID, NONE_ID, WL_ID
from finalbn.stats import ZERO_TOL, holm, lenth_pse, t_interval

# The paper's Table I (VGG19, 10 runs, Apple / Pepper / Tomato): the same contrasts, reported range.
PAPER = {
    "31-63": (0.234, 0.662, "+0.23 (Pepper) to +0.66 (Apple), Table I (VGG19, 10 runs)"),
    "31-47": (0.064, 0.162, "+0.06 (Pepper) to +0.16 (Apple), Table I's \"BN total improvement\""),
}
EFFECT_COLUMNS = ["scope", "effect", "label", "metric", "kind", "estimate", "ci_low", "ci_high", "boot_low",
                  "boot_high", "rep_low", "rep_high", "p", "p_holm", "n", "method", "note"]
BN_ROWS = ("BN", "BN | WL off", "BN | WL on")  # factorial rows that a BN pair's replicate spread bounds

# (effect id, label, metric, config a, its column, config b, its column, in the verdict)
CONTRASTS = [
    ("31-63", "final BN alone vs nothing (31 − 63)", "f1_1", BN_ID, "test_f1_1", NONE_ID, "test_f1_1", True),
    ("15-47", "final BN with WL on (15 − 47)", "f1_1", BNWL_ID, "test_f1_1", WL_ID, "test_f1_1", True),
    ("31-47", "final BN vs WL (31 − 47)", "f1_1", BN_ID, "test_f1_1", WL_ID, "test_f1_1", False),
    ("31-pc63", "final BN vs the free prior correction (31 − prior-corrected 63)", "f1_1", BN_ID, "test_f1_1",
     NONE_ID, "test_f1_1_pc", True),
    ("pc63-63", "prior correction alone (prior-corrected 63 − 63)", "f1_1", NONE_ID, "test_f1_1_pc", NONE_ID,
     "test_f1_1", False),
    ("31-63 auroc", "final BN alone vs nothing (31 − 63), AUROC", "auroc", BN_ID, "test_auroc", NONE_ID,
     "test_auroc", True),
    ("31-63 ap", "final BN alone vs nothing (31 − 63), average precision", "ap", BN_ID, "test_ap", NONE_ID,
     "test_ap", False),
    ("31-63 ece", "final BN alone vs nothing (31 − 63), ECE", "ece", BN_ID, "test_ece", NONE_ID, "test_ece", False),
]


# --------------------------------------------------------------------------- paired contrasts


def paired_differences(cells: pd.DataFrame, a: int, metric_a: str, b: int, metric_b: str) -> pd.DataFrame:
    """metric_a(config a) − metric_b(config b) per (dataset, arch, replicate) where both ran."""
    key = ["dataset", "arch", "replicate"]
    left = cells[cells["config_id"] == a][key + [metric_a]].rename(columns={metric_a: "a"})
    right = cells[cells["config_id"] == b][key + [metric_b]].rename(columns={metric_b: "b"})
    j = left.merge(right, on=key).dropna(subset=["a", "b"])
    j["diff"] = j["a"] - j["b"]
    j.loc[j["diff"].abs() < ZERO_TOL, "diff"] = 0.0
    return j.sort_values(key).reset_index(drop=True)


def _f1_minority(y: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Minority F1 along the last axis (vectorised over resamples); 0 when undefined."""
    tp = ((pred == 1) & (y == 1)).sum(-1)
    fp = ((pred == 1) & (y == 0)).sum(-1)
    fn = ((pred == 0) & (y == 1)).sum(-1)
    denom = 2 * tp + fp + fn
    return np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0)


def hierarchical_bootstrap(pairs: list[tuple[np.ndarray, np.ndarray, np.ndarray]], n_boot: int = 2000,
                           seed: int = 0) -> tuple[float, float]:
    """95 % percentile interval of the mean over replicates of F1(a) − F1(b), resampling replicates
    and then the test images within each. `pairs`: per replicate (labels, pred_a, pred_b), the same
    images in the same order. (nan, nan) with fewer than 2 replicates."""
    if len(pairs) < 2:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    stats_ = np.empty(n_boot)
    reps = rng.integers(0, len(pairs), size=(n_boot, len(pairs)))
    per_rep = np.zeros((n_boot, len(pairs)))
    for k in range(len(pairs)):
        y, pa, pb = pairs[k]
        idx = rng.integers(0, len(y), size=(n_boot, len(y)))  # images resampled within replicate k
        per_rep[:, k] = _f1_minority(y[idx], pa[idx]) - _f1_minority(y[idx], pb[idx])
    stats_[:] = np.take_along_axis(per_rep, reps, axis=1).mean(axis=1)
    lo, hi = np.percentile(stats_, [2.5, 97.5])
    return float(lo), float(hi)


# --------------------------------------------------------------------------- the factorial


def coded(cells: pd.DataFrame) -> pd.DataFrame:
    """The six switches as ±1 columns named BN, WL, ..."""
    return pd.DataFrame({t.upper(): np.where(cells[t].astype(bool), 1.0, -1.0) for t in TOGGLES}, index=cells.index)


def _report_terms(present) -> list[tuple[str, tuple[str, ...]]]:
    """Main effects and BN x X interactions of the switches in `present` (column names)."""
    names = [t.upper() for t in TOGGLES if t.upper() in set(present)]
    return [(n, (n,)) for n in names] + [(f"BNx{n}", ("BN", n)) for n in names if n != "BN" and "BN" in names]


def factorial_lenth(y: np.ndarray, x: pd.DataFrame) -> pd.DataFrame:
    """Effects of the saturated 2^6 model on one complete replicate, with Lenth's PSE: t with m/3
    degrees of freedom (m = 63 contrasts). Adds the simple effects of BN with WL off / on."""
    names = list(x.columns)
    subsets = [s for r in range(1, len(names) + 1) for s in itertools.combinations(names, r)]
    effect = {s: float(2 * np.mean(y * np.prod(x[list(s)].to_numpy(), axis=1))) for s in subsets}
    pse = lenth_pse(np.array(list(effect.values())))
    d = len(subsets) / 3
    tq = stats.t.ppf(0.975, d)
    rows = []

    def add(name, est, se, kind):
        p = float(2 * stats.t.sf(abs(est) / se, d)) if se > 0 else math.nan
        rows.append({"effect": name, "estimate": est, "ci_low": est - tq * se, "ci_high": est + tq * se, "p": p,
                     "se": se, "df": d, "kind": kind})

    for name, s in _report_terms(names):
        add(name, effect[tuple(sorted(s, key=names.index))], pse, "main" if len(s) == 1 else "interaction")
    bn, bnwl = effect[("BN",)], effect[("BN", "WL")]
    add("BN | WL off", bn - bnwl, math.sqrt(2) * pse, "simple")
    add("BN | WL on", bn + bnwl, math.sqrt(2) * pse, "simple")
    return pd.DataFrame(rows)


def factorial_ols(y: np.ndarray, x: pd.DataFrame, clusters: np.ndarray) -> pd.DataFrame:
    """OLS on the ±1 switches, main effects and all two-way interactions, standard errors
    clustered by replicate (statsmodels, small-sample corrected, t with G − 1 df)."""
    cols = {c: x[c].to_numpy() for c in x.columns}
    for a, b in itertools.combinations(list(x.columns), 2):
        cols[f"{a}x{b}"] = x[a].to_numpy() * x[b].to_numpy()
    design = sm.add_constant(pd.DataFrame(cols, index=x.index), has_constant="add")
    with warnings.catch_warnings():  # few clusters: the report states the method instead
        warnings.simplefilter("ignore")
        res = sm.OLS(np.asarray(y, dtype=float), design).fit(cov_type="cluster", cov_kwds={"groups": clusters},
                                                              use_t=True)
    rows = []

    def add(name, weights: dict[str, float], kind):
        L = np.zeros(len(design.columns))
        for k, w in weights.items():
            L[list(design.columns).index(k)] = 2 * w  # effect = 2 x coefficient
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t = res.t_test(L)
        lo, hi = np.asarray(t.conf_int(alpha=0.05)).ravel()
        rows.append({"effect": name, "estimate": float(np.asarray(t.effect).ravel()[0]), "ci_low": float(lo),
                     "ci_high": float(hi), "p": float(np.asarray(t.pvalue).ravel()[0]),
                     "se": float(np.asarray(t.sd).ravel()[0]), "df": float(t.df_denom), "kind": kind})

    for name, s in _report_terms(x.columns):
        add(name, {s[0] if len(s) == 1 else f"{s[0]}x{s[1]}": 1.0}, "main" if len(s) == 1 else "interaction")
    add("BN | WL off", {"BN": 1.0, "BNxWL": -1.0}, "simple")
    add("BN | WL on", {"BN": 1.0, "BNxWL": 1.0}, "simple")
    return pd.DataFrame(rows)


def factorial_effects(sub: pd.DataFrame, metric: str = "test_f1_1") -> tuple[pd.DataFrame, str]:
    """The factorial's effects for one (dataset, arch), and a sentence saying how they were had."""
    sub = sub.dropna(subset=[metric])
    per_rep = sub.groupby("replicate")["config_id"].nunique()
    complete = sorted(per_rep[per_rep == 64].index)
    if not complete:
        return pd.DataFrame(), "no replicate has all 64 configurations: the factorial is not estimated"
    full = sub[sub["replicate"].isin(complete)]
    x = coded(full)
    if len(complete) >= 2:
        eff = factorial_ols(full[metric].to_numpy(), x, full["replicate"].to_numpy())
        how = (f"OLS on ±1-coded switches (main effects and two-way interactions) over {len(complete)} complete "
               f"replicates of all 64 configurations, standard errors clustered by replicate")
    else:
        eff = factorial_lenth(full[metric].to_numpy(), x)
        how = (f"all 64 configurations on one replicate (replicate {complete[0]}): Lenth's pseudo standard error "
               "on the saturated design; its intervals are conditional on one split, one training seed and one test "
               "set")
    eff["n"] = len(full)
    eff["method"] = "OLS, cluster-robust by replicate" if len(complete) >= 2 else "Lenth PSE, one replicate"
    eff["p_holm"] = holm(eff["p"].to_numpy())
    return eff, how


def replicate_spread(sub: pd.DataFrame) -> tuple[float, int] | None:
    """(pooled SD, degrees of freedom) of the BN pair differences 31 − 63 and 15 − 47 over
    replicates, or None with fewer than 2 replicates of either."""
    ss, df = 0.0, 0
    for a, b in ((BN_ID, NONE_ID), (BNWL_ID, WL_ID)):
        d = paired_differences(sub, a, "test_f1_1", b, "test_f1_1")["diff"].to_numpy()
        if len(d) >= 2:
            ss += float(((d - d.mean()) ** 2).sum())
            df += len(d) - 1
    return (math.sqrt(ss / df), df) if df else None


# --------------------------------------------------------------------------- the study's effects


PredictionsFor = Callable[[str], "pd.DataFrame | None"]


def _boot_pairs(diffs: pd.DataFrame, sub: pd.DataFrame, a: int, b: int, predictions_for: PredictionsFor | None):
    """Per replicate (labels, argmax pred of a, argmax pred of b) joined on path, when available."""
    if predictions_for is None:
        return []
    ids = {(cid, r): rid for cid, r, rid in zip(sub["config_id"], sub["replicate"], sub["run_id"])}
    out = []
    for r in diffs["replicate"]:
        pa, pb = predictions_for(ids[(a, r)]), predictions_for(ids[(b, r)])
        if pa is None or pb is None or "p1_last" not in pa or "p1_last" not in pb:
            return []
        j = pa[["path", "label", "p1_last"]].merge(pb[["path", "p1_last"]], on="path", suffixes=("_a", "_b"))
        out.append((j["label"].to_numpy(int), (j["p1_last_a"].to_numpy() > 0.5).astype(int),
                    (j["p1_last_b"].to_numpy() > 0.5).astype(int)))
    return out


def study_effects(cells: pd.DataFrame, predictions_for: PredictionsFor | None = None, n_boot: int = 2000,
                  seed: int = 0) -> tuple[pd.DataFrame, dict[str, list[str]], dict[str, str]]:
    """(effects table, verdict lines per scope, factorial method sentence per scope)."""
    rows, verdicts, methods = [], {}, {}
    for (ds, arch), sub in cells.groupby(["dataset", "arch"], sort=True):
        scope = f"{ds}/{arch}"
        start = len(rows)
        for eid, label, metric, a, ma, b, mb, in_verdict in CONTRASTS:
            d = paired_differences(sub, a, ma, b, mb)
            row = {"scope": scope, "effect": eid, "label": label, "metric": metric,
                   "kind": "contrast", **t_interval(d["diff"].to_numpy()), "boot_low": math.nan,
                   "boot_high": math.nan, "method": "paired over replicates, t interval", "verdict": in_verdict}
            if ma == mb == "test_f1_1" and len(d) >= 2:
                pairs = _boot_pairs(d, sub, a, b, predictions_for)
                if pairs:
                    row["boot_low"], row["boot_high"] = hierarchical_bootstrap(pairs, n_boot, seed)
            rows.append(row)
        fac, how = factorial_effects(sub)
        methods[scope] = how
        spread = replicate_spread(sub)
        for r in fac.to_dict("records"):
            row = {"scope": scope, "label": f"factorial: {r['effect']}", "metric": "f1_1", "boot_low": math.nan,
                   "boot_high": math.nan, "rep_low": math.nan, "rep_high": math.nan, "note": "",
                   "verdict": r["effect"] in ("BN", "WD"), **r}
            if r["effect"] in BN_ROWS and spread is not None and r["method"].startswith("Lenth"):
                sd, df = spread
                half = stats.t.ppf(0.975, df) * sd
                row["rep_low"], row["rep_high"] = r["estimate"] - half, r["estimate"] + half
                row["p_rep"] = float(2 * stats.t.sf(abs(r["estimate"]) / sd, df)) if sd > 0 else math.nan
            rows.append(row)
        mine = pd.DataFrame(rows[start:])
        in_v = mine["verdict"].to_numpy(bool)
        # the verdict's family: a factorial BN row enters with its replicate-scale p (Lenth's is overconfident)
        p_verdict = mine["p_rep"].fillna(mine["p"]) if "p_rep" in mine else mine["p"]
        adjusted = holm(p_verdict[in_v].to_numpy())
        for i, h in zip(np.flatnonzero(in_v), adjusted):
            rows[start + i]["p_holm"] = h
        verdicts[scope] = verdict_lines(pd.DataFrame(rows[start:]), how)
    eff = pd.DataFrame(rows)
    if eff.empty:
        return pd.DataFrame(columns=EFFECT_COLUMNS), verdicts, methods
    for c in EFFECT_COLUMNS:
        if c not in eff:
            eff[c] = math.nan if c not in ("note", "method") else ""
    eff["note"] = eff["note"].fillna("")
    return eff[EFFECT_COLUMNS + ["verdict"]], verdicts, methods


# --------------------------------------------------------------------------- wording


def _fmt_p(p: float) -> str:
    return "n/a" if not math.isfinite(p) else f"{p:.2g}"


def describe(label: str, r: dict, what: str = "minority F1") -> str:
    """One neutral sentence: estimate, interval, Holm p, and what the interval rules out."""
    est, lo, hi, n = r["estimate"], r["ci_low"], r["ci_high"], int(r["n"])
    if not math.isfinite(est):
        return f"{label}: not estimable here ({r.get('note') or 'no data'})."
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return f"{label} changes {what} by {est:+.2f} ({r.get('note') or 'no interval'}; {n} replicate(s))."
    unit = f"{n} replicates" if r.get("kind") == "contrast" else r.get("method", "")
    boot = (f"; hierarchical bootstrap [{r['boot_low']:+.2f}, {r['boot_high']:+.2f}]"
            if math.isfinite(r.get("boot_low", math.nan)) else "")
    if math.isfinite(r.get("rep_low", math.nan)):
        boot += f"; at the replicate scale [{r['rep_low']:+.2f}, {r['rep_high']:+.2f}]"
    p = r.get("p_holm", math.nan)
    text = (f"{label} changes {what} by {est:+.2f} [95% CI {lo:+.2f}, {hi:+.2f}] ({unit}{boot}; "
            f"Holm-adjusted p = {_fmt_p(p if math.isfinite(p) else r['p'])})")
    lo, hi = (r["rep_low"], r["rep_high"]) if math.isfinite(r.get("rep_low", math.nan)) else (lo, hi)
    if lo > 0 or hi < 0:
        return text + "."
    return text + f": the data rule out a gain larger than {_small(hi, '+')} and a loss larger than {_small(-lo)}."


def _small(v: float, sign: str = "") -> str:
    """Two decimals, three where two would print a bound of zero."""
    return f"{v:{sign}.2f}" if abs(v) >= 0.005 else f"{v:{sign}.3f}"


def _versus_paper(eid: str, r: dict) -> str:
    if eid not in PAPER or not (math.isfinite(r["ci_low"]) and math.isfinite(r["ci_high"])):
        return ""
    low, high, text = PAPER[eid]
    if r["ci_high"] < low:
        where = "lies entirely below"
    elif r["ci_low"] > high:
        where = "lies entirely above"
    elif r["ci_low"] >= low and r["ci_high"] <= high:
        where = "lies within"
    else:
        where = "overlaps"
    return f" The paper reports {text}: this interval {where} that range."


def verdict_lines(eff: pd.DataFrame, factorial_how: str) -> list[str]:
    """The verdict, one sentence per effect, in the order a reader needs them."""
    by = {r["effect"]: r for r in eff.to_dict("records")}
    lines = []
    if "31-63" in by:
        r = by["31-63"]
        lines.append("Paper's contrast: " + describe("Final BN alone vs nothing (31 vs 63)", r) + _versus_paper("31-63", r))
    if "15-47" in by:
        lines.append(describe("With WL on, final BN (15 vs 47)", by["15-47"]))
    fac_bn = next((r for r in eff.to_dict("records") if r["kind"] == "main" and r["effect"] == "BN"), None)
    if fac_bn is not None:
        caveat = (" Lenth's interval is this narrow because the pairs of cells that differ only in a switch that does "
                  "nothing share their split and seed, so the contrasts it takes for noise are near zero; the "
                  "replicate-scale interval uses the spread of the BN pair differences over the headline replicates "
                  "(conservative)." if math.isfinite(fac_bn.get("rep_low", math.nan)) else "")
        lines.append(describe("Factorial main effect: final BN", fac_bn) + f" ({factorial_how}.)" + caveat)
        simple = {r["effect"]: r for r in eff.to_dict("records") if r["kind"] == "simple"}
        if simple:
            off, on = simple.get("BN | WL off"), simple.get("BN | WL on")
            lo, hi = ("rep_low", "rep_high") if math.isfinite(off.get("rep_low", math.nan)) else ("ci_low", "ci_high")
            scale = " (replicate-scale intervals)" if lo == "rep_low" else ""
            lines.append(f"Averaged over the other switches, final BN changes minority F1 by {off['estimate']:+.2f} "
                         f"[{off[lo]:+.2f}, {off[hi]:+.2f}] with WL off and by {on['estimate']:+.2f} "
                         f"[{on[lo]:+.2f}, {on[hi]:+.2f}] with WL on{scale}: the BN×WL interaction.")
    if "31-63 auroc" in by:
        lines.append("Ranking vs threshold: " + describe("final BN alone vs nothing (31 vs 63)", by["31-63 auroc"],
                                                         "test AUROC"))
    if "31-pc63" in by:
        lines.append(describe("Final BN vs the free prior correction of no-BN (31 vs prior-corrected 63)",
                              by["31-pc63"]))
    fac_wd = next((r for r in eff.to_dict("records") if r["kind"] == "main" and r["effect"] == "WD"), None)
    if fac_wd is not None and math.isfinite(fac_wd["estimate"]):
        small = (math.isfinite(fac_wd["ci_low"]) and abs(fac_wd["estimate"]) < 0.02
                 and fac_wd["ci_low"] < 0 < fac_wd["ci_high"])
        lines.append(describe("WD (1e-2, decoupled, BN and biases exempt)", fac_wd) +
                     (" That is almost nothing over 10 epochs of a head; fastai's coupling (train.wd_on_bn: true) "
                      "is the paper profile's setting." if small else ""))
    return lines


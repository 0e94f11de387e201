"""Choosing a configuration: over K replicates, on validation only.

    ranked = rank(rows, k=5)            # one row per configuration, eligible ones ranked first
    ranked.iloc[0]                      # the best configuration over replicates 0..k-1
    wins = resampled_wins(rows, k=5)    # how often each would win when replicates are resampled
    held, reps = held_out_rows(rows, k=5)   # the replicates >= k the configurations run there all share

`rows` holds one row per (configuration, replicate): a `key` column naming the configuration
(the grid's `config_id`, or any hashable key), `replicate`, `val_auroc` and `val_balanced_loss`
at the last epoch, and `switches` (how many of the six are on: the simpler wins a tie).

The rule (one place, used by the grid's summary, the report's tables, the search's comparison
and the export):
- A configuration is judged on replicates 0..k-1 (`selection.replicates`), its score the *mean
  of its per-replicate validation AUROCs* — the replicate is the unit of the study's intervals
  (a split draw and a seed), and a mean of within-split AUROCs is not moved by a score shift
  between replicates' models, which pooling the predictions would penalise. One replicate's 7
  validation positives give an AUROC with a noise of ~0.08; five give a mean of ~0.035.
- Only configurations seen on the same replicates are ranked against each other: those with all
  of 0..k-1 first ("selected over k replicates"), then each smaller set on its own ("screened"),
  so a single lucky replicate never outranks a replicated mean. Test values ride along and never
  decide.
- Ties (AUROC saturates at 1.0 on 7 positives) go to the lower mean class-balanced validation
  loss (prevalence-free and continuous), then to fewer switches, then to the lower key. Never to
  validation F1, which at 7 positives rewards a threshold leaning to the majority.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd

from finalbn.stats.inference import t_interval

CRITERION = "val_auroc"  # higher is better: the mean over replicates decides
TIE_BREAK = "val_balanced_loss"  # lower is better: ties on the criterion
RANKED_ON = (
    "mean validation AUROC over replicates 0..k-1 (last epoch); ties to the lower mean class-balanced "
    "validation loss, then fewer switches, then the lower id; test values never decide"
)


def judged(rows: pd.DataFrame, k: int) -> pd.DataFrame:
    """The rows a configuration is judged on: replicates 0..k-1."""
    return rows[rows["replicate"].astype(int) < k]


def rank(rows: pd.DataFrame, k: int, key: str = "key") -> pd.DataFrame:
    """One row per configuration (`key`): `replicates` (how many of 0..k-1 it has), the criterion's
    mean with a 95 % t interval, the tie-break's mean, `tier` (0 = all k replicates; then by set),
    `rank` within its tier (1 = best), sorted tier by tier. Columns other than the criterion,
    tie-break, `switches` and `replicate` are averaged when numeric (test values ride along)."""
    sub = judged(rows, k)
    if sub.empty:
        return pd.DataFrame(columns=[key, "replicates", "tier", "rank", CRITERION, TIE_BREAK])
    g = sub.groupby(key, sort=False)
    numeric = [c for c in sub.columns if c not in (key, "replicate") and pd.api.types.is_numeric_dtype(sub[c])]
    out = g[numeric].mean()
    out["replicates"] = g.size()
    out["replicate_set"] = g["replicate"].agg(lambda s: tuple(sorted(int(x) for x in s)))
    ci = g[CRITERION].agg(lambda s: _interval(s.to_numpy(dtype=float)))
    out[f"{CRITERION}_ci_low"] = [max(c[0], 0.0) for c in ci]  # an AUROC lies in [0, 1]: so does its interval
    out[f"{CRITERION}_ci_high"] = [min(c[1], 1.0) for c in ci]
    for c in sub.columns:  # text columns (names) ride along
        if c not in numeric and c not in (key, "replicate"):
            out[c] = g[c].first()
    out = out.reset_index()
    sets = sorted(set(out["replicate_set"]), key=lambda s: (-len(s), s))
    out["tier"] = [sets.index(s) for s in out["replicate_set"]]
    out["eligible"] = out["replicates"] >= k
    crit = out[CRITERION].astype(float).fillna(-math.inf)
    tie = out[TIE_BREAK].astype(float).fillna(math.inf) if TIE_BREAK in out else 0.0
    switches = out["switches"] if "switches" in out else 0
    out = out.assign(_c=-crit, _t=tie, _s=switches)
    out = out.sort_values(["tier", "_c", "_t", "_s", key], kind="mergesort").drop(columns=["_c", "_t", "_s"])
    out["rank"] = out.groupby("tier").cumcount() + 1
    return out.reset_index(drop=True)


def best(rows: pd.DataFrame, k: int, key: str = "key"):
    """The first configuration over all of replicates 0..k-1, or None when none has them all."""
    ranked = rank(rows, k, key)
    eligible = ranked[ranked["eligible"]] if len(ranked) else ranked
    return None if eligible.empty else eligible.iloc[0]


def resampled_wins(rows: pd.DataFrame, k: int, key: str = "key", n: int = 2000, seed: int = 0) -> pd.Series:
    """How often each eligible configuration would be chosen when the k replicates are resampled
    with replacement (the same draw for every configuration: they share the splits); share in
    [0, 1] per key, sorted. Ties inside a resample are broken as in `rank`."""
    sub = judged(rows, k)
    elig = rank(rows, k, key)
    elig = elig[elig["eligible"]]
    if elig.empty:
        return pd.Series(dtype=float)
    keys = list(elig[key])
    sub = sub[sub[key].isin(keys)]
    crit = sub.pivot_table(index=key, columns="replicate", values=CRITERION, aggfunc="mean").reindex(keys)
    tie = (
        sub.pivot_table(index=key, columns="replicate", values=TIE_BREAK, aggfunc="mean").reindex(keys)
        if TIE_BREAK in sub
        else pd.DataFrame(0.0, index=keys, columns=crit.columns)
    )
    switches = elig.set_index(key)["switches"].reindex(keys).to_numpy() if "switches" in elig else np.zeros(len(keys))
    c, t = crit.to_numpy(dtype=float), tie.reindex(columns=crit.columns).to_numpy(dtype=float)
    rng = np.random.default_rng(seed)
    wins = np.zeros(len(keys))
    order_key = np.arange(len(keys))  # `keys` is already in rank order: the last resort
    for _ in range(n):
        idx = rng.integers(0, c.shape[1], c.shape[1])
        with warnings.catch_warnings():  # an all-NaN tie-break (not logged) is no tie-break
            warnings.simplefilter("ignore", RuntimeWarning)
            mc, mt = np.nanmean(c[:, idx], axis=1), np.nanmean(t[:, idx], axis=1)
        winner = np.lexsort((order_key, switches, np.nan_to_num(mt, nan=np.inf), -np.nan_to_num(mc, nan=-np.inf)))[0]
        wins[winner] += 1
    return pd.Series(wins / n, index=keys).sort_values(ascending=False)


def held_out_rows(rows: pd.DataFrame, k: int, key: str = "key") -> tuple[pd.DataFrame, tuple[int, ...]]:
    """The held-out check's rows: those of the configurations seen on any replicate >= k (replicates
    0..k-1 chose; these did not), kept only on the replicates >= k that *all* of them share, the
    `replicate` renumbered 0..m-1 in order (so `rank(held, m)` and `resampled_wins(held, m)` judge
    them on those m replicates alone; the original number is kept in `held_out_replicate`). Returns
    (rows, the shared replicates' original numbers, ascending); empty when none is shared."""
    later = rows[rows["replicate"].astype(int) >= k]
    if later.empty:
        return later.assign(held_out_replicate=pd.Series(dtype=int)), ()
    sets = [set(int(r) for r in s) for _, s in later.groupby(key, sort=False)["replicate"]]
    shared = tuple(sorted(set.intersection(*sets)))
    held = later[later["replicate"].astype(int).isin(shared)].copy()
    held["held_out_replicate"] = held["replicate"].astype(int)
    held["replicate"] = held["held_out_replicate"].map({r: i for i, r in enumerate(shared)})
    return held, shared


def replicate_span(replicates) -> str:
    """Replicate numbers as the report and the model card both name a pool: "0-4" when they run
    without a gap, else "0, 2, 3"; "" for none."""
    r = sorted(int(x) for x in replicates)
    if len(r) > 1 and r == list(range(r[0], r[-1] + 1)):
        return f"{r[0]}-{r[-1]}"
    return ", ".join(map(str, r))


def _interval(values: np.ndarray) -> tuple[float, float]:
    r = t_interval(values)
    return r["ci_low"], r["ci_high"]

"""The report's selection section: which configuration validation chooses over K replicates, how
sure that choice is, and the choice against BN only (31) on replicates it was not chosen on.

    cand, lines = selection_table(cells, k=5, n_boot=2000, seed=0)

Pure functions of the cells DataFrame (see `report.cells`). The candidates are the
configurations seen on every one of replicates 0..k-1 (`finalbn.stats.selection`); `wins` is the share
of bootstrap resamples of those replicates in which each would be chosen — within-sample: the same
replicates that chose it, so optimistic. The honest check is on the replicates >= k (in the
default grid only the headline configurations run there): the candidates run there are ranked by
their mean validation AUROC over the held-out replicates they all share (`held_out_val_auroc`, a
mean of per-replicate AUROCs in [0, 1]; `held_out_rank`, 1 = best; NaN for a candidate not run
there), the chosen one's place is stated, and how often it would be chosen again on bootstrap
resamples of those replicates. The chosen one is also set against BN only on test over the
replicates >= k (paired by replicate: same split, same seed), so the replicates it was chosen on
play no part in its test estimate.
"""

from __future__ import annotations

import math

import pandas as pd

from finalbn.stages.report.cells import config_name_of, toggles_of
from finalbn.stages.report.tables import BN_ID, F1_1, ranked_configs
from finalbn.stats import selection
from finalbn.stats.inference import clipped, t_interval

COLUMNS = [
    "dataset",
    "arch",
    "rank",
    "config_id",
    "config_name",
    "replicates",
    "val_auroc",
    "val_auroc_ci_low",
    "val_auroc_ci_high",
    "val_balanced_loss",
    "wins",
    "held_out_val_auroc",
    "held_out_rank",
]


def selection_table(cells: pd.DataFrame, k: int, n_boot: int = 2000, seed: int = 0) -> tuple[pd.DataFrame, list[str]]:
    """(candidates table, the section's sentences) for every (dataset, arch)."""
    frames, lines = [], []
    for (ds, arch), sub in cells.groupby(["dataset", "arch"], sort=True):
        ranked = ranked_configs(sub, k)
        cand = ranked[ranked["eligible"]].copy()
        where = f"{ds}/{arch}"
        if cand.empty:
            lines.append(
                f"{where}: no configuration has all {k} replicates 0..{k - 1} (`selection.replicates`): "
                "nothing is chosen; the grid's headline configurations are the ones to replicate"
            )
            continue
        rows = ranked_rows(sub)
        wins = selection.resampled_wins(rows, k, n=n_boot, seed=seed)
        cand["wins"] = [float(wins.get(c, 0.0)) for c in cand["config_id"]]
        check = held_out_check(
            rows[rows["key"].isin(cand["config_id"])], int(cand.iloc[0]["config_id"]), k, n_boot, seed
        )
        ranked_held = check["ranked"].set_index("key") if len(check["ranked"]) else None
        cand["held_out_val_auroc"] = [
            float(ranked_held.loc[c, selection.CRITERION])
            if ranked_held is not None and c in ranked_held.index
            else math.nan
            for c in cand["config_id"]
        ]
        cand["held_out_rank"] = [
            float(ranked_held.loc[c, "rank"]) if ranked_held is not None and c in ranked_held.index else math.nan
            for c in cand["config_id"]
        ]
        cand["config_name"] = [config_name_of(toggles_of(c)) for c in cand["config_id"]]
        cand.insert(0, "arch", arch)
        cand.insert(0, "dataset", ds)
        frames.append(cand.reindex(columns=COLUMNS))
        first = cand.iloc[0]
        n_screened = int((~ranked["eligible"]).sum())
        pool = selection.replicate_span(range(k))
        lines.append(
            f"{where}: chosen on validation over replicates {pool} (the pool whose validation predictions "
            f"also set the model card's cuts): config {int(first['config_id'])} "
            f"({first['config_name']}), mean validation AUROC {first['val_auroc']:.3f} "
            f"[95 % CI {first['val_auroc_ci_low']:.3f}, {first['val_auroc_ci_high']:.3f}]"
            + (f" ({n_screened} configuration(s) seen on fewer replicates are not candidates)" if n_screened else "")
        )
        lines.append(held_out_rank_line(check, k, where, n_boot))
        lines.append(
            f"{where}: within-sample only: config {int(first['config_id'])} wins {first['wins']:.0%} of "
            f"{n_boot} bootstrap resamples of replicates {pool} — the same replicates that chose it, "
            "so optimistic"
        )
        lines.append(held_out_line(sub, int(first["config_id"]), k, where))
    cols = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=COLUMNS)
    return cols, lines


def ranked_rows(sub: pd.DataFrame) -> pd.DataFrame:
    rows = sub.copy()
    rows["key"] = rows["config_id"].astype(int)
    rows["switches"] = [sum(toggles_of(c).values()) for c in rows["config_id"]]
    return rows[["key", "replicate", "switches", selection.CRITERION, selection.TIE_BREAK]]


def held_out_check(rows: pd.DataFrame, chosen: int, k: int, n_boot: int = 2000, seed: int = 0) -> dict:
    """The choice on replicates that did not make it: `rows` (`ranked_rows` of the candidates) on
    the replicates >= k that every candidate run there shares (`selection.held_out_rows`).
    Returns {"chosen", "replicates" (shared, ascending), "ranked" (`selection.rank` over them: key,
    mean validation AUROC, rank; empty when none), "again" (share in [0, 1] of `n_boot` bootstrap
    resamples of those replicates in which `chosen` would be chosen; NaN when it was not run
    there), "any_later" (whether any candidate has a replicate >= k)}."""
    held, shared = selection.held_out_rows(rows, k)
    out = {
        "chosen": chosen,
        "replicates": shared,
        "ranked": pd.DataFrame(columns=["key", selection.CRITERION, "rank"]),
        "again": math.nan,
        "any_later": bool((rows["replicate"].astype(int) >= k).any()),
    }
    if not shared:
        return out
    out["ranked"] = selection.rank(held, len(shared))
    if chosen in set(out["ranked"]["key"]):
        wins = selection.resampled_wins(held, len(shared), n=n_boot, seed=seed)
        out["again"] = float(wins.get(chosen, 0.0))
    return out


def held_out_rank_line(check: dict, k: int, where: str, n_boot: int) -> str:
    """The section's sentence on `held_out_check`: where the chosen configuration ranks on the
    held-out replicates, and how often it would be chosen again there."""
    chosen, ranked, reps = check["chosen"], check["ranked"], check["replicates"]
    pool = selection.replicate_span(range(k))
    if not check["any_later"]:
        return (
            f"{where}: no candidate was run on a replicate beyond {pool}: the choice cannot be checked on "
            "held-out replicates (raise grid.headline.replicates above selection.replicates)"
        )
    if not reps:
        return (
            f"{where}: the candidates run beyond replicate {k - 1} share no replicate there: the choice cannot "
            "be checked on held-out replicates"
        )
    span, n = selection.replicate_span(reps), len(ranked)
    auroc = dict(zip(ranked["key"], ranked[selection.CRITERION].astype(float)))
    top = int(ranked.iloc[0]["key"])
    if chosen not in auroc:
        return (
            f"{where}: config {chosen} was not run on held-out replicates {span}: its choice cannot be checked "
            f"there (the {n} configuration(s) run there rank config {top} first, mean validation AUROC "
            f"{auroc[top]:.3f})"
        )
    if n == 1:
        return (
            f"{where}: config {chosen} is the only candidate run on held-out replicates {span}: no held-out "
            f"ranking (its mean validation AUROC there {auroc[chosen]:.3f})"
        )
    place = int(ranked.set_index("key").loc[chosen, "rank"])
    other = int(ranked.iloc[1 if place == 1 else 0]["key"])
    versus = f"vs next {auroc[other]:.3f}" if place == 1 else f"vs best {auroc[other]:.3f}"
    return (
        f"{where}: on held-out replicates {span} (not used to choose), the {n} configurations run there rank "
        f"config {chosen} {_ordinal(place)} of {n} by mean validation AUROC ({auroc[chosen]:.3f} {versus}, "
        f"config {other}); chosen on those replicates instead, it would be chosen in {check['again']:.0%} of "
        f"{n_boot} bootstrap resamples of them"
    )


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def held_out_line(sub: pd.DataFrame, chosen: int, k: int, where: str) -> str:
    """The chosen configuration against BN only on the replicates >= k (test, paired)."""
    if chosen == BN_ID:
        return f"{where}: the choice is BN only (31) itself: nothing to set against it"
    a = sub[(sub["config_id"] == chosen) & (sub["replicate"] >= k)].set_index("replicate")
    b = sub[(sub["config_id"] == BN_ID) & (sub["replicate"] >= k)].set_index("replicate")
    both = sorted(set(a.index) & set(b.index))
    if not both:
        return (
            f"{where}: config {chosen} and BN only (31) share no replicate beyond the {k} it was chosen on: "
            "no held-out test comparison (raise grid.headline.replicates above selection.replicates)"
        )
    parts = []
    for metric, label in ((F1_1, "minority F1"), ("test_auroc", "AUROC")):
        r = clipped(t_interval((a.loc[both, metric] - b.loc[both, metric]).to_numpy(dtype=float)), -1.0, 1.0)
        ci = f"[95 % CI {r['ci_low']:+.3f}, {r['ci_high']:+.3f}]" if not math.isnan(r["ci_low"]) else f"({r['note']})"
        parts.append(
            f"{label} {a.loc[both, metric].mean():.3f} vs {b.loc[both, metric].mean():.3f}, "
            f"difference {r['estimate']:+.3f} {ci}"
        )
    return (
        f"{where}: config {chosen} against BN only (31) on test over the held-out replicates "
        f"{both[0]}-{both[-1]} ({len(both)}, not used to choose): " + "; ".join(parts)
    )

"""The report's selection section: which configuration validation chooses over K replicates, how
sure that choice is, and the choice against BN only (31) on replicates it was not chosen on.

    cand, lines = selection_table(cells, k=5, n_boot=2000, seed=0)

Pure functions of the cells DataFrame (see `report.cells`). The candidates are the
configurations seen on every one of replicates 0..k-1 (`finalbn.selection`); `wins` is the share
of bootstrap resamples of those replicates in which each would be chosen. The chosen one is set
against BN only on test over the replicates >= k (paired by replicate: same split, same seed),
so the replicates it was chosen on play no part in its test estimate.
"""
from __future__ import annotations

import math

import pandas as pd

from finalbn import selection
from finalbn.stages.report.cells import config_name_of, toggles_of
from finalbn.stages.report.tables import BN_ID, F1_1, ranked_configs
from finalbn.stats import t_interval

COLUMNS = ["dataset", "arch", "rank", "config_id", "config_name", "replicates", "val_auroc", "val_auroc_ci_low",
           "val_auroc_ci_high", "val_balanced_loss", "wins"]


def selection_table(cells: pd.DataFrame, k: int, n_boot: int = 2000, seed: int = 0) -> tuple[pd.DataFrame, list[str]]:
    """(candidates table, the section's sentences) for every (dataset, arch)."""
    frames, lines = [], []
    for (ds, arch), sub in cells.groupby(["dataset", "arch"], sort=True):
        ranked = ranked_configs(sub, k)
        cand = ranked[ranked["eligible"]].copy()
        where = f"{ds}/{arch}"
        if cand.empty:
            lines.append(f"{where}: no configuration has all {k} replicates 0..{k - 1} (`selection.replicates`): "
                         "nothing is chosen; the grid's headline configurations are the ones to replicate")
            continue
        rows = ranked_rows(sub)
        wins = selection.resampled_wins(rows, k, n=n_boot, seed=seed)
        cand["wins"] = [float(wins.get(c, 0.0)) for c in cand["config_id"]]
        cand["config_name"] = [config_name_of(toggles_of(c)) for c in cand["config_id"]]
        cand.insert(0, "arch", arch)
        cand.insert(0, "dataset", ds)
        frames.append(cand.reindex(columns=COLUMNS))
        first = cand.iloc[0]
        n_screened = int((~ranked["eligible"]).sum())
        lines.append(f"{where}: chosen on validation over replicates 0-{k - 1}: config {int(first['config_id'])} "
                     f"({first['config_name']}), mean validation AUROC {first['val_auroc']:.3f} "
                     f"[95 % CI {first['val_auroc_ci_low']:.3f}, {first['val_auroc_ci_high']:.3f}]; it wins "
                     f"{first['wins']:.0%} of {n_boot} resamples of the replicates"
                     + (f" ({n_screened} configuration(s) seen on fewer replicates are not candidates)"
                        if n_screened else ""))
        lines.append(held_out_line(sub, int(first["config_id"]), k, where))
    cols = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=COLUMNS)
    return cols, lines


def ranked_rows(sub: pd.DataFrame) -> pd.DataFrame:
    rows = sub.copy()
    rows["key"] = rows["config_id"].astype(int)
    rows["switches"] = [sum(toggles_of(c).values()) for c in rows["config_id"]]
    return rows[["key", "replicate", "switches", selection.CRITERION, selection.TIE_BREAK]]


def held_out_line(sub: pd.DataFrame, chosen: int, k: int, where: str) -> str:
    """The chosen configuration against BN only on the replicates >= k (test, paired)."""
    if chosen == BN_ID:
        return f"{where}: the choice is BN only (31) itself: nothing to set against it"
    a = sub[(sub["config_id"] == chosen) & (sub["replicate"] >= k)].set_index("replicate")
    b = sub[(sub["config_id"] == BN_ID) & (sub["replicate"] >= k)].set_index("replicate")
    both = sorted(set(a.index) & set(b.index))
    if not both:
        return (f"{where}: config {chosen} and BN only (31) share no replicate beyond the {k} it was chosen on: "
                "no held-out test comparison (raise grid.headline.replicates above selection.replicates)")
    parts = []
    for metric, label in ((F1_1, "minority F1"), ("test_auroc", "AUROC")):
        r = t_interval((a.loc[both, metric] - b.loc[both, metric]).to_numpy(dtype=float))
        ci = (f"[95 % CI {r['ci_low']:+.3f}, {r['ci_high']:+.3f}]" if not math.isnan(r["ci_low"])
              else f"({r['note']})")
        parts.append(f"{label} {a.loc[both, metric].mean():.3f} vs {b.loc[both, metric].mean():.3f}, "
                     f"difference {r['estimate']:+.3f} {ci}")
    return (f"{where}: config {chosen} against BN only (31) on test over the held-out replicates "
            f"{both[0]}-{both[-1]} ({len(both)}, not used to choose): " + "; ".join(parts))

"""Paired contrasts over replicates, the pieces the report's effect modules share.

    d = paired_differences(cells, 31, "test_f1_1", 63, "test_f1_1")   # one row per replicate: a, b, diff
    lo, hi = hierarchical_bootstrap(pairs, n_boot=2000)                # a secondary, image-level interval

The Holm families (`VERDICT`, `FACTORIAL`, `OTHER`) and the ids of the contrasts at a prevalence are
named here, so `effects`, `factorial` and `verdict` speak of the same rows.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pandas as pd

from finalbn.stats.inference import ZERO_TOL

VERDICT, FACTORIAL, OTHER = "verdict", "factorial", "other contrasts"
SIGNIFICANT = 0.05  # a Holm-adjusted p below this: "holds" / "reverses"; above: "not distinguishable"


def prevalence_effect_id(stem: str, pi: float, protocol: str = "last") -> str:
    """`31-63 π=0.05` (last epoch), `31-63 sel π=0.05` (selected epoch)."""
    return f"{stem}{' sel' if protocol == 'sel' else ''} π={pi:g}"


def paired_differences(cells: pd.DataFrame, a: int, metric_a: str, b: int, metric_b: str) -> pd.DataFrame:
    """metric_a(config a) − metric_b(config b) per (dataset, arch, replicate) where both ran."""
    key = ["dataset", "arch", "replicate"]
    if metric_a not in cells or metric_b not in cells:
        return pd.DataFrame(columns=[*key, "a", "b", "diff"])
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


def hierarchical_bootstrap(
    pairs: list[tuple[np.ndarray, np.ndarray, np.ndarray]], n_boot: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """95 % percentile interval of the mean over replicates of F1(a) − F1(b), resampling replicates
    and then the test images within each. `pairs`: per replicate (labels, pred_a, pred_b), the same
    images in the same order. (nan, nan) with fewer than 2 replicates. Secondary: the replicate
    spread already holds the image noise, which this counts again."""
    if len(pairs) < 2:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    reps = rng.integers(0, len(pairs), size=(n_boot, len(pairs)))
    per_rep = np.zeros((n_boot, len(pairs)))
    for k in range(len(pairs)):
        y, pa, pb = pairs[k]
        idx = rng.integers(0, len(y), size=(n_boot, len(y)))  # images resampled within replicate k
        per_rep[:, k] = _f1_minority(y[idx], pa[idx]) - _f1_minority(y[idx], pb[idx])
    boot = np.take_along_axis(per_rep, reps, axis=1).mean(axis=1)
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return float(lo), float(hi)


PredictionsFor = Callable[[str], "pd.DataFrame | None"]


def boot_pairs(
    diffs: pd.DataFrame,
    sub: pd.DataFrame,
    a: int,
    b: int,
    predictions_for: PredictionsFor | None,
    column: str = "p1_last",
):
    """Per replicate (labels, argmax pred of a, argmax pred of b) joined on path, when available."""
    if predictions_for is None:
        return []
    ids = {(cid, r): rid for cid, r, rid in zip(sub["config_id"], sub["replicate"], sub["run_id"])}
    out = []
    for r in diffs["replicate"]:
        pa, pb = predictions_for(ids[(a, r)]), predictions_for(ids[(b, r)])
        if pa is None or pb is None or column not in pa or column not in pb:
            return []
        j = pa[["path", "label", column]].merge(pb[["path", column]], on="path", suffixes=("_a", "_b"))
        out.append(
            (
                j["label"].to_numpy(int),
                (j[f"{column}_a"].to_numpy() > 0.5).astype(int),
                (j[f"{column}_b"].to_numpy() > 0.5).astype(int),
            )
        )
    return out

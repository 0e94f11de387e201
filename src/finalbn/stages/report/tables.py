"""The report's tables: the paper's Tables I–IV, Fig. 3's loss curves, calibration, and the
ranking-vs-threshold baselines — pure functions of the cells DataFrame (see `report.cells`).

Which numbers: test metrics at the *last* epoch (`test_*`, the paper's Table I protocol) unless a
column says "sel" (the epoch selected on validation AUROC). Any ranking ("top configurations") is
`finalbn.stats.selection`'s: mean validation AUROC over replicates 0..k-1, ranked only against
configurations seen on the same replicates (`ranked_over`); test values ride along and never
decide an order. A number "per configuration" is the mean over replicates of one (dataset, arch,
configuration).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from finalbn.config import TOGGLES
from finalbn.stages.report.cells import CellData, config_name_of, groups, toggles_of
from finalbn.stats import selection

NONE_ID, WL_ID, BN_ID, BNWL_ID = 63, 47, 31, 15  # nothing, WL only, BN only, BN+WL
HEADLINE = {NONE_ID: "none (63)", WL_ID: "WL (47)", BN_ID: "BN (31)", BNWL_ID: "BN+WL (15)"}
F1_1, F1_0 = "test_f1_1", "test_f1_0"  # minority (diseased) and majority (healthy) F1, last epoch
RANK = selection.CRITERION  # what every "best configuration" is ranked on (mean over replicates 0..k-1)
K_DEFAULT = 5  # selection.replicates' default


def balanced_f1(cells: pd.DataFrame, pi: float = 0.5) -> pd.DataFrame | None:
    """`cells` with F1_1 and F1_0 at the argmax cut on the test set reweighted to π (the paper's
    balanced 150/150 test set at 0.5), from the wide columns `tpr@π`, `fpr@π` (`prevalence.widen`):
    F1_1 = 2πTPR / (πTPR + (1 − π)FPR + π); F1_0 the same for the healthy class, with recall 1 − FPR
    and weight 1 − π. None when the columns are missing."""
    tpr, fpr = f"tpr@{pi:g}", f"fpr@{pi:g}"
    table = cells[cells["config_id"].isin([NONE_ID, WL_ID, BN_ID])]
    if tpr not in cells or fpr not in cells or table[[tpr, fpr]].isna().any().any():
        return None  # some run has no test predictions: every number as drawn, none mixed
    out = cells.copy()
    t, f = out[tpr].astype(float), out[fpr].astype(float)
    out[F1_1] = 2 * pi * t / (pi * t + (1 - pi) * f + pi)
    out[F1_0] = 2 * (1 - pi) * (1 - f) / ((1 - pi) * (1 - f) + pi * (1 - t) + (1 - pi))
    return out


def table1(cells: pd.DataFrame, pi: float | None = None) -> pd.DataFrame:
    """Paper Table I: mean F1 per class for none (63), WL only (47), BN only (31); BN - WL. With
    `pi`, each class's F1 on the test set reweighted to π (`balanced_f1`; the paper's test set was
    balanced, 150/150) when every run of the three has test predictions; else on the test set as drawn."""
    cols = [
        "dataset",
        "arch",
        "class",
        "without_final_bn",
        "with_wl_no_bn",
        "with_final_bn_no_wl",
        "bn_improvement",
        "replicates_63_47_31",
    ]
    if pi is not None:
        cells = balanced_f1(cells, pi) if balanced_f1(cells, pi) is not None else cells
    sub = cells[cells["config_id"].isin([NONE_ID, WL_ID, BN_ID])]
    means = sub.groupby(["dataset", "arch", "config_id"])[[F1_1, F1_0]].mean()
    sizes = sub.groupby(["dataset", "arch", "config_id"]).size()
    rows = []
    for ds, arch in groups(sub):

        def get(cid, col, ds=ds, arch=arch):
            return float(means.loc[(ds, arch, cid), col]) if (ds, arch, cid) in means.index else math.nan

        n = "/".join(str(int(sizes.get((ds, arch, c), 0))) for c in (NONE_ID, WL_ID, BN_ID))
        for label, col in (("diseased (1)", F1_1), ("healthy (0)", F1_0)):
            rows.append(
                {
                    "dataset": ds,
                    "arch": arch,
                    "class": label,
                    "without_final_bn": get(NONE_ID, col),
                    "with_wl_no_bn": get(WL_ID, col),
                    "with_final_bn_no_wl": get(BN_ID, col),
                    # as the paper's "BN total improvement": BN only minus WL only
                    "bn_improvement": get(BN_ID, col) - get(WL_ID, col),
                    "replicates_63_47_31": n,
                }
            )
    return pd.DataFrame(rows, columns=cols)


def baselines_table(cells: pd.DataFrame) -> pd.DataFrame:
    """Ranking vs threshold for the headline configurations: argmax minority F1 (last epoch and
    the validation-selected epoch), F1 after the free prior correction, AUROC, AP and balanced
    accuracy; mean and std over replicates."""
    metrics = {
        "f1_1": "test_f1_1",
        "f1_1_sel": "test_sel_f1_1",
        "f1_1_prior_corrected": "test_f1_1_pc",
        "f1_1_validation_threshold": "test_f1_1_vt",
        "auroc": "test_auroc",
        "ap": "test_ap",
        "balanced_accuracy": "test_balanced_accuracy",
        "val_auroc": "val_auroc",
    }
    rows = []
    sub = cells[cells["config_id"].isin(list(HEADLINE))]
    for (ds, arch, cid), g in sub.groupby(["dataset", "arch", "config_id"], sort=True):
        row = {"dataset": ds, "arch": arch, "config": HEADLINE[int(cid)], "replicates": len(g)}
        for name, col in metrics.items():
            row[name] = g[col].mean()
            row[f"{name}_std"] = g[col].std(ddof=1) if len(g) > 1 else 0.0
        rows.append(row)
    cols = ["dataset", "arch", "config", "replicates"] + [c for m in metrics for c in (m, f"{m}_std")]
    return pd.DataFrame(rows, columns=cols)


def _selection_rows(sub: pd.DataFrame) -> pd.DataFrame:
    """Report cells as `selection` rows (key = config_id; the six switches counted)."""
    rows = sub.copy()
    rows["key"] = rows["config_id"].astype(int)
    rows["switches"] = rows[list(TOGGLES)].astype(int).sum(axis=1)
    if selection.TIE_BREAK not in rows:
        rows[selection.TIE_BREAK] = np.nan
    return rows


def ranked_over(replicates: tuple) -> str:
    """How a tier of the ranking is named: the replicates its configurations were judged on."""
    r = sorted(replicates)
    if len(r) == 1:
        return f"replicate {r[0]} only (screened, not selected)"
    if r == list(range(r[0], r[-1] + 1)):
        return f"replicates {r[0]}-{r[-1]}"
    return "replicates " + ",".join(map(str, r))


def ranked_configs(sub: pd.DataFrame, k: int) -> pd.DataFrame:
    """The configurations of one (dataset, arch) ranked by `selection.rank` over replicates
    0..k-1, with every test mean riding along and `ranked_over` naming each tier."""
    num = ["val_auroc", selection.TIE_BREAK, "val_f1_1", "selected_epoch"] + [
        f"test_{m}" for m in ("precision_1", "recall_1", "f1_1", "precision_0", "recall_0", "f1_0", "auroc", "ap")
    ]
    rows = _selection_rows(sub)
    out = selection.rank(rows[["key", "config_id", "replicate", "switches", *[c for c in num if c in rows]]], k)
    out["ranked_over"] = [ranked_over(s) for s in out["replicate_set"]]
    return out


def table2(cells: pd.DataFrame, top: int = 3, k: int = K_DEFAULT) -> pd.DataFrame:
    """Paper Table II: per dataset (and arch) and per tier of replicates (`ranked_over`), the `top`
    configurations ranked on validation over replicates 0..k-1, with their test precision /
    recall / F1 (last epoch) per class."""
    cols = [
        "dataset",
        "arch",
        "ranked_over",
        "class",
        "rank",
        "config_id",
        "config_name",
        "val_auroc",
        "val_auroc_ci_low",
        "val_auroc_ci_high",
        "val_balanced_loss",
        "precision",
        "recall",
        "f1",
        "test_auroc",
        "sel_epoch",
        "replicates",
        *[t.upper() for t in TOGGLES],
    ]
    rows = []
    for (ds, arch), sub in cells.groupby(["dataset", "arch"], sort=True):
        ranked = ranked_configs(sub, k)
        for _, tier in ranked.groupby("tier", sort=True):
            agg = tier.head(top)
            for cls, label in ((1, "diseased (1)"), (0, "healthy (0)")):
                for r in agg.to_dict("records"):
                    flags = toggles_of(r["config_id"])
                    rows.append(
                        {
                            "dataset": ds,
                            "arch": arch,
                            "ranked_over": r["ranked_over"],
                            "class": label,
                            "rank": int(r["rank"]),
                            "config_id": int(r["config_id"]),
                            "config_name": config_name_of(flags),
                            "val_auroc": r["val_auroc"],
                            "val_auroc_ci_low": r["val_auroc_ci_low"],
                            "val_auroc_ci_high": r["val_auroc_ci_high"],
                            "val_balanced_loss": r.get(selection.TIE_BREAK, math.nan),
                            "precision": r[f"test_precision_{cls}"],
                            "recall": r[f"test_recall_{cls}"],
                            "f1": r[f"test_f1_{cls}"],
                            "test_auroc": r["test_auroc"],
                            "sel_epoch": r["selected_epoch"],
                            "replicates": int(r["replicates"]),
                            **{t.upper(): flags[t] for t in TOGGLES},
                        }
                    )
    return pd.DataFrame(rows, columns=cols)


def table3(cells: pd.DataFrame, k: int = K_DEFAULT, n: int = 3) -> tuple[pd.DataFrame, list[str]]:
    """Paper Table III: per arch and tier of replicates, the top and bottom `n` configurations by
    validation AUROC averaged over datasets (each replicate's value averaged over the datasets,
    then `selection.rank` over replicates 0..k-1), with their test minority F1 per dataset and
    averaged. Only configurations present in every dataset are ranked. Returns (table, notes)."""
    notes, frames = [], []
    for arch, sub in cells.groupby("arch", sort=True):
        datasets = sorted(sub["dataset"].unique())
        per = sub.groupby(["config_id", "replicate", "dataset"])[[RANK, selection.TIE_BREAK, F1_1]].mean()
        counts = per.groupby(["config_id", "replicate"]).size()
        complete = counts[counts == len(datasets)].index
        per = per.reset_index()
        per = per[pd.MultiIndex.from_frame(per[["config_id", "replicate"]]).isin(complete)]
        dropped = sub["config_id"].nunique() - per["config_id"].nunique()
        if dropped:
            notes.append(f"{arch}: {dropped} configuration(s) lack a run in some dataset and are not ranked")
        if per.empty:
            continue
        avg = per.groupby(["config_id", "replicate"])[[RANK, selection.TIE_BREAK]].mean().reset_index()
        avg["key"] = avg["config_id"]
        avg["switches"] = [sum(toggles_of(c).values()) for c in avg["config_id"]]
        ranked = selection.rank(avg, k)
        f1 = (
            selection.judged(per, k)
            .groupby(["config_id", "dataset"])[F1_1]
            .mean()
            .unstack("dataset")
            .reindex(columns=datasets)
        )
        for _, tier in ranked.groupby("tier", sort=True):
            t = tier.reset_index(drop=True)
            n_top = min(n, len(t))
            n_bottom = min(n, len(t) - n_top)  # a tier of < 2n configs: no config listed twice
            picked = pd.concat(
                [t.head(n_top).assign(group="top"), t.tail(n_bottom).assign(group="bottom") if n_bottom else None]
            )
            for ds in datasets:
                picked[ds] = [f1.loc[c, ds] for c in picked["config_id"]]
            picked["average"] = picked[datasets].mean(axis=1)
            picked["ranked_over"] = [ranked_over(s) for s in picked["replicate_set"]]
            for tg in TOGGLES:
                picked[tg.upper()] = [toggles_of(c)[tg] for c in picked["config_id"]]
            picked["config_name"] = [config_name_of(toggles_of(c)) for c in picked["config_id"]]
            picked.insert(0, "arch", arch)
            frames.append((picked, datasets))
    base = ["arch", "ranked_over", "group", "rank", "config_id", "config_name", "val_auroc", "replicates"]
    if not frames:
        return pd.DataFrame(columns=[*base, "average"]), notes
    out = pd.concat([f for f, _ in frames], ignore_index=True)
    datasets = sorted({d for _, ds in frames for d in ds})
    return out[[*base, *datasets, "average", *[t.upper() for t in TOGGLES]]], notes


def p1_column(df: pd.DataFrame) -> pd.Series:
    return df["p1_last"] if "p1_last" in df else df["p1_sel"]


def prediction_pairs(data: CellData, cells: pd.DataFrame) -> tuple[dict, list[str]]:
    """Per (dataset, arch): (replicate, predictions without BN (63), with BN (31)) for the first
    replicate that has both; notes for pairs that have none."""
    out, notes = {}, []
    for ds, arch in groups(cells):
        sub = cells[(cells["dataset"] == ds) & (cells["arch"] == arch)]
        ids = {cid: dict(zip(g["replicate"], g["run_id"])) for cid, g in sub.groupby("config_id")}
        reps = sorted(set(ids.get(NONE_ID, {})) & set(ids.get(BN_ID, {})))
        for r in reps:
            p0, p1 = data.prediction(ids[NONE_ID][r]), data.prediction(ids[BN_ID][r])
            if p0 is not None and p1 is not None:
                out[(ds, arch)] = (r, p0, p1)
                break
        else:
            notes.append(f"{ds}/{arch}: no replicate with test predictions for both config 63 and 31")
    return out, notes


def table4(pairs: dict, n: int = 5, seed: int = 0) -> pd.DataFrame:
    """Paper Table IV: P(class 1) of `n` minority test images without final BN (config 63) and with
    it (31), last epoch, joined on path. The images are a seeded random draw (numpy, `seed`) among the
    minority images both runs scored, sorted by path first: the rule is fixed before any score is
    seen, so no model output picks them. `flips`: "found" when 63 misses (P <= 0.5) and 31 finds
    (P > 0.5), "lost" the other way, "" otherwise."""
    cols = ["dataset", "arch", "replicate", "path", "label", "p1_without_final_bn", "p1_with_final_bn", "flips"]
    rows = []
    for (ds, arch), (rep, p63, p31) in sorted(pairs.items()):
        j = _joined(p63, p31)
        j = j[j["label"] == 1].sort_values("path").reset_index(drop=True)
        pick = np.sort(np.random.default_rng(seed).choice(len(j), size=min(n, len(j)), replace=False))
        for r in j.iloc[pick].itertuples(index=False):
            rows.append(
                {
                    "dataset": ds,
                    "arch": arch,
                    "replicate": rep,
                    "path": r.path,
                    "label": 1,
                    "p1_without_final_bn": float(r.p0),
                    "p1_with_final_bn": float(r.p1),
                    "flips": _flip(r.p0, r.p1),
                }
            )
    return pd.DataFrame(rows, columns=cols)


def _joined(p63: pd.DataFrame, p31: pd.DataFrame) -> pd.DataFrame:
    a = pd.DataFrame({"path": p63["path"].astype(str), "label": p63["label"].astype(int), "p0": p1_column(p63)})
    b = pd.DataFrame({"path": p31["path"].astype(str), "label_b": p31["label"].astype(int), "p1": p1_column(p31)})
    j = a.merge(b, on="path", how="inner")
    return j[j["label"] == j["label_b"]].drop(columns=["label_b"])


def _flip(p0: float, p1: float) -> str:
    return "found" if p0 <= 0.5 < p1 else "lost" if p1 <= 0.5 < p0 else ""


def flip_counts(pairs: dict) -> pd.DataFrame:
    """Per (dataset, arch) and class, over every test image of Table IV's replicate: how many images
    the argmax calls differently without (63) and with final BN (31)."""
    rows = []
    for (ds, arch), (rep, p63, p31) in sorted(pairs.items()):
        j = _joined(p63, p31)
        for label, name in ((1, "diseased"), (0, "healthy")):
            g = j[j["label"] == label]
            up = int(((g["p0"] <= 0.5) & (g["p1"] > 0.5)).sum())
            down = int(((g["p0"] > 0.5) & (g["p1"] <= 0.5)).sum())
            rows.append(
                {
                    "dataset": ds,
                    "arch": arch,
                    "replicate": rep,
                    "class": name,
                    "images": len(g),
                    "flagged_only_with_final_bn": up,
                    "flagged_only_without": down,
                }
            )
    return pd.DataFrame(
        rows,
        columns=[
            "dataset",
            "arch",
            "replicate",
            "class",
            "images",
            "flagged_only_with_final_bn",
            "flagged_only_without",
        ],
    )


def loss_curve_table(data: CellData, cells: pd.DataFrame) -> pd.DataFrame:
    """Fig. 3 data: train/val loss per epoch, mean and std (ddof 1; 0 for one run) over
    replicates, for configs 63, 47 and 31 of every (dataset, arch)."""
    cols = [
        "dataset",
        "arch",
        "config_id",
        "config",
        "epoch",
        "train_loss_mean",
        "train_loss_std",
        "val_loss_mean",
        "val_loss_std",
        "runs",
    ]
    frames = []
    for r in cells[cells["config_id"].isin([NONE_ID, WL_ID, BN_ID])].itertuples(index=False):
        h = data.history(r.run_id)
        if h is None or "epoch" not in h or h.empty:
            continue
        h = h.reindex(columns=["epoch", "train_loss", "val_loss"])
        frames.append(h.assign(dataset=r.dataset, arch=r.arch, config_id=r.config_id))
    if not frames:
        return pd.DataFrame(columns=cols)
    allh = pd.concat(frames, ignore_index=True)
    allh["epoch"] = allh["epoch"].astype(int)
    g = allh.groupby(["dataset", "arch", "config_id", "epoch"])
    out = g.agg(
        train_loss_mean=("train_loss", "mean"),
        train_loss_std=("train_loss", "std"),
        val_loss_mean=("val_loss", "mean"),
        val_loss_std=("val_loss", "std"),
        runs=("epoch", "size"),
    ).reset_index()
    out[["train_loss_std", "val_loss_std"]] = out[["train_loss_std", "val_loss_std"]].fillna(0.0)
    out["config"] = out["config_id"].map(
        {NONE_ID: "without final BN", WL_ID: "with WL (no BN)", BN_ID: "with final BN (no WL)"}
    )
    return out[cols]


def calibration_table(
    cells: pd.DataFrame, at_prevalence: pd.DataFrame | None = None, train_pi: float | None = None
) -> pd.DataFrame:
    """ECE and Brier (last epoch) with and without final BN, on the test set as drawn (`at` "test
    set", from the cells) and reweighted to the training prior (`at` "training prior", from
    `prevalence.cell_table` rows at `train_pi`). Two comparisons: every configuration with BN on vs
    off — a mean of configuration means, so a configuration run on 10 replicates weighs as much as
    one run on 1 — and config 31 vs 63 (mean over replicates). Per (dataset, arch) `scope`, and
    pooled over them ("all")."""
    frames = [cells.assign(at="test set", prevalence=math.nan, ece=cells["test_ece"], brier=cells["test_brier"])]
    if at_prevalence is not None and train_pi is not None and len(at_prevalence):
        t = at_prevalence[
            (at_prevalence["protocol"] == "last")
            & (at_prevalence["baseline"] == "")
            & np.isclose(at_prevalence["prevalence"], train_pi)
        ]
        keep = cells[["run_id", *TOGGLES]]
        frames.append(
            t[["run_id", "dataset", "arch", "config_id", "replicate", "prevalence", "ece", "brier"]]
            .merge(keep, on="run_id")
            .assign(at="training prior")
        )
    allc = pd.concat(frames, ignore_index=True)
    allc["scope"] = allc["dataset"].astype(str) + "/" + allc["arch"].astype(str)
    rows = []
    scopes = [("all", allc)] + [(sc, g) for sc, g in allc.groupby("scope", sort=True)]
    for scope, sub in scopes:
        for at, part_at in sub.groupby("at", sort=False):
            pi = float(part_at["prevalence"].iloc[0]) if at == "training prior" else math.nan
            for comparison, parts in (
                (
                    "all configurations, BN on vs off",
                    ((True, part_at[part_at["bn"]]), (False, part_at[~part_at["bn"]])),
                ),
                (
                    "config 31 vs 63",
                    ((True, part_at[part_at["config_id"] == BN_ID]), (False, part_at[part_at["config_id"] == NONE_ID])),
                ),
            ):
                for bn, part in parts:
                    by_config = (
                        part.groupby(["scope", "config_id"])[["ece", "brier"]].mean()
                        if comparison.startswith("all")
                        else part[["ece", "brier"]]
                    )
                    rows.append(
                        {
                            "scope": scope,
                            "at": at,
                            "prevalence": pi,
                            "comparison": comparison,
                            "final_bn": bn,
                            "configs": int(part["config_id"].nunique()),
                            "cells": len(part),
                            "ece_mean": by_config["ece"].mean(),
                            "ece_std": by_config["ece"].std(),
                            "brier_mean": by_config["brier"].mean(),
                            "brier_std": by_config["brier"].std(),
                        }
                    )
    return pd.DataFrame(
        rows,
        columns=[
            "scope",
            "at",
            "prevalence",
            "comparison",
            "final_bn",
            "configs",
            "cells",
            "ece_mean",
            "ece_std",
            "brier_mean",
            "brier_std",
        ],
    )


def merge_bins(bin_sets: list[dict]) -> dict | None:
    """Reliability bins of several runs as one: counts add, accuracy and confidence count-weighted.
    All sets must share bin edges (None when the list is empty)."""
    if not bin_sets:
        return None
    first = bin_sets[0]
    n = len(first["lower"])
    count, acc, conf = np.zeros(n), np.zeros(n), np.zeros(n)
    for b in bin_sets:
        c = np.asarray(b["count"], dtype=float)
        count += c
        acc += c * np.asarray([0.0 if v is None else v for v in b["accuracy"]], dtype=float)
        conf += c * np.asarray([0.0 if v is None else v for v in b["confidence"]], dtype=float)
    return {
        "lower": list(first["lower"]),
        "upper": list(first["upper"]),
        "count": [int(c) for c in count],
        "accuracy": [float(a / c) if c else None for a, c in zip(acc, count)],
        "confidence": [float(f / c) if c else None for f, c in zip(conf, count)],
    }


def bins_ece(bins: dict) -> float:
    total = sum(bins["count"])
    if not total:
        return math.nan
    return float(
        sum(c / total * abs(a - f) for c, a, f in zip(bins["count"], bins["accuracy"], bins["confidence"]) if c)
    )


def pooled_bins(data: CellData, cells: pd.DataFrame, cid: int) -> tuple[dict | None, int, list[str]]:
    """The last-epoch reliability bins of every run of configuration `cid`, merged."""
    sets: list[dict] = []
    notes: list[str] = []
    for run_id in cells.loc[cells["config_id"] == cid, "run_id"]:
        rel = data.reliability_bins(run_id)
        b = (rel or {}).get("last")
        if not b:
            continue
        if sets and (list(b["lower"]) != list(sets[0]["lower"]) or list(b["upper"]) != list(sets[0]["upper"])):
            notes.append(f"run {run_id} (config {cid}) has other reliability bin edges and is left out")
            continue
        sets.append(b)
    return merge_bins(sets), len(sets), notes

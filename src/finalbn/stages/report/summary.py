"""summary.json's headline numbers: the verdict, the ceiling, every effect, Table I, the best
configuration on validation, ECE and Brier, the study's size, and a flat `metrics` block.

    summary = headline_summary(cells, t1, eff, verdicts, ceilings, cal_all, multi_arch)

Plain JSON types (NaN as null); `report.build` adds the imbalance baselines and the search.
"""

from __future__ import annotations

import pandas as pd

from finalbn.stages.report.markdown import json_safe
from finalbn.stages.report.tables import ranked_configs

# (effect id, its name in summary["metrics"]): flat, as tracking.log_report logs them as MLflow metrics
METRIC_NAMES = (
    ("31-63", "bn_vs_none_f1"),
    ("15-47", "bn_with_wl_f1"),
    ("BN", "bn_factorial_f1"),
    ("31-63 auroc", "bn_vs_none_auroc"),
    ("31-pc63", "bn_vs_prior_corrected_f1"),
)


ALL = "all configurations, BN on vs off"


def headline_summary(cells, t1, eff, verdicts, ceilings, cal_all, multi_arch, k: int = 5) -> dict:
    effects = _effects(eff)

    def cal_value(metric: str, comparison: str, bn_on: bool, at: str = "test set") -> float | None:
        row = cal_all[(cal_all["comparison"] == comparison) & (cal_all["final_bn"] == bn_on) & (cal_all["at"] == at)]
        return float(row[f"{metric}_mean"].iloc[0]) if len(row) else None

    summary = {
        "verdict": [line for lines in verdicts.values() for line in lines],
        "ceiling": [
            {k: c.get(k) for k in ("dataset", "arch", "image_size", "auroc", "auroc_std", "images", "low")}
            for c in ceilings
        ],
        "effects": effects,
        "table1": _table1(t1, multi_arch),
        "best_config_on_validation": _best_on_validation(cells, k),
        "ece": {
            "bn": cal_value("ece", ALL, True),
            "no_bn": cal_value("ece", ALL, False),
            "config31": cal_value("ece", "config 31 vs 63", True),
            "config63": cal_value("ece", "config 31 vs 63", False),
            "config31_training_prior": cal_value("ece", "config 31 vs 63", True, "training prior"),
            "config63_training_prior": cal_value("ece", "config 31 vs 63", False, "training prior"),
        },
        "brier": {
            "bn": cal_value("brier", ALL, True),
            "no_bn": cal_value("brier", ALL, False),
            "config31_training_prior": cal_value("brier", "config 31 vs 63", True, "training prior"),
            "config63_training_prior": cal_value("brier", "config 31 vs 63", False, "training prior"),
        },
        "cells": int(len(cells)),
        "datasets": sorted(cells["dataset"].unique().tolist()),
        "archs": sorted(cells["arch"].unique().tolist()),
        "replicates": int(cells["replicate"].nunique()),
        "configs": int(cells["config_id"].nunique()),
        "metrics": _metrics(effects, ceilings),
    }
    return json_safe(summary)


def _table1(t1: pd.DataFrame, multi_arch: bool) -> dict:
    """Table I's minority row per dataset (per dataset/arch when the study has several archs)."""
    table1_summary = {}
    for r in t1[t1["class"] == "diseased (1)"].itertuples(index=False):
        table1_summary[f"{r.dataset}/{r.arch}" if multi_arch else r.dataset] = {
            "without_bn_f1_1": r.without_final_bn,
            "wl_f1_1": r.with_wl_no_bn,
            "bn_f1_1": r.with_final_bn_no_wl,
            "bn_improvement_f1_1": r.bn_improvement,
        }
    return table1_summary


def _effects(eff: pd.DataFrame) -> dict[str, dict]:
    """scope -> effect id -> its numbers."""
    effects: dict[str, dict] = {}
    for r in eff.to_dict("records"):
        effects.setdefault(r["scope"], {})[r["effect"]] = {
            k: r[k]
            for k in ("estimate", "ci_low", "ci_high", "p", "family", "p_holm", "n", "metric", "prevalence", "protocol")
        }
    return effects


def _best_on_validation(cells: pd.DataFrame, k: int) -> dict:
    """Per dataset/arch: the configuration chosen over replicates 0..k-1 (`finalbn.stats.selection`);
    none where no configuration has them all."""
    best = {}
    for (ds, arch), sub in cells.groupby(["dataset", "arch"], sort=True):
        m = ranked_configs(sub, k)
        m = m[m["eligible"]]
        if len(m) and pd.notna(m.iloc[0]["val_auroc"]):
            r = m.iloc[0]
            best[f"{ds}/{arch}"] = {
                "config_id": int(r["config_id"]),
                "val_auroc": r["val_auroc"],
                "val_auroc_ci": [r["val_auroc_ci_low"], r["val_auroc_ci_high"]],
                "replicates": int(r["replicates"]),
                "test_f1_1": r["test_f1_1"],
                "test_auroc": r["test_auroc"],
            }
    return best


def _metrics(effects: dict[str, dict], ceilings: list[dict]) -> dict:
    """The headline contrasts of the first scope and the first ceiling, flat."""
    metrics = {}
    first = next(iter(effects.values()), {})
    for eid, name in METRIC_NAMES:
        if eid in first:
            for k in ("estimate", "ci_low", "ci_high"):
                metrics[f"{name}_{k}"] = first[eid][k]
    for eid, r in first.items():  # 31 - 63 at each prevalence, last epoch: argmax, validation cut, AP
        for stem, name in (
            ("31-63 π=", "bn_vs_none_f1_at"),
            ("31-63 cut π=", "bn_vs_none_f1_cut_at"),
            ("31-63 ap π=", "bn_vs_none_ap_at"),
        ):
            if eid.startswith(stem):
                metrics[f"{name}_{eid.split('=')[1]}_estimate"] = r["estimate"]
    if ceilings:
        metrics["ceiling_auroc"] = ceilings[0]["auroc"]
    return metrics

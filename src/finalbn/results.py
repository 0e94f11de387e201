"""The grid's result table (results/grid.csv): its metric columns, and its configurations ranked
on validation.

    df = pd.read_csv("results/grid.csv")
    rank_configs(df).iloc[0]        # the best configuration on validation (test columns ride along)

Read by the grid (grid.json's best configuration) and the search (the grid's best, compared with
its best trial), so both rank the same way.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

# test metrics written per cell (`test_<m>` at the last epoch)
METRIC_COLUMNS = ("precision_0", "recall_0", "f1_0", "precision_1", "recall_1", "f1_1", "accuracy",
                  "balanced_accuracy", "auroc", "ap", "f1_1_pc", "balanced_accuracy_pc", "ece", "brier")
VAL_COLUMNS = ("auroc", "ap", "f1_1", "f1_1_pc")  # `val_<m>` at the last epoch
SEL_COLUMNS = ("f1_1", "auroc")  # `test_sel_<m>` at the epoch selected on validation


def paper_cells(df: pd.DataFrame) -> pd.DataFrame:
    """The rows of grid.csv that are the paper's configurations (not an imbalance baseline)."""
    return df[df["baseline"].fillna("").astype(str) == ""] if "baseline" in df else df


def rank_configs(df: pd.DataFrame) -> pd.DataFrame:
    """The paper's configurations by mean validation AUROC (last epoch), ties to validation F1
    then id; test columns ride along and never decide the order. Baseline rows are not ranked."""
    g = paper_cells(df).groupby(["config_id", "config_name"])
    agg = g[["val_auroc", "val_f1_1", "test_f1_1", "test_auroc"]].mean()
    agg["replicates"] = g.size()
    agg = agg.reset_index()
    agg["neg_id"] = -agg["config_id"]
    agg = agg.sort_values(["val_auroc", "val_f1_1", "neg_id"], ascending=False, na_position="last")
    return agg.drop(columns="neg_id").reset_index(drop=True)


def rounded(x) -> float | None:
    """A JSON-friendly number: rounded to 6 digits; None for a missing or non-finite value."""
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return round(x, 6) if np.isfinite(x) else None

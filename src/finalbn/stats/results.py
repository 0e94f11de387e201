"""The grid's result table (results/grid.csv): its metric columns, and its configurations ranked
on validation over replicates.

    df = pd.read_csv("results/grid.csv")
    rank_configs(df, k=5).iloc[0]   # the best configuration over replicates 0..4 (test columns ride along)

Read by the grid (grid.json's best configuration), the report's tables and the search (the
grid's best, compared with its best trial), so all rank the same way: `finalbn.stats.selection`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from finalbn.config import TOGGLES
from finalbn.stats import selection

# test metrics written per cell (`test_<m>` at the last epoch); `_pc` after the training-count
# prior correction (only where it is valid, else empty), `_vt` at the cut chosen on the cell's own
# validation predictions for the test set's prevalence (`finalbn_field.decision`)
METRIC_COLUMNS = (
    "precision_0",
    "recall_0",
    "f1_0",
    "precision_1",
    "recall_1",
    "f1_1",
    "accuracy",
    "balanced_accuracy",
    "auroc",
    "ap",
    "f1_1_pc",
    "balanced_accuracy_pc",
    "f1_1_vt",
    "ece",
    "brier",
)
VAL_COLUMNS = ("auroc", "ap", "f1_1", "balanced_loss")  # `val_<m>` at the last epoch
SEL_COLUMNS = ("f1_1", "auroc")  # `test_sel_<m>` at the epoch selected on validation


def paper_cells(df: pd.DataFrame) -> pd.DataFrame:
    """The rows of grid.csv that are the paper's configurations (not an imbalance baseline)."""
    return df[df["baseline"].fillna("").astype(str) == ""] if "baseline" in df else df


def selection_rows(df: pd.DataFrame) -> pd.DataFrame:
    """grid.csv's paper cells as `selection` rows: key = config_id, switches = how many are on."""
    rows = paper_cells(df).copy()
    rows["key"] = rows["config_id"].astype(int)
    rows["switches"] = (
        rows[[t.upper() for t in TOGGLES]].sum(axis=1) if set(t.upper() for t in TOGGLES) <= set(rows) else 0
    )
    if selection.TIE_BREAK not in rows:
        rows[selection.TIE_BREAK] = np.nan
    return rows


def rank_configs(df: pd.DataFrame, k: int) -> pd.DataFrame:
    """The paper's configurations ranked on validation over replicates 0..k-1 (`selection.rank`):
    one row per configuration with `tier`, `rank`, `eligible`, `replicates`, the validation means
    and the test means riding along. Baseline rows are not ranked."""
    cols = [
        "key",
        "config_id",
        "config_name",
        "replicate",
        "switches",
        "val_auroc",
        selection.TIE_BREAK,
        "val_f1_1",
        "test_f1_1",
        "test_auroc",
    ]
    rows = selection_rows(df)
    return selection.rank(rows[[c for c in cols if c in rows]], k)


def rounded(x) -> float | None:
    """A JSON-friendly number: rounded to 6 digits; None for a missing or non-finite value."""
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return round(x, 6) if np.isfinite(x) else None

"""The grid's outputs, from the tracking store: results/grid.csv (one row per cell) and grid.json.

    summary = write_results(cfg, Path("data/splits"), Path("results"))

"Best configuration" in grid.json is chosen on validation over replicates 0..K-1
(`selection.replicates`, `finalbn.stats.selection`): only configurations with all K are ranked; test
values are only reported beside it.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from finalbn.config import TOGGLES, Config, ablation_from_id, config_name
from finalbn.infra import io
from finalbn.infra.io import write_csv
from finalbn.stages.grid.plan import Cell, all_cells, cell_key
from finalbn.stages.grid.shard import existing_cells
from finalbn.stages.tracker import Tracker
from finalbn.stats import selection
from finalbn.stats.results import METRIC_COLUMNS, SEL_COLUMNS, VAL_COLUMNS, paper_cells, rank_configs, rounded
from finalbn.tracking import RunRecord, latest
from finalbn.tracking.adapter import MLFLOW


def write_results(cfg: Config, splits_dir: Path, out_dir: Path, tracker: Tracker = MLFLOW) -> dict:
    """results/grid.csv (one row per cell of this grid) and grid.json, from the tracker's store."""
    existing = existing_cells(cfg, tracker)
    rows, missing = [], []
    for cell in all_cells(cfg):
        key = cell_key(cfg, cell, splits_dir)
        finished = [r for r in existing.get(key, []) if r.finished]
        if not finished:
            missing.append(cell.name)
            continue
        rows.append(_row(cell, latest(finished), key))
    out_dir.mkdir(parents=True, exist_ok=True)
    df = pd.DataFrame(rows)
    write_csv(out_dir / "grid.csv", df, float_format="%.6f")
    summary = {"cells": len(rows) + len(missing), "finished": len(rows), "missing": missing}
    if rows:
        f1 = bn_means(df)
        k = cfg.selection.replicates
        ranked = rank_configs(df, k)
        eligible = ranked[ranked["eligible"]]
        summary.update(
            {
                "minority_f1_mean": {"bn_on": rounded(f1.get(1)), "bn_off": rounded(f1.get(0))},
                "ranked_on": selection.RANKED_ON.replace("k-1", str(k - 1)),
                "ranked_configs": len(eligible),
                "unranked_configs": len(ranked) - len(eligible),
            }
        )
        if len(eligible):
            summary.update(
                {"best_config": _config_summary(eligible.iloc[0]), "worst_config": _config_summary(eligible.iloc[-1])}
            )
        else:
            summary["note"] = (
                f"no configuration has all {k} replicates 0..{k - 1} (selection.replicates): "
                "none is ranked; raise grid.replicates or grid.headline.replicates"
            )
    io.write_json(out_dir / "grid.json", summary)
    return summary


def bn_means(df: pd.DataFrame) -> pd.Series:
    """Test minority F1 with final BN on (1) and off (0): a mean of configuration means, so the headline
    configurations' 10 replicates weigh as much as a configuration run once."""
    return paper_cells(df).groupby(["BN", "config_id"])["test_f1_1"].mean().groupby(level="BN").mean()


def _row(cell: Cell, run: RunRecord, key: str) -> dict:
    ab = ablation_from_id(cell.config_id)
    m = run.metrics
    return {
        "dataset": cell.dataset,
        "arch": cell.arch,
        "config_id": cell.config_id,
        "config_name": config_name(ab),
        "baseline": cell.baseline,
        "replicate": cell.replicate,
        **{t.upper(): int(getattr(ab, t)) for t in TOGGLES},
        **{f"test_{k}": m.get(f"test_{k}") for k in METRIC_COLUMNS},
        **{f"val_{k}": m.get(f"val_last_{k}") for k in VAL_COLUMNS},
        **{f"test_sel_{k}": m.get(f"test_sel_{k}") for k in SEL_COLUMNS},
        "selected_epoch": int(m.get("selected_epoch", 0)),
        "run_id": run.run_id,
        "cell_key": key,
    }


def _config_summary(r) -> dict:
    return {
        "id": int(r["config_id"]),
        "name": r["config_name"],
        "val_auroc": rounded(r["val_auroc"]),
        "val_auroc_ci": [rounded(r["val_auroc_ci_low"]), rounded(r["val_auroc_ci_high"])],
        "val_balanced_loss": rounded(r["val_balanced_loss"]),
        "val_minority_f1": rounded(r["val_f1_1"]),
        "test_minority_f1": rounded(r["test_f1_1"]),
        "test_auroc": rounded(r["test_auroc"]),
        "replicates": int(r["replicates"]),
    }

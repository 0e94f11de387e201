"""Data for DVC's plots and metrics: small CSV/JSON files that `dvc plots show/diff` draws (and
diffs across commits and experiments) and `dvc metrics show` prints on one terminal line.

    write_plot_data(cells, at_pi, out / "plots")     # configs.csv, prevalence.csv
    write_headline(summary, prevalences, out / "headline.json")

The report's PNGs stay the report's (report.md, the MLflow report run); these files carry the
numbers behind three of them, with columns named for the axes (dvc.yaml's top-level `plots`):

* `plots/configs.csv`: one row per configuration of the paper's grid: `config` ("31 BN"),
  `final_bn` (on/off), `minority_f1` and `auroc` (test set, last epoch, mean over replicates);
* `plots/prevalence.csv`: one row per prevalence π: minority F1 of final BN alone (31) and of
  nothing (63), their difference `gain`, and their ECE (the calibration that reverses with π).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from finalbn.infra.io import write_csv, write_text
from finalbn.stats.results import paper_cells

BN_ID, NONE_ID = 31, 63


def write_plot_data(cells: pd.DataFrame, at_pi: pd.DataFrame, folder: Path) -> None:
    """configs.csv and prevalence.csv in `folder` (created) from the report's cell table and
    its prevalence table (`prevalence.cell_table`); the first dataset/arch when there are several."""
    folder.mkdir(parents=True, exist_ok=True)
    paper = paper_cells(cells)
    first = paper[(paper["dataset"] == paper["dataset"].iloc[0]) & (paper["arch"] == paper["arch"].iloc[0])]
    per = (
        first.groupby(["config_id", "config_name", "bn"], as_index=False)[["test_f1_1", "test_auroc"]]
        .mean()
        .sort_values("config_id")
    )
    write_csv(
        folder / "configs.csv",
        pd.DataFrame(
            {
                "config": [f"{i:02d} {n}" for i, n in zip(per["config_id"], per["config_name"])],
                "final_bn": np.where(per["bn"].astype(bool), "on", "off"),
                "minority_f1": per["test_f1_1"].round(4),
                "auroc": per["test_auroc"].round(4),
            }
        ),
    )
    rows = []
    if not at_pi.empty:
        last = at_pi[
            (at_pi["protocol"] == "last")
            & (at_pi["baseline"].fillna("") == "")
            & (at_pi["dataset"] == first["dataset"].iloc[0])
            & (at_pi["arch"] == first["arch"].iloc[0])
        ]
        for pi, sub in last.groupby("prevalence", sort=True):
            m = sub.groupby("config_id")[["f1_1", "ece"]].mean()
            if BN_ID in m.index and NONE_ID in m.index:
                bn, none = m.loc[BN_ID], m.loc[NONE_ID]
                rows.append(
                    {
                        "prevalence": round(float(pi), 4),
                        "f1_bn_31": round(bn["f1_1"], 4),
                        "f1_none_63": round(none["f1_1"], 4),
                        "gain": round(bn["f1_1"] - none["f1_1"], 4),
                        "ece_bn_31": round(bn["ece"], 4),
                        "ece_none_63": round(none["ece"], 4),
                    }
                )
    write_csv(
        folder / "prevalence.csv",
        pd.DataFrame(rows, columns=["prevalence", "f1_bn_31", "f1_none_63", "gain", "ece_bn_31", "ece_none_63"]),
    )


def headline(summary: dict, prevalences) -> dict:
    """The few numbers `dvc metrics show` prints (one short row): minority F1 with final BN alone
    and with nothing (Table I), their difference on the test set and at the lowest of
    `report.prevalences` (at the argmax cut, and `_cut` with each model at its validation cut for that
    π, the verdict's answer), and the ceiling AUROC. Missing numbers are left out."""
    m = summary.get("metrics") or {}
    t1: dict[str, Any] = next(iter((summary.get("table1") or {}).values()), {})
    low = min(prevalences) if prevalences else None
    out = {
        "f1_bn": t1.get("bn_f1_1"),
        "f1_none": t1.get("without_bn_f1_1"),
        # as Table I: on the test set reweighted to balanced classes when it could be, else as drawn
        "gain": m.get("bn_vs_none_f1_at_0.5_estimate", m.get("bn_vs_none_f1_estimate")),
        "gain_at_low_prev": m.get(f"bn_vs_none_f1_at_{low:g}_estimate") if low is not None else None,
        "gain_at_low_prev_cut": m.get(f"bn_vs_none_f1_cut_at_{low:g}_estimate") if low is not None else None,
        "low_prev": low,
        "ceiling_auroc": m.get("ceiling_auroc"),
    }
    return {k: round(float(v), 4) for k, v in out.items() if v is not None and v == v}


def write_headline(summary: dict, prevalences, path: Path) -> None:
    write_text(path, json.dumps(headline(summary, prevalences), indent=2) + "\n")

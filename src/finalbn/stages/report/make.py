"""`finalbn report`: the current grid's cells from MLflow, the ceiling and search files in; the
report built into a folder and logged to MLflow.

    summary = run(cfg, ReportPaths(Path("report"), Path("results/grid.csv"), ceiling=Path("results/ceiling"),
                                   search=Path("results/search.json")), MlflowTracker())

Which cells: those results/grid.csv lists (its `cell_key` column, the grid stage's output), so
the report shows this grid's cells even when the store holds others (older code, other params).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

import pandas as pd

from finalbn.stages.report.build import build_report
from finalbn.stages.report.cells import collect
from finalbn.stages.report.html import HTML_NAME
from finalbn.stages.tracker import Tracker
from finalbn.stats.separability import read_ceilings
from finalbn.tracking.adapter import MLFLOW


def grid_keys(grid_csv: Path) -> set[str]:
    """The cell keys of the grid's finished cells. Raises FileNotFoundError without the file and
    ValueError when it is not the grid's output."""
    if not Path(grid_csv).is_file():
        raise FileNotFoundError(f"{grid_csv} does not exist: run `finalbn grid` (or `dvc repro grid`) first")
    try:
        df = pd.read_csv(grid_csv, usecols=["cell_key"], dtype=str)
    except (ValueError, pd.errors.EmptyDataError) as exc:
        raise ValueError(f"{grid_csv} is not a `finalbn grid` output (no cell_key column: {exc})") from None
    return set(df["cell_key"].dropna())


@dataclasses.dataclass(frozen=True)
class ReportPaths:
    """The report's folder, the grid's results/grid.csv (which cells), and the optional inputs:
    the ceiling's folder, the search's summary, the sensitivity stage's table (None or a missing
    file: that section says so)."""

    out: Path
    grid_csv: Path
    ceiling: Path | None = None
    search: Path | None = None
    sensitivity: Path | None = None
    needs: Path | None = None


def run(cfg: Any, paths: ReportPaths, tracker: Tracker = MLFLOW) -> dict:
    """The report's core: the grid's FINISHED cells (by cell key, from the grid's and the
    sensitivity stage's experiments in `tracker`'s store) -> `paths.out`, recorded as a run of the
    report's experiment. Returns summary.json's content. Raises FileNotFoundError without the
    grid's results, ValueError when an input is not its stage's output or no cell finished."""
    tracker.setup(cfg, "report")
    data = collect(tracker.experiments(cfg, "grid", "sensitivity"), keys=grid_keys(paths.grid_csv), tracker=tracker)
    ceilings = read_ceilings(Path(paths.ceiling)) if paths.ceiling else []
    summary = build_report(
        data,
        paths.out,
        n_boot=cfg.report.bootstrap,
        seed=cfg.report.seed,
        ceilings=ceilings,
        search=read_search(paths.search),
        k=cfg.selection.replicates,
        prevalences=tuple(cfg.report.prevalences),
        train_counts=tuple(cfg.split.train),
        sensitivity=read_sensitivity(paths.sensitivity),
        context=study_context(cfg),
        needs=read_needs(paths.needs),
        needs_figure=Path(paths.needs).with_name("needs.png") if paths.needs else None,
    )
    tracker.log_report(cfg, paths.out)
    return summary


SOURCES = {
    "synthetic": "the built-in synthetic leaves",
    "plantvillage": "PlantVillage photographs",
    "folders": "your images",
    "csv": "your images",
}


def study_context(cfg: Any) -> dict[str, str]:
    """`dataset/arch` -> what the study is here, for the paper comparison: "efficientnet_lite0 at 64 px
    on the built-in synthetic leaves (Apple)"."""
    out = {}
    for d in cfg.datasets:
        crop = f" ({d.crop})" if getattr(d, "crop", None) else ""
        for arch in cfg.grid.archs:
            out[f"{d.name}/{arch}"] = f"{arch} at {d.image_size} px on {SOURCES.get(d.source, d.source)}{crop}"
    return out


def read_search(path: Path | None) -> dict | None:
    """`finalbn search`'s summary, or None when there is none."""
    if path is None or not Path(path).is_file():
        return None
    try:
        out = json.loads(Path(path).read_text())
    except ValueError as exc:
        raise ValueError(f"search summary {path} is not JSON ({exc})") from None
    if not isinstance(out, dict) or "study" not in out:
        raise ValueError(f"search summary {path} is not a `finalbn search` output (no 'study')")
    return out


def read_sensitivity(path: Path | None) -> pd.DataFrame | None:
    """`finalbn sensitivity`'s table (sensitivity.csv), or None when there is none. Raises
    ValueError when the file is not that stage's output."""
    if path is None or not Path(path).is_file():
        return None
    try:
        df = pd.read_csv(path)
    except (ValueError, pd.errors.EmptyDataError) as exc:
        raise ValueError(f"sensitivity table {path} is not a CSV ({exc})") from None
    missing = {"factor", "level", "prevalence", "estimate", "ci_low", "ci_high"} - set(df.columns)
    if missing:
        raise ValueError(f"sensitivity table {path} is not a `finalbn sensitivity` output (no {sorted(missing)})")
    return df


def read_needs(path: Path | None) -> dict | None:
    """`finalbn needs`' answer (needs.json), or None when there is none. Raises ValueError when the
    file is not that stage's output."""
    if path is None or not Path(path).is_file():
        return None
    try:
        out = json.loads(Path(path).read_text())
    except ValueError as exc:
        raise ValueError(f"data-needs answer {path} is not JSON ({exc})") from None
    if not isinstance(out, dict) or "sentence" not in out:
        raise ValueError(f"data-needs answer {path} is not a `finalbn needs` output (no 'sentence')")
    return out


def main(cfg: Any, args: argparse.Namespace) -> int:
    """`finalbn report`: prints where it went and the verdict."""
    summary = run(
        cfg,
        ReportPaths(
            Path(args.out),
            Path(args.grid_csv),
            ceiling=Path(args.ceiling),
            search=Path(args.search),
            sensitivity=Path(args.sensitivity),
            needs=Path(args.needs),
        ),
        MLFLOW,
    )
    print(f"report: {summary['cells']} cells -> {args.out}/report.md ({args.out}/{HTML_NAME}: its figures inside)")
    for line in summary["verdict"]:
        print(f"  {line}")
    return 0

"""One shard (or one unit) of the grid: its unfinished cells, each a tracked run under its parent.

    stats = run_shard(cfg, Path("data/splits"), index=0, count=2)   # {"ran", "skipped", "failed", ...}
    stats = run_unit(cfg, Path("data/splits"), cells, "[unit 3/7]")  # a Ray task's cells

Runs go to `stage`'s experiment (`grid`, or `sensitivity` for that stage's levels); a cell with a
FINISHED run for its key in either is skipped (a sensitivity level's reference cells are the
grid's). A run left RUNNING by a killed process is marked KILLED and its cell redone; one whose
process is alive on this host is another command's at work, and the shard refuses to start
(`Tracker.take_over`: StoreError naming its host and pid; the grid command's owner record keeps a
second grid off the store's cells, `Tracker.owned`). The store is the tracker's
(`finalbn.stages.tracker`: MLflow's by default, or kept in memory). A parent gets
the mean and std of its replicates and ends right after its last cell in this shard (a parent's
cells all live in one shard).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from finalbn.config import Config
from finalbn.infra import faults, interrupt
from finalbn.stages.cellrun import CellRun, track_cell
from finalbn.stages.cost import Progress
from finalbn.stages.grid.parentplots import log_parent_figures
from finalbn.stages.grid.plan import (
    Cell,
    Setting,
    all_cells,
    cell_config,
    cell_key,
    several_places,
    shard_cells,
    share_order,
)
from finalbn.stages.grid.price import cell_seconds, kept_on_disk, price_book
from finalbn.stages.tracker import Tracker
from finalbn.tracking import records as tags
from finalbn.tracking.adapter import MLFLOW
from finalbn.tracking.records import RunRecord
from finalbn.train.engine import TrainingDiverged

CELL_STAGES = ("grid", "sensitivity", "needs")  # the experiments whose runs are grid cells


def existing_cells(cfg: Config, tracker: Tracker = MLFLOW) -> dict[str, list[RunRecord]]:
    """Cell runs by key, from the grid's and the sensitivity stage's experiments."""
    return tracker.cells_by_key(cfg, CELL_STAGES, tags.CELL_KEY)


def run_shard(
    cfg: Config,
    splits_dir: Path,
    index: int = 0,
    count: int = 1,
    log: Callable[[str], None] = print,
    stage: str = "grid",
    tracker: Tracker = MLFLOW,
    setting: Setting | None = None,
) -> dict:
    """Run this shard's unfinished cells; returns {"ran", "skipped", "failed": [...], "seconds": {...}}."""
    cells = shard_cells(all_cells(cfg), index, count, cfg.train.share_features)
    return run_cells(
        cfg, splits_dir, cells, f"[shard {index}/{count}]", log, stage, tracker, position=index, setting=setting
    )


def run_unit(
    cfg: Config, splits_dir: Path, cells: list[Cell], label: str, stage: str = "grid", setting: Setting | None = None
) -> dict:
    """One unit of cells (`plan.units`) as a Ray task runs it: `run_cells`, its lines printed."""
    return run_cells(cfg, splits_dir, cells, label, lambda m: print(m, flush=True), stage, setting=setting)


def run_cells(
    cfg: Config,
    splits_dir: Path,
    cells: list[Cell],
    label: str,
    log: Callable[[str], None] = print,
    stage: str = "grid",
    tracker: Tracker = MLFLOW,
    position: int = 0,
    setting: Setting | None = None,
) -> dict:
    """Run the unfinished ones of `cells` (whole parents: a shard's, or a unit's), in share order,
    each line saying the time left (`cost.Progress`; a bar at `position` on a terminal), the runs
    of a labelled grid (`setting`: a sensitivity level) named and tagged by it;
    returns {"ran", "skipped", "failed": [...], "seconds": {...}}. A RUNNING run of one of them is
    marked KILLED before any cell runs when no live command owns it (`Tracker.take_over`); raises
    StoreError, one line naming its host and pid, when its process is alive on this host."""
    tracker.setup(cfg, stage)
    cells = share_order(cells)
    existing = existing_cells(cfg, tracker)
    keys = [cell_key(cfg, cell, splits_dir) for cell in cells]
    tracker.take_over(cfg, stage, _left_running(existing, keys))  # or StoreError: a live process trains one
    last = {cell.parent: i for i, cell in enumerate(cells)}  # a parent ends after its last cell
    where = several_places(cfg)
    stats: dict = {
        "ran": 0,
        "skipped": 0,
        "failed": [],
        "seconds": {"uf_off": 0.0, "uf_on": 0.0},
        "cells": {"uf_off": 0, "uf_on": 0},
        "log": [],
    }
    parents: dict[tuple, str] = {}  # Cell.parent -> parent run id, once created
    touched: set[tuple] = set()
    bar = _progress(cfg, splits_dir, cells, keys, existing, label, position)
    for done, (cell, key) in enumerate(zip(cells, keys), start=1):
        if any(r.finished for r in existing.get(key, [])):
            stats["skipped"] += 1
        else:
            if parents.get(cell.parent) is None:
                parents[cell.parent] = _open_parent(cfg, stage, cell, splits_dir, where, setting, tracker)
            progress = f"{label} cell {done}/{len(cells)} {cell.name} ({bar.left()})"
            pid = parents[cell.parent]
            if _run_one(cfg, stage, cell, key, splits_dir, pid, stats, progress, log, where, tracker, setting):
                touched.add(cell.parent)
            bar.done(done - 1)
            interrupt.deliver()  # a Ctrl-C Python swallowed stops the grid between cells
            faults.point(f"{stage}.between")
        if last[cell.parent] == done - 1:
            _close_parent(cfg, stage, cell, splits_dir, parents, touched, tracker)
    bar.close()
    return stats


def _progress(
    cfg: Config, splits: Path, cells: list[Cell], keys: list[str], existing: dict, label: str, position: int
) -> Progress:
    """The shard's time left: its unfinished cells at their kinds' measured seconds (a finished cell
    weighs nothing; unpriced, every cell weighs the same)."""
    todo = [c for c, k in zip(cells, keys) if not any(r.finished for r in existing.get(k, []))]
    book, _ = price_book(cfg, todo)
    kept = kept_on_disk(cfg, splits)
    seconds = cell_seconds(cfg, todo, book, cfg.train.share_features, kept) if book else dict.fromkeys(todo, 1.0)
    return Progress(label.strip("[]"), [seconds.get(c, 0.0) for c in cells], position=position)


def _open_parent(
    cfg: Config, stage: str, cell: Cell, splits_dir: Path, where: bool, setting: Setting | None, tracker: Tracker
) -> str:
    """The id of `cell`'s parent run (`Tracker.parent`: found by its key, or created), named with
    the setting of a labelled grid and carrying its tags (`label_run`)."""
    name = cell.parent_name(where, setting.label if setting else "")
    pkey = cell_key(cfg, cell, splits_dir, with_replicate=False)
    pid = tracker.parent(cfg, stage, cell.dataset, cell.arch, cell.config_id, pkey, name, cell.baseline)
    if setting is not None:
        label_run(tracker, pid, name, dict(setting.tags))
    return pid


def label_run(tracker: Tracker, run_id: str, name: str, run_tags: dict[str, str]) -> None:
    """Name run `run_id` `name` and set `run_tags` on it: a labelled grid's parent, which
    `Tracker.parent` makes with its own tags only, or found by key under the name an older
    finalbn gave it."""
    tracker.tag_run(run_id, {**run_tags, "mlflow.runName": name})


def _left_running(existing: dict[str, list[RunRecord]], keys: list[str]) -> list[RunRecord]:
    """The RUNNING runs of the cells among `keys` that have no FINISHED run (the cells to redo)."""
    return [
        r
        for k in keys
        if not any(x.finished for x in existing.get(k, []))
        for r in existing.get(k, [])
        if r.status == tags.RUNNING
    ]


def _run_one(
    cfg: Config,
    stage: str,
    cell: Cell,
    key: str,
    splits_dir: Path,
    parent_id: str,
    stats: dict,
    progress: str,
    log: Callable[[str], None],
    where: bool,
    tracker: Tracker,
    setting: Setting | None = None,
) -> bool:
    """Train one cell as a tracked run (named and tagged with a labelled grid's `setting`); False
    (and a FAILED line) when its training diverged."""
    ccfg = cell_config(cfg, cell)
    pkey = cell_key(cfg, cell, splits_dir, with_replicate=False)
    t0 = time.perf_counter()
    extra = {
        tags.CELL_KEY: key,
        tags.PARENT_KEY: pkey,
        **({tags.BASELINE: cell.baseline} if cell.baseline else {}),
        **dict(setting.tags if setting else ()),
    }
    name = cell.run_name(where, setting.label if setting else "")
    try:
        _, result = track_cell(
            ccfg,
            cell.dataset,
            splits_dir,
            CellRun(stage, name, parent_id, extra),
            tracker,
            replicate=cell.replicate,
        )
    except TrainingDiverged as exc:
        stats["failed"].append({"cell": cell.name, "error": str(exc)})
        log(f"{progress}: FAILED: {exc}")
        return False
    seconds = time.perf_counter() - t0
    kind = "uf_on" if ccfg.ablation.uf else "uf_off"
    stats["seconds"][kind] += seconds
    stats["cells"][kind] += 1
    stats["ran"] += 1
    stats["log"].append(
        {"cell": cell.name, "seconds": seconds, "features": result.features, "body_images": result.body_images}
    )
    m = result.test_last
    log(
        f"{progress} (config {cell.config_id}): test minority F1 "
        f"{m['f1_1']:.3f}, AUROC {m['auroc']:.3f} (last epoch; selected epoch {result.fit.selected_epoch}), "
        f"{seconds:.1f} s, {result.features} features"
    )
    return True


def _close_parent(
    cfg: Config, stage: str, cell: Cell, splits_dir: Path, parents: dict, touched: set, tracker: Tracker
) -> None:
    """Mean/std over its replicates on the parent of `cell` (its last in this shard) when this
    shard ran one of its cells, or a killed run left it open; the parent then ends FINISHED, and
    gets its replicates' loss curves and pooled reliability diagram (`parentplots`). (Cells all
    found in another stage's experiment leave no parent here.)"""
    pkey = cell_key(cfg, cell, splits_dir, with_replicate=False)
    pid = parents.get(cell.parent) if cell.parent in touched else tracker.open_parent(cfg, stage, pkey)
    if pid:
        tracker.finish_parent(cfg, stage, pkey, pid)
        log_parent_figures(tracker, pid, tracker.children(cfg, stage, pkey), cell.parent_name(several_places(cfg)))

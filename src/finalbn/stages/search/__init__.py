"""The Optuna search beyond the 64-configuration grid — the only part of finalbn that imports Optuna.

    finalbn search                    # search.n_trials trials in search.workers processes
    finalbn search --workers 1        # in this process
    finalbn search --executor ray     # search.workers Ray tasks on $RAY_ADDRESS (or a local Ray)
    code, out = run(cfg, SearchPaths(splits, Path("results/search.json"), grid_csv), MLFLOW)  # the core

Reads the splits, params and results/grid.csv; writes the study (its journal,
`search.storage`), one MLflow run per trial under the study's parent run, then the comparison's
runs, results/search.json and Optuna's plots beside it. A trial is a configuration (the
dimensions of `search.space` drawn by a seeded TPE sampler) raced over replicates 0..K-1
(`selection.replicates`): one cell per replicate, on to the next only while the running mean of
its validation value is promising (the pruner). Its objective is the mean over the K replicates
of a validation metric (`search.objective`), never a test metric; the best trial is then tested
on the held-out replicates K.. beside the grid's best and BN only. `space` (what may be searched,
a trial's configuration), `study` (storage, name, resuming), `objective` (a trial), `compare` (the
best trial against the grid, tested), `summary` (search.json, plots).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
import time
from pathlib import Path

import optuna
import yaml

from finalbn import tracking
from finalbn.cluster import rayexec, workers
from finalbn.config import Config, to_dict
from finalbn.data.splits import split_dir
from finalbn.infra import io
from finalbn.infra.errors import UsageError
from finalbn.stages.cost import cell_prices, projection_line
from finalbn.stages.search.compare import compare, tested_replicates
from finalbn.stages.search.objective import (
    SWITCHES,
    TIE_BREAK,
    PruningCallback,
    TrialLog,
    best_trial,
    make_objective,
    optimize,
)
from finalbn.stages.search.space import check, multi_objective, steps_per_replicate, suggest
from finalbn.stages.search.study import (
    ReplicateMedianPruner,
    directions,
    fail_stale,
    finished,
    open_study,
    settle,
    start,
    storage,
    study_name,
)
from finalbn.stages.search.summary import finish, plots, summary
from finalbn.tracking.adapter import MLFLOW, MlflowTracker
from finalbn.train import features
from finalbn.train.cell import preflight

__all__ = [
    "SWITCHES",
    "TIE_BREAK",
    "PruningCallback",
    "ReplicateMedianPruner",
    "TrialLog",
    "best_trial",
    "check",
    "compare",
    "directions",
    "fail_stale",
    "finish",
    "main",
    "make_objective",
    "multi_objective",
    "open_study",
    "optimize",
    "plots",
    "SearchPaths",
    "run",
    "run_ray",
    "run_workers",
    "settle",
    "start",
    "steps_per_replicate",
    "storage",
    "study_name",
    "suggest",
    "summary",
    "tested_replicates",
]

STUDY_RUN_ENV, WORKER_ENV = "FINALBN_STUDY_RUN", "FINALBN_WORKER"


def run_workers(cfg: Config, splits: Path, count: int, parent_run_id: str) -> int:
    """`count` processes of `finalbn search --worker` on this config (written to a temporary params
    file: the workers read the very config the core was handed), each study.optimize(n_jobs=1)."""
    wcfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, threads=workers.threads_per_worker(count)))
    with tempfile.TemporaryDirectory(prefix="finalbn-search-") as tmp:
        params = Path(tmp) / "params.yaml"
        params.write_text(yaml.safe_dump(to_dict(wcfg), sort_keys=False), encoding="utf-8")
        return workers.run_commands(
            lambda i: ["search", "--params", str(params), "--splits", str(splits), "--worker"],
            count,
            env_of=lambda i: {**os.environ, STUDY_RUN_ENV: parent_run_id, WORKER_ENV: str(i)},
        )


def run_ray(cfg: Config, splits: Path, count: int, parent_run_id: str) -> int:
    """`count` Ray tasks, each study.optimize(n_jobs=1) on the study's storage (an RDB URL, or a
    journal on a file system every node shares); 1 when one failed."""
    tcfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, threads=rayexec.task_threads(cfg.ray)))
    outcomes = rayexec.run_tasks(
        cfg.ray,
        optimize,
        [(tcfg, splits.resolve(), parent_run_id, i) for i in range(count)],
        [f"[search worker {i}]" for i in range(count)],
    )
    return 1 if any(isinstance(o, rayexec.TaskFailed) for o in outcomes) else 0


def seconds(cfg: Config, trials: int, procs: int, kept: bool = False) -> tuple[float | None, str]:
    """The search's time: each of `trials` on `cost.search_share` of the replicates it races over
    (a pruned trial stops sooner; 1 = every replicate, at most), a replicate priced as the first cell of the family its switches draw
    (`cost.cell_prices`; augmented or mixed with probability 1/2 when DA or MX is in the space),
    shared by `procs` processes, then the comparison, the best trial on the same replicates.
    `kept`: the replicates' body features are on disk (the grid's, `features.on_disk`), so a plain
    family's replicate only trains its head (warm). Returns (seconds, the prices' source), or
    (None, the arch and size not priced)."""
    ds = cfg.datasets[0]
    prices = cell_prices(cfg, cfg.model.arch, ds.image_size)
    if prices is None:
        return None, f"{cfg.model.arch} at {ds.image_size} px"
    space = set(cfg.search.space.switches or ())
    p_da = 0.5 if "da" in space else float(cfg.ablation.da)
    p_mx = 0.5 if "mx" in space else float(cfg.ablation.mx)
    cell = (
        p_da * prices.cell("first_da")
        + (1 - p_da) * p_mx * prices.cell("first_mx")
        + (1 - p_da) * (1 - p_mx) * prices.cell("warm" if kept else "first")
    )
    reps = cfg.selection.replicates
    share = cfg.cost.search_share if cfg.cost is not None else 1.0  # the pruner's measured saving
    return max(trials, 0) * reps * share * cell / max(procs, 1) + reps * cell, prices.source


def features_kept(cfg: Config, splits: Path) -> bool:
    """Whether the body's features of the replicates a trial races over are on disk (the grid's)."""
    ds = cfg.datasets[0]
    return (
        cfg.model.frozen_bn == "eval"
        and features.disk_enabled()
        and all(
            features.on_disk(split_dir(splits, ds.name, r) / "manifest.csv", ds.image_size, cfg.model.arch)
            for r in range(cfg.selection.replicates)
        )
    )


def projection(cfg: Config, trials: int, procs: int, kept: bool = False) -> str:
    """The line said before the trials start (`seconds`)."""
    secs, source = seconds(cfg, trials, procs, kept)
    what = f"{max(trials, 0)} trial(s) to run, {procs} process(es)"
    return projection_line("search", secs, what, source, unpriced=source)


@dataclasses.dataclass(frozen=True)
class SearchPaths:
    """The prepared splits, the summary file (search.json; the figures go beside it) and the grid's
    results/grid.csv (the comparison's "grid's best")."""

    splits: Path
    out: Path
    grid_csv: Path


def run(
    cfg: Config,
    paths: SearchPaths,
    tracker: MlflowTracker = MLFLOW,
    *,
    workers: int | None = None,
    executor: str | None = None,
    log=print,
) -> tuple[int, dict]:
    """The search's core: the Optuna study (its trials in `workers` processes on one journal, or
    Ray tasks), the comparison on held-out replicates, search.json. The search reads its runs back
    by MLflow filters and its trials from Optuna's storage, so it needs the store-backed tracker.
    Returns (exit code, search.json's content). Raises UsageError for a bad worker count,
    DataError or WeightsError before any trial when an input is missing."""
    count = workers or cfg.search.workers
    if count < 1:
        raise UsageError(f"--workers must be >= 1 (got {count})")
    check(cfg)
    # the trials' replicates 0..K-1 and the comparison's held-out ones: every split prepare writes
    preflight(
        cfg, cfg.datasets[0].name, paths.splits, replicates=max(cfg.selection.replicates, cfg.grid.max_replicates)
    )
    tracker.setup(cfg, "search")
    study, parent, stale = start(cfg)
    if stale:
        log(
            f"search: trials {stale} were left RUNNING by a stopped worker: marked FAIL, each retried once "
            "with its parameters"
        )
    # no more processes than trials left: a finished study (a rerun for the comparison or the
    # summary) starts none, and each one costs seconds of imports before it can train
    procs = min(count, max(cfg.search.n_trials - finished(study), 1))
    log(
        f"search {cfg.search.study}: {cfg.search.n_trials} trials on the mean {cfg.search.objective} over "
        f"replicates 0..{cfg.selection.replicates - 1} ({len(study.trials)} in the study already), {procs} "
        f"worker(s), storage {cfg.search.storage}"
    )
    log(projection(cfg, cfg.search.n_trials - finished(study), procs, features_kept(cfg, paths.splits)))
    t0 = time.perf_counter()
    if (executor or cfg.search.executor) == "ray":
        code = run_ray(cfg, paths.splits, procs, parent)
    elif procs > 1:
        code = run_workers(cfg, paths.splits, procs, parent)
    else:
        optimize(cfg, paths.splits, parent)  # in this process; it returns None, so the exit code is 0
        code = 0
    retried = settle(cfg, open_study(cfg), log=log)
    if retried:  # a killed worker's trials: failed on their missing heartbeats, retried here
        log(f"search: trials {retried} lost their worker (no heartbeat): FAIL, retried in this process")
        optimize(cfg, paths.splits, parent)
    seconds = time.perf_counter() - t0
    return code, _finish(cfg, open_study(cfg), paths, parent, seconds, count, log)


def main(cfg: Config, args: argparse.Namespace) -> int:
    """`finalbn search`: the core (`run`) on the store, then its outcome. The command owns the
    store's search experiment while it runs (`Tracker.owned`; its worker processes and Ray tasks
    work under its record): StoreError, one line naming host and pid, when a live search command
    owns it."""
    tracking.detach_project_run()  # under `mlflow run -e search`: the study has its own runs
    splits = Path(args.splits)
    if args.worker:  # spawned by --workers: the parent checked everything and made the study's run
        optimize(cfg, splits, os.environ[STUDY_RUN_ENV], int(os.environ.get(WORKER_ENV, "0")))
        return 0
    if args.workers is not None and args.workers < 1:
        raise UsageError(f"--workers must be >= 1 (got {args.workers})")
    with MLFLOW.owned(cfg, "search", command="search"):
        code, out = run(
            cfg,
            SearchPaths(splits, Path(args.out), Path(args.grid_csv)),
            MLFLOW,
            workers=args.workers,
            executor=getattr(args, "executor", None),
            log=lambda m: print(m, flush=True),
        )
    _print_outcome(cfg, out, args.out)
    return code


def _finish(cfg: Config, study: optuna.Study, paths: SearchPaths, parent: str, seconds: float, count: int, log) -> dict:
    comparison = None
    if not multi_objective(cfg) and any(t.state.name == "COMPLETE" for t in study.trials):
        reps, held = tested_replicates(cfg)
        log(
            f"search: the best trial on validation, the grid's best and BN only, tested on "
            f"{'the held-out ' if held else ''}replicates {reps[0]}..{reps[-1]}"
            f"{'' if held else ' (none held out: the ones chosen on)'}"
        )
        comparison = compare(cfg, study, paths.splits, parent, paths.grid_csv, log=log, processes=count)
    out = finish(study, cfg, parent, seconds, plot_dir=paths.out.parent, comparison=comparison)
    io.write_json(paths.out, out, default=str)
    return out


def _print_outcome(cfg: Config, out: dict, path: str) -> None:
    states = ", ".join(f"{n} {k}" for k, n in out["states"].items() if n)
    print(f"search: {out['trials']} trials ({states}) -> {path}")
    if "best" in out:
        b = out["best"]
        print(
            f"  best on validation: trial {b['number']} ({b['config_name']}), mean {cfg.search.objective} "
            f"{b['value']:.4f} over replicates {b.get('replicates')}; mlflow runs {b.get('mlflow_run_ids')}"
        )
    shown = set()
    for label in ("bn_only_31", "grid_best"):
        c = (out.get("comparison") or {}).get(label)
        if c and c["config_id"] not in shown:  # the grid's best may be BN only itself: one line
            shown.add(c["config_id"])
            d = c["best_trial_minus_test_f1_1"]
            ci = (
                f"[95% CI {d['ci_low']:+.3f}, {d['ci_high']:+.3f}]"
                if d.get("ci_low") is not None
                else f"({d.get('note') or 'no interval'})"
            )
            mine = [
                r["test_f1_1"]
                for r in out["comparison"]["runs"]
                if r["replicate"] in {x["replicate"] for x in c["rows"]}
            ]
            print(
                f"  best trial vs {c['config_name']} (config {c['config_id']}): test minority F1 "
                f"{sum(mine) / max(len(mine), 1):.3f} vs {c['mean']['test_f1_1']:.3f}, difference "
                f"{d['estimate']:+.3f} {ci} over {c['replicates']} "
                f"{'held-out ' if out['comparison'].get('held_out') else ''}replicate(s)"
            )
    if (out.get("comparison") or {}).get("note"):
        print(f"  note: {out['comparison']['note']}")

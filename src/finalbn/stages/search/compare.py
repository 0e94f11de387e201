"""After the study: its best trial beside the grid's best configuration and BN only, tested on the
replicates no choice was made on.

    out = compare(cfg, study, splits, parent_run_id, Path("results/grid.csv"), processes=2)

The best trial was chosen on replicates 0..K-1 (`selection.replicates`: its objective is their
mean) and the grid's best on the same ones (`results.rank_configs`, only a configuration with
all K); a test on those replicates would carry the luck of the choice. So all three arms are
tested on the held-out replicates K..grid.max_replicates-1 (the split draws `prepare` writes;
the grid's headline cells are there already). When there are none (grid.max_replicates <= K)
they fall back to 0..K-1, and the output says so (`held_out: false`, a note).

Every run is found by its result key (`keys.result_key`: the configuration's params, the
replicate's split, the seed and the code — not the study or the trial): a trial's own runs, the
grid's cells, and a rerun of the stage trains nothing twice. What is missing is trained in
`processes` processes, as tracked runs under the study's run. The comparison: per-replicate
paired differences with t intervals (`stats.t_interval`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd

from finalbn import tracking
from finalbn.cluster import workers
from finalbn.config import Config, config_id, config_name, configure
from finalbn.stages.cellrun import CellHooks, CellRun, track_cell
from finalbn.stages.search.objective import best_trial
from finalbn.stages.search.space import suggest
from finalbn.stats.inference import t_interval
from finalbn.stats.results import rank_configs, rounded
from finalbn.tracking import records as tags
from finalbn.tracking.adapter import MLFLOW
from finalbn.train.keys import result_key

ARMS = {"best_trial": "the best trial", "grid_best": "the grid's best configuration", "bn_only_31": "BN only (31)"}
BN_ONLY = 31


def best_config(cfg: Config, study: optuna.Study) -> tuple[optuna.trial.FrozenTrial, Config]:
    """The best trial (on validation, `best_trial`) and its configuration, replayed from its params."""
    best = best_trial(study)
    return best, suggest(optuna.trial.FixedTrial(best.params), cfg)


def _row(replicate: int, metrics: Mapping[str, Any], run_id: str) -> dict:
    return {
        "replicate": replicate,
        "test_f1_1": metrics.get("test_f1_1"),
        "test_f1_1_vt": metrics.get("test_f1_1_vt"),
        "test_auroc": metrics.get("test_auroc"),
        "val_auroc": metrics.get("val_last_auroc"),
        "val_f1_1": metrics.get("val_last_f1_1"),
        "run_id": run_id,
    }


def rerun(
    cfg: Config,
    dataset: str,
    splits: Path,
    replicate: int,
    parent_run_id: str,
    name: str,
    extra_tags: dict[str, str],
    threads: int = 0,
) -> dict:
    """One configuration on one replicate as a tracked run under the study's run (also in a worker
    process of `compare`); returns its comparison row."""
    if threads:
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, threads=threads))
    run_id, res = track_cell(
        cfg,
        dataset,
        splits,
        CellRun("search", name, parent_run_id, extra_tags),
        MLFLOW,
        replicate=replicate,
        hooks=CellHooks(fault="search.compare"),
    )
    m = {**{f"test_{k}": v for k, v in res.test_last.items()}, **{f"val_last_{k}": v for k, v in res.val_last.items()}}
    return _row(replicate, m, run_id)


def tested_replicates(cfg: Config) -> tuple[list[int], bool]:
    """The replicates the arms are tested on, and whether they are held out: K..max_replicates-1
    (no choice was made on them), else 0..K-1."""
    k, have = cfg.selection.replicates, cfg.grid.max_replicates
    held = list(range(k, have))
    return (held, True) if held else (list(range(k)), False)


def _note(out: dict, text: str) -> None:
    out["note"] = f"{out['note']} {text}" if out.get("note") else text


def _arms(cfg: Config, study: optuna.Study, grid_csv: Path | None, out: dict) -> dict[str, tuple[str, Config]]:
    """{arm: (label, configuration)}: the best trial, and (with the grid's results) the grid's best
    configuration over replicates 0..K-1 on validation (none when no configuration has all K)
    and BN only."""
    best, bcfg = best_config(cfg, study)
    dataset, k = cfg.datasets[0].name, cfg.selection.replicates
    arms: dict[str, tuple[str, Config]] = {"best_trial": (f"trial {best.number}", bcfg)}
    if grid_csv is not None and Path(grid_csv).is_file():
        df = pd.read_csv(grid_csv)
        df = df[df["dataset"] == dataset]
        arch = (
            cfg.model.arch if cfg.model.arch in set(df["arch"]) else (df["arch"].iloc[0] if len(df) else cfg.model.arch)
        )
        ranked = rank_configs(df[df["arch"] == arch], k)
        eligible = ranked[ranked["eligible"].astype(bool)] if len(ranked) else ranked
        picks = {"grid_best": int(eligible.iloc[0]["config_id"]) if len(eligible) else None, "bn_only_31": BN_ONLY}
        if picks["grid_best"] is None:
            _note(
                out,
                f"no configuration in {grid_csv} has all of replicates 0..{k - 1} (selection.replicates={k}): "
                "the grid has no best configuration to compare.",
            )
        for arm, cid in picks.items():
            if cid is not None:
                arms[arm] = (f"config {cid}", configure(cfg, arch, cid))
    else:
        _note(out, f"no {grid_csv}: run the grid for the comparison with its configurations")
    return arms


def _found_runs(cfg: Config) -> dict[str, list]:
    """FINISHED runs by result key: the grid's cells (cell_key) and the search's (result_key)."""
    found: dict[str, list] = {}
    for tag in (tags.CELL_KEY, tags.RESULT_KEY):
        for k, runs in tracking.runs_by_tag(tracking.experiment_names(cfg, "grid", "search"), tag).items():
            found.setdefault(k, []).extend(r for r in runs if r.finished)
    return found


def compare(
    cfg: Config,
    study: optuna.Study,
    splits: Path,
    parent_run_id: str,
    grid_csv: Path | None,
    log: Callable[[str], None] = print,
    processes: int = 1,
) -> dict:
    """The best trial (chosen on validation over replicates 0..K-1), the grid's best configuration
    (chosen the same way in `grid_csv`) and BN only (31), tested on the held-out replicates (see
    the module docstring)."""
    best = best_trial(study)
    dataset, k = cfg.datasets[0].name, cfg.selection.replicates
    reps, held = tested_replicates(cfg)
    out: dict[str, Any] = {
        "best_trial": best.number,
        "params": best.params,
        "replicates": len(reps),
        "replicates_tested": reps,
        "held_out": held,
        "chosen_on": list(range(k)),
    }
    if not held:
        _note(
            out,
            f"no held-out replicate (prepare writes {cfg.grid.max_replicates}, selection.replicates={k}): "
            f"tested on replicates 0..{k - 1}, the ones the choice was made on, so the chosen arms' test "
            "values carry the luck of that choice; raise grid.headline.replicates for held-out ones.",
        )
    arms = _arms(cfg, study, grid_csv, out)
    found = _found_runs(cfg)
    rows: dict[str, dict[int, dict]] = {arm: {} for arm in arms}
    jobs: dict[str, tuple] = {}  # result key -> (arms, replicate, config, label): one training per key
    for arm, (label, acfg) in arms.items():
        for r in reps:
            key = result_key(acfg, dataset, r, splits)
            if found.get(key):
                run = tracking.latest(found[key])
                rows[arm][r] = _row(r, run.metrics, run.run_id)
            else:
                jobs.setdefault(key, ([], r, acfg, label))[0].append(arm)
    _train_missing(cfg, study, splits, parent_run_id, dataset, reps, jobs, rows, log, processes)
    return _contrasts(out, arms, rows, reps)


def _train_missing(
    cfg: Config,
    study: optuna.Study,
    splits: Path,
    parent_run_id: str,
    dataset: str,
    reps: list,
    jobs: dict,
    rows: dict,
    log: Callable[[str], None],
    count: int,
) -> None:
    if jobs:
        log(
            f"search: {len(jobs)} run(s) to compare on replicates {reps} ({count} process(es)); "
            f"{sum(len(v) for v in rows.values())} found in the store"
        )
    threads = workers.threads_per_worker(count) if count > 1 else 0
    calls = [
        (
            acfg,
            dataset,
            splits,
            r,
            parent_run_id,
            f"compare {label} r{r}",
            {
                tags.SEARCH_COMPARE: "true",
                tags.RESULT_KEY: key,
                tags.STUDY_NAME: study.study_name,
                tags.COMPARE_ARMS: ",".join(which),
            },
            threads,
        )
        for key, (which, r, acfg, label) in jobs.items()
    ]
    results = workers.map_processes(rerun, calls, count)
    for (which, r, _, label), row in zip(jobs.values(), results):
        for arm in which:
            rows[arm][r] = row
        log(f"  {label} on replicate {r}: test minority F1 {row['test_f1_1']:.3f}, AUROC {row['test_auroc']:.3f}")


def _contrasts(out: dict, arms: dict, rows: dict, reps: list) -> dict:
    mine = rows["best_trial"]
    out["runs"] = [mine[r] for r in reps if r in mine]
    out["best_trial_mean"] = _means(out["runs"])
    for arm in arms:
        if arm == "best_trial":
            continue
        theirs = rows[arm]
        both = [r for r in reps if r in mine and r in theirs]
        acfg = arms[arm][1]
        entry: dict[str, Any] = {
            "config_id": config_id(acfg.ablation),
            "config_name": config_name(acfg.ablation),
            "replicates": len(both),
            "rows": [theirs[r] for r in both],
            "mean": _means([theirs[r] for r in both]),
        }
        for metric in ("test_f1_1", "test_f1_1_vt", "test_auroc"):  # vt: each model at its validation cut
            d = [
                float(mine[r][metric]) - float(theirs[r][metric])
                for r in both
                if mine[r].get(metric) is not None and theirs[r].get(metric) is not None
            ]
            entry[f"best_trial_minus_{metric}"] = {
                k: rounded(v) if isinstance(v, float) else v for k, v in t_interval(d).items()
            }
        out[arm] = entry
    return out


def _means(rows: list[dict]) -> dict[str, float | None]:
    return {
        k: rounded(np.nanmean([float(r[k]) for r in rows if r.get(k) is not None])) if rows else None
        for k in ("test_f1_1", "test_f1_1_vt", "test_auroc", "val_auroc", "val_f1_1")
    }

"""Runs that group other runs: a grid configuration's parent (its replicates as children, their
mean and std as its metrics) and a search study's parent (its trials as children).

    pid = grid_parent(cfg, "grid", "synthetic-apple", "efficientnet_lite0", 31, parent_key, "BN (config 31)")
    finish_parent(cfg, "grid", ..., parent_key, pid)   # the children's metric names (their mean), <name>_std

A parent speaks its children's metric names: `test_f1_1` on a parent is the mean of its replicates'
`test_f1_1` (and `test_f1_1_std` their standard deviation), so one chart or column serves both levels.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from finalbn.config import TOGGLES, Config, ablation_from_id, config_name, flatten, to_dict
from finalbn.tracking import query
from finalbn.tracking.records import (
    ARCH,
    BASELINE,
    CONFIG_ID,
    CONFIG_NAME,
    DATASET,
    FINISHED,
    KILLED,
    PARENT,
    PARENT_KEY,
    STUDY,
    toggle_tag,
)
from finalbn.tracking.runs import create_run, end_run, log_artifact, log_batch, log_dict, log_params, reopen, set_tag
from finalbn.tracking.store import experiment_name, setup

PARENT_METRIC_PREFIXES = ("test_", "val_", "selected_epoch")


def open_parent(cfg: Config, stage: str, parent_key: str) -> str | None:
    """The id of the parent of `parent_key` in `stage`'s experiment if a killed run left it open."""
    run = query.parent_run(experiment_name(cfg, stage), parent_key)
    return run.run_id if run is not None and not run.finished else None


def grid_parent(
    cfg: Config, stage: str, dataset: str, arch: str, config_id: int, parent_key: str, name: str, baseline: str = ""
) -> str:
    """The parent run of one (dataset, arch, configuration[, baseline]) in `stage`'s experiment,
    named `name`: found by key, or created."""
    found = query.parent_run(experiment_name(cfg, stage), parent_key)
    if found:
        if found.status == KILLED:  # a process interrupted while its cells ran: open again until they are done
            reopen(found.run_id)
        return found.run_id
    ab = ablation_from_id(config_id)
    tags = {
        **{toggle_tag(t): str(getattr(ab, t)).lower() for t in TOGGLES},
        CONFIG_ID: str(config_id),
        CONFIG_NAME: config_name(ab),
        DATASET: dataset,
        ARCH: arch,
        PARENT_KEY: parent_key,
        PARENT: "true",
        **({BASELINE: baseline} if baseline else {}),
    }
    return create_run(setup(cfg, stage), name, tags)


def finish_parent(cfg: Config, stage: str, parent_key: str, parent_id: str) -> None:
    """The FINISHED children's metrics on the parent under the same names (their mean over
    replicates; `<name>_std` their standard deviation), then the parent ends FINISHED."""
    kids = query.children(experiment_name(cfg, stage), parent_key)
    if kids:
        keys = sorted({k for c in kids for k in c.metrics if k.startswith(PARENT_METRIC_PREFIXES)})
        metrics = {}
        for k in keys:
            vals = np.array([c.metrics[k] for c in kids if k in c.metrics])
            metrics[k], metrics[f"{k}_std"] = float(vals.mean()), float(vals.std())
        log_batch(parent_id, metrics)
        set_tag(parent_id, "replicates_finished", str(len(kids)))
    end_run(parent_id, FINISHED)


def study_parent(cfg: Config, study: str, existing: str | None = None) -> str:
    """The parent run of a search study: `existing` when it is still there, else a new one
    (tag finalbn.study=<name>; trials are its children)."""
    exp_id = setup(cfg, "search")
    if existing:
        run = query.get_run(existing)
        if run is not None and run.active:
            if run.status == KILLED:  # an interrupted study, resumed
                reopen(existing)
            return existing
    run_id = create_run(exp_id, f"study {study}", {STUDY: study})
    log_params(run_id, flatten({"search": to_dict(cfg.search)}))
    return run_id


def finish_study_parent(
    run_id: str, metrics: Mapping[str, float | None], summary: dict, figures: Sequence[Path] = ()
) -> None:
    log_batch(run_id, metrics)
    log_dict(run_id, summary, "search.json")
    for path in figures:
        log_artifact(run_id, str(path), "plots")
    end_run(run_id, FINISHED)

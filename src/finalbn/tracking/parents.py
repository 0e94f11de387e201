"""Runs that group other runs: a grid configuration's parent (its replicates as children, their
mean and std as its metrics) and a search study's parent (its trials as children).

    pid = grid_parent(cfg, "synthetic-apple", "efficientnet_lite0", 31, parent_key)
    finish_parent(cfg, ..., parent_key, pid)       # mean_/std_ metrics, then FINISHED
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from finalbn.config import TOGGLES, Config, ablation_from_id, config_name, to_dict
from finalbn.tracking import query
from finalbn.tracking.records import (
    ARCH,
    BASELINE,
    CONFIG_ID,
    CONFIG_NAME,
    DATASET,
    FINISHED,
    PARENT,
    PARENT_KEY,
    STUDY,
    toggle_tag,
)
from finalbn.tracking.runs import create_run, end_run, log_artifact, log_batch, log_dict, log_param, set_tag
from finalbn.tracking.store import setup

PARENT_METRIC_PREFIXES = ("test_", "val_", "selected_epoch")


def parent_finished(cfg: Config, parent_key: str) -> bool:
    run = query.parent_run(cfg.tracking.experiment, parent_key)
    return run is not None and run.finished


def grid_parent(cfg: Config, dataset: str, arch: str, config_id: int, parent_key: str, baseline: str = "") -> str:
    """The parent run of one (dataset, arch, configuration[, baseline]): found by key, or created."""
    found = query.parent_run(cfg.tracking.experiment, parent_key)
    if found:
        return found.run_id
    ab = ablation_from_id(config_id)
    label = f"{config_name(ab)} + {baseline}" if baseline else config_name(ab)
    tags = {**{toggle_tag(t): str(getattr(ab, t)).lower() for t in TOGGLES}, CONFIG_ID: str(config_id),
            CONFIG_NAME: config_name(ab), DATASET: dataset, ARCH: arch, PARENT_KEY: parent_key,
            PARENT: "true", **({BASELINE: baseline} if baseline else {})}
    return create_run(setup(cfg), f"{dataset} {arch} {label} (config {config_id})", tags)


def finish_parent(cfg: Config, dataset: str, arch: str, config_id: int, parent_key: str, parent_id: str | None,
                  baseline: str = "") -> None:
    """Mean and std over replicates of the FINISHED children's metrics on the parent, which then
    ends FINISHED."""
    parent_id = parent_id or grid_parent(cfg, dataset, arch, config_id, parent_key, baseline)
    kids = query.children(cfg.tracking.experiment, parent_key)
    if kids:
        keys = sorted({k for c in kids for k in c.metrics if k.startswith(PARENT_METRIC_PREFIXES)})
        metrics = {}
        for k in keys:
            vals = np.array([c.metrics[k] for c in kids if k in c.metrics])
            metrics[f"mean_{k}"], metrics[f"std_{k}"] = float(vals.mean()), float(vals.std())
        log_batch(parent_id, metrics)
        set_tag(parent_id, "replicates_finished", str(len(kids)))
    end_run(parent_id, FINISHED)


def study_parent(cfg: Config, study: str, existing: str | None = None) -> str:
    """The parent run of a search study: `existing` when it is still there, else a new one
    (tag finalbn.study=<name>; trials are its children)."""
    exp_id = setup(cfg)
    if existing:
        run = query.get_run(existing)
        if run is not None and run.active:
            return existing
    run_id = create_run(exp_id, f"search {study}", {STUDY: study})
    log_param(run_id, "search", json.dumps(to_dict(cfg.search), default=str))
    return run_id


def finish_study_parent(run_id: str, metrics: dict[str, float], summary: dict, figures: list[Path] = ()) -> None:
    log_batch(run_id, metrics)
    log_dict(run_id, summary, "search.json")
    for path in figures:
        log_artifact(run_id, str(path), "plots")
    end_run(run_id, FINISHED)

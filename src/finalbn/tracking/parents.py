"""Runs that group other runs: a grid configuration's parent (its replicates as children, their
mean as its metrics) and a search study's parent (its trials as children).

    pid = grid_parent(cfg, "grid", "synthetic-apple", "efficientnet_lite0", 31, parent_key, "BN (config 31)")
    finish_parent(cfg, "grid", parent_key, pid)   # the children's metric names (their mean), replicates.json

A parent speaks its children's metric names: `test_f1_1` on a parent is the mean of its FINISHED
replicates' `test_f1_1`, so one chart or column serves both levels. Their standard deviation, count
and each replicate's value are the artifact `replicates.json` (and `replicates.csv`), not metrics of
their own: half of a parent's charts were `<name>_std`. A parent has the switches, config id,
dataset, arch (and baseline) as params, for MLflow's parallel-coordinates view, a Description that
says what it is, and the source tags of the command that made it (`runs.source_tags`).
"""

from __future__ import annotations

import csv
import io
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
    NOTE,
    PARENT,
    PARENT_ARTIFACTS,
    PARENT_KEY,
    REPLICATE,
    REPLICATES_FINISHED,
    STUDY,
    RunRecord,
    switch_param,
    toggle_tag,
)
from finalbn.tracking.runs import (
    create_run,
    end_run,
    log_artifact,
    log_batch,
    log_dict,
    log_params,
    log_text,
    reopen,
    set_tag,
)
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
    named `name`: found by key, or created with its params and Description."""
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
    run_id = create_run(setup(cfg, stage), name, {**tags, NOTE: describe_parent(tags, None)})
    log_params(
        run_id,
        {
            **{switch_param(t): getattr(ab, t) for t in TOGGLES},
            CONFIG_ID: config_id,
            DATASET: dataset,
            ARCH: arch,
            **({BASELINE: baseline} if baseline else {}),
        },
    )
    return run_id


def finish_parent(cfg: Config, stage: str, parent_key: str, parent_id: str) -> None:
    """The FINISHED children's metrics on the parent under the same names (their mean over
    replicates); their mean, std, n and values in `replicates.json` / `.csv`; the Description
    says how many replicates; then the parent ends FINISHED."""
    kids = sorted(query.children(experiment_name(cfg, stage), parent_key), key=_replicate_order)
    if kids:
        table = replicate_table(kids)
        log_batch(parent_id, {k: m["mean"] for k, m in table["metrics"].items()})
        log_dict(parent_id, table, PARENT_ARTIFACTS[0])
        log_text(parent_id, _csv(table), PARENT_ARTIFACTS[1])
        set_tag(parent_id, REPLICATES_FINISHED, str(len(kids)))
    parent = query.get_run(parent_id)
    if parent is not None:
        set_tag(parent_id, NOTE, describe_parent(parent.tags, len(kids)))
    end_run(parent_id, FINISHED)


def _replicate_order(run: RunRecord) -> tuple[int, int]:
    rep = run.tag(REPLICATE)
    return (int(rep) if rep.isdigit() else -1, run.end_time or 0)


def replicate_table(kids: Sequence[RunRecord]) -> dict:
    """{"runs": [{replicate, run_id}], "metrics": {name: {mean, std, n, values}}} of the runs
    `kids` over the metrics a parent averages (`PARENT_METRIC_PREFIXES`, finalbn names). `values`
    follows `runs` (None where a run lacks the metric); std is the sample standard deviation
    (n - 1; 0 for one replicate), as the report's tables compute it."""
    keys = sorted({k for c in kids for k in c.metrics if k.startswith(PARENT_METRIC_PREFIXES)})
    metrics = {}
    for k in keys:
        values = [c.metrics.get(k) for c in kids]
        vals = np.array([v for v in values if v is not None], dtype=float)
        metrics[k] = {
            "mean": float(vals.mean()),
            "std": float(vals.std(ddof=1)) if len(vals) > 1 else 0.0,
            "n": len(vals),
            "values": values,
        }
    return {
        "note": "std: the sample standard deviation over replicates (n - 1 in the denominator; 0 for one)",
        "runs": [{"replicate": c.tag(REPLICATE), "run_id": c.run_id} for c in kids],
        "metrics": metrics,
    }


def _csv(table: dict) -> str:
    """`replicate_table` as a spreadsheet: a row per replicate, then mean, std and n; a column per metric."""
    names = list(table["metrics"])
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["row", "run_id", *names])
    for i, run in enumerate(table["runs"]):
        w.writerow([f"replicate {run['replicate']}", run["run_id"], *(table["metrics"][k]["values"][i] for k in names)])
    for stat in ("mean", "std", "n"):
        w.writerow([stat, "", *(table["metrics"][k][stat] for k in names)])
    return buf.getvalue()


def describe_parent(tags: Mapping[str, str], finished: int | None) -> str:
    """A grid parent's Description (markdown) from its tags: the configuration in words, what its
    metrics are (over `finished` replicates; None while they run) and where the spread is."""
    on = [toggle_tag(t) for t in TOGGLES if tags.get(toggle_tag(t)) == "true"]
    off = [toggle_tag(t) for t in TOGGLES if tags.get(toggle_tag(t)) != "true"]
    baseline = f", imbalance baseline **{tags[BASELINE]}**" if tags.get(BASELINE) else ""
    what = (
        f"**{tags.get(CONFIG_NAME, '?')}** (configuration {tags.get(CONFIG_ID, '?')}) on "
        f"{tags.get(DATASET, '?')}, {tags.get(ARCH, '?')}{baseline}: "
        f"{', '.join(on) or 'no switch'} on{'; ' + ', '.join(off) + ' off' if off else ''}."
    )
    if tags.get("sensitivity.factor"):  # a sensitivity level's parent (`stages.sensitivity`)
        what += f" Sensitivity: {tags['sensitivity.factor']} = {tags.get('sensitivity.level', '?')}."
    if finished is None:
        return f"{what}\n\nIts replicates are the runs under it; their mean is logged here once they end."
    return (
        f"{what}\n\nIts metrics are the mean over its {finished} FINISHED replicate(s) (the runs under it), "
        "under the replicates' own metric names. The standard deviation, count and every replicate's value "
        f"of each metric are in the artifacts `{PARENT_ARTIFACTS[0]}` and `{PARENT_ARTIFACTS[1]}`."
    )


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

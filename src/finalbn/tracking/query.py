"""Reading the store: runs as `RunRecord`s, per-epoch metric histories, artifacts.

runs = finished_cell_runs(["finalbn/grid", "finalbn/search"])   # [RunRecord, ...]
by_key = runs_by_tag("finalbn/grid", CELL_KEY)        # {key: [RunRecord, ...]}
text = artifact_text(run_id, "config.yaml")           # or None

Metric names come back as finalbn's (`names.read`: the store's `test/f1_1` is `test_f1_1`).
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mlflow.exceptions import MlflowException

from finalbn.tracking import names
from finalbn.tracking.records import CELL, FINISHED, PARENT, PARENT_KEY, RunRecord
from finalbn.tracking.store import client

MAX_RESULTS = 100_000


def record(run: Any) -> RunRecord:
    """An MLflow `Run` as a RunRecord, its metrics by finalbn name."""
    info, data = run.info, run.data
    return RunRecord(
        run_id=info.run_id,
        name=info.run_name or "",
        status=info.status,
        start_time=info.start_time,
        end_time=info.end_time,
        metrics={names.read(k): v for k, v in data.metrics.items()},
        params=dict(data.params),
        tags=dict(data.tags),
        active=info.lifecycle_stage == "active",
    )


Experiments = str | Sequence[str]  # one experiment's name, or several


def search(experiment: Experiments, filter_string: str = "") -> list[RunRecord]:
    """Every active run of `experiment` (a name, or a list of names) that matches `filter_string`
    (MLflow's search syntax), page by page; none from an experiment that does not exist."""
    c = client()
    names = [experiment] if isinstance(experiment, str) else list(experiment)
    ids = [e.experiment_id for e in map(c.get_experiment_by_name, names) if e is not None]
    if not ids:
        return []
    runs: list[RunRecord] = []
    token = None
    while True:
        page = c.search_runs(ids, filter_string, max_results=1000, page_token=token)
        runs.extend(record(r) for r in page)
        token = page.token
        if not token:
            return runs


def runs_by_tag(experiment: Experiments, tag: str) -> dict[str, list[RunRecord]]:
    """Runs of `experiment` that carry `tag`, grouped by its value."""
    out: dict[str, list[RunRecord]] = {}
    for r in search(experiment, f"tags.`{tag}` != ''"):
        out.setdefault(r.tags[tag], []).append(r)
    return out


def finished_cell_runs(experiment: Experiments) -> list[RunRecord]:
    """Every FINISHED cell run (tag finalbn.train.cell=true) of `experiment`."""
    runs = search(experiment, f"tags.`{CELL}` = 'true' and attributes.status = '{FINISHED}'")
    # the filter already says so; checked again so a store with looser filtering cannot leak runs in
    return [r for r in runs if r.finished and r.flag(CELL)]


def parent_run(experiment: Experiments, parent_key: str) -> RunRecord | None:
    """The grid parent run of `parent_key`, if there is one."""
    found = search(experiment, f"tags.{PARENT_KEY} = '{parent_key}' and tags.`{PARENT}` = 'true'")
    return found[0] if found else None


def children(experiment: Experiments, parent_key: str) -> list[RunRecord]:
    """The FINISHED cell runs under the grid parent of `parent_key`."""
    found = search(experiment, f"tags.{PARENT_KEY} = '{parent_key}' and attributes.status = '{FINISHED}'")
    return [r for r in found if r.flag(CELL)]


def get_run(run_id: str) -> RunRecord | None:
    """The run `run_id`, or None when the store does not have it (deleted, another store)."""
    try:
        return record(client().get_run(run_id))
    except MlflowException:
        return None


def metric_history(run_id: str, keys) -> dict[int, dict[str, float]]:
    """{epoch: {key: value}} of the per-epoch metrics `keys` (finalbn names) of one run (a later
    value wins). Each is fetched by its stored name, or by its own in a store written before
    the names were grouped (`names`)."""
    c = client()
    by_epoch: dict[int, dict[str, float]] = {}
    for key in keys:
        history = c.get_metric_history(run_id, names.stored(key))
        if not history and names.stored(key) != key:
            history = c.get_metric_history(run_id, key)
        for m in sorted(history, key=lambda m: m.timestamp):
            by_epoch.setdefault(int(m.step), {})[key] = float(m.value)
    return by_epoch


def download(run_id: str, path: str, dst: str | Path) -> Path:
    """One artifact of a run, downloaded into folder `dst`; raises when it is missing."""
    return Path(client().download_artifacts(run_id, path, str(dst)))


def artifact_text(run_id: str, path: str) -> str | None:
    """The text of one artifact of a run, or None when it is missing."""
    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = download(run_id, path, tmp)
        except Exception:  # a missing artifact raises MlflowException or OSError depending on the store
            return None
        return local.read_text(encoding="utf-8") if local.is_file() else None

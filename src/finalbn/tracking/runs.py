"""Writing runs: a run that always ends, the epoch logger, and what a stage logs on its run.

    with cell_run("BN r0", tags) as run:                       # FINISHED / FAILED / KILLED
        result = run_cell(..., callbacks=[run.epoch_logger()])
        run.log_metrics({"test_f1_1": 0.8}); run.log_figure(fig, "plots/x.png")

A run that raises ends FAILED; Ctrl-C (or SystemExit) ends it KILLED, as does an exception of
`killed_on` (a pruned search trial: stopped on purpose, not broken; its Description says why); it
never stays RUNNING. Metric names are written as the store holds them (`names.stored`: `test_f1_1`
is stored `test/f1_1`); callers pass finalbn's names.
"""

from __future__ import annotations

import contextlib
import functools
import re
import tempfile
import time
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import mlflow
import mlflow.data
import pandas as pd
from mlflow.entities import DatasetInput, InputTag, Metric, Param, RunStatus
from mlflow.tracking.context.registry import resolve_tags
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

from finalbn.tracking import registry
from finalbn.tracking.names import stored
from finalbn.tracking.records import DATASET_DIGEST, KILLED, STAGE, pruned_tags
from finalbn.tracking.store import client, current_stage, worker_tags

MAX_PARAM_CHARS, MAX_TAG_CHARS = 6000, 5000


def metric_name(name: str) -> str:
    # MLflow allows letters, digits, _ - . / and space; a user's folder name may hold anything
    return re.sub(r"[^A-Za-z0-9_\-./ ]", "_", name)


def param_text(v: Any) -> str:
    """Params as the YAML spelling: true/false, null, numbers and lists as written."""
    text = "null" if v is None else str(v).lower() if isinstance(v, bool) else str(v)
    return text[:MAX_PARAM_CHARS]


def _now_ms() -> int:
    return int(time.time() * 1000)


def log_batch(run_id: str, metrics: Mapping[str, float | None], step: int = 0) -> None:
    """Finite metrics onto any run (open or not) at `step`, by finalbn name (stored `names.stored`)."""
    batch = [Metric(stored(k), float(v), _now_ms(), step) for k, v in metrics.items() if v is not None and v == v]
    if batch:
        client().log_batch(run_id, metrics=batch)


class EpochLogger:
    """engine callback: per-epoch metrics with `step` = epoch, each stamped when its epoch ended.
    They reach the store at most every `every_s` seconds (a long cell's curves grow live in the
    UI; a cell of a few seconds writes its epochs in one call) and on `flush()`, which the run's
    owner calls when training ends, however it ends."""

    def __init__(self, run_id: str, every_s: float = 5.0):
        self.client, self.run_id, self.every_s = client(), run_id, every_s
        self.pending: list[Metric] = []
        self.last = time.monotonic()

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        self.pending += [Metric(stored(k), float(v), _now_ms(), epoch) for k, v in metrics.items() if k != "epoch"]
        if time.monotonic() - self.last >= self.every_s:
            self.flush()

    def flush(self) -> None:
        for i in range(0, len(self.pending), 1000):  # MLflow's batch limit
            self.client.log_batch(self.run_id, metrics=self.pending[i : i + 1000])
        self.pending, self.last = [], time.monotonic()


class ActiveRun:
    """The run a `cell_run` block writes to (the process's active MLflow run)."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id

    def epoch_logger(self) -> EpochLogger:
        return EpochLogger(self.run_id)

    def logged_params(self) -> dict[str, str]:
        return dict(mlflow.get_run(self.run_id).data.params)

    def log_params(self, params: Mapping[str, Any]) -> None:
        mlflow.log_params({k: param_text(v) for k, v in params.items()})

    def log_metrics(self, metrics: Mapping[str, float]) -> None:
        """Metrics at step 0; NaN (e.g. AUROC of one class) is not logged; names made legal, then stored."""
        mlflow.log_metrics({stored(metric_name(k)): v for k, v in metrics.items() if v == v})

    def set_tags(self, tags: Mapping[str, str]) -> None:
        mlflow.set_tags(tags)

    def log_figure(self, fig, path: str) -> None:
        """A matplotlib figure as a PNG artifact; the figure is closed."""
        mlflow.log_figure(fig, path)
        plt.close(fig)

    def log_text(self, text: str, path: str) -> None:
        mlflow.log_text(text, path)

    def log_dict(self, d: dict, path: str) -> None:
        mlflow.log_dict(d, path)

    def log_files(self, files: Mapping[str, str]) -> None:
        """Text artifacts by artifact path, written to one temporary folder and logged in one call
        (one call per file costs a temporary folder and a store round trip each)."""
        with tempfile.TemporaryDirectory() as tmp:
            for rel, text in files.items():
                path = Path(tmp, rel)
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text, encoding="utf-8")
            mlflow.log_artifacts(tmp)

    def log_artifact(self, local: str, folder: str | None = None) -> None:
        mlflow.log_artifact(local, folder)

    def log_torch_model(self, model: Any, example: Any, output: Any) -> None:
        """The network as an MLflow model of this run (`registry.log_torch_model`)."""
        registry.log_torch_model(model, example, output)

    def log_dataset(self, manifest: Path, name: str, sha256: str) -> None:
        """The split manifest (CSV: path, label, split, ...) as the run's MLflow dataset input, so
        the UI's "Datasets" column names the data the run saw. Its digest is the manifest's
        SHA-256 cut to 32 hex digits (MLflow's digest column holds 36 characters); the full hash is
        the tag `manifest_sha256` and the dataset's tag `sha256`. The dataset entity (its schema
        and profile: a tenth of a second) is built once per manifest in a process."""
        entity = _dataset_input(str(Path(manifest).resolve()), name, sha256)
        client().log_inputs(self.run_id, datasets=[entity])
        mlflow.set_tag(DATASET_DIGEST, sha256[:32])


@functools.lru_cache(maxsize=64)
def _dataset_input(manifest: str, name: str, sha256: str) -> DatasetInput:
    df = pd.read_csv(manifest)
    with warnings.catch_warnings():  # the source's two equal readings; the int label column's hint
        warnings.simplefilter("ignore", UserWarning)
        ds = mlflow.data.from_pandas(df, source=manifest, targets="label", name=name, digest=sha256[:32])
        tags = {
            "sha256": sha256,
            "splits": ", ".join(f"{k} {v}" for k, v in df["split"].value_counts().items()),
            MLFLOW_DATASET_CONTEXT: "training",
        }
        return DatasetInput(dataset=ds._to_mlflow_entity(), tags=[InputTag(key=k, value=v) for k, v in tags.items()])


@contextlib.contextmanager
def cell_run(
    run_name: str,
    tags: dict[str, str],
    nested: bool = False,
    parent_run_id: str | None = None,
    killed_on: tuple[type[BaseException], ...] = (),
    state_tag: str | None = None,
) -> Iterator[ActiveRun]:
    """A run that always ends: FINISHED, FAILED on an exception, KILLED on Ctrl-C / SystemExit or
    on an exception of `killed_on`. With `state_tag`, the tag of that name says complete /
    pruned / failed / killed (and `<state_tag>_reason` why). A `killed_on` run (a pruned trial)
    also gets Optuna's `state=PRUNED` tag and a Description with the exception's message
    (`records.pruned_tags`): MLflow's UI shows KILLED without a word otherwise."""
    tags = {STAGE: current_stage(), **worker_tags(), **tags}
    if parent_run_id:
        tags = {**tags, "mlflow.parentRunId": parent_run_id}
    run = mlflow.start_run(run_name=run_name, tags=tags, nested=nested)
    mlflow.set_tags(tags)  # start_run drops them when it resumes `mlflow run`'s own run

    def end(status: RunStatus, state: str, reason: str = "") -> None:
        if state_tag:
            mlflow.set_tag(state_tag, state)
            if reason:
                mlflow.set_tag(f"{state_tag}_reason", reason[:MAX_TAG_CHARS])
        mlflow.end_run(RunStatus.to_string(status))

    try:
        yield ActiveRun(run.info.run_id)
    except (KeyboardInterrupt, SystemExit):
        end(RunStatus.KILLED, "killed")
        raise
    except killed_on as exc:
        mlflow.set_tags(pruned_tags(str(exc)))
        end(RunStatus.KILLED, "pruned", str(exc))
        raise
    except BaseException as exc:
        end(RunStatus.FAILED, "failed", f"{type(exc).__name__}: {exc}")
        raise
    else:
        end(RunStatus.FINISHED, "complete")


def mark_killed(run_id: str) -> None:
    """End a run its dead process left RUNNING."""
    client().set_terminated(run_id, KILLED)


def create_run(experiment_id: str, name: str, tags: Mapping[str, str]) -> str:
    """A run that stays open until `end_run`: a grid parent, a study, the report. It carries the
    source tags `mlflow.start_run` gives a cell run (`source_tags`), which `create_run` leaves out."""
    return (
        client()
        .create_run(
            experiment_id, run_name=name, tags={**source_tags(), STAGE: current_stage(), **worker_tags(), **tags}
        )
        .info.run_id
    )


def source_tags() -> dict[str, str]:
    """What MLflow itself tags a run it starts with in this process (its run-context providers):
    `mlflow.user`, `mlflow.source.name` (the command's path) and `.type` (LOCAL), and, when that
    path is in a git work tree, `mlflow.source.git.commit`, `.branch` and `.repoURL`."""
    return {k: str(v) for k, v in resolve_tags().items()}


def reopen(run_id: str) -> None:
    """RUNNING again: a parent whose children go on after an interruption ended it KILLED."""
    client().update_run(run_id, status="RUNNING")


def end_run(run_id: str, status: str) -> None:
    client().set_terminated(run_id, status)


def set_tag(run_id: str, key: str, value: str) -> None:
    client().set_tag(run_id, key, value[:MAX_TAG_CHARS])


def log_param(run_id: str, key: str, value: Any) -> None:
    client().log_param(run_id, key, param_text(value))


def log_params(run_id: str, params: Mapping[str, Any]) -> None:
    """Params onto any run, 100 at a time (MLflow's batch limit)."""
    items = [Param(k, param_text(v)) for k, v in params.items()]
    for i in range(0, len(items), 100):
        client().log_batch(run_id, params=items[i : i + 100])


def log_dict(run_id: str, d: dict, path: str) -> None:
    client().log_dict(run_id, d, path)


def log_text(run_id: str, text: str, path: str) -> None:
    client().log_text(run_id, text, path)


def log_figure(run_id: str, fig, path: str) -> None:
    """A matplotlib figure as a PNG artifact of any run (open or ended); the figure is closed."""
    client().log_figure(run_id, fig, path)
    plt.close(fig)


def log_artifacts(run_id: str, local_dir: str, folder: str | None = None) -> None:
    client().log_artifacts(run_id, local_dir, folder)


def log_artifact(run_id: str, local: str, folder: str | None = None) -> None:
    client().log_artifact(run_id, local, folder)

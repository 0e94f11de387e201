"""Where runs are kept: the MLflow store and one experiment per stage, set up once per process.

    setup(cfg, "grid")         # MLFLOW_TRACKING_URI, or sqlite:///mlflow.db in the working folder
    experiment_name(cfg, "grid")   # "finalbn/grid"
    tracking_uri()

Each stage's runs live in their own experiment, `<tracking.experiment>/<stage>` (STAGES), so that
MLflow's "group by" and charts never mix grid cells with search trials or the export's retraining;
every run also carries the tag `stage`.

MLflow's default store is `sqlite:///mlflow.db`; `MLFLOW_TRACKING_URI` (a server, PostgreSQL)
replaces it. Under `mlflow run` the project's own run id is in `MLFLOW_RUN_ID`: `finalbn train`
(one cell) logs into that run; every other command makes its own runs (`detach_project_run`).
"""
from __future__ import annotations

import logging
import os

import mlflow
from filelock import FileLock

from finalbn.config import Config

DEFAULT_URI = "sqlite:///mlflow.db"
# grid cells and parents; search trials, comparison runs and the study; the sensitivity stage's levels
# (its own cells; reference cells are the grid's); ceiling measurements; the report; the export's
# retraining and registered model; `finalbn train` outside `mlflow run`
STAGES = ("grid", "search", "sensitivity", "ceiling", "report", "export", "train")


def experiment_name(cfg: Config, stage: str) -> str:
    """The experiment of `stage`'s runs: `<tracking.experiment>/<stage>`. Raises ValueError for a
    stage not in STAGES."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}: one of {', '.join(STAGES)}")
    return f"{cfg.tracking.experiment}/{stage}"


def experiment_names(cfg: Config, *stages: str) -> list[str]:
    """The experiments to read `stages`' runs from (the export reads grid, search and export runs),
    and `<tracking.experiment>` itself: a store written before runs had an experiment per stage
    holds them all there, and its cells are found by key, not trained again."""
    return [experiment_name(cfg, s) for s in stages] + [cfg.tracking.experiment]


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI


def client() -> mlflow.MlflowClient:
    return mlflow.MlflowClient(tracking_uri=tracking_uri())


def quiet() -> None:
    """MLflow's INFO lines (creating tables, a new experiment) drown the lines that matter; its
    per-file artifact progress bars too, and with a tracking server a "View run ... at" line for
    every run that ends (one per cell: the cell's own line says what it did)."""
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")


quiet()  # in every process that tracks: the adapter is MLflow's only importer


def detach_project_run() -> None:
    """Under `mlflow run -e <stage>` the project's run id is in the environment: a stage that makes
    runs of its own (one per cell, trial or measurement) must not resume that one."""
    os.environ.pop("MLFLOW_RUN_ID", None)


_stage = {"now": ""}  # the stage of this process's last `setup`: every run it creates is tagged with it


def current_stage() -> str:
    return _stage["now"]


def setup(cfg: Config, stage: str) -> str:
    """Point MLflow at the store and `stage`'s experiment (`experiment_name`); returns its id.
    Under `mlflow run` the project's run is the run, in the experiment `mlflow run` chose.

    With a sqlite store, a file lock makes concurrent first calls (grid shards) take turns:
    two processes creating the tables or the experiment at once would fail."""
    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    name = experiment_name(cfg, stage)
    _stage["now"] = stage
    project_run = os.environ.get("MLFLOW_RUN_ID")
    if project_run:  # inside `mlflow run`: the project's run is the cell's run, in its experiment
        exp_id = mlflow.MlflowClient().get_run(project_run).info.experiment_id
        mlflow.set_experiment(experiment_id=exp_id)
        return exp_id
    if uri.startswith("sqlite:///"):
        with FileLock(uri[len("sqlite:///"):] + ".lock"):
            return mlflow.set_experiment(name).experiment_id
    return mlflow.set_experiment(name).experiment_id


def run_experiment(run_id: str) -> str:
    """The name of the experiment run `run_id` is in."""
    c = client()
    return c.get_experiment(c.get_run(run_id).info.experiment_id).name


def experiment_id(name: str, create: bool = False) -> str | None:
    """The id of experiment `name` (None when it does not exist, unless `create`)."""
    exp = client().get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    return client().create_experiment(name) if create else None

"""Where runs are kept: the MLflow store and the experiment, set up once per process.

    setup(cfg)                 # MLFLOW_TRACKING_URI, or sqlite:///mlflow.db in the working folder
    tracking_uri()

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


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI


def client() -> mlflow.MlflowClient:
    return mlflow.MlflowClient(tracking_uri=tracking_uri())


def quiet() -> None:
    """MLflow's INFO lines (creating tables, a new experiment) drown the lines that matter; its
    per-file artifact progress bars too."""
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


quiet()  # in every process that tracks: the adapter is MLflow's only importer


def detach_project_run() -> None:
    """Under `mlflow run -e <stage>` the project's run id is in the environment: a stage that makes
    runs of its own (one per cell, trial or measurement) must not resume that one."""
    os.environ.pop("MLFLOW_RUN_ID", None)


def setup(cfg: Config) -> str:
    """Point MLflow at the store and the experiment; returns the experiment id.

    With a sqlite store, a file lock makes concurrent first calls (grid shards) take turns:
    two processes creating the tables or the experiment at once would fail."""
    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    project_run = os.environ.get("MLFLOW_RUN_ID")
    if project_run:  # inside `mlflow run`: the project's run is the cell's run, in its experiment
        exp_id = mlflow.MlflowClient().get_run(project_run).info.experiment_id
        mlflow.set_experiment(experiment_id=exp_id)
        return exp_id
    if uri.startswith("sqlite:///"):
        with FileLock(uri[len("sqlite:///"):] + ".lock"):
            return mlflow.set_experiment(cfg.tracking.experiment).experiment_id
    return mlflow.set_experiment(cfg.tracking.experiment).experiment_id


def experiment_id(name: str, create: bool = False) -> str | None:
    """The id of experiment `name` (None when it does not exist, unless `create`)."""
    exp = client().get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    return client().create_experiment(name) if create else None

"""Where runs are kept: the MLflow store and one experiment per stage, set up once per process.

    setup(cfg, "grid")         # MLFLOW_TRACKING_URI, or sqlite:///mlflow.db in the working folder
    experiment_name(cfg, "grid")   # "finalbn/grid"
    tracking_uri()

Each stage's runs live in their own experiment, `<tracking.experiment>/<stage>` (STAGES), so that
MLflow's "group by" and charts never mix grid cells with search trials or the export's retraining;
every run also carries the tag `stage`.

A run a killed process left RUNNING never ends by itself: `setup` marks KILLED, once per process
and experiment, every RUNNING run of the experiment whose process (tags `finalbn.worker`,
`finalbn.worker_started`) is gone from this host (`reap`); a live process's runs, and runs made on
other hosts, are left alone (the grid decides on those before it redoes a cell, `owner.take_over`;
the search by its trials' leases).

Each experiment says what it holds: `setup` gives it a Description (MLflow's `mlflow.note.content`
tag, `DESCRIPTIONS`) and the kind that opens it in the UI's model-training view (tag
`mlflow.experimentKind` = `custom_model_development`), when it has none; `ui_url` is the address
of the grid's runs in that view (`make ui` prints it).

MLflow's default store is `sqlite:///mlflow.db`; `MLFLOW_TRACKING_URI` (a server, PostgreSQL)
replaces it. Under `mlflow run` the project's own run id is in `MLFLOW_RUN_ID`: `finalbn train`
(one cell) logs into that run; every other command makes its own runs (`detach_project_run`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path

import mlflow
from filelock import FileLock
from sqlalchemy.engine import make_url

from finalbn.config import Config
from finalbn.infra import io, liveness
from finalbn.infra.errors import StoreError, storage_full
from finalbn.tracking.records import FAILED, FINISHED, KILLED, NOTE, RUNNING, WORKER, WORKER_STARTED

DEFAULT_URI = "sqlite:///mlflow.db"
# grid cells and parents; search trials, comparison runs and the study; the sensitivity stage's levels
# (its own cells; reference cells are the grid's); the data-needs planner's cells and answer; ceiling measurements; the report; the export's
# retraining and registered model; `finalbn train` outside `mlflow run`
STAGES = ("grid", "search", "sensitivity", "needs", "ceiling", "report", "export", "train")
# What each stage's experiment holds: its Description in the MLflow UI (markdown).
DESCRIPTIONS = {
    "grid": "The factorial grid: one parent run per configuration (dataset, arch, the six switches, an imbalance "
    "baseline if any) with the mean over its replicates (their spread in its replicates.json) and its loss curves "
    "and reliability diagram; each replicate is a cell run nested under it. After the export, sort by "
    "`selection/rank`: the final-BN configurations as the export ranked them (rank 1 is the champion unless a "
    "search configuration won: the search's runs carry their rank too).",
    "search": "The Optuna search: one parent run per study (tag `finalbn.study`) with its trials nested under it "
    "(tag `finalbn.trial`; a pruned trial is KILLED, tagged `state=PRUNED`), and the runs that compare the best "
    "trials. After the export, a trial's runs carry their configuration's `selection/rank`.",
    "sensitivity": "The sensitivity stage: final BN alone (31) against nothing (63) with one setting changed at a "
    "time; one parent run per configuration and level, named by its setting (tags `sensitivity.factor`, "
    "`sensitivity.level`), its replicates nested. Reference levels are the grid's cells.",
    "needs": "The data-needs planner: cells of 31, 63 and a rival at each count of minority images, keyed like "
    "grid cells, and one run `data needs` with the learning curves and the answer (needs.json, needs.png).",
    "ceiling": "The ceiling: one run per dataset and arch, the cross-validated AUROC of a linear probe on the frozen "
    "body's features (can any head see the cue at all?).",
    "report": "The report: one run per build, the verdict in its description, every file of the report as an "
    "artifact (report.html: the whole report with its figures inside), its headline numbers as metrics.",
    "export": "The export: the retraining of the chosen run when it kept no weights, and the run holding the "
    "exported ONNX model that is registered as `finalbn` with the alias `champion`.",
    "train": "`finalbn train` outside `mlflow run`: one cell run per command.",
}
# The MLflow UI's view of an experiment: its tag `mlflow.experimentKind` (MLflow 3.x's server JS bundle),
# `custom_model_development` = the model-training view (runs, charts), against `genai_development` (traces).
# MLflow 3.17's UI opens whichever view its workflow switch holds (`?workflowType=` in the address, else
# the browser's last choice, GenAI at first), so `ui_url` names the view; the tag serves UIs without the switch.
EXPERIMENT_KIND, MODEL_TRAINING, WORKFLOW = "mlflow.experimentKind", "custom_model_development", "machine_learning"


def experiment_tags(stage: str) -> dict[str, str]:
    """The tags `stage`'s experiment is made with: the model-training kind and its Description.
    Raises KeyError for a stage not in STAGES."""
    return {EXPERIMENT_KIND: MODEL_TRAINING, NOTE: DESCRIPTIONS[stage]}


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
    uri = tracking_uri()
    created(uri)
    return mlflow.MlflowClient(tracking_uri=uri)


_created: set[str] = set()


def created(uri: str) -> None:
    """Make sure the SQLite store `uri` names exists whole (a no-op for another store, or once done
    in this process). MLflow creates a store's tables by running its schema migrations, seconds of
    them, on the file itself: a command killed meanwhile (a Ctrl-C during a first `make run`) left
    a half-made file on which every later command failed (`table _alembic_tmp_runs already exists`).
    So a new store is made in a temporary file beside it (`io.temporary_name`; a dead process's is
    swept) and linked into place, never over a store another process made first. Raises what
    MLflow raises for a store it cannot create."""
    db = sqlite_path(uri)
    if db is None or uri in _created:
        return
    path = Path(db).resolve()
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(f"{path}.lock"):
            io.sweep(path)
            if not path.exists():
                tmp = io.temporary_name(path)
                try:
                    made = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp}")
                    made.search_experiments(max_results=1)  # MLflow makes the tables, every migration
                    with contextlib.suppress(FileExistsError):
                        os.link(tmp, path)  # all at once, and only where there is none
                finally:
                    tmp.unlink(missing_ok=True)
    _created.add(uri)


def quiet() -> None:
    """MLflow's INFO lines (creating tables, a new experiment) drown the lines that matter; its
    per-file artifact progress bars too, and with a tracking server a "View run ... at" line for
    every run that ends (one per cell: the cell's own line says what it did)."""
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    # a full disk under the store: MLflow logs the SQL error's traceback, then raises it, and the
    # command line says it in one line (`errors.storage_full`): the traceback is left out
    logging.getLogger("mlflow.store.db.utils").addFilter(_not_storage_full)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")


def _not_storage_full(record: logging.LogRecord) -> bool:
    """A logging filter: False for a record of storage that refused a write."""
    return not (record.exc_info and record.exc_info[1] is not None and storage_full(record.exc_info[1]))


quiet()  # in every process that tracks: the adapter is MLflow's only importer


def detach_project_run() -> None:
    """Under `mlflow run -e <stage>` the project's run id is in the environment: a stage that makes
    runs of its own (one per cell, trial or measurement) must not resume that one."""
    os.environ.pop("MLFLOW_RUN_ID", None)


_stage = {"now": ""}  # the stage of this process's last `setup`: every run it creates is tagged with it


def current_stage() -> str:
    return _stage["now"]


def worker_tags() -> dict[str, str]:
    """The tags that name this process on every run it makes."""
    me = liveness.identity()
    return {WORKER: f"{me['host']}:{me['pid']}", WORKER_STARTED: f"{me['started']:.3f}"}


def run_process(tags: Mapping[str, str]) -> dict | None:
    """The process that made a run, from its tags (`worker_tags`): {"host", "pid"[, "started"]};
    None when they name none (a run of an older finalbn)."""
    host, _, pid = tags.get(WORKER, "").rpartition(":")
    if not host or not pid.isdigit():
        return None
    started = tags.get(WORKER_STARTED)
    return {"host": host, "pid": int(pid), **({"started": float(started)} if started else {})}


def process_gone(tags: Mapping[str, str]) -> bool | None:
    """Whether the process that made a run (its tags) has ended: True or False on this host
    (`liveness.gone`); None for a run made on another host, or one naming no process."""
    who = run_process(tags)
    return None if who is None else liveness.gone(who)


def reap(experiment_ids: list[str], own: bool = False, since_ms: int = 0) -> list[str]:
    """Mark KILLED the RUNNING runs of `experiment_ids` whose process is gone from this host (and,
    with `own`, this process's: called on Ctrl-C once its runs were closed); only runs started at
    or after `since_ms`. Returns their ids."""
    c, me = client(), worker_tags()
    ids = [i for i in experiment_ids if i]
    if not ids:
        return []
    reaped, token = [], None
    while True:
        page = c.search_runs(
            ids,
            f"attributes.status = '{RUNNING}' and attributes.start_time >= {since_ms}",
            max_results=1000,
            page_token=token,
        )
        for run in page:
            who = run_process(run.data.tags)
            mine = own and run.data.tags.get(WORKER) == me[WORKER]
            if who is not None and (mine or liveness.gone(who)):
                c.set_terminated(run.info.run_id, KILLED)
                reaped.append(run.info.run_id)
        token = page.token
        if not token:
            return reaped


def after_interrupt(cfg: Config, since_ms: int) -> dict[str, int]:
    """On Ctrl-C, once this process's runs were closed: mark KILLED what it (or a process of its
    own that is gone) left RUNNING in the study's experiments, and count the runs since `since_ms`
    by status: {"FINISHED": n, "KILLED": n, "FAILED": n}."""
    c = client()
    ids = [
        e.experiment_id
        for e in c.search_experiments()
        if e.name == cfg.tracking.experiment or e.name.startswith(f"{cfg.tracking.experiment}/")
    ]
    reap(ids, own=True, since_ms=since_ms)
    counts = {FINISHED: 0, KILLED: 0, FAILED: 0}
    token = None
    while ids:
        page = c.search_runs(ids, f"attributes.start_time >= {since_ms}", max_results=1000, page_token=token)
        for run in page:
            if run.info.status in counts:
                counts[run.info.status] += 1
        token = page.token
        if not token:
            break
    return counts


_reaped: set[tuple[str, str]] = set()  # experiments this process has reaped (once each)


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
    created(uri)
    db = sqlite_path(uri)
    if db is not None:
        with FileLock(f"{db}.lock"):
            exp_id = _open(name, stage, uri)
    else:
        exp_id = _open(name, stage, uri)
    if (uri, exp_id) not in _reaped:
        _reaped.add((uri, exp_id))
        reap([exp_id])
    return exp_id


def _open(name: str, stage: str, uri: str) -> str:
    """Experiment `name` made current (created when new), with the tags of `experiment_tags` it
    lacks: an experiment made before it had them gets them; one a user changed (a Description
    edited in the UI) keeps theirs. Returns its id."""
    _not_in_trash(name, uri)
    exp = mlflow.set_experiment(name)
    for key, value in experiment_tags(stage).items():
        if key not in exp.tags:
            client().set_experiment_tag(exp.experiment_id, key, value)
    return exp.experiment_id


def ui_url(cfg: Config, host: str = "127.0.0.1", port: int = 5000, uri: str | None = None) -> str:
    """The address at which `mlflow ui --host <host> --port <port>` on the store `uri` (default
    `tracking_uri()`) shows the grid's runs in the model-training view:
    `http://127.0.0.1:5000/#/experiments/<id>/runs?workflowType=machine_learning` (the UI's hash
    route); the experiments list in that view while the store holds no grid experiment. Reads the
    store, creates nothing. Raises what MLflow raises for a store it cannot read."""
    uri = uri or tracking_uri()
    db = sqlite_path(uri)
    exp = None
    if db is None or Path(db).is_file():
        exp = mlflow.MlflowClient(tracking_uri=uri).get_experiment_by_name(experiment_name(cfg, "grid"))
    where = f"experiments/{exp.experiment_id}/runs" if exp is not None else "experiments"
    return f"http://{host}:{port}/#/{where}?workflowType={WORKFLOW}"


def sqlite_path(uri: str) -> str | None:
    """The file of a SQLite store as SQLAlchemy (and so MLflow) opens it: percent-decoded, without
    the query (`sqlite:////my%20store/x.db?timeout=30` -> `/my store/x.db`); None for another store."""
    if not uri.startswith("sqlite:"):
        return None
    db = make_url(uri).database
    return db if db and db != ":memory:" else None


def _not_in_trash(name: str, uri: str) -> None:
    """Raise StoreError, saying what to do, when experiment `name` was deleted (MLflow keeps it, and
    refuses to use it or make another of that name, until it is restored or purged)."""
    exp = client().get_experiment_by_name(name)
    if exp is not None and exp.lifecycle_stage == "deleted":
        i = exp.experiment_id
        raise StoreError(
            f"experiment {name!r} (id {i}) is in MLflow's trash: restore it (`mlflow experiments restore "
            f"--experiment-id {i}`) or delete it for good (`mlflow gc --backend-store-uri {uri} "
            f"--experiment-ids {i}`), then run again"
        )


def now_ms() -> int:
    return int(time.time() * 1000)


def run_experiment(run_id: str) -> str:
    """The name of the experiment run `run_id` is in."""
    c = client()
    return c.get_experiment(c.get_run(run_id).info.experiment_id).name


def experiment_id(name: str, create: bool = False) -> str | None:
    """The id of experiment `name` (None when it does not exist, unless `create`)."""
    exp = client().get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    if not create:
        return None
    stage = name.rpartition("/")[2]  # `<tracking.experiment>/<stage>`: made with its stage's tags
    return client().create_experiment(name, tags=experiment_tags(stage) if stage in STAGES else None)

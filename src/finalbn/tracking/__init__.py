"""MLflow tracking — the only part of finalbn that imports MLflow, and it imports no training code.

    setup(cfg, "grid")                                  # the store and the stage's experiment
    with cell_run("BN r0", tags) as run:                # a run that always ends
        run_cell(..., callbacks=[run.epoch_logger()])   # per-epoch metrics, step = epoch
    runs = finished_cell_runs(experiment_names(cfg, "grid"))                # typed RunRecords, never MLflow objects

Modules: `store` (URI, experiment, `mlflow run`'s environment), `records` (RunRecord and every
tag name), `runs` (writing runs), `query` (reading them), `parents` (grid and study parent
runs), `outputs` (the ceiling's and the report's runs), `registry` (logged models, the
registered name and alias), `fingerprint` (whether the store holds what a stage's outputs cite),
`owner` (one live command per stage's experiment: `with owned(cfg, "grid"):`). Stages wrap
cells in these contexts (`finalbn.stages.cellrun`), so a test can run a stage's core with no store at all.
"""

import importlib
from typing import TYPE_CHECKING, Any

from finalbn.tracking import records
from finalbn.tracking.records import RunRecord, latest

if TYPE_CHECKING:  # what a type checker and the import graph see; at run time each loads on first use
    from finalbn.tracking import fingerprint
    from finalbn.tracking.outputs import log_report
    from finalbn.tracking.owner import owned
    from finalbn.tracking.parents import finish_study_parent, study_parent
    from finalbn.tracking.query import artifact_text, download, finished_cell_runs, get_run, runs_by_tag, search
    from finalbn.tracking.registry import ALIAS, REGISTERED_NAME, log_onnx_and_register
    from finalbn.tracking.runs import ActiveRun, cell_run, log_figure, mark_killed
    from finalbn.tracking.store import (
        after_interrupt,
        detach_project_run,
        experiment_name,
        experiment_names,
        run_experiment,
        setup,
        tracking_uri,
    )

# name -> the module that defines it: these modules import MLflow, so `finalbn.tracking.records`
# (the run records and tag names a `MemoryTracker` needs) imports without it
_LAZY = {
    "log_report": "outputs",
    "owned": "owner",
    **dict.fromkeys(("finish_study_parent", "study_parent"), "parents"),
    **dict.fromkeys(("artifact_text", "download", "finished_cell_runs", "get_run", "runs_by_tag", "search"), "query"),
    **dict.fromkeys(("ALIAS", "REGISTERED_NAME", "log_onnx_and_register"), "registry"),
    **dict.fromkeys(("ActiveRun", "cell_run", "log_figure", "mark_killed"), "runs"),
    **dict.fromkeys(
        (
            "after_interrupt",
            "detach_project_run",
            "experiment_name",
            "experiment_names",
            "run_experiment",
            "setup",
            "tracking_uri",
        ),
        "store",
    ),
}
_MODULES = {"adapter", "fingerprint", "outputs", "owner", "parents", "query", "registry", "runs", "store"}


def __getattr__(name: str) -> Any:
    """A re-exported name or a submodule, imported (with MLflow) the first time it is asked for."""
    if name in _MODULES:
        return importlib.import_module(f"{__name__}.{name}")
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ActiveRun",
    "after_interrupt",
    "ALIAS",
    "artifact_text",
    "cell_run",
    "detach_project_run",
    "download",
    "experiment_name",
    "experiment_names",
    "fingerprint",
    "finish_study_parent",
    "finished_cell_runs",
    "get_run",
    "latest",
    "log_figure",
    "log_onnx_and_register",
    "log_report",
    "mark_killed",
    "owned",
    "records",
    "REGISTERED_NAME",
    "run_experiment",
    "RunRecord",
    "runs_by_tag",
    "search",
    "setup",
    "study_parent",
    "tracking_uri",
]

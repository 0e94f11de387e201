"""The study's outputs: results/search.json (counts by state, the best trial, the comparison),
Optuna's plots, and the study's parent run closed with its numbers.

    out = finish(study, cfg, parent_run_id, seconds, plot_dir=Path("results"), comparison=...)
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import optuna
from optuna.trial import TrialState
from optuna.visualization import matplotlib as ovm

from finalbn import tracking
from finalbn.config import Config
from finalbn.infra.io import save_figure
from finalbn.stages.search.objective import SWITCHES, TIE_BREAK, best_trial
from finalbn.stages.search.space import multi_objective
from finalbn.stages.search.study import directions

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
PLOTS = {
    "history": ovm.plot_optimization_history,
    "importances": ovm.plot_param_importances,
    "parallel": ovm.plot_parallel_coordinate,
}


def summary(cfg: Config, study: optuna.Study, seconds: float | None = None) -> dict:
    """results/search.json: counts by state, the best trial (on validation) and its params, the
    replicates behind its objective (`best.replicates`: its value is their mean) and each one's value."""
    trials = study.get_trials(deepcopy=False)
    counts = {s.name.lower(): sum(1 for t in trials if t.state == s) for s in TrialState}
    out: dict[str, Any] = {
        "study": study.study_name,
        "storage": cfg.search.storage,
        "objective": cfg.search.objective,
        "directions": directions(cfg),
        "trials": len(trials),
        "states": counts,
        "mlflow_run_id": study.user_attrs.get("mlflow_run_id"),
        # every finished trial's runs (one per replicate): what the study's store must hold
        "trial_mlflow_run_ids": {
            str(t.number): t.user_attrs.get("mlflow_run_ids", []) for t in trials if t.state in FINISHED
        },
    }
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    if seconds:
        out["trials_per_hour"] = (
            len([t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]) / seconds * 3600
        )
    if done and not multi_objective(cfg):
        best = best_trial(study)
        ties = [t.number for t in done if t.value == best.value]
        out["best"] = {
            "number": best.number,
            "value": best.value,
            "params": best.params,
            "replicates": best.user_attrs.get("replicates"),
            "values_per_replicate": best.user_attrs.get("values_per_replicate"),
            "mlflow_run_id": best.user_attrs.get("mlflow_run_id"),
            "mlflow_run_ids": best.user_attrs.get("mlflow_run_ids"),
            "config_name": best.user_attrs.get("config_name"),
            "switches": best.user_attrs.get(SWITCHES),
            "val_balanced_loss": best.user_attrs.get(TIE_BREAK),
            "val_minority_f1": best.user_attrs.get("val_minority_f1"),
            "tied_on_objective": ties,
            "test_minority_f1": best.user_attrs.get("test_minority_f1"),
        }
    elif done:
        out["pareto"] = [
            {
                "number": t.number,
                "values": t.values,
                "params": t.params,
                "replicates": t.user_attrs.get("replicates"),
                "mlflow_run_id": t.user_attrs.get("mlflow_run_id"),
            }
            for t in study.best_trials
        ]
    return out


def plots(study: optuna.Study, cfg: Config, out_dir: Path) -> list[Path]:
    """Optuna's matplotlib plots of the study (history, parameter importances, parallel
    coordinates) as PNG files; a plot the study cannot make yet (too few trials) is skipped."""
    out_dir.mkdir(parents=True, exist_ok=True)
    target = None
    name: str = cfg.search.objective
    if multi_objective(cfg):  # one plot per objective
        target, name = (lambda t: t.values[0]), "validation AUROC"
    made = []
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    for kind, fn in PLOTS.items():
        if len(complete) < (2 if kind != "history" else 1):
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
            try:
                ax = fn(study, target=target, target_name=name)
            except (ValueError, RuntimeError, ZeroDivisionError):  # e.g. no parameter varied
                continue
        fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
        fig.set_size_inches(9, 5)
        path = out_dir / f"search_{kind}.png"
        save_figure(fig, path, dpi=100, bbox_inches="tight")
        plt.close(fig)
        made.append(path)
    return made


def finish(
    study: optuna.Study,
    cfg: Config,
    parent_run_id: str,
    seconds: float,
    plot_dir: Path | None = None,
    comparison: dict | None = None,
) -> dict:
    out = summary(cfg, study, seconds)
    if comparison is not None:
        out["comparison"] = comparison
    best = out.get("best") or {}
    figures = plots(study, cfg, plot_dir) if plot_dir is not None else []
    out["plots"] = [str(p) for p in figures]
    tracking.finish_study_parent(
        parent_run_id,
        {"trials": out["trials"], "best_value": best.get("value"), "trials_per_hour": out.get("trials_per_hour")},
        out,
        figures,
    )
    return out

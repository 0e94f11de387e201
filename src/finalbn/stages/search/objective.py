"""A trial: one cell — the grid's own code — on `search.replicate`, scored on validation.

    optimize(cfg, splits, parent_run_id)     # this process's share of the study

Each trial is a tracked run `trial-<n>` under the study's parent run (`parent_run_id=`, which
works across processes), whose id is the trial's user attribute `mlflow_run_id`. It reports its
validation value every epoch; the pruner stops poor ones — a pruned trial's run ends KILLED,
tagged `trial_state=pruned`. A trial whose loss turns NaN is FAILED with its reason and the
study goes on. Test metrics are logged with the run and decide nothing.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from finalbn.config import Config, config_name
from finalbn.engine import TrainingDiverged
from finalbn.keys import result_key
from finalbn.stages.search.space import multi_objective, suggest
from finalbn.stages.search.study import OBJECTIVES, finished, open_study, study_name
from finalbn.tracked import track_cell
from finalbn.tracking import records as tags

PER_EPOCH = {"val_auroc": "val_auroc", "val_minority_f1": "val_minority_f1", "val_ap": "val_ap",
             "val_balanced_loss": "val_balanced_loss"}
TIE_BREAK = "val_balanced_loss"  # among trials tied on the objective (AUROC saturates on 7 positives): lower wins


class PruningCallback:
    """engine callback: reports the epoch's validation value; raises TrialPruned when the pruner
    says so (a single-objective study; Optuna cannot prune two objectives)."""

    def __init__(self, trial: optuna.Trial, key: str) -> None:
        self.trial, self.key = trial, key

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        value = metrics.get(self.key)
        if value is None or value != value:  # NaN (one class in validation): nothing to compare
            return
        self.trial.report(float(value), epoch)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned at epoch {epoch}: {self.key} {value:.4f}")


def objective_values(cfg: Config, val: dict[str, float]) -> float | tuple[float, float]:
    """The trial's score from its validation metrics at the last epoch (the grid's protocol)."""
    if multi_objective(cfg):
        return float(val["auroc"]), float(val["ece"])
    return float(val[OBJECTIVES[cfg.search.objective][0]])


def make_objective(cfg: Config, splits: Path, parent_run_id: str) -> Callable[[optuna.Trial], Any]:
    dataset = cfg.datasets[0].name

    def objective(trial: optuna.Trial):
        tcfg = suggest(trial, cfg)
        callbacks = [] if multi_objective(cfg) else [PruningCallback(trial, PER_EPOCH[cfg.search.objective])]
        # the key of what the trial computes: the comparison after the study finds it as the best
        # configuration's run on this replicate (and the grid's cells the same way)
        key = result_key(tcfg, dataset, cfg.search.replicate, splits)
        trial.set_user_attr("config_name", config_name(tcfg.ablation))  # also for a pruned or failed trial's line
        try:
            _, result = track_cell(
                tcfg, dataset, splits, callbacks=callbacks, run_name=f"trial-{trial.number}",
                parent_run_id=parent_run_id, replicate=cfg.search.replicate, killed_on=(optuna.TrialPruned,),
                state_tag=tags.TRIAL_STATE, on_start=lambda rid: trial.set_user_attr("mlflow_run_id", rid),
                extra_tags={tags.TRIAL: "true", tags.STUDY_NAME: study_name(cfg), tags.TRIAL_NUMBER: str(trial.number),
                            tags.RESULT_KEY: key})
        except TrainingDiverged as exc:
            trial.set_user_attr("fail_reason", str(exc))
            raise
        trial.set_user_attr("test_minority_f1", result.test_last["f1_1"])  # reported, never optimised
        val = {**result.val_last, "balanced_loss": result.fit.history[-1]["val_balanced_loss"]}
        trial.set_user_attr(TIE_BREAK, float(val["balanced_loss"]))
        trial.set_user_attr("val_minority_f1", float(val["f1_1"]))
        return objective_values(cfg, val)

    return objective


def best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial:
    """The best COMPLETE trial of a single-objective study; ties on the objective (validation AUROC
    is 1.0 for many trials when validation holds 7 positives) go to the lower validation balanced
    loss, then the earlier trial. Validation only: test values never decide."""
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    if not done:
        raise ValueError("the study has no complete trial")
    sign = 1.0 if study.direction == optuna.study.StudyDirection.MAXIMIZE else -1.0
    return max(done, key=lambda t: (sign * t.value, -float(t.user_attrs.get(TIE_BREAK, float("inf"))), -t.number))


class TrialLog:
    """Study callback: one line per finished trial (state, value, configuration, seconds)."""

    def __init__(self, cfg: Config, log: Callable[[str], None] = print) -> None:
        self.cfg, self.log = cfg, log

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        done = finished(study)
        secs = (trial.datetime_complete - trial.datetime_start).total_seconds() \
            if trial.datetime_complete and trial.datetime_start else float("nan")
        if trial.state == TrialState.COMPLETE:
            what = ", ".join(f"{v:.4f}" for v in trial.values)
            what = f"{self.cfg.search.objective} {what}"
        elif trial.state == TrialState.PRUNED:
            last = trial.intermediate_values
            what = f"pruned at epoch {max(last)}" if last else "pruned"
        else:
            what = f"FAILED: {trial.user_attrs.get('fail_reason', 'see its run')}"
        self.log(f"search: trial {trial.number} ({trial.user_attrs.get('config_name', '?')}) {what}, {secs:.0f} s "
                 f"[{done}/{self.cfg.search.n_trials} finished]")


def optimize(cfg: Config, splits: Path, parent_run_id: str, worker: int = 0) -> None:
    """This process's share of the study: trials until the study holds n_trials finished ones."""
    study = open_study(cfg, worker)
    # the cap counts finished (complete or pruned) trials over all workers, and the ones other
    # workers are running (they will finish): a worker stops when the study will have n_trials,
    # so two workers do not overshoot. Failed ones are replaced, up to as many again per process,
    # so a study that always fails still ends.
    cap = optuna.study.MaxTrialsCallback(cfg.search.n_trials,
                                         states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING))
    if finished(study) >= cfg.search.n_trials:
        return
    study.optimize(make_objective(cfg, splits, parent_run_id), n_trials=2 * cfg.search.n_trials, n_jobs=1,
                   callbacks=[cap, TrialLog(cfg, lambda m: print(m, flush=True))], catch=(TrainingDiverged,),
                   gc_after_trial=False)

"""A trial: one configuration raced over replicates 0..K-1 (`selection.replicates`), each one cell
— the grid's own code — scored on validation.

    optimize(cfg, splits, parent_run_id)     # this process's share of the study

A trial's steps are its replicates, and the epochs within them: it trains replicate 0, then 1,
... each as a tracked run `trial-<n> r<r>` under the study's parent run (`parent_run_id=`, which
works across processes), tagged with its result key (the comparison finds it by that). Every
epoch it reports the running mean of its validation value — the finished replicates' last-epoch
values and this epoch's — at step r * steps_per_replicate + epoch, and the pruner stops a poor
one inside any replicate: a trial pruned on replicate 0 never trains replicate 1. The pruned
replicate's run ends KILLED, tagged `trial_state=pruned` (the finished ones stay FINISHED). Its
objective is the mean over the K replicates of the validation value at the last epoch (the grid's
protocol, `finalbn.stats.selection`'s rule), never one split's 7 positives. A trial whose loss turns NaN
is FAILED with its reason and the study goes on. A trial stopped by Ctrl-C is FAILED too, and
retried with its parameters when the search resumes (so is a killed worker's: `study.fail_stale`). Test metrics are logged with the runs and decide
nothing.

User attributes: `mlflow_run_ids` (one per replicate started), `mlflow_run_id` (replicate 0's),
`replicates` (those finished), `per_replicate` (each one's values and run), the means `TIE_BREAK`
(validation balanced loss), `val_minority_f1` and `test_minority_f1` (reported only), `switches`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.trial import TrialState

from finalbn.config import TOGGLES, Config, config_name
from finalbn.stages.cellrun import CellHooks, CellRun, track_cell
from finalbn.stages.cost import duration
from finalbn.stages.search.lease import lease
from finalbn.stages.search.space import multi_objective, steps_per_replicate, suggest
from finalbn.stages.search.study import EPOCHS, OBJECTIVES, RetryDeadWorker, finished, open_study
from finalbn.stats.selection import TIE_BREAK
from finalbn.tracking import records as tags
from finalbn.tracking.adapter import MLFLOW
from finalbn.train.cell import CellResult
from finalbn.train.engine import TrainingDiverged
from finalbn.train.keys import result_key

PER_EPOCH = {
    "val_auroc": "val_auroc",
    "val_minority_f1": "val_minority_f1",
    "val_ap": "val_ap",
    "val_balanced_loss": "val_balanced_loss",
}
# TIE_BREAK: among trials tied on the objective (AUROC saturates on 7 positives), the lower mean wins
SWITCHES = "switches"  # how many of the six switches are on: the simpler wins a tie on both
STEPS = "steps_per_replicate"


class PruningCallback:
    """engine callback for replicate `replicate` of a trial: reports the running mean of the
    epoch's validation value with the finished replicates' last-epoch values (`done`) at step
    replicate * stride + epoch; raises TrialPruned when the pruner says so (a single-objective
    study; Optuna cannot prune two objectives)."""

    def __init__(
        self, trial: optuna.Trial, key: str, replicate: int = 0, stride: int = 0, done: list[float] | tuple = ()
    ) -> None:
        self.trial, self.key, self.replicate, self.stride = trial, key, replicate, stride
        self.done = [float(v) for v in done if v == v]  # a NaN replicate (one class in validation) is left out

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        value = metrics.get(self.key)
        if value is None or value != value:  # NaN (one class in validation): nothing to compare
            return
        mean = (sum(self.done) + float(value)) / (len(self.done) + 1)
        self.trial.report(mean, self.replicate * self.stride + epoch)
        if self.trial.should_prune():
            raise optuna.TrialPruned(
                f"pruned at epoch {epoch} of replicate {self.replicate}: running mean "
                f"{self.key} {mean:.4f} over {len(self.done) + 1} replicate(s)"
            )


def replicate_values(cfg: Config, result: CellResult, run_id: str, replicate: int) -> dict[str, Any]:
    """One replicate's numbers at the last epoch: the objective's value(s) on validation, the
    tie-break, validation and test minority F1 (test: reported, never optimised)."""
    val = result.val_last
    value: Any = (
        [float(val["auroc"]), float(val["ece"])]
        if multi_objective(cfg)
        else float(val[OBJECTIVES[cfg.search.objective][0]])
    )
    return {
        "replicate": replicate,
        "value": value,
        TIE_BREAK: float(val["balanced_loss"]),
        "val_minority_f1": float(val["f1_1"]),
        "test_minority_f1": float(result.test_last["f1_1"]),
        "run_id": run_id,
    }


def objective_values(cfg: Config, per: list[dict[str, Any]]) -> float | tuple[float, float]:
    """The trial's score: the mean over its replicates of the validation value(s) at the last epoch."""
    if multi_objective(cfg):
        return float(np.mean([p["value"][0] for p in per])), float(np.mean([p["value"][1] for p in per]))
    return float(np.mean([p["value"] for p in per]))


def trial_name(tcfg: Config) -> str:
    """A trial's switches as the grid names them ('BN+WL'), with the final layer it drew in place of
    BN: 'SELU+WL' when it is the paper's SELU variant (a 'BN' there misled a reader of the trials)."""
    name = config_name(tcfg.ablation)
    if tcfg.ablation.bn and tcfg.model.final_variant != "bn":
        name = "+".join(tcfg.model.final_variant.upper() if part == "BN" else part for part in name.split("+"))
    return name


def _switches_on(cfg: Config) -> int:
    """How many of the six switches `cfg` has on."""
    return sum(bool(getattr(cfg.ablation, t)) for t in TOGGLES)


def make_objective(cfg: Config, splits: Path, parent_run_id: str) -> Callable[[optuna.Trial], Any]:
    dataset, k = cfg.datasets[0].name, cfg.selection.replicates

    def objective(trial: optuna.Trial):
        try:
            return _objective(trial)
        except KeyboardInterrupt:  # FAIL (Optuna), and retried with its parameters when the search resumes
            reason = f"trial {trial.number} was stopped by Ctrl-C"
            trial.set_user_attr("fail_reason", reason)
            RetryDeadWorker(cfg)(
                trial.study, trial.study._storage.get_trial(trial._trial_id), f"{reason}: FAIL, retried"
            )
            raise

    def _objective(trial: optuna.Trial):
        tcfg = suggest(trial, cfg)
        trial.set_user_attr("config_name", trial_name(tcfg))  # also for a pruned or failed trial's line
        trial.set_user_attr(SWITCHES, _switches_on(tcfg))
        trial.set_user_attr(STEPS, steps_per_replicate(cfg))
        trial.set_user_attr(EPOCHS, tcfg.train.epochs)  # where each replicate ends (the pruner decides there)
        per: list[dict[str, Any]] = []
        ids: list[str] = []
        with lease(trial.study, trial, cfg.search.heartbeat_s):  # who runs it, renewed while it runs
            for r in range(k):  # the race: the next replicate only while the running mean is promising
                run_id, result = _replicate(trial, cfg, tcfg, dataset, splits, parent_run_id, r, per, ids)
                per.append(replicate_values(cfg, result, run_id, r))
                _record(trial, per)
        return objective_values(cfg, per)

    return objective


def _replicate(
    trial: optuna.Trial,
    cfg: Config,
    tcfg: Config,
    dataset: str,
    splits: Path,
    parent_run_id: str,
    r: int,
    per: list[dict],
    ids: list[str],
) -> tuple[str, CellResult]:
    """Replicate `r` of the trial as one tracked run; pruned (TrialPruned) on the running mean."""
    callbacks = (
        []
        if multi_objective(cfg)
        else [
            PruningCallback(
                trial, PER_EPOCH[cfg.search.objective], r, steps_per_replicate(cfg), [p["value"] for p in per]
            )
        ]
    )
    # the key of what the run computes: the comparison after the study finds it as this
    # configuration's run on this replicate (and the grid's cells the same way)
    key = result_key(tcfg, dataset, r, splits)

    def started(run_id: str) -> None:
        ids.append(run_id)
        trial.set_user_attr("mlflow_run_ids", list(ids))  # the last one is the run in progress
        if r == 0:
            trial.set_user_attr("mlflow_run_id", run_id)

    try:
        where = CellRun(
            "search",
            f"trial {trial.number} · {trial_name(tcfg)} r{r}",
            parent_run_id,
            {
                tags.TRIAL: "true",
                tags.STUDY_NAME: trial.study.study_name,
                tags.TRIAL_NUMBER: str(trial.number),
                tags.RESULT_KEY: key,
            },
        )
        hooks = CellHooks(
            callbacks=callbacks, on_start=started, killed_on=(optuna.TrialPruned,), state_tag=tags.TRIAL_STATE
        )
        return track_cell(tcfg, dataset, splits, where, MLFLOW, replicate=r, hooks=hooks)
    except TrainingDiverged as exc:
        trial.set_user_attr("fail_reason", f"replicate {r}: {exc}")
        raise


def _record(trial: optuna.Trial, per: list[dict[str, Any]]) -> None:
    """The finished replicates' numbers, and their means, as user attributes (kept by a trial
    pruned later)."""
    trial.set_user_attr("replicates", [p["replicate"] for p in per])
    trial.set_user_attr("per_replicate", per)
    trial.set_user_attr("values_per_replicate", [p["value"] for p in per])
    for name in (TIE_BREAK, "val_minority_f1", "test_minority_f1"):
        trial.set_user_attr(name, float(np.mean([p[name] for p in per])))


def best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial:
    """The best COMPLETE trial of a single-objective study; ties on the objective (mean validation
    AUROC is 1.0 for many trials when validation holds 7 positives) go to the lower mean validation
    balanced loss, then fewer switches, then the earlier trial. Validation only: test values never
    decide."""
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    if not done:
        raise ValueError("the study has no complete trial")
    sign = 1.0 if study.direction == optuna.study.StudyDirection.MAXIMIZE else -1.0

    def order(t: optuna.trial.FrozenTrial):
        tie = t.user_attrs.get(TIE_BREAK)
        tie = float("inf") if tie is None or tie != tie else float(tie)
        return sign * t.value, -tie, -int(t.user_attrs.get(SWITCHES, 0)), -t.number

    return max(done, key=order)


def pruned_at(trial: optuna.trial.FrozenTrial) -> str:
    """Where a pruned trial stopped: its replicate and epoch (its last reported step)."""
    steps = trial.intermediate_values
    if not steps:
        return "pruned"
    last, stride = max(steps), trial.user_attrs.get(STEPS)
    if not stride:
        return f"pruned at epoch {last}"
    r, e = divmod(last - 1, int(stride))
    return f"pruned at epoch {e + 1} of replicate {r}"


class TrialLog:
    """Study callback: one line per finished trial (state, value, configuration, seconds)."""

    def __init__(self, cfg: Config, log: Callable[[str], None] = print) -> None:
        self.cfg, self.log = cfg, log

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        done = finished(study)
        secs = (
            (trial.datetime_complete - trial.datetime_start).total_seconds()
            if trial.datetime_complete and trial.datetime_start
            else float("nan")
        )
        if trial.state == TrialState.COMPLETE:
            what = ", ".join(f"{v:.4f}" for v in trial.values)
            what = (
                f"{self.cfg.search.objective} {what} (mean over replicates "
                f"{_span(trial.user_attrs.get('replicates') or [])})"
            )
        elif trial.state == TrialState.PRUNED:
            what = pruned_at(trial)
        else:
            what = f"FAILED: {trial.user_attrs.get('fail_reason', 'see its run')}"
        self.log(
            f"search: trial {trial.number} ({trial.user_attrs.get('config_name', '?')}) {what}, {secs:.0f} s "
            f"[{done}/{self.cfg.search.n_trials} finished{_left(study, self.cfg, done)}]"
        )


def _left(study: optuna.Study, cfg: Config, done: int) -> str:
    """`, about 2 min 10 s left`: the trials still to finish at the mean time of the finished
    ones, shared by the workers (empty before any trial finished, or when none is left)."""
    spent = [
        t.duration.total_seconds()
        for t in study.trials
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED) and t.duration is not None
    ]
    left = cfg.search.n_trials - done
    if left <= 0 or not spent:
        return ""
    return f", about {duration(sum(spent) / len(spent) * left / max(cfg.search.workers, 1))} left"


def _span(reps: list[int]) -> str:
    return "?" if not reps else f"{reps[0]}..{reps[-1]}" if len(reps) > 1 else str(reps[0])


def optimize(cfg: Config, splits: Path, parent_run_id: str, worker: int = 0) -> None:
    """This process's share of the study: trials until the study holds n_trials finished ones."""
    study = open_study(cfg, worker)
    # the cap counts finished (complete or pruned) trials over all workers, and the ones other
    # workers are running (they will finish): a worker stops when the study will have n_trials,
    # so two workers do not overshoot. Failed ones are replaced, up to as many again per process,
    # so a study that always fails still ends.
    cap = optuna.study.MaxTrialsCallback(
        cfg.search.n_trials, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
    )
    if finished(study) >= cfg.search.n_trials:
        return
    study.optimize(
        make_objective(cfg, splits, parent_run_id),
        n_trials=2 * cfg.search.n_trials,
        n_jobs=1,
        callbacks=[cap, TrialLog(cfg, lambda m: print(m, flush=True))],
        catch=(TrainingDiverged,),
        gc_after_trial=False,
    )

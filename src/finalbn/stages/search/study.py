"""The Optuna study: its storage, name, pruner, directions, and the trials a dead worker left.

    study = open_study(cfg)            # created, or resumed by name
    failed = fail_stale(cfg, study, 3600)   # RUNNING trials of a stopped worker -> FAIL

Storage: a journal file (`JournalStorage(journal.Backend(path))`, safe for several processes
on one machine; SQLite is not; a record a killed worker left torn is cut first, `journal`) or
an RDB URL (PostgreSQL, for several machines; heartbeats then fail the trials of a dead worker). The study's name is `search.study` plus a digest of what
defines it, so the same params resume it and a changed space starts a new one.
"""

from __future__ import annotations

import copy
import datetime
import hashlib
import json
import logging
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import optuna
from optuna.storages import JournalStorage, RDBStorage
from optuna.storages._heartbeat import is_heartbeat_enabled as _heartbeat_enabled  # not re-exported in 5.0
from optuna.trial import TrialState

from finalbn import tracking
from finalbn.config import NOT_RESULT_PARAMS, Config, ConfigError, to_dict
from finalbn.stages.search.journal import Backend, mend_journal
from finalbn.stages.search.lease import LEASE, WORKER, is_dead
from finalbn.stages.search.sampler import TrialSeededSampler
from finalbn.stages.search.space import check, multi_objective, steps_per_replicate

OBJECTIVES = {
    "val_auroc": ("auroc", "maximize"),
    "val_minority_f1": ("f1_1", "maximize"),
    "val_ap": ("ap", "maximize"),
    "val_balanced_loss": ("balanced_loss", "minimize"),
}
# search.* keys that do not change what the study is: how long it runs and where
_NOT_STUDY = {"n_trials", "workers", "stale_after_s", "storage", "study", "executor", "heartbeat_s"}
MISSED_HEARTBEATS = 3  # an RDB trial whose worker sent none for this many heartbeats is dead


METRIC_NAMES = {
    "val_auroc": "validation AUROC (mean over replicates)",
    "val_minority_f1": "validation minority F1 (mean over replicates)",
    "val_ap": "validation AP (mean over replicates)",
    "val_balanced_loss": "validation balanced loss (mean over replicates)",
    "val_auroc+ece": "validation AUROC (mean over replicates)",
}


def metric_names(cfg: Config) -> list[str]:
    """What the objective's values are called (`study.set_metric_names`: optuna-dashboard's axes and
    `trials_dataframe` columns instead of "Objective 0")."""
    if multi_objective(cfg):
        return [METRIC_NAMES["val_auroc"], "validation ECE (mean over replicates)"]
    return [METRIC_NAMES[cfg.search.objective]]


def directions(cfg: Config) -> list[str]:
    if multi_objective(cfg):
        return ["maximize", "minimize"]  # (validation AUROC, validation ECE)
    return [OBJECTIVES[cfg.search.objective][1]]


class RetryDeadWorker(optuna.storages.RetryHeartbeatStaleTrialCallback):
    """Optuna's retry of a trial whose worker stopped sending heartbeats (an RDB storage only),
    once: its MLflow run in progress is marked KILLED, and the retry (a WAITING trial with the
    same parameters; Optuna records `failed_trial` and `retry_history` in its system attributes)
    says why in its `retry_reason` user attribute."""

    def __init__(self, cfg: Config) -> None:
        with warnings.catch_warnings():  # experimental since Optuna 2.8, still in 5.0
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            super().__init__(max_retry=1)
        self.cfg, self.grace_s = cfg, grace_s(cfg)

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial, why: str = "") -> None:
        kill_runs(self.cfg, study, trial)
        trial = copy.copy(trial)
        trial.user_attrs = {
            k: v
            for k, v in trial.user_attrs.items()  # the dead worker's, not the retry's
            if not k.startswith("mlflow_run_id") and k not in (WORKER, LEASE, "fail_reason")
        }
        trial.user_attrs["retry_reason"] = why or (
            f"trial {trial.number}'s worker sent no heartbeat for {self.grace_s} s (its process died): FAIL, retried"
        )
        super().__call__(study, trial)


def kill_runs(cfg: Config, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """Mark KILLED the MLflow runs a dead worker's trial left RUNNING: found by the trial's tags
    (study, trial number), so a worker killed between creating a run and recording its id in
    the trial leaves none behind (a trial's runs of finished replicates stay FINISHED)."""
    running = tracking.search(
        tracking.experiment_name(cfg, "search"),
        f"tags.`{tracking.records.STUDY_NAME}` = '{study.study_name}' and "
        f"tags.`{tracking.records.TRIAL_NUMBER}` = '{trial.number}' and "
        f"attributes.status = '{tracking.records.RUNNING}'",
    )
    for run in running:
        tracking.mark_killed(run.run_id)


def grace_s(cfg: Config) -> int:
    """How long an RDB trial may go without a heartbeat before it is a dead worker's."""
    return MISSED_HEARTBEATS * cfg.search.heartbeat_s


def storage(cfg: Config):
    """The study's storage: an RDB URL (with heartbeats) or a journal file (folders created)."""
    where = cfg.search.storage
    try:
        if "://" in where:
            warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
            return RDBStorage(
                where,
                heartbeat_interval=cfg.search.heartbeat_s,
                grace_period=grace_s(cfg),
                heartbeat_stale_trial_callback=RetryDeadWorker(cfg),
            )
        path = Path(where)
        path.parent.mkdir(parents=True, exist_ok=True)
        note = mend_journal(path)  # a torn last record would make the study unreadable
        if note:
            print(f"finalbn search: {note}", file=sys.stderr)
        return JournalStorage(Backend(str(path)))  # a Ctrl-C never cuts an append (`journal`)
    except Exception as exc:  # a bad URL, a missing driver, an unwritable folder
        raise ConfigError(
            f"search.storage {where!r} cannot be opened: {type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}"
        ) from None


EPOCHS = "epochs"  # a trial's user attribute: the epochs of each of its replicates


class ReplicateMedianPruner(optuna.pruners.BasePruner):
    """The race's rule: at the end of each replicate but the last, stop a trial whose running mean
    (the mean of its finished replicates' last-epoch values) is worse than the median of the
    complete trials' running means at the same point; never inside a replicate.

    Optuna's MedianPruner compares a trial's *best* intermediate value over all its steps with the
    median: on a running mean that starts from one replicate's 7 validation positives (an epoch at
    AUROC 1.0 is common) that best value is rarely below the median, and on the embedded default it
    pruned none of 12 trials. This one compares the current value, at replicate boundaries only,
    where the value is a whole replicate's. `n_startup_trials` complete trials come first."""

    def __init__(self, replicates: int, n_startup_trials: int = 5) -> None:
        self.replicates, self.n_startup_trials = replicates, n_startup_trials

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        step, epochs = trial.last_step, trial.user_attrs.get(EPOCHS)
        stride = trial.user_attrs.get("steps_per_replicate")
        if step is None or not epochs or not stride or (step - int(epochs)) % int(stride):
            return False  # not the end of a replicate
        if (step - int(epochs)) // int(stride) >= self.replicates - 1:
            return False  # the last replicate: the trial is complete, nothing left to save
        done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if len(done) < max(1, self.n_startup_trials):
            return False
        value = trial.intermediate_values[step]
        others = [t.intermediate_values[step] for t in done if step in t.intermediate_values]
        if value != value or not others:
            return False
        median = float(np.nanmedian(others))
        return value < median if study.direction == optuna.study.StudyDirection.MAXIMIZE else value > median


def pruner(cfg: Config) -> optuna.pruners.BasePruner:
    s = cfg.search
    if s.pruner == "median":
        return ReplicateMedianPruner(cfg.selection.replicates, s.pruner_startup_trials)
    if s.pruner == "hyperband":
        # a trial's resource: its replicates' epochs (steps r * steps_per_replicate + epoch)
        return optuna.pruners.HyperbandPruner(
            min_resource=max(1, s.pruner_warmup_epochs),
            max_resource=cfg.selection.replicates * steps_per_replicate(cfg),
        )
    return optuna.pruners.NopPruner()


def study_name(cfg: Config) -> str:
    """`search.study` plus a digest of everything that defines the study (space, objective,
    pruner, seed, the replicates a trial races over (`selection.replicates`), the datasets and
    every model/train/ablation value the space leaves fixed): the same params resume it, a changed
    space starts a new study in the same storage (Optuna refuses a parameter whose distribution
    changed)."""
    payload = {k: v for k, v in to_dict(cfg.search).items() if k not in _NOT_STUDY}
    payload.update({k: to_dict(getattr(cfg, k)) for k in ("datasets", "model", "train", "ablation", "split")})
    payload["replicates"] = cfg.selection.replicates  # the objective is a mean over them
    for key in NOT_RESULT_PARAMS:
        section, _, name = key.partition(".")
        payload[section].pop(name, None)
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:8]
    return f"{cfg.search.study}-{digest}"


class _NoCtrlCTraceback(logging.Filter):
    """Optuna logs a trial stopped by Ctrl-C as a failure, with its traceback, then its value None;
    finalbn says in one line what it kept instead (`cli`): those two records are dropped."""

    def __init__(self) -> None:
        super().__init__()
        self.stopped: set[str] = set()  # "Trial N " of the trials Ctrl-C stopped

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        if record.exc_info and isinstance(record.exc_info[1], KeyboardInterrupt):
            self.stopped.add(msg.split("failed", 1)[0])
            return False
        return not any(msg.startswith(f"{t}failed with value") for t in self.stopped)


_no_ctrl_c_traceback = _NoCtrlCTraceback()


def current_name(cfg: Config, st, fresh: bool = False) -> str:
    """The study of these params in storage `st`: `study_name(cfg)`, or its latest successor
    `<name>.<k>` (k >= 2: started again because the tracking store lost its trials' runs,
    `start`); with `fresh`, the next one."""
    base = study_name(cfg)
    k = max(
        (
            int(n[len(base) + 1 :])
            for n in optuna.get_all_study_names(st)
            if n.startswith(f"{base}.") and n[len(base) + 1 :].isdigit()
        ),
        default=1,
    )
    k += int(fresh)
    return base if k == 1 else f"{base}.{k}"


def lost_runs(study: optuna.Study) -> list[str]:
    """The MLflow runs of the study's finished trials that the tracking store does not hold."""
    ids = [
        r
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
        for r in t.user_attrs.get("mlflow_run_ids", [])
    ]
    return tracking.fingerprint.missing_runs(ids)


def open_study(cfg: Config, worker: int = 0, fresh: bool = False) -> optuna.Study:
    """Create the study, or resume it by name (`current_name`; `fresh`: its successor); refuse one
    stored with other directions. Its sampler draws each trial's point from (sampler_seed, the
    trial's place among the sampled ones), in whichever worker and after however many restarts
    (`sampler.TrialSeededSampler`)."""
    st = storage(cfg)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("optuna.study._optimize").addFilter(_no_ctrl_c_traceback)  # the logger that writes them
    study = optuna.create_study(
        study_name=current_name(cfg, st, fresh),
        storage=st,
        load_if_exists=True,
        directions=directions(cfg),
        pruner=pruner(cfg),
        sampler=TrialSeededSampler(cfg.search.sampler_seed),
    )
    stored = [d.name.lower() for d in study.directions]
    if stored != directions(cfg):
        raise ConfigError(
            f"study {study.study_name!r} in {cfg.search.storage} optimises {stored}, "
            f"search.objective={cfg.search.objective} needs {directions(cfg)}: "
            "use another search.study or the same objective"
        )
    if study.metric_names != metric_names(cfg):
        with warnings.catch_warnings():  # experimental since Optuna 3.2, still in 5.0
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(metric_names(cfg))
    return study


def fail_stale(
    cfg: Config, study: optuna.Study, older_than_s: float, now: datetime.datetime | None = None
) -> list[int]:
    """Mark FAIL the RUNNING trials of a dead worker (`liveness.is_dead`: on this host its process
    is gone, elsewhere its lease expired; a trial that names no worker when it is older than
    `older_than_s`), with the reason, and the MLflow runs each was training KILLED; each is retried
    once (a WAITING trial with its parameters and `retry_reason`); returns their numbers. Trials of
    live workers are left alone."""
    now = now or datetime.datetime.now()
    failed = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        dead = is_dead(t.user_attrs, now.timestamp())
        if dead is None:  # written before trials named their worker: its age decides
            dead = t.datetime_start is not None and (now - t.datetime_start).total_seconds() >= older_than_s
        if not dead:
            continue
        who = t.user_attrs.get(WORKER) or {}
        reason = (
            f"its worker (pid {who.get('pid')} on {who.get('host')}) is gone"
            if who
            else f"RUNNING for over {older_than_s:g} s on restart, worker unknown"
        )
        study._storage.set_trial_user_attr(t._trial_id, "fail_reason", reason)
        study.tell(t.number, state=TrialState.FAIL)  # Optuna's FAQ recipe for a journal's zombie trials
        # retried once with its own parameters (as Optuna's heartbeat retry does for an RDB): the study
        # then holds the configurations an uninterrupted one would (`sampler.TrialSeededSampler`)
        RetryDeadWorker(cfg)(study, study._storage.get_trial(t._trial_id), f"trial {t.number}: {reason}: FAIL, retried")
        failed.append(t.number)
    return failed


def heartbeats(study: optuna.Study) -> bool:
    """Whether the study's storage has heartbeats (an RDB storage opened by `storage`)."""
    return _heartbeat_enabled(study._storage)


def settle(cfg: Config, study: optuna.Study, log=print) -> list[int]:
    """After every worker ended, with an RDB storage: the trials still RUNNING are a killed worker's
    (or another machine's, with a fresh heartbeat). Wait out the grace period, fail the stale ones
    (each retried once, `RetryDeadWorker`); returns their numbers. A journal has no heartbeat: none."""
    if not heartbeats(study):
        return []
    before = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
    if before:
        log(
            f"search: trials {sorted(before)} still RUNNING after the workers ended: waiting up to {grace_s(cfg)} s "
            "for their heartbeats"
        )
    deadline = time.monotonic() + grace_s(cfg) + cfg.search.heartbeat_s
    while True:
        optuna.storages.fail_stale_trials(study)
        if not study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)) or time.monotonic() > deadline:
            break
        time.sleep(min(cfg.search.heartbeat_s, 5))
    return sorted(t.number for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)) if t.number in before)


def finished(study: optuna.Study) -> int:
    """Complete and pruned trials (failed ones do not count toward n_trials)."""
    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))


def start(cfg: Config) -> tuple[optuna.Study, str, list[int]]:
    """Check the space, open or resume the study, fail a dead worker's trials, and find or create
    the study's parent MLflow run."""
    check(cfg)
    study = open_study(cfg)
    lost = lost_runs(study)
    if lost:  # `rm mlflow.db`, another MLFLOW_TRACKING_URI: its trials' runs are not in this store
        old, study = study.study_name, open_study(cfg, fresh=True)
        print(
            f"search: study {old}'s finished trials cite {len(lost)} MLflow run(s) that the tracking store "
            f"{tracking.fingerprint.store_identity()} does not hold: the study starts again as {study.study_name} "
            f"(its sampler draws the same points; {old} stays in {cfg.search.storage})",
            flush=True,
        )
    if heartbeats(study):  # an RDB storage: a dead worker's trial is one without a recent heartbeat
        running = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
        optuna.storages.fail_stale_trials(study)
        stale = sorted(
            t.number for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)) if t.number in running
        )
    else:
        stale = fail_stale(cfg, study, cfg.search.stale_after_s)
    parent = tracking.study_parent(cfg, study.study_name, study.user_attrs.get("mlflow_run_id"))
    study.set_user_attr("mlflow_run_id", parent)
    return study, parent, stale

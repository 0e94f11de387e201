"""The Optuna search beyond the 64-configuration grid — the only module that imports Optuna.

    finalbn search                    # search.n_trials trials in this process
    finalbn search --workers 2        # two processes on one journal file

Each trial is one cell: the grid's own code (`tracking.track_cell` -> `cells.run_cell` ->
`engine.fit`) on `search.replicate`, with the dimensions of `search.space` drawn by a seeded TPE
sampler. The objective is a validation metric (`search.objective`), never a test metric; test
metrics are logged with the trial's run and decide nothing.

Storage: a journal file (`JournalStorage(JournalFileBackend(path))`, safe for several processes
on one machine; SQLite is not) or an RDB URL (PostgreSQL, for several machines; heartbeats then
fail the trials of a dead worker). A study is resumed by name; on start, a journal study's
trials left RUNNING for longer than `search.stale_after_s` (their worker was killed) are marked
FAIL and their MLflow runs KILLED. Each trial reports its validation value every epoch; the
pruner (median by default) stops poor ones — a pruned trial's run ends KILLED, tagged
`trial_state=pruned`. A trial whose loss turns NaN is FAILED with its reason and the study goes
on. Tracking: one parent MLflow run per study, each trial a child run named `trial-<n>`
(`parent_run_id=`, which works across processes), whose id is the trial's user attribute
`mlflow_run_id`.
"""
from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from finalbn import tracking
from finalbn.config import Config, ConfigError, config_id, config_name, to_dict
from finalbn.engine import TrainingDiverged

LOG_SCALE = ("lr", "weight_decay", "final_bn_momentum", "final_bn_eps")
OBJECTIVES = {"val_auroc": ("auroc", "maximize"), "val_minority_f1": ("f1_1", "maximize"),
              "val_ap": ("ap", "maximize"), "val_balanced_loss": ("balanced_loss", "minimize")}
PER_EPOCH = {"val_auroc": "val_auroc", "val_minority_f1": "val_minority_f1", "val_ap": "val_ap",
             "val_balanced_loss": "val_balanced_loss"}
TIE_BREAK = "val_balanced_loss"  # among trials tied on the objective (AUROC saturates on 7 positives): lower wins


# ---------------------------------------------------------------- the space


def check(cfg: Config) -> None:
    """Refuse, before any trial, what cannot be searched: one line naming the key."""
    s = cfg.search
    for name, value in dataclasses.asdict(s.space).items():
        if value is None:
            continue
        key = f"search.space.{name}"
        if len(value) == 0:
            raise ConfigError(f"{key} is empty: give a [low, high] range, choices, or null to switch it off")
        if name in ("switches", "hidden", "final", "final_bn_affine", "final_bias", "batch_size", "arch", "loss",
                    "calibration"):
            if name == "batch_size" and any(not isinstance(v, int) or isinstance(v, bool) or v < 2 for v in value):
                raise ConfigError(f"{key} must be integers >= 2 (got {list(value)})")
            if name == "hidden" and any(not isinstance(v, int) or isinstance(v, bool) or v < 1 for v in value):
                raise ConfigError(f"{key} must be integers >= 1 (got {list(value)})")
            if name in ("final_bn_affine", "final_bias") and any(not isinstance(v, bool) for v in value):
                raise ConfigError(f"{key} must be true/false choices (got {list(value)})")
            continue
        low, high = value
        if not low < high:
            raise ConfigError(f"{key}: empty range [{low}, {high}] (need low < high)")
        if name in LOG_SCALE and low <= 0:
            raise ConfigError(f"{key}: a log-scale range needs low > 0 (got {low})")
        if name in ("dropout_0", "dropout_1") and not (0 <= low and high < 1):
            raise ConfigError(f"{key}: dropout must lie in [0, 1) (got [{low}, {high}])")
        if name == "label_smoothing" and not (0 <= low and high <= 1):
            raise ConfigError(f"{key}: label smoothing must lie in [0, 1] (got [{low}, {high}])")
        if name == "epochs" and low < 1:
            raise ConfigError(f"{key}: epochs must be >= 1 (got {low})")
    if s.space.arch:
        from finalbn.models import get_spec

        for a in s.space.arch:
            try:
                get_spec(a)
            except ValueError as exc:
                raise ConfigError(f"search.space.arch: {exc}") from None
    have = cfg.grid.max_replicates  # the split draws `prepare` writes
    if s.replicate >= have:
        raise ConfigError(f"search.replicate={s.replicate} is not a prepared replicate (prepare writes 0..{have - 1}: "
                          "grid.replicates / grid.headline.replicates)")
    if s.replicates > have:
        raise ConfigError(f"search.replicates={s.replicates} exceeds the {have} replicates prepare writes "
                          "(grid.replicates / grid.headline.replicates)")
    if multi_objective(cfg) and s.pruner != "none":
        # Optuna's Trial.report raises NotImplementedError for multi-objective studies
        raise ConfigError(f"search.pruner={s.pruner} cannot prune the two-objective study {s.objective!r}: "
                          "set search.pruner=none or a single objective")


def multi_objective(cfg: Config) -> bool:
    return "+" in cfg.search.objective


def directions(cfg: Config) -> list[str]:
    if multi_objective(cfg):
        return ["maximize", "minimize"]  # (validation AUROC, validation ECE)
    return [OBJECTIVES[cfg.search.objective][1]]


def suggest(trial: optuna.Trial, cfg: Config) -> Config:
    """The trial's configuration: params.yaml with the space's dimensions drawn."""
    sp = cfg.search.space
    model, train, ab = cfg.model, cfg.train, cfg.ablation
    if sp.switches:
        ab = dataclasses.replace(ab, **{t: trial.suggest_categorical(t.upper(), [True, False]) for t in sp.switches})

    def rng(name: str, value, log: bool = False, integer: bool = False):
        if value is None:
            return None
        if integer:
            return trial.suggest_int(name, int(value[0]), int(value[1]))
        return trial.suggest_float(name, float(value[0]), float(value[1]), log=log)

    def pick(name: str, choices):
        return None if choices is None else trial.suggest_categorical(name, list(choices))

    m: dict[str, Any] = {}
    t: dict[str, Any] = {}
    if (lr := rng("lr", sp.lr, log=True)) is not None:
        t["lr"] = lr
    if (wd := rng("weight_decay", sp.weight_decay, log=True)) is not None:
        t["weight_decay"] = wd
    d0, d1 = rng("dropout_0", sp.dropout_0), rng("dropout_1", sp.dropout_1)
    if d0 is not None or d1 is not None:
        m["dropout"] = (model.dropout[0] if d0 is None else d0, model.dropout[1] if d1 is None else d1)
    if (h := pick("hidden", sp.hidden)) is not None:
        m["hidden"] = h
    if (final := pick("final", sp.final)) is not None:
        ab = dataclasses.replace(ab, bn=final != "none")
        if final != "none":
            m["final_variant"] = final
    uses_bn = ab.bn and m.get("final_variant", model.final_variant) == "bn"
    if uses_bn:  # the final BN's own knobs mean something only when there is one
        if (v := rng("final_bn_momentum", sp.final_bn_momentum, log=True)) is not None:
            m["final_bn_momentum"] = v
        if (v := rng("final_bn_eps", sp.final_bn_eps, log=True)) is not None:
            m["final_bn_eps"] = v
        if (v := pick("final_bn_affine", sp.final_bn_affine)) is not None:
            m["final_bn_affine"] = v
    if (v := pick("final_bias", sp.final_bias)) is not None:
        m["final_bias"] = v
    if (v := rng("label_smoothing", sp.label_smoothing)) is not None:
        t["label_smoothing"] = v
    if ab.mx and (v := rng("mixup_alpha", sp.mixup_alpha)) is not None:
        t["mixup_alpha"] = v
    if (v := pick("batch_size", sp.batch_size)) is not None:
        t["batch_size"] = v
    if (v := rng("epochs", sp.epochs, integer=True)) is not None:
        t["epochs"] = v
    if (v := pick("arch", sp.arch)) is not None:
        m["arch"] = v
    if (v := pick("loss", sp.loss)) is not None:
        t["loss"] = v
    if (v := pick("calibration", sp.calibration)) is not None:
        t["calibration"] = v
    return dataclasses.replace(cfg, ablation=ab, model=dataclasses.replace(model, **m),
                               train=dataclasses.replace(train, **t))


# ---------------------------------------------------------------- storage and study


def storage(cfg: Config):
    """The study's storage: an RDB URL (with heartbeats) or a journal file (folders created)."""
    where = cfg.search.storage
    try:
        if "://" in where:
            import warnings

            warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
            return RDBStorage(where, heartbeat_interval=60, grace_period=180,
                              heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(
                                  max_retry=1))
        path = Path(where)
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    except Exception as exc:  # a bad URL, a missing driver, an unwritable folder
        raise ConfigError(f"search.storage {where!r} cannot be opened: {type(exc).__name__}: "
                          f"{str(exc).splitlines()[0] if str(exc) else ''}") from None


def pruner(cfg: Config) -> optuna.pruners.BasePruner:
    s = cfg.search
    if s.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=s.pruner_startup_trials, n_warmup_steps=s.pruner_warmup_epochs)
    if s.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=max(1, s.pruner_warmup_epochs), max_resource=cfg.train.epochs)
    return optuna.pruners.NopPruner()


# search.* keys that do not change what the study is: how long it runs and where
_NOT_STUDY = {"n_trials", "workers", "stale_after_s", "storage", "study", "replicates"}


def study_name(cfg: Config) -> str:
    """`search.study` plus a digest of everything that defines the study (space, objective,
    pruner, seed, replicate, the datasets and every model/train/ablation value the space leaves
    fixed): the same params resume it, a changed space starts a new study in the same storage
    (Optuna refuses a parameter whose distribution changed)."""
    payload = {k: v for k, v in to_dict(cfg.search).items() if k not in _NOT_STUDY}
    payload.update({k: to_dict(getattr(cfg, k)) for k in ("datasets", "model", "train", "ablation", "split")})
    for k in ("threads", "device", "num_workers", "log_model", "share_features"):
        payload["train"].pop(k, None)
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:8]
    return f"{cfg.search.study}-{digest}"


def open_study(cfg: Config, worker: int = 0) -> optuna.Study:
    """Create the study, or resume it by name; refuse one stored with other directions. Worker
    `i` of several seeds its sampler with sampler_seed + i (the same seed would draw the same
    first points in every process)."""
    st = storage(cfg)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=study_name(cfg), storage=st, load_if_exists=True,
                                directions=directions(cfg), pruner=pruner(cfg),
                                sampler=optuna.samplers.TPESampler(seed=cfg.search.sampler_seed + worker))
    stored = [d.name.lower() for d in study.directions]
    if stored != directions(cfg):
        raise ConfigError(f"study {study_name(cfg)!r} in {cfg.search.storage} optimises {stored}, "
                          f"search.objective={cfg.search.objective} needs {directions(cfg)}: "
                          "use another search.study or the same objective")
    return study


def fail_stale(study: optuna.Study, older_than_s: float, now: datetime.datetime | None = None) -> list[int]:
    """Mark FAIL the trials left RUNNING longer than `older_than_s` (a killed worker's: a journal
    has no heartbeat) and their MLflow runs KILLED; returns their numbers."""
    now = now or datetime.datetime.now()
    failed = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if t.datetime_start is None or (now - t.datetime_start).total_seconds() < older_than_s:
            continue
        study._storage.set_trial_user_attr(t._trial_id, "fail_reason", "its worker stopped (RUNNING on restart)")
        study.tell(t.number, state=TrialState.FAIL)  # Optuna's FAQ recipe for a journal's zombie trials
        run_id = t.user_attrs.get("mlflow_run_id")
        if run_id:
            tracking.mark_killed(run_id)
        failed.append(t.number)
    return failed


# ---------------------------------------------------------------- the objective


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
    from finalbn.grid import result_key

    dataset = cfg.datasets[0].name

    def objective(trial: optuna.Trial):
        tcfg = suggest(trial, cfg)
        callbacks = [] if multi_objective(cfg) else [PruningCallback(trial, PER_EPOCH[cfg.search.objective])]
        # the key of what the trial computes: the comparison after the study finds it as the best
        # configuration's run on this replicate (and the grid's cells the same way)
        key = result_key(tcfg, dataset, cfg.search.replicate, splits)
        trial.set_user_attr("config_name", config_name(tcfg.ablation))  # also for a pruned or failed trial's line
        try:
            _, result = tracking.track_cell(
                tcfg, dataset, splits, callbacks=callbacks, run_name=f"trial-{trial.number}",
                parent_run_id=parent_run_id, replicate=cfg.search.replicate, killed_on=(optuna.TrialPruned,),
                state_tag="trial_state", on_start=lambda rid: trial.set_user_attr("mlflow_run_id", rid),
                extra_tags={"finalbn.trial": "true", "study": study_name(cfg), "trial": str(trial.number),
                            "result_key": key})
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
        done = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))
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


# ---------------------------------------------------------------- running it


def optimize(cfg: Config, splits: Path, parent_run_id: str, worker: int = 0) -> None:
    """This process's share of the study: trials until the study holds n_trials finished ones."""
    study = open_study(cfg, worker)
    # the cap counts finished (complete or pruned) trials over all workers, and the ones other
    # workers are running (they will finish): a worker stops when the study will have n_trials,
    # so two workers do not overshoot. Failed ones are replaced, up to as many again per process,
    # so a study that always fails still ends.
    cap = optuna.study.MaxTrialsCallback(cfg.search.n_trials,
                                         states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING))
    if _finished(study) >= cfg.search.n_trials:
        return
    study.optimize(make_objective(cfg, splits, parent_run_id), n_trials=2 * cfg.search.n_trials, n_jobs=1,
                   callbacks=[cap, TrialLog(cfg, lambda m: print(m, flush=True))], catch=(TrainingDiverged,),
                   gc_after_trial=False)


def _finished(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))


def start(cfg: Config) -> tuple[optuna.Study, str, list[int]]:
    """Check the space, open or resume the study, fail a dead worker's trials, and find or create
    the study's parent MLflow run."""
    check(cfg)
    study = open_study(cfg)
    stale = fail_stale(study, cfg.search.stale_after_s)
    parent = tracking.study_parent(cfg, study.study_name, study.user_attrs.get("mlflow_run_id"))
    study.set_user_attr("mlflow_run_id", parent)
    return study, parent, stale


def run_workers(argv_base: Sequence[str], workers: int, parent_run_id: str) -> int:
    """`workers` processes of `finalbn search --worker`, each study.optimize(n_jobs=1)."""
    threads = max(1, (os.cpu_count() or 1) // workers)
    procs = [subprocess.Popen([sys.executable, "-m", "finalbn", "search", *argv_base, "--worker",
                               "--set", f"train.threads={threads}"],
                              env={**os.environ, "FINALBN_STUDY_RUN": parent_run_id, "FINALBN_WORKER": str(i)})
             for i in range(workers)]
    try:
        codes = [p.wait() for p in procs]
    except KeyboardInterrupt:
        for p in procs:
            p.send_signal(signal.SIGINT)
        for p in procs:
            p.wait()
        raise
    return max(codes)


def summary(cfg: Config, study: optuna.Study, seconds: float | None = None) -> dict:
    """results/search.json: counts by state, the best trial (on validation) and its params."""
    trials = study.get_trials(deepcopy=False)
    counts = {s.name.lower(): sum(1 for t in trials if t.state == s) for s in TrialState}
    out: dict[str, Any] = {"study": study.study_name, "storage": cfg.search.storage, "objective": cfg.search.objective,
                           "directions": directions(cfg), "trials": len(trials), "states": counts,
                           "mlflow_run_id": study.user_attrs.get("mlflow_run_id")}
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    if seconds:
        out["trials_per_hour"] = len([t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]) \
            / seconds * 3600
    if done and not multi_objective(cfg):
        best = best_trial(study)
        ties = [t.number for t in done if t.value == best.value]
        out["best"] = {"number": best.number, "value": best.value, "params": best.params,
                       "mlflow_run_id": best.user_attrs.get("mlflow_run_id"),
                       "config_name": best.user_attrs.get("config_name"),
                       "val_balanced_loss": best.user_attrs.get(TIE_BREAK),
                       "val_minority_f1": best.user_attrs.get("val_minority_f1"),
                       "tied_on_objective": ties,
                       "test_minority_f1": best.user_attrs.get("test_minority_f1")}
    elif done:
        out["pareto"] = [{"number": t.number, "values": t.values, "params": t.params,
                          "mlflow_run_id": t.user_attrs.get("mlflow_run_id")} for t in study.best_trials]
    return out


def write_summary(out: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(out, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def best_config(cfg: Config, study: optuna.Study) -> tuple[optuna.trial.FrozenTrial, Config]:
    """The best trial (on validation, `best_trial`) and its configuration, replayed from its params."""
    best = best_trial(study)
    return best, suggest(optuna.trial.FixedTrial(best.params), cfg)


ARMS = {"best_trial": "the best trial", "grid_best": "the grid's best configuration", "bn_only_31": "BN only (31)"}


def _row(replicate: int, metrics: dict, run_id: str) -> dict:
    return {"replicate": replicate, "test_f1_1": metrics.get("test_f1_1"), "test_auroc": metrics.get("test_auroc"),
            "val_auroc": metrics.get("val_last_auroc"), "val_f1_1": metrics.get("val_last_f1_1"), "run_id": run_id}


def rerun(cfg: Config, dataset: str, splits: Path, replicate: int, parent_run_id: str, name: str,
          tags: dict[str, str], threads: int = 0) -> dict:
    """One configuration on one replicate as a tracked run under the study's run (also in a worker
    process of `compare`); returns its comparison row."""
    if threads:
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, threads=threads))
    run_id, res = tracking.track_cell(cfg, dataset, splits, run_name=name, parent_run_id=parent_run_id,
                                      replicate=replicate, extra_tags=tags)
    m = {**{f"test_{k}": v for k, v in res.test_last.items()}, **{f"val_last_{k}": v for k, v in res.val_last.items()}}
    return _row(replicate, m, run_id)


def compare(cfg: Config, study: optuna.Study, splits: Path, parent_run_id: str, grid_csv: Path | None,
            log: Callable[[str], None] = print, workers: int = 1) -> dict:
    """The best trial (on validation) on replicates 0..search.replicates-1, tested, beside the
    grid's best configuration (ranked on validation in `grid_csv`) and BN only (31) on the same
    replicates: per-replicate paired differences with t intervals.

    Every run is found by its result key (`grid.result_key`: the configuration's params, the
    replicate's split, the seed and the code — not the study or the trial): the trial's own run
    serves its replicate, the grid's cells serve theirs, and a rerun of the stage trains nothing
    twice. What is missing is trained in `workers` processes, as tracked runs under the study's run."""
    import pandas as pd

    from finalbn import grid
    from finalbn.report.effects import t_interval

    best, bcfg = best_config(cfg, study)
    dataset = cfg.datasets[0].name
    reps = list(range(cfg.search.replicates))
    arms: dict[str, tuple[str, Config]] = {"best_trial": (f"trial {best.number}", bcfg)}
    out: dict[str, Any] = {"best_trial": best.number, "params": best.params, "replicates": len(reps)}
    if grid_csv is not None and Path(grid_csv).is_file():
        df = pd.read_csv(grid_csv)
        df = df[df["dataset"] == dataset]
        arch = cfg.model.arch if cfg.model.arch in set(df["arch"]) else (df["arch"].iloc[0] if len(df) else cfg.model.arch)
        ranked = grid.rank_configs(df[df["arch"] == arch])
        picks = {"grid_best": int(ranked.iloc[0]["config_id"]) if len(ranked) else None, "bn_only_31": 31}
        for arm, cid in picks.items():
            if cid is not None:
                arms[arm] = (f"config {cid}", grid.cell_config(cfg, grid.Cell(dataset, arch, cid, 0)))
    else:
        out["note"] = f"no {grid_csv}: run the grid for the comparison with its configurations"

    found: dict[str, list] = {}
    for tag in ("cell_key", "result_key"):
        for k, runs in tracking.runs_by_tag(cfg, tag).items():
            found.setdefault(k, []).extend(r for r in runs if r.info.status == "FINISHED")
    rows: dict[str, dict[int, dict]] = {arm: {} for arm in arms}
    jobs: dict[str, tuple] = {}  # result key -> (arms, replicate, config): one training per key
    for arm, (label, acfg) in arms.items():
        for r in reps:
            key = grid.result_key(acfg, dataset, r, splits)
            if found.get(key):
                run = max(found[key], key=lambda x: x.info.end_time or 0)
                rows[arm][r] = _row(r, run.data.metrics, run.info.run_id)
            else:
                jobs.setdefault(key, ([], r, acfg, label))[0].append(arm)
    if jobs:
        log(f"search: {len(jobs)} run(s) to compare on {len(reps)} replicates ({workers} process(es)); "
            f"{sum(len(v) for v in rows.values())} found in the store")
    threads = max(1, (os.cpu_count() or 1) // workers) if workers > 1 else 0
    calls = [(acfg, dataset, splits, r, parent_run_id, f"compare {label} r{r}",
              {"finalbn.search_compare": "true", "result_key": key, "study": study.study_name,
               "compare_arms": ",".join(which)}, threads)
             for key, (which, r, acfg, label) in jobs.items()]
    results = _run_all(calls, workers)
    for (which, r, _, label), row in zip(jobs.values(), results):
        for arm in which:
            rows[arm][r] = row
        log(f"  {label} on replicate {r}: test minority F1 {row['test_f1_1']:.3f}, AUROC {row['test_auroc']:.3f}")

    mine = rows["best_trial"]
    out["runs"] = [mine[r] for r in reps if r in mine]
    out["best_trial_mean"] = _means(out["runs"])
    for arm in arms:
        if arm == "best_trial":
            continue
        theirs = rows[arm]
        both = [r for r in reps if r in mine and r in theirs]
        acfg = arms[arm][1]
        entry: dict[str, Any] = {"config_id": config_id(acfg.ablation), "config_name": config_name(acfg.ablation),
                                 "replicates": len(both), "rows": [theirs[r] for r in both],
                                 "mean": _means([theirs[r] for r in both])}
        for metric in ("test_f1_1", "test_auroc"):
            d = [float(mine[r][metric]) - float(theirs[r][metric]) for r in both]
            entry[f"best_trial_minus_{metric}"] = {k: _num(v) if isinstance(v, float) else v
                                                   for k, v in t_interval(d).items()}
        out[arm] = entry
    return out


def _run_all(calls: list[tuple], workers: int) -> list[dict]:
    """`rerun(*call)` for each call: here, or in `workers` spawned processes."""
    if workers <= 1 or len(calls) <= 1:
        return [rerun(*c) for c in calls]
    import concurrent.futures as cf
    import multiprocessing as mp

    with cf.ProcessPoolExecutor(max_workers=min(workers, len(calls)), mp_context=mp.get_context("spawn")) as pool:
        futures = [pool.submit(rerun, *c) for c in calls]
        try:
            return [f.result() for f in futures]
        except BaseException:
            for f in futures:
                f.cancel()
            raise


def _means(rows: list[dict]) -> dict[str, float | None]:
    import numpy as np

    return {k: _num(np.nanmean([float(r[k]) for r in rows if r.get(k) is not None])) if rows else None
            for k in ("test_f1_1", "test_auroc", "val_auroc", "val_f1_1")}


def _num(x) -> float | None:
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return None if x != x else round(x, 6)


def plots(study: optuna.Study, cfg: Config, out_dir: Path) -> list[Path]:
    """Optuna's matplotlib plots of the study (history, parameter importances, parallel
    coordinates) as PNG files; a plot the study cannot make yet (too few trials) is skipped."""
    import warnings

    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ovm

    out_dir.mkdir(parents=True, exist_ok=True)
    target = None
    name = cfg.search.objective
    if multi_objective(cfg):  # one plot per objective
        target, name = (lambda t: t.values[0]), "validation AUROC"
    made = []
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    kinds = {"history": ovm.plot_optimization_history, "importances": ovm.plot_param_importances,
             "parallel": ovm.plot_parallel_coordinate}
    for kind, fn in kinds.items():
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
        fig.savefig(path, dpi=100, bbox_inches="tight")
        plt.close(fig)
        made.append(path)
    return made


def finish(study: optuna.Study, cfg: Config, parent_run_id: str, seconds: float, plot_dir: Path | None = None,
           comparison: dict | None = None) -> dict:
    out = summary(cfg, study, seconds)
    if comparison is not None:
        out["comparison"] = comparison
    best = out.get("best") or {}
    figures = plots(study, cfg, plot_dir) if plot_dir is not None else []
    out["plots"] = [str(p) for p in figures]
    tracking.finish_study_parent(parent_run_id, {"trials": out["trials"], "best_value": best.get("value"),
                                                 "trials_per_hour": out.get("trials_per_hour")}, out, figures)
    return out


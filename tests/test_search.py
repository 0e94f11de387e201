"""The Optuna search: a study on tiny data, trials raced over replicates, resume after a kill,
pruning, workers, child runs, the comparison on held-out replicates."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import mlflow
import numpy as np
import optuna
import psutil
import pytest
import yaml
from optuna.trial import TrialState

from conftest import ROOT
from finalbn import tracking
from finalbn.cli import main
from finalbn.config import has_final_bn
from finalbn.stages import cellrun, grid, search
from finalbn.stages.search import lease as liveness
from finalbn.stages.search.objective import trial_name
from finalbn.stages.search.sampler import TrialSeededSampler
from finalbn.train import cell
from finalbn.train.engine import TrainingDiverged

SPLITS = Path("data/splits")
DEFAULT_WORKERS = yaml.safe_load((ROOT / "params.yaml").read_text())["search"]["workers"]  # what users run: 2
SMALL_SPACE = [
    "search.space.switches=[bn, wl, wd]",
    "search.space.hidden=[16, 32]",
    "search.space.final=null",
    "search.space.final_bn_affine=null",
    "search.space.final_bias=null",
    "search.space.batch_size=null",
    "search.space.mixup_alpha=null",
    "search.space.final_bn_momentum=null",
    "search.space.label_smoothing=null",
    "search.space.dropout_0=null",
    "search.space.dropout_1=null",
]


def _args(overrides, *extra):
    return ["search", "--params", str(ROOT / "params.yaml"), *[x for o in overrides for x in ("--set", o)], *extra]


def _study(load, extra=()):
    return search.open_study(load(list(extra)))


@pytest.fixture
def searching(prepared, tmp_path):
    load, overrides = prepared
    extra = SMALL_SPACE + [
        f"search.storage={tmp_path / 'search' / 'journal.log'}",
        "search.n_trials=3",
        "search.pruner=none",
        "train.epochs=2",
        "grid.headline.replicates=3",
        "selection.replicates=2",
        "search.workers=1",
    ]  # trials race over replicates 0, 1; 2 is held out
    return (lambda more=(): load(extra + list(more))), overrides + extra


def _trial_runs(parent: str) -> list:
    return mlflow.search_runs(
        experiment_names=["finalbn/search"],
        output_format="list",
        filter_string=f"tags.mlflow.parentRunId = '{parent}' and tags.`finalbn.trial` = 'true'",
    )


def test_three_trials_complete_as_child_runs(searching, tmp_path, capsys):
    load, overrides = searching
    assert main(_args(overrides, "--out", str(tmp_path / "search.json"))) == 0
    out = json.loads((tmp_path / "search.json").read_text())
    assert out["trials"] == 3 and out["states"]["complete"] == 3 and "best" in out
    printed = capsys.readouterr().out
    assert "search: trial 2 (" in printed and "[3/3 finished]" in printed  # a line per trial
    assert "(mean over replicates 0..1)" in printed
    study = search.open_study(load())
    parent = study.user_attrs["mlflow_run_id"]
    runs = _trial_runs(parent)  # a run per trial and replicate
    # the trial, then what differs (its switches), then the replicate; the objective has a name
    names = sorted((int(r.data.tags["trial"]), r.info.run_name) for r in runs)
    assert [n for n, _ in names] == [0, 0, 1, 1, 2, 2]
    assert all(name.startswith(f"trial {n} · ") and name.endswith((" r0", " r1")) for n, name in names)
    assert study.metric_names == ["validation AUROC (mean over replicates)"]
    (sp,) = mlflow.search_runs(
        experiment_names=["finalbn/search"], output_format="list", filter_string="tags.`finalbn.study` != ''"
    )
    assert sp.data.params["search.n_trials"] == "3" and "search" not in sp.data.params  # flattened, not a blob
    assert {r.data.tags["trial_state"] for r in runs} == {"complete"} and {r.info.status for r in runs} == {"FINISHED"}
    by_run = {rid: t for t in study.trials for rid in t.user_attrs["mlflow_run_ids"]}
    for r in runs:  # each trial knows its runs, and its runs have the per-epoch values and the result key
        assert r.info.run_id in by_run and "val/auroc" in r.data.metrics and r.data.tags["result_key"]
        assert r.data.tags["replicate"] == r.info.run_name[-1]
    assert mlflow.get_run(parent).info.status == "FINISHED"
    assert out["best"]["value"] == max(t.value for t in study.trials)
    assert out["best"]["replicates"] == [0, 1] and len(out["best"]["values_per_replicate"]) == 2
    assert out["best"]["value"] == pytest.approx(np.mean(out["best"]["values_per_replicate"]))
    assert out["plots"] and all(Path(p).is_file() for p in out["plots"])  # Optuna's plots, also on the parent run
    assert "results/grid.csv: run the grid" in out["comparison"]["note"]  # this test ran no grid
    # the best trial, chosen on replicates 0 and 1, tested on the held-out replicate 2 (trained for it)
    comp = out["comparison"]
    assert comp["held_out"] is True and comp["replicates_tested"] == [2] and comp["chosen_on"] == [0, 1]
    assert [r["replicate"] for r in comp["runs"]] == [2]
    assert comp["runs"][0]["run_id"] not in out["best"]["mlflow_run_ids"]
    rerun = mlflow.get_run(comp["runs"][0]["run_id"])
    assert rerun.data.tags["mlflow.parentRunId"] == parent and rerun.data.tags["finalbn.search_compare"] == "true"
    assert rerun.data.tags["replicate"] == "2"
    assert {a.path for a in mlflow.MlflowClient().list_artifacts(parent, "plots")}
    # resumed by name: a second call with the cap reached runs nothing more
    assert main(_args(overrides, "--out", str(tmp_path / "search.json"))) == 0
    assert len(search.open_study(load()).trials) == 3


def test_a_trials_objective_is_the_mean_over_its_replicates(searching):
    """A trial is its configuration on replicates 0..K-1, one run each; its value is the mean of
    their validation values at the last epoch, its tie-break the mean balanced loss."""
    load, _ = searching
    cfg = load(["search.n_trials=1", "selection.replicates=3"])
    study, parent, _ = search.start(cfg)
    search.optimize(cfg, SPLITS, parent)
    (trial,) = study.trials
    assert trial.state == TrialState.COMPLETE and trial.user_attrs["replicates"] == [0, 1, 2]
    ids = trial.user_attrs["mlflow_run_ids"]
    assert len(ids) == 3 and trial.user_attrs["mlflow_run_id"] == ids[0]
    runs = [mlflow.get_run(i) for i in ids]
    assert [r.data.tags["replicate"] for r in runs] == ["0", "1", "2"]
    assert len({r.data.tags["result_key"] for r in runs}) == 3 and len({r.data.tags["config_key"] for r in runs}) == 1
    aurocs = [r.data.metrics["val/last_auroc"] for r in runs]  # stored grouped (`tracking.names`)
    assert trial.user_attrs["values_per_replicate"] == pytest.approx(aurocs)
    assert trial.value == pytest.approx(np.mean(aurocs))
    losses = [r.data.metrics["val/last_balanced_loss"] for r in runs]
    assert trial.user_attrs[search.TIE_BREAK] == pytest.approx(np.mean(losses))
    tests = [r.data.metrics["test/f1_1"] for r in runs]
    assert trial.user_attrs["test_minority_f1"] == pytest.approx(np.mean(tests))  # reported only
    out = search.summary(cfg, search.open_study(cfg))
    assert out["best"]["replicates"] == [0, 1, 2] and out["best"]["value"] == pytest.approx(np.mean(aurocs))


def test_a_trial_pruned_on_replicate_0_never_trains_replicate_1(searching, monkeypatch):
    """The race: trial 0 runs both replicates; the pruner stops trial 1 at the end of replicate 0,
    and its replicate 1 is never loaded nor trained."""
    load, _ = searching
    loaded = []
    real = cell.load_splits

    def recording(manifest, *a, **k):
        loaded.append(int(Path(manifest).parent.name))
        return real(manifest, *a, **k)

    monkeypatch.setattr("finalbn.train.cell.load_splits", recording)
    cfg = load(["search.n_trials=2"])
    study, parent, _ = search.start(cfg)
    epochs = cfg.train.epochs

    class AfterReplicate0(optuna.pruners.BasePruner):  # trial 1: pruned once replicate 0 is done
        def prune(self, study, trial):
            return trial.number >= 1 and (trial.last_step or 0) >= epochs

    study.pruner = AfterReplicate0()
    study.optimize(search.make_objective(cfg, SPLITS, parent), n_trials=2)
    first, second = study.trials
    assert first.state == TrialState.COMPLETE and second.state == TrialState.PRUNED
    assert loaded == [0, 1, 0]  # trial 0: replicates 0 and 1; trial 1: replicate 0 only
    assert max(first.intermediate_values) == 2 * epochs  # steps: replicate 1's epochs follow replicate 0's
    assert max(second.intermediate_values) == epochs and "replicates" not in second.user_attrs
    runs = [r for r in _trial_runs(parent) if r.data.tags["trial"] == "1"]
    assert [(r.data.tags["replicate"], r.info.status, r.data.tags["trial_state"]) for r in runs] == [
        ("0", "KILLED", "pruned")
    ]
    assert second.user_attrs["mlflow_run_ids"] == [runs[0].info.run_id]
    lines = []
    search.TrialLog(cfg, lines.append)(study, second)
    assert f"pruned at epoch {epochs} of replicate 0" in lines[0]


@pytest.mark.parametrize(
    "bad, message",
    [
        (["search.space.depth=[1, 2]"], "unknown key 'search.space.depth'"),
        (["search.space.lr=[0.01, 0.001]"], "search.space.lr: empty range"),
        (["search.space.hidden=[]"], "search.space.hidden is empty"),
        (["search.objective=val_auroc+ece", "search.pruner=median"], "cannot prune the two-objective study"),
        (["search.storage=postgresql://nobody@127.0.0.1:1/none"], "search.storage"),
        (["selection.replicates=4"], "selection.replicates=4 exceeds the 3 replicates prepare writes"),
        (["search.space.final=[bn, none]"], "search.space.switches holds bn and search.space.final"),  # one overrides
        (
            ["search.space.calibration=[none, temperature]"],
            "search.space.calibration cannot change search.objective=val_auroc",
        ),  # temperature moves no ranking
    ],
)
def test_bad_search_input_is_one_line_before_any_trial(searching, capsys, bad, message):
    _, overrides = searching
    assert main(_args(overrides + bad)) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not mlflow.search_runs(
        experiment_names=["finalbn/search"], output_format="list", filter_string="tags.`finalbn.trial` = 'true'"
    )


def test_the_space_draws_no_dead_dimension(load):
    """params.yaml's space: the final Linear's bias only without a final BN, the final BN's knobs
    only with one, WL only under ce or focal (class_balanced's weights replace WL's; logit_adjusted's
    prior shift with WL's weights corrects the prior twice), weight
    decay only with WD on, MixUp's alpha only with MX on; the same seed draws the same trials."""
    cfg = load()

    def draws(seed: int) -> list[dict]:
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
        out = []
        for _ in range(80):
            trial = study.ask()
            tcfg = search.suggest(trial, cfg)
            p, ab = trial.params, tcfg.ablation
            bn = has_final_bn(tcfg.model, ab)
            assert ("final_bias" in p) != bn and ("final_bn_momentum" in p) == bn and ("final_bn_affine" in p) == bn
            assert ("WL" in p) == (p["loss"] in ("ce", "focal"))
            assert ab.wl == p.get("WL", False) and ("weight_decay" in p) == ab.wd and ("mixup_alpha" in p) == ab.mx
            assert "BN" not in p and ab.bn == (p["final"] != "none")  # the final layer is the BN switch
            study.tell(trial, 0.0)
            out.append(p)
        return out

    first = draws(0)
    assert first == draws(0)
    assert {p["loss"] for p in first} == {"ce", "focal", "logit_adjusted", "class_balanced"}
    assert {p["final"] for p in first} == {"bn", "selu", "none"}


def test_a_poor_trial_is_pruned_and_its_run_ends_killed(searching, tmp_path):
    load, _ = searching
    cfg = load(["search.pruner=median", "search.pruner_startup_trials=1", "search.pruner_warmup_epochs=0"])
    study = search.open_study(cfg)
    assert isinstance(study.pruner, search.ReplicateMedianPruner) and cfg.selection.replicates == 2
    good = study.ask()
    for step in (1, 2, 3, 4):
        good.report(0.9, step)
    study.tell(good, 0.9)

    def racer():
        t = study.ask()
        t.set_user_attr("epochs", 2)
        t.set_user_attr("steps_per_replicate", 2)
        return t

    poor = racer()
    cb = search.PruningCallback(poor, "val_auroc", stride=2)
    cb.on_epoch_end(1, {"val_auroc": 0.2})  # inside a replicate: never pruned
    with pytest.raises(optuna.TrialPruned, match="pruned at epoch 2 of replicate 0"):
        cb.on_epoch_end(2, {"val_auroc": 0.2})  # the end of replicate 0, below the median
    # a lucky epoch does not carry a trial (Optuna's MedianPruner compares the best step so far)
    lucky = racer()
    cb = search.PruningCallback(lucky, "val_auroc", stride=2)
    cb.on_epoch_end(1, {"val_auroc": 1.0})
    with pytest.raises(optuna.TrialPruned):
        cb.on_epoch_end(2, {"val_auroc": 0.5})
    # the end of the last replicate: the trial is complete, never pruned
    last = racer()
    search.PruningCallback(last, "val_auroc", replicate=1, stride=2, done=[0.95]).on_epoch_end(2, {"val_auroc": 0.1})
    # on replicate 1 it reports the running mean with replicate 0's last value, after replicate 0's steps
    racing = study.ask()
    search.PruningCallback(racing, "val_auroc", replicate=1, stride=2, done=[0.8]).on_epoch_end(1, {"val_auroc": 0.6})
    assert racing.storage.get_trial(racing._trial_id).intermediate_values == {3: pytest.approx(0.7)}
    # through tracking, as the objective does it: the run ends KILLED, tagged pruned
    tracking.setup(cfg, "search")

    def prune(*a, **k):
        raise optuna.TrialPruned("pruned at epoch 1: val_auroc 0.2000")

    with pytest.raises(optuna.TrialPruned):
        with tracking.cell_run(
            "trial-x", {"finalbn.trial": "true"}, killed_on=(optuna.TrialPruned,), state_tag="trial_state"
        ):
            prune()
    run = mlflow.search_runs(
        experiment_names=["finalbn/search"], output_format="list", filter_string="tags.`finalbn.trial` = 'true'"
    )[0]
    assert run.info.status == "KILLED" and run.data.tags["trial_state"] == "pruned"
    assert "epoch 1" in run.data.tags["trial_state_reason"]


def test_pruning_in_a_real_study(searching, tmp_path):
    """With a pruner that prunes below a floor no trial reaches, every trial after the first is
    pruned by the objective's own per-epoch reports."""
    load, _ = searching
    cfg = load(["search.pruner=median", "search.n_trials=2"])
    study = search.open_study(cfg)
    study.pruner = optuna.pruners.ThresholdPruner(lower=1.1)  # any AUROC is below it
    parent = tracking.study_parent(cfg, cfg.search.study)
    study.optimize(search.make_objective(cfg, SPLITS, parent), n_trials=2)
    assert {t.state for t in study.trials} == {TrialState.PRUNED}
    runs = mlflow.search_runs(
        experiment_names=["finalbn/search"], output_format="list", filter_string=f"tags.mlflow.parentRunId = '{parent}'"
    )
    assert {r.info.status for r in runs} == {"KILLED"} and {r.data.tags["trial_state"] for r in runs} == {"pruned"}


def test_a_diverging_trial_fails_with_its_reason_and_the_study_goes_on(searching, monkeypatch):
    load, _ = searching
    real = cellrun.run_cell
    calls = []

    def flaky(*a, **k):
        calls.append(1)
        if len(calls) == 1:
            raise TrainingDiverged("loss is nan at epoch 1, step 2")
        return real(*a, **k)

    monkeypatch.setattr("finalbn.stages.cellrun.run_cell", flaky)
    cfg = load(["search.n_trials=2"])
    study, parent, _ = search.start(cfg)
    search.optimize(cfg, SPLITS, parent)
    states = [t.state for t in study.trials]
    assert (
        states[0] == TrialState.FAIL
        and study.trials[0].user_attrs["fail_reason"] == "replicate 0: loss is nan at epoch 1, step 2"
    )
    assert states.count(TrialState.COMPLETE) == 2


def _poison_test_labels() -> None:
    for manifest in SPLITS.glob("*/*/manifest.csv"):  # every replicate's test labels flipped
        rows = list(csv.DictReader(manifest.open()))
        for r in rows:
            if r["split"] == "test":
                r["label"] = str(1 - int(r["label"]))
        with manifest.open("w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)


def test_test_labels_do_not_reach_the_objective(searching, tmp_path):
    """Poisoning every test label changes no trial's draws, no per-replicate value, no objective
    and not the best trial."""
    load, _ = searching
    a = load(["search.study=clean", "search.n_trials=2"])
    study, parent, _ = search.start(a)
    search.optimize(a, SPLITS, parent)
    clean = [(t.params, t.value, t.user_attrs["values_per_replicate"]) for t in study.trials]
    manifest, size = SPLITS / a.datasets[0].name / "1" / "manifest.csv", a.datasets[0].image_size
    before = cell.load_splits(manifest, size)["test"].labels.clone()
    _poison_test_labels()
    assert (cell.load_splits(manifest, size)["test"].labels == 1 - before).all()  # the cells see the poison
    b = load(["search.study=poisoned", "search.n_trials=2"])
    study, parent, _ = search.start(b)
    search.optimize(b, SPLITS, parent)
    poisoned = [(t.params, t.value, t.user_attrs["values_per_replicate"]) for t in study.trials]
    assert [p for p, _, _ in poisoned] == [p for p, _, _ in clean]
    assert [v for _, v, _ in poisoned] == pytest.approx([v for _, v, _ in clean], abs=1e-9)
    assert [v for _, _, v in poisoned] == [pytest.approx(v, abs=1e-9) for _, _, v in clean]
    best_a, best_b = search.best_trial(search.open_study(a)), search.best_trial(search.open_study(b))
    assert best_a.number == best_b.number and best_a.value == pytest.approx(best_b.value, abs=1e-9)
    assert (
        search.summary(a, search.open_study(a))["best"]["number"]
        == search.summary(b, search.open_study(b))["best"]["number"]
    )


@pytest.mark.slow
def test_killed_study_keeps_its_trials_fails_the_killed_one_and_finishes(searching, tmp_path):
    """As a user has it: two worker processes on one journal (search.workers, the default), the
    whole process group killed (an OOM killer, a pre-empted node), the same command again at once."""
    load, overrides = searching
    # the defaults a user has: liveness, not age, fails the killed trials
    over = overrides + ["train.epochs=6", f"search.workers={DEFAULT_WORKERS}"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "finalbn", *_args(over)],
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    cfg = load(["train.epochs=6"])
    deadline = time.time() + 240
    try:
        # wait until a trial is done and another is training (its MLflow run exists: a kill
        # before that leaves no run to mark KILLED)
        while time.time() < deadline:
            time.sleep(0.5)
            try:
                trials = search.open_study(cfg).trials
            except Exception:
                continue
            if any(t.state == TrialState.COMPLETE for t in trials) and any(
                t.state == TrialState.RUNNING and "mlflow_run_id" in t.user_attrs for t in trials
            ):
                break
        else:
            pytest.fail("the study never reached its second trial")
        os.killpg(proc.pid, signal.SIGKILL)  # the parent and both workers
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    killed = [t.number for t in search.open_study(cfg).trials if t.state == TrialState.RUNNING]
    assert killed
    # the killed trials' replicate runs as the kill left them: the one each was training RUNNING, unless the
    # kill landed between one replicate's run ending and the next one's starting (then none is)
    then = {}
    for number in killed:
        ids = search.open_study(cfg).trials[number].user_attrs.get("mlflow_run_ids", [])
        mine = {i: mlflow.get_run(i).info.status for i in ids}
        assert set(mine.values()) <= {"RUNNING", "FINISHED"} and list(mine.values()).count("RUNNING") <= 1
        then.update(mine)
    assert "RUNNING" in then.values()  # the kill met a run in progress
    assert main(_args(over)) == 0  # restart: the stale trials are failed (and retried), the rest are run
    trials = search.open_study(cfg).trials
    assert {t.number for t in trials if t.state == TrialState.FAIL} == set(killed)
    assert sum(t.state == TrialState.COMPLETE for t in trials) >= 3
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    for i, status in then.items():  # the run each was training is KILLED; a finished replicate's stays FINISHED
        assert mlflow.get_run(i).info.status == ("KILLED" if status == "RUNNING" else "FINISHED"), (i, status)


def test_a_restart_fails_a_dead_workers_trial_at_once_and_leaves_the_live_ones(searching):
    load, _ = searching
    cfg = load()  # the defaults: stale_after_s is an hour, and none of these trials is a second old
    study = search.open_study(cfg)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    dead = {"host": socket.gethostname(), "pid": gone.pid, "started": psutil.Process(gone.pid).create_time()}
    gone.wait()
    trials = [study.ask() for _ in range(3)]
    study._storage.set_trial_user_attr(trials[0]._trial_id, "worker", dead)
    study._storage.set_trial_user_attr(trials[1]._trial_id, "worker", liveness.identity())  # a live worker
    # trials[2] names no worker (an older finalbn's): younger than stale_after_s, left alone
    _, _, failed = search.start(cfg)
    assert failed == [trials[0].number]
    after = search.open_study(cfg).trials
    assert [t.state for t in after] == [TrialState.FAIL, TrialState.RUNNING, TrialState.RUNNING, TrialState.WAITING]
    assert f"pid {gone.pid}" in after[0].user_attrs["fail_reason"] and "is gone" in after[0].user_attrs["fail_reason"]
    # retried once with its parameters, saying why
    assert after[3].system_attrs["failed_trial"] == trials[0].number and after[3].params == after[0].params
    assert "is gone: FAIL, retried" in after[3].user_attrs["retry_reason"]


@pytest.mark.slow
def test_two_workers_share_one_journal(searching, tmp_path):
    load, overrides = searching
    assert main(_args(overrides + ["search.n_trials=4"], "--workers", "2", "--out", str(tmp_path / "s.json"))) == 0
    trials = search.open_study(load(["search.n_trials=4"])).trials
    numbers = [t.number for t in trials]
    assert len(numbers) == len(set(numbers)) >= 4
    assert all(t.state == TrialState.COMPLETE for t in trials)
    assert len({json.dumps(t.params, sort_keys=True) for t in trials}) > 1  # the workers' samplers differ


def test_a_line_per_trial_names_its_configuration_even_when_pruned(searching):
    load, _ = searching
    study = search.open_study(load(["search.study=lines"]))
    dist = {"x": optuna.distributions.FloatDistribution(0, 1)}
    study.add_trial(
        optuna.trial.create_trial(
            state=TrialState.PRUNED,
            params={"x": 0.5},
            distributions=dist,
            intermediate_values={1: 0.6, 2: 0.5},
            user_attrs={"config_name": "BN+WL"},
        )
    )
    study.add_trial(
        optuna.trial.create_trial(
            state=TrialState.PRUNED,
            params={"x": 0.5},
            distributions=dist,
            intermediate_values={1: 0.6, 2: 0.5, 3: 0.5},
            user_attrs={"config_name": "WL", "steps_per_replicate": 2},
        )
    )
    lines = []
    search.TrialLog(load(), lines.append)(study, study.trials[0])
    search.TrialLog(load(), lines.append)(study, study.trials[1])
    assert lines[0].startswith("search: trial 0 (BN+WL) pruned at epoch 2")
    assert re.search(r"\[2/3 finished, about \d+ s left\]$", lines[0])  # the trials left at the finished ones' pace
    assert lines[1].startswith("search: trial 1 (WL) pruned at epoch 1 of replicate 1")


def test_ties_on_the_objective_go_to_the_lower_validation_balanced_loss(searching):
    load, _ = searching
    study = search.open_study(load(["search.study=ties"]))
    dist = {"x": optuna.distributions.FloatDistribution(0, 1)}
    for value, loss in ((0.9, 0.1), (1.0, 0.5), (1.0, 0.2), (1.0, 0.2)):
        study.add_trial(
            optuna.trial.create_trial(
                value=value, params={"x": 0.5}, distributions=dist, user_attrs={search.TIE_BREAK: loss}
            )
        )
    assert search.best_trial(study).number == 2  # not Optuna's first-best (1), not the later equal one (3)
    out = search.summary(load(["search.study=ties"]), study)
    assert out["best"]["number"] == 2 and out["best"]["tied_on_objective"] == [1, 2, 3]
    low = search.open_study(load(["search.study=ties-min", "search.objective=val_balanced_loss"]))
    assert low.direction == optuna.study.StudyDirection.MINIMIZE
    for value in (0.3, 0.1, 0.2):
        low.add_trial(optuna.trial.create_trial(value=value, params={"x": 0.5}, distributions=dist))
    assert search.best_trial(low).number == 1
    simple = search.open_study(load(["search.study=ties-switches"]))  # equal on both: fewer switches win
    for switches in (3, 1, 2):
        simple.add_trial(
            optuna.trial.create_trial(
                value=1.0,
                params={"x": 0.5},
                distributions=dist,
                user_attrs={search.TIE_BREAK: 0.2, search.SWITCHES: switches},
            )
        )
    assert search.best_trial(simple).number == 1


@pytest.mark.slow
def test_best_trial_rerun_beside_the_grid(searching, tmp_path):
    """After the study: the best trial (chosen on replicates 0..K-1) tested on the held-out
    replicates K.. against BN-only (31) and the grid's best configuration over 0..K-1, paired;
    runs are found by their result key — the grid's cells — and what is missing is trained once (in
    this process: the pipeline test's search trains its comparison in the default two): a second
    call trains nothing."""
    load, overrides = searching
    more = [
        "grid.configs=[31, 63]",
        "grid.replicates=2",
        "grid.headline.configs=[31]",
        "grid.headline.replicates=4",
        "grid.baselines.methods=[]",
        "search.n_trials=2",
        "selection.replicates=2",
    ]
    gcfg = load(more)
    grid.run_shard(gcfg, SPLITS, log=lambda m: None)
    grid.write_results(gcfg, SPLITS, tmp_path / "results")
    grid_runs = {r.info.run_id for r in mlflow.search_runs(experiment_names=["finalbn/grid"], output_format="list")}
    args = _args(
        overrides + more,
        "--out",
        str(tmp_path / "results" / "search.json"),
        "--grid-csv",
        str(tmp_path / "results" / "grid.csv"),
        "--workers",
        "1",
    )
    assert main(args) == 0
    summary = json.loads((tmp_path / "results" / "search.json").read_text())
    out = summary["comparison"]
    assert out["held_out"] is True and out["chosen_on"] == [0, 1] and out["replicates_tested"] == [2, 3]
    assert out["replicates"] == 2 and [r["replicate"] for r in out["runs"]] == [2, 3]
    assert not {r["run_id"] for r in out["runs"]} & set(summary["best"]["mlflow_run_ids"])  # not the chosen ones
    bn = out["bn_only_31"]
    assert bn["config_id"] == 31 and bn["replicates"] == 2 and [r["replicate"] for r in bn["rows"]] == [2, 3]
    assert bn["best_trial_minus_test_f1_1"]["n"] == 2
    assert {r["run_id"] for r in bn["rows"]} <= grid_runs  # BN only: the grid's own headline cells, not trained again
    gb = out["grid_best"]  # both configurations have replicates 0 and 1: either may be the best
    assert gb["config_id"] in (31, 63) and gb["replicates"] == 2
    if gb["config_id"] == 63:  # the grid ran 63 on replicates 0 and 1 only: 2 and 3 were trained for the comparison
        assert len({r["run_id"] for r in gb["rows"]} - grid_runs) == 2
    runs = {r["run_id"] for r in out["runs"]} | {r["run_id"] for r in gb["rows"]}
    before = len(mlflow.search_runs(experiment_names=["finalbn/search"], output_format="list"))
    assert main(args) == 0  # the runs are found by key, not trained again
    again = json.loads((tmp_path / "results" / "search.json").read_text())["comparison"]
    assert {r["run_id"] for r in again["runs"]} | {r["run_id"] for r in again["grid_best"]["rows"]} == runs
    assert len(mlflow.search_runs(experiment_names=["finalbn/search"], output_format="list")) == before


def test_without_held_out_replicates_the_comparison_says_so(searching, tmp_path, capsys):
    """With prepare's replicates all used for choosing (grid.max_replicates == K), the arms are
    tested on 0..K-1 — the trial's own runs, found by key — and the output says they are not
    held out; a grid with no configuration on all K replicates has no best to compare."""
    load, overrides = searching
    grid_csv = tmp_path / "grid.csv"  # 31 and 63 on replicate 0 only: neither has all K
    rows = [
        {
            "dataset": load().datasets[0].name,
            "arch": load().model.arch,
            "config_id": cid,
            "config_name": name,
            "replicate": r,
            "val_auroc": 0.9,
            "val_balanced_loss": 0.5,
            "test_f1_1": 0.5,
            "test_auroc": 0.5,
        }
        for cid, name in ((31, "BN"), (63, "none"))
        for r in (0,)
    ]
    with grid_csv.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    more = ["grid.headline.replicates=2", "search.n_trials=1"]
    assert main(_args(overrides + more, "--out", str(tmp_path / "s.json"), "--grid-csv", str(grid_csv))) == 0
    out = json.loads((tmp_path / "s.json").read_text())
    comp = out["comparison"]
    assert comp["held_out"] is False and comp["replicates_tested"] == [0, 1] == comp["chosen_on"]
    assert "no held-out replicate" in comp["note"] and "tested on replicates 0..1" in capsys.readouterr().out
    assert [r["run_id"] for r in comp["runs"]] == out["best"]["mlflow_run_ids"]  # the trial's own runs
    assert "grid_best" not in comp and "has all of replicates 0..1" in comp["note"]
    assert comp["bn_only_31"]["replicates"] == 2  # BN only is a fixed arm, not a choice


@pytest.mark.slow
def test_ctrl_c_leaves_no_running_trial(searching):
    load, overrides = searching
    # trials long enough that the signal lands inside one, and more than can finish meanwhile
    over = overrides + ["train.epochs=30", "search.n_trials=20", f"search.workers={DEFAULT_WORKERS}"]
    # two workers on one journal (the default), the signal to the whole process group as a terminal's
    # Ctrl-C sends it. SIGINT back to its default in the child: a shell's background job starts with
    # it ignored, and Python then installs no KeyboardInterrupt handler
    proc = subprocess.Popen(
        [sys.executable, "-m", "finalbn", *_args(over)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    cfg = load(["train.epochs=30", "search.n_trials=20"])
    deadline = time.time() + 240
    try:
        while time.time() < deadline:  # wait until a trial is running
            time.sleep(0.5)
            try:
                if any(t.state == TrialState.RUNNING for t in search.open_study(cfg).trials):
                    break
            except Exception:
                continue
        else:
            pytest.fail("no trial started")
        assert proc.poll() is None, "the study ended before the signal"
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130 and "Traceback" not in err, err[-3000:]
    (line,) = [ln for ln in err.splitlines() if "interrupted" in ln]  # one line, the parent's (not each worker's)
    assert line.startswith("finalbn search: interrupted; kept ") and "closed" in line, err[-3000:]
    trials = search.open_study(cfg).trials
    assert trials and not [t for t in trials if t.state == TrialState.RUNNING]
    stopped = {t.number for t in trials if t.state == TrialState.FAIL}  # each worker's trial in progress
    assert stopped and all("stopped by Ctrl-C" in trials[n].user_attrs["fail_reason"] for n in stopped)
    # each retried with its parameters when the search resumes
    retries = [t for t in trials if t.state == TrialState.WAITING]
    assert {t.system_attrs["failed_trial"] for t in retries} == stopped
    assert all(t.params == trials[t.system_attrs["failed_trial"]].params for t in retries)
    runs = mlflow.search_runs(
        experiment_names=["finalbn/search"], output_format="list", filter_string="tags.`finalbn.trial` = 'true'"
    )
    assert "RUNNING" not in {r.info.status for r in runs}  # (the signal may land before the trial's run exists)


def test_a_resumed_study_draws_what_an_uninterrupted_one_would():
    """The sampler draws a trial's point from (seed, its place among the sampled trials): a study
    whose first trial was stopped and retried with its parameters goes on with the same points, and
    a new process does not draw the first points again (as a TPESampler(seed) per process would)."""

    def points(study, n):
        out = []
        for _ in range(n):
            t = study.ask()
            out.append(t.suggest_float("lr", 1e-4, 1e-1, log=True))
            study.tell(t, 0.5)
        return out

    uninterrupted = points(optuna.create_study(sampler=TrialSeededSampler(0)), 4)
    assert len(set(uninterrupted)) == 4
    study = optuna.create_study(sampler=TrialSeededSampler(0))
    first = study.ask()
    first.suggest_float("lr", 1e-4, 1e-1, log=True)
    study.tell(first, state=TrialState.FAIL)  # stopped, and retried as finalbn does (RetryDeadWorker's base)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1)(study, study.trials[0])
    resumed = optuna.load_study(study_name=study.study_name, storage=study._storage, sampler=TrialSeededSampler(0))
    assert points(resumed, 2) == uninterrupted[:2]  # the retry (point 0), then point 1
    again = optuna.load_study(study_name=study.study_name, storage=study._storage, sampler=TrialSeededSampler(0))
    assert points(again, 2) == uninterrupted[2:]  # another process goes on with points 2, 3


def test_a_trial_is_named_by_the_final_layer_it_drew(load):
    """A SELU trial read 'BN+WL+WD' (val AUROC 0.46 at 2c8d3f2), as if the final BN had failed: the
    SELU final layer under a logit-adjusted and class-weighted loss ranks backwards (replicate 0:
    val/test AUROC 0.31/0.38; SELU with CE 0.72/0.65; the final BN under the same loss 0.81/0.85)."""
    assert trial_name(load(["ablation.bn=true", "ablation.wl=true", "model.final_variant=selu"])) == "SELU+WL"
    assert trial_name(load(["ablation.bn=true", "ablation.wl=true", "model.final_variant=bn"])) == "BN+WL"
    assert trial_name(load(["ablation.bn=false", "ablation.wl=true", "model.final_variant=selu"])) == "WL"

"""The Optuna search: a study on tiny data, resume after a kill, pruning, workers, child runs."""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import optuna
import pytest
from optuna.trial import TrialState

from finalbn import tracked, tracking
from finalbn.stages import search
from finalbn.cli import main

from conftest import ROOT

SPLITS = Path("data/splits")
SMALL_SPACE = ["search.space.switches=[bn, wl, wd]", "search.space.hidden=[16, 32]", "search.space.final=null",
               "search.space.final_bn_affine=null", "search.space.final_bias=null", "search.space.batch_size=null",
               "search.space.mixup_alpha=null", "search.space.final_bn_momentum=null",
               "search.space.label_smoothing=null", "search.space.dropout_0=null", "search.space.dropout_1=null"]


def _args(overrides, *extra):
    return ["search", "--params", str(ROOT / "params.yaml"), *[x for o in overrides for x in ("--set", o)], *extra]


def _study(load, extra=()):
    return search.open_study(load(list(extra)))


@pytest.fixture
def searching(prepared, tmp_path):
    load, overrides = prepared
    extra = SMALL_SPACE + [f"search.storage={tmp_path / 'search' / 'journal.log'}", "search.n_trials=3",
                           "search.pruner=none", "train.epochs=2", "grid.headline.replicates=2", "search.replicates=2",
                           "search.workers=1"]
    return (lambda more=(): load(extra + list(more))), overrides + extra


def test_three_trials_complete_as_child_runs(searching, tmp_path, capsys):
    load, overrides = searching
    assert main(_args(overrides, "--out", str(tmp_path / "search.json"))) == 0
    out = json.loads((tmp_path / "search.json").read_text())
    assert out["trials"] == 3 and out["states"]["complete"] == 3 and "best" in out
    printed = capsys.readouterr().out
    assert "search: trial 2 (" in printed and "[3/3 finished]" in printed  # a line per trial
    study = search.open_study(load())
    parent = study.user_attrs["mlflow_run_id"]
    runs = mlflow.search_runs(experiment_names=["finalbn"], output_format="list",
                              filter_string=f"tags.mlflow.parentRunId = '{parent}' and tags.`finalbn.trial` = 'true'")
    assert sorted(r.info.run_name for r in runs) == ["trial-0", "trial-1", "trial-2"]
    assert {r.data.tags["trial_state"] for r in runs} == {"complete"} and {r.info.status for r in runs} == {"FINISHED"}
    by_run = {t.user_attrs["mlflow_run_id"]: t for t in study.trials}
    for r in runs:  # each trial knows its run, and its run has the per-epoch values
        assert r.info.run_id in by_run and "val_auroc" in r.data.metrics
    assert mlflow.get_run(parent).info.status == "FINISHED"
    assert out["best"]["value"] == max(t.value for t in study.trials)
    assert out["plots"] and all(Path(p).is_file() for p in out["plots"])  # Optuna's plots, also on the parent run
    assert "results/grid.csv: run the grid" in out["comparison"]["note"]  # this test ran no grid
    # the best trial on replicates 0 and 1: replicate 0 is the trial's own run (same result key)
    comp = out["comparison"]
    assert [r["replicate"] for r in comp["runs"]] == [0, 1]
    assert comp["runs"][0]["run_id"] == out["best"]["mlflow_run_id"]
    rerun = mlflow.get_run(comp["runs"][1]["run_id"])
    assert rerun.data.tags["mlflow.parentRunId"] == parent and rerun.data.tags["finalbn.search_compare"] == "true"
    assert {a.path for a in mlflow.MlflowClient().list_artifacts(parent, "plots")}
    # resumed by name: a second call with the cap reached runs nothing more
    assert main(_args(overrides, "--out", str(tmp_path / "search.json"))) == 0
    assert len(search.open_study(load()).trials) == 3


@pytest.mark.parametrize("bad, message", [
    (["search.space.depth=[1, 2]"], "unknown key 'search.space.depth'"),
    (["search.space.lr=[0.01, 0.001]"], "search.space.lr: empty range"),
    (["search.space.hidden=[]"], "search.space.hidden is empty"),
    (["search.objective=val_auroc+ece", "search.pruner=median"], "cannot prune the two-objective study"),
    (["search.storage=postgresql://nobody@127.0.0.1:1/none"], "search.storage"),
    (["search.replicates=3"], "search.replicates=3 exceeds the 2 replicates prepare writes"),
    (["search.replicate=2"], "search.replicate=2 is not a prepared replicate"),
])
def test_bad_search_input_is_one_line_before_any_trial(searching, capsys, bad, message):
    _, overrides = searching
    assert main(_args(overrides + bad)) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not mlflow.search_runs(experiment_names=["finalbn"], output_format="list",
                                  filter_string="tags.`finalbn.trial` = 'true'")


def test_a_poor_trial_is_pruned_and_its_run_ends_killed(searching, tmp_path):
    load, _ = searching
    cfg = load(["search.pruner=median", "search.pruner_startup_trials=1", "search.pruner_warmup_epochs=0"])
    study = search.open_study(cfg)
    good = study.ask()
    for epoch in (1, 2):
        good.report(0.9, epoch)
    study.tell(good, 0.9)
    poor = study.ask()
    cb = search.PruningCallback(poor, "val_auroc")
    with pytest.raises(optuna.TrialPruned, match="pruned at epoch 1"):
        cb.on_epoch_end(1, {"val_auroc": 0.2})
    # through tracking, as the objective does it: the run ends KILLED, tagged pruned
    tracking.setup(cfg)

    def prune(*a, **k):
        raise optuna.TrialPruned("pruned at epoch 1: val_auroc 0.2000")

    with pytest.raises(optuna.TrialPruned):
        with tracking.cell_run("trial-x", {"finalbn.trial": "true"}, killed_on=(optuna.TrialPruned,),
                               state_tag="trial_state"):
            prune()
    run = mlflow.search_runs(experiment_names=["finalbn"], output_format="list",
                             filter_string="tags.`finalbn.trial` = 'true'")[0]
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
    runs = mlflow.search_runs(experiment_names=["finalbn"], output_format="list",
                              filter_string=f"tags.mlflow.parentRunId = '{parent}'")
    assert {r.info.status for r in runs} == {"KILLED"} and {r.data.tags["trial_state"] for r in runs} == {"pruned"}


def test_a_diverging_trial_fails_with_its_reason_and_the_study_goes_on(searching, monkeypatch):
    load, _ = searching
    from finalbn.engine import TrainingDiverged

    real = tracked.run_cell
    calls = []

    def flaky(*a, **k):
        calls.append(1)
        if len(calls) == 1:
            raise TrainingDiverged("loss is nan at epoch 1, step 2")
        return real(*a, **k)

    monkeypatch.setattr("finalbn.tracked.run_cell", flaky)
    cfg = load(["search.n_trials=2"])
    study, parent, _ = search.start(cfg)
    search.optimize(cfg, SPLITS, parent)
    states = [t.state for t in study.trials]
    assert states[0] == TrialState.FAIL and study.trials[0].user_attrs["fail_reason"].startswith("loss is nan")
    assert states.count(TrialState.COMPLETE) == 2


def test_test_labels_do_not_reach_the_objective(searching, tmp_path):
    load, _ = searching
    a = load(["search.study=clean", "search.n_trials=2"])
    study, parent, _ = search.start(a)
    search.optimize(a, SPLITS, parent)
    clean = [(t.params, t.value) for t in study.trials]
    for manifest in SPLITS.glob("*/*/manifest.csv"):  # poison every test label
        rows = list(csv.DictReader(manifest.open()))
        for r in rows:
            if r["split"] == "test":
                r["label"] = str(1 - int(r["label"]))
        with manifest.open("w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    b = load(["search.study=poisoned", "search.n_trials=2"])
    study, parent, _ = search.start(b)
    search.optimize(b, SPLITS, parent)
    poisoned = [(t.params, t.value) for t in study.trials]
    assert [p for p, _ in poisoned] == [p for p, _ in clean]
    assert [v for _, v in poisoned] == pytest.approx([v for _, v in clean], abs=1e-9)
    assert search.summary(a, search.open_study(a))["best"]["number"] == \
        search.summary(b, search.open_study(b))["best"]["number"]


@pytest.mark.slow
def test_killed_study_keeps_its_trials_fails_the_killed_one_and_finishes(searching, tmp_path):
    load, overrides = searching
    over = overrides + ["train.epochs=6", "search.stale_after_s=0"]
    env = {**os.environ}
    proc = subprocess.Popen([sys.executable, "-m", "finalbn", *_args(over)[0:1], *_args(over)[1:]],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cfg = load(["train.epochs=6"])
    deadline = time.time() + 240
    try:
        # wait until trial 0 is done and trial 1 is training (its MLflow run exists: a kill
        # before that leaves no run to mark KILLED)
        while time.time() < deadline:
            time.sleep(0.5)
            try:
                trials = search.open_study(cfg).trials
            except Exception:
                continue
            if any(t.state == TrialState.COMPLETE for t in trials) and \
                    any(t.state == TrialState.RUNNING and t.number >= 1
                        and "mlflow_run_id" in t.user_attrs for t in trials):
                break
        else:
            pytest.fail("the study never reached its second trial")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    killed = [t.number for t in search.open_study(cfg).trials if t.state == TrialState.RUNNING]
    assert killed
    assert main(_args(over)) == 0  # restart: the stale trial is failed, the rest are run
    trials = search.open_study(cfg).trials
    assert {t.number for t in trials if t.state == TrialState.FAIL} == set(killed)
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 3
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    run = mlflow.get_run(trials[killed[0]].user_attrs["mlflow_run_id"])
    assert run.info.status == "KILLED"


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
    study.add_trial(optuna.trial.create_trial(state=TrialState.PRUNED, params={"x": 0.5}, distributions=dist,
                                              intermediate_values={1: 0.6, 2: 0.5}, user_attrs={"config_name": "BN+WL"}))
    lines = []
    search.TrialLog(load(), lines.append)(study, study.trials[0])
    assert lines[0].startswith("search: trial 0 (BN+WL) pruned at epoch 2") and "[1/3 finished]" in lines[0]


def test_ties_on_the_objective_go_to_the_lower_validation_balanced_loss(searching):
    load, _ = searching
    study = search.open_study(load(["search.study=ties"]))
    dist = {"x": optuna.distributions.FloatDistribution(0, 1)}
    for value, loss in ((0.9, 0.1), (1.0, 0.5), (1.0, 0.2), (1.0, 0.2)):
        study.add_trial(optuna.trial.create_trial(value=value, params={"x": 0.5}, distributions=dist,
                                                  user_attrs={search.TIE_BREAK: loss}))
    assert search.best_trial(study).number == 2  # not Optuna's first-best (1), not the later equal one (3)
    out = search.summary(load(["search.study=ties"]), study)
    assert out["best"]["number"] == 2 and out["best"]["tied_on_objective"] == [1, 2, 3]
    low = search.open_study(load(["search.study=ties-min", "search.objective=val_balanced_loss"]))
    assert low.direction == optuna.study.StudyDirection.MINIMIZE
    for value in (0.3, 0.1, 0.2):
        low.add_trial(optuna.trial.create_trial(value=value, params={"x": 0.5}, distributions=dist))
    assert search.best_trial(low).number == 1


@pytest.mark.slow
def test_best_trial_rerun_beside_the_grid(searching, tmp_path):
    """After the study: the best trial on search.replicates replicates, tested, against BN-only
    (31) and the grid's best configuration on the same replicates, paired; runs are found by
    their result key — the trial's own run, the grid's cells — and what is missing is trained
    (in two processes), once: a second call trains nothing."""
    from finalbn.stages import grid

    load, overrides = searching
    more = ["grid.configs=[31, 63]", "grid.replicates=1", "grid.headline.configs=[31]", "grid.headline.replicates=3",
            "grid.baselines.methods=[]", "search.n_trials=2", "search.replicates=3"]
    gcfg = load(more)
    grid.run_shard(gcfg, SPLITS, log=lambda m: None)
    grid.write_results(gcfg, SPLITS, tmp_path / "results")
    grid_runs = {r.info.run_id for r in mlflow.search_runs(experiment_names=["finalbn"], output_format="list")}
    args = _args(overrides + more, "--out", str(tmp_path / "results" / "search.json"),
                 "--grid-csv", str(tmp_path / "results" / "grid.csv"), "--workers", "2")
    assert main(args) == 0
    summary = json.loads((tmp_path / "results" / "search.json").read_text())
    out = summary["comparison"]
    assert out["replicates"] == 3 and [r["replicate"] for r in out["runs"]] == [0, 1, 2]
    assert out["runs"][0]["run_id"] == summary["best"]["mlflow_run_id"]  # the trial serves replicate 0
    bn = out["bn_only_31"]
    assert bn["config_id"] == 31 and bn["replicates"] == 3
    assert bn["best_trial_minus_test_f1_1"]["n"] == 3
    assert {r["run_id"] for r in bn["rows"]} <= grid_runs  # BN only: the grid's own cells, not trained again
    gb = out["grid_best"]
    assert gb["config_id"] in (31, 63) and gb["replicates"] == 3
    if gb["config_id"] == 63:  # the grid ran 63 on replicate 0 only: 1 and 2 were trained for the comparison
        assert len({r["run_id"] for r in gb["rows"]} - grid_runs) == 2
    runs = {r["run_id"] for r in out["runs"]} | {r["run_id"] for r in gb["rows"]}
    before = len(mlflow.search_runs(experiment_names=["finalbn"], output_format="list"))
    assert main(args) == 0  # the runs are found by key, not trained again
    again = json.loads((tmp_path / "results" / "search.json").read_text())["comparison"]
    assert {r["run_id"] for r in again["runs"]} | {r["run_id"] for r in again["grid_best"]["rows"]} == runs
    assert len(mlflow.search_runs(experiment_names=["finalbn"], output_format="list")) == before


@pytest.mark.slow
def test_ctrl_c_leaves_no_running_trial(searching):
    load, overrides = searching
    # trials long enough that the signal lands inside one, and more than can finish meanwhile
    over = overrides + ["train.epochs=30", "search.n_trials=20"]
    # SIGINT back to its default in the child: a shell's background job starts with it ignored,
    # and Python then installs no KeyboardInterrupt handler
    proc = subprocess.Popen([sys.executable, "-m", "finalbn", *_args(over)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
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
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130 and err.strip().endswith("finalbn search: interrupted"), err[-3000:]
    trials = search.open_study(cfg).trials
    assert trials and not [t for t in trials if t.state == TrialState.RUNNING]
    runs = mlflow.search_runs(experiment_names=["finalbn"], output_format="list",
                              filter_string="tags.`finalbn.trial` = 'true'")
    assert "RUNNING" not in {r.info.status for r in runs}  # (the signal may land before the trial's run exists)

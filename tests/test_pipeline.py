"""The DVC pipeline in a scratch project (git repo or plain folder): stages run, rerun nothing, re-run what changed;
killed or interrupted anywhere, it resumes to the same outputs (tests/faulting.py).
(That every stage's code deps are its import closure is checked in tests/test_structure.py.)"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import yaml

import faulting
from conftest import ROOT
from finalbn.tracking import fingerprint
from test_verdict_facts import check_verdict_numbers


def _repro(repo: Path, *stages: str) -> str:
    """`dvc repro *stages` in `repo`, which must exit 0 within 600 s (else its whole process group,
    shard and search workers included, is killed and the test fails); its stdout. The whole pipeline,
    or the `store` stage, first asks `finalbn store` whether the store holds what the outputs cite,
    as `make run` does (its stdout leads)."""
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    checked = ""
    if not stages or "store" in stages:
        store = subprocess.run(
            [str(Path(sys.executable).parent / "finalbn"), "store", "--out", "results/store"],
            cwd=repo,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert store.returncode == 0, store.stdout + store.stderr
        checked = store.stdout
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "dvc"), "repro", *stages],
        cwd=repo,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=600)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(f"dvc repro {' '.join(stages)}: still running 600 s later (killed)\n{out}{err}") from None
    assert proc.returncode == 0, out + err
    return checked + out


def _dvc(repo: Path, *args: str) -> str:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "COLUMNS": "300"}
    out = subprocess.run(
        [str(Path(sys.executable).parent / "dvc"), *args],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "WARNING" not in out.stderr and "ERROR" not in out.stderr, out.stderr
    return out.stdout


def _ran(out: str) -> set[str]:
    """The stages a `dvc repro` output says it ran."""
    return set(re.findall(r"Running stage '([^']+)'", out))


# the stages killed at random instants in `make test` (one draw each, a new seed each run): those of several processes, where a
# kill leaves the most to clean up (benchmarks/random_kills.py: every stage, many draws)
KILLED_AT_RANDOM = ("grid", "search")
TRACKING = {
    "ceiling@synthetic-apple",
    "grid",
    "search",
    "sensitivity",
    "needs",
    "report",
    "export",
}  # stages with MLflow runs


def _holds_what_is_cited(repo: Path, db: str) -> set[str]:
    """The store `db` of `repo` holds every run the outputs cite, every trial's, the report's own and
    the champion's (the export's model), and every stage's fingerprint says so; returns its run ids."""
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{repo / db}")
    held = {
        r.info.run_id
        for r in client.search_runs([e.experiment_id for e in client.search_experiments()], max_results=5000)
    }
    cited = fingerprint.cited([repo / "results", repo / "report", repo / "models"])
    assert cited and cited <= held, cited - held
    trials = json.loads((repo / "results" / "search.json").read_text())["trial_mlflow_run_ids"]
    assert len(trials) == 2 and all(ids and set(ids) <= held for ids in trials.values()), trials
    marks = {
        p.relative_to(repo / "results" / "store").as_posix(): json.loads(p.read_text())
        for p in (repo / "results" / "store").rglob("*.json")
    }
    assert all(m["complete"] and set(m["runs"]) <= held for m in marks.values()), marks
    report = client.get_experiment_by_name("finalbn/report").experiment_id
    assert set(marks["report.json"]["runs"]) & {r.info.run_id for r in client.search_runs([report])}
    card = json.loads((repo / "models" / "model.json").read_text())
    assert client.get_model_version_by_alias("finalbn", "champion").run_id == card["model_run_id"]
    return held


def _copy_without_store(repo: Path, dst: Path, workers: int, keep_splits: bool = False) -> Path:
    """`repo` after its `dvc repro`, copied and then `rm mlflow.db`: a new user's clean slate (dvc.lock
    kept). Unless `keep_splits`, its splits go too, with DVC's cache (from which DVC would check them
    out again), so that prepare runs again (and can be stopped) as well. The grid and the search run
    in `workers` processes (their cells and trials are the same whatever the count)."""
    shutil.copytree(repo, dst, dirs_exist_ok=True, ignore=shutil.ignore_patterns("mlflow.db*", "tmp"))
    for gone in () if keep_splits else (dst / "data" / "splits", dst / ".dvc" / "cache"):
        shutil.rmtree(gone)
    params = yaml.safe_load((dst / "params.yaml").read_text())
    params["grid"]["workers"] = params["search"]["workers"] = workers
    (dst / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return dst


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=repo, check=True)


def _the_store_as_mlflow_users_expect(repo: Path) -> None:
    """After `dvc repro`: an experiment per stage; run names lead with the configuration; a
    parent speaks its children's metric names and ends with its last child; a cell logs only what
    it used and its split manifest as its dataset input; the registered champion is
    self-contained, and `finalbn-field` predicts from it as `mlflow artifacts download` gives it."""
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{repo / 'mlflow.db'}")
    names = {e.name for e in client.search_experiments()}
    assert {"finalbn/grid", "finalbn/search", "finalbn/ceiling", "finalbn/report", "finalbn/export"} <= names
    grid_id = client.get_experiment_by_name("finalbn/grid").experiment_id
    runs = client.search_runs([grid_id], max_results=1000)
    cells = [r for r in runs if r.data.tags.get("finalbn.cell") == "true"]
    parents = {r.info.run_id: r for r in runs if r.data.tags.get("finalbn.parent") == "true"}
    assert len(cells) == 9 and len(parents) == 3 + 2  # 31, 63, 59 and the 2 baselines on 63
    for r in runs:
        assert r.info.run_name.startswith(r.data.tags["config_name"]) and r.data.tags["stage"] == "grid", (
            r.info.run_name
        )
    for c in cells:
        p = c.data.params
        assert p["dataset.name"] == "synthetic-apple" and "model.arch" in p
        assert not [
            k for k in p if k.split(".")[0] in ("search", "grid", "pretrain", "report", "sensitivity", "datasets")
        ]
        (ds,) = c.inputs.dataset_inputs
        assert ds.dataset.digest == c.data.tags["manifest_sha256"][:32]
    for pid, parent in parents.items():
        kids = [c for c in cells if c.data.tags["mlflow.parentRunId"] == pid]
        vals = [k.data.metrics["test/f1_1"] for k in kids]  # stored grouped (`tracking.names`)
        assert parent.data.metrics["test/f1_1"] == pytest.approx(sum(vals) / len(vals))
        assert parent.info.status == "FINISHED" and parent.info.end_time >= max(k.info.end_time for k in kids)
    assert all(r.info.status == "FINISHED" for r in runs)
    mv = client.get_model_version_by_alias("finalbn", "champion")
    assert "Expected in the field" in mv.description and mv.tags["config_name"]
    assert client.get_registered_model("finalbn").description
    bindir = Path(sys.executable).parent
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{repo / 'mlflow.db'}"}
    dst = repo / "downloaded model"
    subprocess.run(
        [str(bindir / "mlflow"), "artifacts", "download", "-u", "models:/finalbn@champion", "-d", str(dst)],
        env=env,
        check=True,
        capture_output=True,
        timeout=300,
    )
    assert (dst / "extra_files" / "model.json").is_file() and (dst / "model.onnx").is_file()
    mlmodel = yaml.safe_load((dst / "MLmodel").read_text())
    assert json.loads(mlmodel["signature"]["inputs"])[0]["name"] == "image"
    leaf = next((repo / "data" / "raw" / "synthetic").rglob("*.png"))
    out = subprocess.run(
        [str(bindir / "finalbn-field"), "predict", "--model", str(dst), str(leaf), "--out", str(repo / "preds.csv")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert (repo / "preds.csv").read_text().count("\n") == 2


def _project(tmp_path: Path, git: bool) -> Path:
    """The project's dvc.yaml, Makefile and sources with tiny synthetic params, made ready for DVC
    by `make dvc-ready` (what `make run` does first): in a git repo, or in a plain folder as a ZIP
    download or a release tarball unpacks."""
    shutil.copy(ROOT / "dvc.yaml", tmp_path)
    shutil.copy(ROOT / "Makefile", tmp_path)
    (tmp_path / "tools").mkdir()
    shutil.copy(ROOT / "tools" / "offline_plots.py", tmp_path / "tools")  # `make dvc-ready`: dvc plots show offline
    shutil.copytree(ROOT / "src", tmp_path / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    shutil.copytree(
        ROOT / "deploy" / "field" / "finalbn_field",
        tmp_path / "deploy" / "field" / "finalbn_field",
        ignore=shutil.ignore_patterns("__pycache__"),
    )  # the decoder's and decision rules' source: deps too
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["synthetic"].update(
        image_size=16, crops=["Apple", "Grape"], healthy=12, per_disease=2, workers=1, healthy_by_crop={}
    )
    params["datasets"]["synthetic-apple"]["image_size"] = 16
    params["split"].update(train=[4, 2], val=[2, 1], test=[2, 2], disjoint_test=False)
    params["train"].update(epochs=1, batch_size=4, threads=1)
    # the grid's and the search's worker counts are params.yaml's (2 each: shard and search worker processes)
    params["grid"].update(configs=[31, 63, 59], headline={"configs": [31, 63], "replicates": 2})
    # a loss that replaces cross-entropy and a post-hoc one: both ways a baseline runs (every method's own
    # numbers are tests/test_losses.py's and tests/test_report_baselines.py's)
    params["grid"]["baselines"]["methods"] = ["focal", "temperature"]
    params["report"]["bootstrap"] = 200
    params["search"].update(n_trials=2, pruner="none")
    params["selection"]["replicates"] = 1  # chosen on replicate 0, compared on the held-out replicate 1
    params["sensitivity"].update(
        replicates=2,
        imbalance=[],
        batch_size=[],
        final_bn_momentum=[],
        frozen_bn=[],
        single_logit=False,
        bias_shift=False,
        workers=1,
        inference_removal=False,
    )  # the stage runs and writes its
    # empty table (its levels and the bias shift are tests/test_sensitivity.py's: a `finalbn grid` process less here)
    # the planner at 1, 2 (the grid's own count) and 3 minority images, one replicate, one process (tests/test_needs.py
    # runs it on more)
    params["needs"].update(counts=[1, 2, 3], replicates=1, bootstrap=100, workers=1, rival="vector_scaling")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    if git:
        subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    made = subprocess.run(
        ["make", "--no-print-directory", "dvc-ready", f"BIN={Path(sys.executable).parent}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**os.environ, "DVC_NO_ANALYTICS": "1"},
    )
    assert made.returncode == 0, made.stdout + made.stderr
    assert ("not a git work tree" in made.stdout) is not git
    return tmp_path


@pytest.fixture
def repo(tmp_path):
    """A git+DVC repo of the project (`_project`)."""
    return _project(tmp_path, git=True)


@pytest.fixture
def repo_without_git(tmp_path):
    """The project outside any git work tree (tmp_path is not inside one)."""
    return _project(tmp_path, git=False)


@pytest.mark.slow
def test_whole_pipeline_then_store_gone_and_killed_anywhere_then_nothing_then_only_what_changed_then_another_store(
    repo, tmp_path_factory, monkeypatch
):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # MLflow's default store in the repo
    first = _repro(repo)
    # the per-dataset stages named by the dataset
    assert _ran(first) == {"synthesize", "prepare@synthetic-apple", "store"} | TRACKING
    assert json.loads((repo / "models" / "parity.json").read_text())["passed"]
    assert (repo / "models" / "model.onnx").is_file() and (repo / "models" / "model.json").is_file()
    search = json.loads((repo / "results" / "search.json").read_text())
    assert search["states"]["complete"] == 2 and search["comparison"]["bn_only_31"]["replicates"] == 1
    assert search["comparison"]["held_out"] is True and search["best"]["replicates"] == [0]
    card = json.loads((repo / "models" / "model.json").read_text())
    assert card["selection"]["replicates"] == [0] and card["decision"]["operating_curve"]["positives"] == 1
    # 59 once (mixup: a unit of its own, so that both shard processes have cells), 31 and 63 twice, and the 2
    # baselines on 63's 2 replicates
    assert "grid: 9/9 cells finished" in first and "report: 5 cells" in first
    assert (repo / "mlflow.db").is_file() and (repo / "report" / "report.md").is_file()
    md = (repo / "report" / "report.md").read_text()
    assert "## Can the features see the cue?" in md and "## The imbalance baselines against the final BN" in md
    assert "Best trial vs BN only (config 31 BN)" in md and "## Choosing a configuration over 1 replicate" in md
    assert "## Beyond the paper: how sensitive is the headline contrast?" in md
    assert "## The answer at the prevalence the user will meet" in md
    verdict = json.loads((repo / "report" / "summary.json").read_text())["verdict"]
    assert verdict[0].startswith("**Does final BN help at your prevalence?**")  # the answer at each π, first
    assert md.index("**Does final BN help at your prevalence?**") < md.index("## How the numbers are computed")
    assert check_verdict_numbers(verdict, pd.read_csv(repo / "report" / "effects.csv")) >= 4  # every number is a row
    sens = json.loads((repo / "results" / "sensitivity" / "sensitivity.json").read_text())
    assert sens["factors"] == []
    assert "## How many defect images? The data-needs planner" in md and (repo / "report" / "needs.png").is_file()
    _the_store_as_mlflow_users_expect(repo)
    spans = faulting.spans(repo)  # each stage's seconds, read from its outputs' times: random kills are drawn over them
    reference = _holds_what_is_cited(repo, "mlflow.db")
    # a copy of it without its MLflow store (`rm mlflow.db`), pointed at another store (a team's, named by
    # MLFLOW_TRACKING_URI), with the default worker counts (2 shard processes, 2 search workers on one
    # journal, as the reference): every stage that tracks runs again, as DVC's cache would restore files whose runs are gone;
    # meanwhile each is killed (SIGKILL) or interrupted (Ctrl-C twice) to its whole process group at every
    # point and run again at once. It ends with the uninterrupted run's numbers, and a store that holds
    # every cell, trial, report and export run and the champion, none of the first store's
    faulted = _copy_without_store(repo, tmp_path_factory.mktemp("faulted"), workers=2)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{faulted / 'team.db'}")
    outs = []
    print("\n".join(faulting.stop_and_resume(faulted, lambda *a: outs.append(_repro(*a)) or outs[-1])))
    assert "its outputs cite runs of another store (sqlite:///mlflow.db)" in outs[1]  # the `store` stage, first
    faulting.assert_same_outputs(faulted, repo)
    held = _holds_what_is_cited(faulted, "team.db")
    cited = fingerprint.cited([faulted / "results" / "grid.csv", faulted / "report"])
    assert len(cited) >= 9 and cited <= held and not cited & reference
    assert _ran(_repro(faulted)) == set()  # the store holds it all: nothing runs
    # another copy without its store (its splits kept), in one process (the grid without shard processes, the
    # search in-process: the numbers are those of the default two workers'), the grid and the search each
    # killed at instants drawn over its span, each draw from the state before the stage (the long version, every
    # stage, with the default two workers: benchmarks/random_kills.py), each time resumed at once, to the same
    # numbers
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    randomly = _copy_without_store(repo, tmp_path_factory.mktemp("randomly"), workers=1, keep_splits=True)
    seed, draws = faulting.kill_seed(), int(os.environ.get(faulting.DRAWS, "1"))
    print(
        "\n".join(
            faulting.random_kills(
                randomly, repo, {s: spans[s] for s in KILLED_AT_RANDOM}, draws, seed, _repro, stages=KILLED_AT_RANDOM
            )
        )
    )
    shown = _dvc(repo, "metrics", "show")  # the headline only: one short row per file
    assert "gain" in shown and "val_auroc" in shown and max(map(len, shown.splitlines())) <= 200, shown
    assert _ran(_repro(repo)) == set()
    _git(repo, "add", "dvc.yaml", "dvc.lock", "params.yaml", ".dvc")  # this scratch repo's own history (not ours)
    _git(repo, "commit", "-qm", "first")
    # as DVC users share a run: dvc.lock committed, the pipeline up to date, the metrics comparable with a commit
    assert "Data and pipelines are up to date." in _dvc(repo, "status")
    assert "gain" in _dvc(repo, "metrics", "diff", "HEAD", "--all")  # the commit's metrics read back, no warning
    table = _dvc(repo, "exp", "show", "--csv", "--no-pager")  # DVC's experiment table: the workspace and the commit
    assert "workspace" in table and "report.bootstrap" in table.splitlines()[0] and "val_auroc" in table.splitlines()[0]
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["report"]["bootstrap"] = 300
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    third = _repro(repo)
    _git(repo, "commit", "-qam", "second")
    plots = json.loads(_dvc(repo, "plots", "diff", "HEAD~1", "HEAD", "--json"))["data"]
    assert len(plots) == 4  # data plots, drawn for both commits
    for title, (plot, *_) in plots.items():
        assert plot["type"] == "vega" and {v["rev"] for v in plot["content"]["data"]["values"]} == {"HEAD~1", "HEAD"}, (
            title
        )
    _dvc(repo, "plots", "show", "-o", "shown")  # a page that draws offline (tools/offline_plots.py), where npm is
    page = (repo / "shown" / "index.html").read_text()
    assert ("cdn.jsdelivr" not in page and "vegaEmbed" in page) or shutil.which("npm") is None
    assert "Running stage 'report'" in third and "Running stage 'grid'" not in third
    assert "Running stage 'search'" not in third and "Running stage 'export'" not in third
    assert "Running stage 'sensitivity'" not in third and "Running stage 'needs'" not in third


@pytest.mark.slow
def test_prepare_runs_once_and_reruns_only_on_change(repo_without_git):
    """Also: a copy without .git (a ZIP download) runs the pipeline once `make dvc-ready` has
    decided, up front, to run DVC without SCM."""
    repo = repo_without_git
    assert "no_scm = true" in (repo / ".dvc" / "config.local").read_text()
    first = _repro(repo, "synthesize", "prepare")
    assert "prepare synthetic-apple: 2 replicate split(s) of train 4/2, val 2/1, test 2/2" in first
    manifest = repo / "data/splits/synthetic-apple/0/manifest.csv"
    before = manifest.read_bytes()
    second = _repro(repo, "synthesize", "prepare")
    assert "Running stage" not in second and "up to date" in second

    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["split"]["seed"] = 5
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    third = _repro(repo, "synthesize", "prepare")
    assert "Running stage 'prepare@synthetic-apple'" in third and "Running stage 'synthesize'" not in third
    assert manifest.read_bytes() != before

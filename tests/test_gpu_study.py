"""benchmarks/gpu_study.py, the prepared GPU measurement: its --dry mode (CPU, 32 px, one epoch) runs
every phase through the real cell code and writes the JSON the GPU run writes, so the script cannot
rot; without CUDA the real run refuses in one line; the projection with both levers is arithmetic."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest
import torch

from conftest import ROOT
from finalbn.bench import cells, scaling

_spec = importlib.util.spec_from_file_location("gpu_study", ROOT / "benchmarks" / "gpu_study.py")
gpu_study = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gpu_study)

STACKED = importlib.util.find_spec("finalbn.train.stacked") is not None


def test_dry_run_measures_each_phase_and_projects_the_paper_study_with_no_mlflow(tmp_path):
    """One dry run (CI's guard against rot), in a process where importing MLflow fails: the script,
    `finalbn bench`'s cells and the memory tracker they train under need none of the tracking
    adapter's dependencies."""
    out = tmp_path / "results" / "gpu-study.json"
    prelude = (
        "import runpy, sys; sys.modules['mlflow'] = None; "  # importing mlflow now raises ImportError
        f"sys.argv = ['gpu_study.py', '--dry', '--out', {str(out)!r}]; "
        f"runpy.run_path({str(ROOT / 'benchmarks' / 'gpu_study.py')!r}, run_name='__main__')"
    )
    done = subprocess.run([sys.executable, "-c", prelude], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    r = json.loads(out.read_text())
    assert r["dry"] and r["machine"]["device"] == "cpu" and r["machine"]["torch"] == torch.__version__
    assert r["code_version"] and "commit" in r and not r["skipped"] and not r["errors"]
    assert set(r["phase_seconds"]) == {
        "data",
        "kinds efficientnet_lite0",
        "stacks efficientnet_lite0",
        "workers efficientnet_lite0",
    }
    row = r["archs"]["efficientnet_lite0"]
    assert set(row["seconds"]) == set(cells.SAMPLE) and all(v > 0 for v in row["seconds"].values())  # untracked
    procs = row["processes"]
    assert set(procs) == {"1", "2"} and procs["1"]["speedup"] == 1.0
    assert all(
        p["cells"] == p["processes"] * len(scaling.PROCESS_CONFIGS) and p["cells_per_s"] > 0 for p in procs.values()
    )
    stacks = row["stacks"]
    assert stacks["1"]["cells"] == 2 and stacks["1"]["cells_per_s"] > 0
    if STACKED:  # stacked heads give run_cell's results
        assert stacks["2"]["cells_per_s"] > 0 and stacks["2"]["max_prob_diff"] < 1e-5  # float rounding at most
    else:
        assert "not there yet" in stacks["2"]["unavailable"]
    p = row["projection"]
    kinds = cells.plan_kinds(cells.paper_cells("efficientnet_lite0"), share=True)
    assert p["one_process"] == cells.project(kinds, row["seconds"]) and p["one_process"]["cells"] == 1920
    assert p["best"]["processes"] in (1, 2) and p["best_min"] == pytest.approx(p["best"]["wall_s"] / 60)
    assert p["target_min"] == 30.0 and p["meets_target"] == (p["best_min"] <= 30.0)
    text = done.stdout
    assert "efficientnet_lite0: the paper's study, 1920 cells" in text and "target 30 min" in text


@pytest.mark.skipif(torch.cuda.is_available(), reason="refuses only where there is no CUDA device")
def test_without_cuda_the_real_run_refuses_in_one_line(tmp_path, capsys):
    assert gpu_study.main(["--out", str(tmp_path / "g.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert "needs a CUDA GPU" in err and "--dry" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "g.json").exists()


@pytest.mark.parametrize(
    "bad, message",
    [
        (["--archs", "no_such_net"], "unknown arch"),
        (["--workers", "2", "4"], "--workers must be >= 1 and include 1"),
        (["--stacks", "0", "1"], "--stacks must be >= 1 and include 1"),
        (["--size", "16"], "--size must be >= 32"),
        (["--scaling-epochs", "0", "--epochs", "1"], "--epochs and --scaling-epochs must be >= 1"),
        (["--profile", "no_such_profile.yaml"], "no_such_profile.yaml"),
    ],
)
def test_bad_input_is_one_line_exit_2(bad, message, tmp_path, capsys):
    assert gpu_study.main(["--dry", "--out", str(tmp_path / "g.json"), *bad]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "g.json").exists()


def test_a_phase_that_fails_is_recorded_and_the_others_go_on_and_none_starts_past_the_budget():
    lines = []
    phases = gpu_study.Phases(None, lines.append)
    assert phases.run("kinds a", lambda: 1 / 0) is None and phases.run("kinds b", lambda: 7) == 7
    assert phases.errors == {"kinds a": "ZeroDivisionError: division by zero"} and set(phases.seconds) == {"kinds b"}
    late = gpu_study.Phases(0.0, lines.append)
    assert late.run("workers a", lambda: 7) is None and late.skipped == ["workers a"] and not late.seconds
    assert lines == [
        "kinds a: failed (ZeroDivisionError: division by zero)",
        "workers a: skipped (past the 0 s budget)",
    ]


def test_the_best_projection_uses_a_family_sized_stack_and_the_fastest_process_count():
    kinds = cells.plan_kinds(cells.paper_cells("resnet34"), share=True)
    seconds = dict.fromkeys(cells.SAMPLE, 1.0)
    procs = {
        "1": {"processes": 1, "cells_per_s": 1.0, "speedup": 1.0},
        "2": {"processes": 2, "cells_per_s": 1.5, "speedup": 1.5},
    }
    stacks = {
        "1": {"stack": 1, "speedup": 1.0},
        "4": {"stack": 4, "speedup": 2.0},
        "16": {"stack": 16, "speedup": 8.0},  # more than the 4 head-only cells of one family and head: not used
        "8": {"stack": 8, "unavailable": "not there yet"},
    }
    best = scaling.project_best(kinds, seconds, procs, stacks)
    assert best["stack"] == 4 and best["processes"] == 2 and best["processes_speedup"] == 1.5
    warm = kinds["warm"]
    assert best["cell_seconds"] == pytest.approx(1920 - warm + warm / 2.0)
    assert best["wall_s"] == pytest.approx(best["cell_seconds"] / 1.5)
    alone = scaling.project_best(kinds, seconds, {}, {})  # no lever measured: one process, one by one
    assert alone["wall_s"] == alone["cell_seconds"] == pytest.approx(1920.0) and alone["stack"] == 1

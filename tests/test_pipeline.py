"""The DVC pipeline in a scratch git repo: stages run, rerun nothing, and re-run only what changed."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import ROOT

pytestmark = pytest.mark.slow


def _repro(repo: Path, *stages: str) -> str:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    out = subprocess.run([str(Path(sys.executable).parent / "dvc"), "repro", *stages], cwd=repo, env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


@pytest.fixture
def repo(tmp_path):
    """A git+DVC repo holding the project's dvc.yaml and sources, with tiny synthetic params."""
    shutil.copy(ROOT / "dvc.yaml", tmp_path)
    shutil.copytree(ROOT / "src", tmp_path / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["synthetic"].update(image_size=16, crops=["Apple", "Grape"], healthy=12, per_disease=2, workers=1)
    params["datasets"][0]["image_size"] = 16
    params["split"].update(train=[4, 2], val=[2, 1], test=[2, 2])
    params["pretrain"].update(per_class=5, image_size=16, epochs=1, batch_size=8)
    params["train"].update(epochs=1, batch_size=4, threads=1)
    params["grid"].update(configs=[31, 63, 47], workers=1)
    params["report"]["bootstrap"] = 200
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for cmd in (["git", "init", "-q"], [str(Path(sys.executable).parent / "dvc"), "init", "-q"]):
        subprocess.run(cmd, cwd=tmp_path, check=True, env={**os.environ, "DVC_NO_ANALYTICS": "1"})
    return tmp_path


def test_whole_pipeline_then_nothing_then_only_what_changed(repo, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # MLflow's default store in the repo
    first = _repro(repo)
    for stage in ("synthesize", "prepare@0", "pretrain", "grid", "report"):
        assert f"Running stage '{stage}'" in first
    assert "grid: 3/3 cells finished" in first and "report: 3 cells" in first
    assert (repo / "mlflow.db").is_file() and (repo / "report" / "report.md").is_file()
    assert "Running stage" not in _repro(repo)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["report"]["bootstrap"] = 300
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    third = _repro(repo)
    assert "Running stage 'report'" in third and "Running stage 'grid'" not in third


def test_prepare_runs_once_and_reruns_only_on_change(repo):
    first = _repro(repo, "synthesize", "prepare")
    assert "prepare synthetic-apple: train 4/2, val 2/1, test 2/2" in first
    manifest = repo / "data/splits/synthetic-apple/manifest.csv"
    before = manifest.read_bytes()
    second = _repro(repo, "synthesize", "prepare")
    assert "Running stage" not in second and "up to date" in second

    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["split"]["seed"] = 5
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    third = _repro(repo, "synthesize", "prepare")
    assert "Running stage 'prepare@0'" in third and "Running stage 'synthesize'" not in third
    assert manifest.read_bytes() != before

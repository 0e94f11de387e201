"""A profile as `dvc exp run -S` arguments (finalbn.config.variants): DVC's own override function
(`dvc.utils.hydra.apply_overrides`, what `dvc exp run -S` calls) turns params.yaml into the
configuration the loader makes of params.yaml with the profile laid over it."""

from __future__ import annotations

import shlex
import shutil

import pytest
import yaml
from dvc.utils.hydra import apply_overrides

from conftest import ROOT
from finalbn.cli import main
from finalbn.config import ConfigError, load_config, to_dict
from finalbn.config.variants import hydra_value, set_args

PROFILE = ROOT / "profiles" / "paper.yaml"


def _applied(tmp_path, profile_text: str):
    params = tmp_path / "params.yaml"
    shutil.copy(ROOT / "params.yaml", params)
    profile = tmp_path / "profile.yaml"
    profile.write_text(profile_text)
    args = set_args(yaml.safe_load(profile_text), yaml.safe_load(params.read_text()))
    apply_overrides(params, args[1::2])
    return load_config([params]), load_config([ROOT / "params.yaml", profile])


def test_dvc_exp_run_set_params_give_the_paper_profile(tmp_path):
    got, want = _applied(tmp_path, PROFILE.read_text())
    assert to_dict(got) == to_dict(want)
    assert [d.name for d in got.datasets] == ["apple", "pepper", "tomato"]  # the default's dataset replaced
    assert got.model.arch == "resnet34" and got.grid.headline.replicates == 10


def test_odd_text_a_new_key_and_a_nested_mapping_survive(tmp_path):
    got, want = _applied(
        tmp_path,
        'datasets:\n  - {name: my-leaves, source: folders, root: "/data/a b, \'c\'", majority: [ok], minority: ["bad spot"], image_size: 32}\n'
        "split: {seed: 7}\ntrain: {epochs: 3}\n",
    )
    assert to_dict(got) == to_dict(want)
    assert got.datasets[0].root == "/data/a b, 'c'" and got.split.seed == 7


def test_what_set_cannot_carry_is_refused_in_one_line():
    with pytest.raises(ConfigError, match="not finite"):
        hydra_value(float("nan"))
    with pytest.raises(ConfigError, match="each with a `name`"):
        set_args({"datasets": [{"root": "x"}]}, {})
    with pytest.raises(ConfigError, match="'my leaves' cannot be set"):
        set_args({"datasets": [{"name": "my leaves", "root": "x"}]}, {})
    with pytest.raises(ConfigError, match="a profile must be a mapping"):
        set_args(["x"], {})  # type: ignore[arg-type]


def test_the_command_prints_one_line_for_make_exp(capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    assert main(["variant", str(PROFILE)]) == 0
    words = shlex.split(capsys.readouterr().out)
    assert words[:2] == ["-n", "paper"] and words[2:4] == ["-S", "~datasets"] and 'model.arch="resnet34"' in words


def test_a_profile_the_schema_refuses_stops_before_dvc(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {epochz: 3}\n")
    assert main(["variant", str(bad)]) == 2
    assert "epochz" in capsys.readouterr().err

"""Config strictness: unknown keys, wrong types, ranges, overrides, and the CLI's exit code 2."""
from __future__ import annotations

import dataclasses

import pytest

from finalbn.cli import main, split_overrides
import yaml

from finalbn.config import ConfigError, flatten, load_config, parse_value, to_dict, validate

from conftest import PARAMS


def test_params_yaml_loads_with_the_papers_split(load):
    cfg = load()
    assert cfg.split.train == (1000, 10) and cfg.split.val == (150, 7) and cfg.split.test == (150, 150)
    assert cfg.datasets[0].source == "synthetic"
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.split.seed = 3  # type: ignore[misc]


@pytest.mark.parametrize("override, expected", [
    (["split.sed=1"], "unknown key 'split.sed' (allowed: seed, train, val, test)"),
    (["nosuch.key=1"], "unknown key 'nosuch'"),
    (["datasets.0.cropp=x"], "unknown key 'datasets.0.cropp'"),
    (["datasets.5.crop=x"], "unknown key 'datasets.5'"),
    (["split.seed=abc"], "'split.seed': Input should be a valid integer"),
    (["split.seed=true"], "'split.seed': Input should be a valid integer"),
    (["split.seed=-1"], "'split.seed': Input should be greater than or equal to 0"),
    (["synthetic.healthy=0"], "'synthetic.healthy': Input should be greater than or equal to 1"),
    (["datasets.0.source=imagenet"], "'datasets.0.source': Input should be 'synthetic', 'plantvillage' or 'folders'"),
    (["datasets.0.image_size=8"], "'datasets.0.image_size'"),
    (["split.train=[5, 0]"], "train needs at least one image of each class"),
    (["split.train=[1, 2, 3]"], "'split.train'"),
    (["datasets.0.name=bad/name"], "'datasets.0.name'"),
    (["datasets.0.crop=null"], "source synthetic needs 'crop'"),
    (["datasets.0.source=folders"], "source folders needs non-empty 'majority' and 'minority'"),
    (["split.seed"], "is not key=value"),
    (["grid.replicates=0"], "'grid.replicates': Input should be greater than or equal to 1"),
    (["grid.headline.configs=[99]"], "99 is neither an id 0..63 nor a name"),
    (["grid.seeds=[0, 1]"], "unknown key 'grid.seeds' (allowed: configs, replicates, headline, baselines, archs, workers)"),
    (["grid.baselines.methods=[smote]"], "grid.baselines.methods"),
    (["grid.baselines.methods=[focal, focal]"], "lists a method twice"),
    (["grid.baselines.config=99"], "grid.baselines.config: 99 is neither an id"),
    (["synthetic.severity=20"], "'synthetic.severity'"),
    (["train.body_lr_ratio=0"], "'train.body_lr_ratio'"),
    (["ceiling.folds=1"], "'ceiling.folds'"),
])
def test_bad_values_name_the_key(load, override, expected):
    with pytest.raises(ConfigError) as err:
        load(override)
    assert expected in str(err.value)
    assert "\n" not in str(err.value)


def test_overrides_change_values_and_lists(load):
    cfg = load(["split.seed=7", "datasets.0.crop=Pepper", "split.val=[3, 2]",
                "datasets.0.name=x", "synthetic.crops=[A, B]"])
    assert cfg.split.seed == 7 and cfg.split.val == (3, 2)
    assert cfg.datasets[0].crop == "Pepper" and cfg.datasets[0].name == "x"
    assert cfg.synthetic.crops == ("A", "B")


def test_files_overlay_in_order(tmp_path):
    top = tmp_path / "top.yaml"
    top.write_text("split:\n  seed: 11\n")
    cfg = load_config([PARAMS, top])
    assert cfg.split.seed == 11 and cfg.split.train == (1000, 10)


def test_missing_key_and_bad_files(tmp_path):
    part = tmp_path / "part.yaml"
    part.write_text("split:\n  seed: 1\n")
    with pytest.raises(ConfigError, match="missing key"):
        load_config([part])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config([tmp_path / "nope.yaml"])
    broken = tmp_path / "broken.yaml"
    broken.write_text("split: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config([broken])
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config([listy])


def test_duplicate_dataset_names():
    raw = yaml.safe_load(PARAMS.read_text())
    raw["datasets"] = raw["datasets"] * 2
    with pytest.raises(ConfigError, match="unique"):
        validate(raw)


def test_parse_value():
    assert parse_value("3e-4") == pytest.approx(3e-4)
    assert parse_value("true") is True
    assert parse_value("[1, 2]") == [1, 2]
    assert parse_value("Apple") == "Apple"


def test_flatten_and_to_dict(load):
    flat = flatten(to_dict(load()))
    assert flat["split.seed"] == 0
    assert flat["datasets.0.crop"] == "Apple"
    assert flat["split.train"] == [1000, 10]


def test_mlflow_style_overrides():
    assert split_overrides(["--split.seed", "3", "--a.b=4"]) == ["split.seed=3", "a.b=4"]


@pytest.mark.parametrize("argv, expected", [
    (["prepare", "--set", "split.sed=1"], "unknown key 'split.sed'"),
    (["prepare", "--split.seed", "x"], "'split.seed'"),
    (["prepare", "--split.seed"], "has no value"),
    (["prepare", "stray"], "unexpected argument 'stray'"),
    (["prepare", "--dataset", "nope"], "no dataset named 'nope'"),
])
def test_cli_exits_2_with_one_line(argv, expected, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    assert main(argv + ["--params", str(PARAMS)]) == 2
    err = capsys.readouterr().err.strip()
    assert expected in err and len(err.splitlines()) == 1
    assert not (tmp_path / "data").exists()  # nothing was started


def test_paper_profile_overlays_params():
    from conftest import ROOT

    cfg = load_config([PARAMS, ROOT / "profiles" / "paper.yaml"])
    assert [d.crop for d in cfg.datasets] == ["Apple", "Pepper,_bell", "Tomato"]
    assert {d.image_size for d in cfg.datasets} == {224} and cfg.model.weights == "imagenet"
    assert cfg.grid.archs == ("resnet34", "vgg19_bn") and cfg.grid.replicates == 10
    assert cfg.grid.max_replicates == 10 and cfg.train.body_lr_ratio == 0.1 and cfg.train.wd_on_bn
    assert cfg.model.frozen_bn == "train"
    assert cfg.split.train == (1000, 10)

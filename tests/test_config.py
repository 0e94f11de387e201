"""Config strictness: unknown keys, wrong types, ranges, overrides, and the CLI's exit code 2."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from conftest import PARAMS, ROOT
from finalbn.cli import main, split_overrides
from finalbn.config import (
    BASELINE_METHODS,
    FINAL_LAYERS,
    NOT_CELL_KEY_PARAMS,
    NOT_RESULT_PARAMS,
    TOGGLES,
    ConfigError,
    ablation_from_id,
    cell_seed,
    config_id,
    config_name,
    configure,
    final_layer,
    flatten,
    has_final_bn,
    load_config,
    parse_configs,
    parse_value,
    to_dict,
    validate,
)


def test_params_yaml_loads_with_the_papers_split(load):
    cfg = load()
    assert cfg.split.train == (1000, 10) and cfg.split.val == (150, 7) and cfg.split.test == (1000, 150)
    assert cfg.datasets[0].source == "synthetic"
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.split.seed = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    "override, expected",
    [
        (["split.sed=1"], "unknown key 'split.sed' (allowed: seed, train, val, test, near_duplicates, disjoint_test)"),
        (["nosuch.key=1"], "unknown key 'nosuch'"),
        (["datasets.0.cropp=x"], "unknown key 'datasets.0.cropp' (allowed: name, source, root, image_size, crop,"),
        (["datasets.5.crop=x"], "unknown key 'datasets.5'"),
        (
            ["datasets.nope.crop=x"],
            "unknown key 'datasets.nope': 'datasets' has 1 entries (0..0; or by name: synthetic-apple)",
        ),
        (["split.seed=abc"], "'split.seed': Input should be a valid integer"),
        (["split.seed=true"], "'split.seed': Input should be a valid integer"),
        (["split.seed=-1"], "'split.seed': Input should be greater than or equal to 0"),
        (["synthetic.healthy=0"], "'synthetic.healthy': Input should be greater than or equal to 1"),
        (
            ["datasets.0.source=imagenet"],
            "'datasets.0.source': Input should be 'synthetic', 'plantvillage', 'folders' or 'csv'",
        ),
        (["datasets.0.image_size=8"], "'datasets.0.image_size'"),
        (["split.train=[5, 0]"], "train needs at least one image of each class"),
        (["split.train=[1, 2, 3]"], "'split.train'"),
        (["datasets.0.name=bad/name"], "'datasets.0.name'"),
        (["datasets.0.crop=null"], "source synthetic needs 'crop'"),
        (["datasets.0.source=folders"], "source folders needs non-empty 'majority' and 'minority'"),
        (["split.seed"], "is not key=value"),
        (["grid.replicates=0"], "'grid.replicates': Input should be greater than or equal to 1"),
        (["grid.headline.configs=[99]"], "99 is neither an id 0..63 nor a name"),
        (
            ["grid.seeds=[0, 1]"],
            "unknown key 'grid.seeds' (allowed: configs, replicates, headline, baselines, archs, workers, executor)",
        ),
        (["grid.baselines.methods=[smote]"], "grid.baselines.methods"),
        (["grid.baselines.methods=[focal, focal]"], "lists a method twice"),
        (["grid.baselines.config=99"], "grid.baselines.config: 99 is neither an id"),
        (["synthetic.severity=20"], "'synthetic.severity'"),
        (["train.body_lr_ratio=0"], "'train.body_lr_ratio'"),
        (["ceiling.folds=1"], "'ceiling.folds'"),
    ],
)
def test_bad_values_name_the_key(load, override, expected):
    with pytest.raises(ConfigError) as err:
        load(override)
    assert expected in str(err.value)
    assert "\n" not in str(err.value)


def test_overrides_change_values_and_lists(load):
    cfg = load(
        ["split.seed=7", "datasets.0.crop=Pepper", "split.val=[3, 2]", "datasets.0.name=x", "synthetic.crops=[A, B]"]
    )
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


def test_datasets_keyed_by_name_load_as_a_list_and_index_as_one(tmp_path):
    """params.yaml keys datasets by name (DVC's stage names); overrides index them; a list overlay
    replaces them; an entry whose name differs from its key, or that is no mapping, is one line."""
    cfg = load_config([PARAMS], ["datasets.0.crop=Grape"])
    assert [d.name for d in cfg.datasets] == ["synthetic-apple"] and cfg.datasets[0].crop == "Grape"
    listed = tmp_path / "listed.yaml"
    listed.write_text(
        "datasets:\n  - name: mine\n    source: synthetic\n    root: r\n    crop: Apple\n    image_size: 32\n"
    )
    assert [d.name for d in load_config([PARAMS, listed]).datasets] == ["mine"]
    for text, message in (
        (
            "datasets:\n  a:\n    name: b\n    source: synthetic\n    root: r\n    image_size: 32\n",
            "datasets.a has name 'b'",
        ),
        ("datasets:\n  a: 3\n", "datasets.a must be a mapping"),
    ):
        bad = tmp_path / "bad.yaml"
        bad.write_text(text)
        with pytest.raises(ConfigError, match=message):
            load_config([PARAMS, bad])


def test_duplicate_dataset_names():
    raw = yaml.safe_load(PARAMS.read_text())
    raw["datasets"] = [{"name": k, **v} for k, v in raw["datasets"].items()] * 2
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


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["prepare", "--set", "split.sed=1"], "unknown key 'split.sed'"),
        (["prepare", "--split.seed", "x"], "'split.seed'"),
        (["prepare", "--split.seed"], "has no value"),
        (["prepare", "stray"], "unexpected argument 'stray'"),
        (["prepare", "--dataset", "nope"], "no dataset named 'nope'"),
    ],
)
def test_cli_exits_2_with_one_line(argv, expected, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    assert main(argv + ["--params", str(PARAMS)]) == 2
    err = capsys.readouterr().err.strip()
    assert expected in err and len(err.splitlines()) == 1
    assert not (tmp_path / "data").exists()  # nothing was started


def test_paper_profile_overlays_params():
    cfg = load_config([PARAMS, ROOT / "profiles" / "paper.yaml"])
    assert [d.crop for d in cfg.datasets] == ["Apple", "Pepper,_bell", "Tomato"]
    assert {d.image_size for d in cfg.datasets} == {224} and cfg.model.weights == "imagenet"
    assert cfg.grid.archs == ("resnet34", "vgg19_bn") and cfg.grid.replicates == 10
    assert cfg.grid.max_replicates == 10 and cfg.train.body_lr_ratio == 0.1 and cfg.train.wd_on_bn
    assert cfg.model.frozen_bn == "train"
    assert cfg.split.train == (1000, 10)


# ---------------------------------------------------------------- the study's vocabulary


def test_config_ids_and_names_are_the_papers():
    assert config_name(ablation_from_id(31)) == "BN" and config_name(ablation_from_id(63)) == "none"
    assert config_name(ablation_from_id(0)) == "+".join(t.upper() for t in TOGGLES)
    assert all(config_id(ablation_from_id(i)) == i for i in range(64))
    assert parse_configs(["da+bn", "none", 5]) == [5, 23, 63] and parse_configs("all") == list(range(64))
    with pytest.raises(ValueError, match="neither an id"):
        parse_configs(["BN+XX"])


@pytest.mark.parametrize(
    "bn, variant, expected",
    [(True, "bn", "bn"), (True, "selu", "selu"), (False, "bn", "none"), (False, "selu", "none")],
)
def test_final_layer_is_the_variant_when_the_bn_switch_is_on(load, bn, variant, expected):
    cfg = load([f"ablation.bn={str(bn).lower()}", f"model.final_variant={variant}"])
    assert final_layer(cfg.model, cfg.ablation) == expected and expected in FINAL_LAYERS
    assert has_final_bn(cfg.model, cfg.ablation) is (expected == "bn")


def test_cell_seed_is_train_seed_plus_replicate(load):
    cfg = load(["train.seed=5"])
    assert cell_seed(cfg, 0) == 5 and cell_seed(cfg, 3) == 8


def test_not_result_params_are_train_keys_and_leave_the_seed_to_the_cell_key(load):
    flat = flatten(to_dict(load()))
    assert NOT_RESULT_PARAMS <= flat.keys() and all(k.startswith("train.") for k in NOT_RESULT_PARAMS)
    assert {"train.device", "train.threads", "train.share_features"} <= NOT_RESULT_PARAMS
    assert "train.seed" not in NOT_RESULT_PARAMS and "train.lr" not in NOT_RESULT_PARAMS
    assert NOT_CELL_KEY_PARAMS == NOT_RESULT_PARAMS | {"train.seed"}


def test_allowed_values_come_from_the_study_vocabulary(load):
    cfg = load(
        [
            f"search.space.switches=[{', '.join(TOGGLES)}]",
            f"search.space.final=[{', '.join(FINAL_LAYERS)}]",
            f"grid.baselines.methods=[{', '.join(BASELINE_METHODS)}]",
        ]
    )
    assert cfg.search.space.switches == TOGGLES and cfg.search.space.final == FINAL_LAYERS
    assert cfg.grid.baselines.methods == tuple(BASELINE_METHODS)


def test_configure_sets_a_cells_arch_switches_and_baseline(load):
    cfg = load()
    cell = configure(cfg, "resnet34", 31, "focal")
    assert cell.model.arch == "resnet34" and config_id(cell.ablation) == 31 and cell.train.loss == "focal"
    assert cell.model.hidden == cfg.model.hidden and cell.split == cfg.split
    plain = configure(cfg, "vgg19", 63, "")
    assert plain.train == cfg.train and config_name(plain.ablation) == "none"
    assert configure(cfg, "vgg19", 0, "temperature").train.calibration == "temperature"


# ---------------------------------------------------------------- text keys stay as written

HOSTILE = [
    "/data/my images",
    "/d/a,b",
    "/d/(1) copy",
    "/d/run #3",
    "/d/a: b",
    "/d/it's",
    '/d/"q"',
    "no",
    "yes",
    "off",
    "0",
    "007",
    "1e3",
    "null-ish",
    "[x]",
    "a=b",
    " lead",
]


@pytest.mark.parametrize("value", HOSTILE)
def test_any_text_key_round_trips_through_set_and_key_value(value):
    for overrides in (
        [f"datasets.0.root={value}"],
        split_overrides(["--datasets.0.root", value]),
        split_overrides([f"--datasets.0.root={value}"]),
    ):
        cfg = load_config([PARAMS], overrides)
        assert cfg.datasets[0].root == value, overrides


def test_folder_lists_and_crops_are_text_wherever_they_come_from(tmp_path):
    """YAML 1.1 reads no/yes/on/off as booleans and 0/1 as numbers; a folder name is text."""
    params = tmp_path / "p.yaml"
    params.write_text(
        "datasets:\n  - name: mri\n    source: folders\n    root: /data/brain\n    image_size: 64\n"
        "    majority: [no, 0, off]\n    minority: [yes]\n"
    )
    cfg = load_config([PARAMS, params])
    assert cfg.datasets[0].majority == ("no", "0", "off") and cfg.datasets[0].minority == ("yes",)
    cfg = load_config(
        [PARAMS],
        [
            "datasets.0.crop=null",
            "datasets.0.source=folders",
            "datasets.0.majority=[no, 0]",
            "datasets.0.minority=[yes, on]",
        ],
    )
    assert cfg.datasets[0].majority == ("no", "0") and cfg.datasets[0].minority == ("yes", "on")
    assert load_config([PARAMS], ["datasets.0.crop=1"]).datasets[0].crop == "1"
    assert load_config([PARAMS], ["synthetic.crops=[on, Apple]"]).synthetic.crops == ("on", "Apple")
    # numbers and switches still read as YAML
    assert load_config([PARAMS], ["train.epochs=3"]).train.epochs == 3
    with pytest.raises(ConfigError, match="train.epochs"):
        load_config([PARAMS], ["train.epochs=three"])


def test_a_dataset_is_set_by_its_name_as_params_yaml_keys_it(load):
    """`--set datasets.<name>.key=value`, the spelling prepare's messages use, as well as by place."""
    cfg = load(["datasets.synthetic-apple.image_size=48", "datasets.synthetic-apple.intensity=[0,4095]"])
    assert cfg.datasets[0].image_size == 48 and cfg.datasets[0].intensity == (0.0, 4095.0)
    assert load(["datasets.0.image_size=40"]).datasets[0].image_size == 40


def test_an_unknown_key_inside_a_listed_entry_of_a_params_file_names_what_is_allowed(tmp_path):
    """The schema walk (`load._type_at`) follows a list entry both ways: an override's digits
    (`datasets.0.cropp`, above) and a validation error's location (an int), here."""
    entry = dict(yaml.safe_load(PARAMS.read_text())["datasets"]["synthetic-apple"], cropp="Apple")
    top = tmp_path / "top.yaml"
    top.write_text(yaml.safe_dump({"datasets": {"synthetic-apple": entry}}))
    with pytest.raises(ConfigError) as err:
        load_config([PARAMS, top])
    assert "unknown key 'datasets.0.cropp' (allowed: name, source, root, image_size, crop," in str(err.value)

"""Typed, strict configuration for every finalbn command.

`params.yaml` is the only place defaults live; this module only says what shape and range each
key has. Load with::

    cfg = load_config(["params.yaml"], ["split.seed=3", "datasets.0.crop=Pepper"])

An unknown key, a wrong type or an out-of-range value raises `ConfigError` with one line naming
the key and what is allowed, before any work starts.
"""
from __future__ import annotations

import copy
import dataclasses
import re
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

import yaml
from pydantic import ConfigDict, Field, Strict, ValidationError, model_validator
from pydantic.dataclasses import dataclass

_STRICT = ConfigDict(extra="forbid")

# Strict scalars: a YAML "10" (a string) is not an int, and 1 is not a bool. Floats stay lax so
# that `lr: 1` and an override `lr=3e-4` (YAML reads that as a string) both work.
Int = Annotated[int, Strict()]
Bool = Annotated[bool, Strict()]
Str = Annotated[str, Strict(), Field(min_length=1)]
Seed = Annotated[int, Strict(), Field(ge=0)]
Count = Annotated[int, Strict(), Field(ge=0)]
Size = Annotated[int, Strict(), Field(ge=16, le=1024)]
Name = Annotated[str, Strict(), Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")]
# (majority, minority) image counts of one split
Pair = tuple[Count, Count]


class ConfigError(ValueError):
    """A bad params file or override; the message is one line naming the key."""


@dataclass(frozen=True, config=_STRICT)
class DatasetConfig:
    """One imbalanced binary task. `crop` for plantvillage/synthetic, the dir lists for folders."""

    name: Name
    source: Literal["synthetic", "plantvillage", "folders"]
    root: Str
    image_size: Size
    crop: Optional[Str] = None
    majority: tuple[Str, ...] = ()
    minority: tuple[Str, ...] = ()

    @model_validator(mode="after")
    def _source_fields(self):
        if self.source in ("synthetic", "plantvillage"):
            if not self.crop:
                raise ValueError(f"source {self.source} needs 'crop' (e.g. Apple)")
            if self.majority or self.minority:
                raise ValueError(f"source {self.source} takes 'crop', not majority/minority lists")
        else:
            if not self.majority or not self.minority:
                raise ValueError("source folders needs non-empty 'majority' and 'minority' lists")
            if self.crop:
                raise ValueError("source folders takes majority/minority lists, not 'crop'")
        return self


@dataclass(frozen=True, config=_STRICT)
class SyntheticConfig:
    """The built-in procedural leaf collection (PlantVillage layout)."""

    root: Str
    seed: Seed
    image_size: Size
    crops: Annotated[tuple[Str, ...], Field(min_length=1)]
    healthy: Annotated[int, Strict(), Field(ge=1)]
    per_disease: Annotated[int, Strict(), Field(ge=1)]
    severity: Annotated[float, Field(ge=0.1, le=10.0)]  # lesion number and area multiplier
    workers: Count  # 0 = one process per core


@dataclass(frozen=True, config=_STRICT)
class SplitConfig:
    seed: Seed
    train: Pair
    val: Pair
    test: Pair

    @model_validator(mode="after")
    def _train_both(self):
        if min(self.train) < 1:
            raise ValueError("train needs at least one image of each class")
        return self


Prob = Annotated[float, Field(ge=0.0, lt=1.0)]
PosFloat = Annotated[float, Field(gt=0.0)]


@dataclass(frozen=True, config=_STRICT)
class ModelConfig:
    """Backbone and fastai-style head; `final_variant` is what the BN toggle adds."""

    arch: Str
    weights: Str  # imagenet | none | synthetic | path/to/file.pt
    hidden: Annotated[int, Strict(), Field(ge=2)]
    dropout: tuple[Prob, Prob]
    final_variant: Literal["bn", "selu"]
    final_bn_momentum: Annotated[float, Field(gt=0.0, le=1.0)]
    final_bn_eps: PosFloat
    final_bn_affine: Bool
    final_bias: Bool
    frozen_bn: Literal["eval", "train"]  # UF off: eval keeps pre-trained statistics; train = fastai's


@dataclass(frozen=True, config=_STRICT)
class AblationConfig:
    """The paper's six switches; `config_id` below turns them into the paper's config id."""

    bn: Bool
    wl: Bool
    da: Bool
    mx: Bool
    uf: Bool
    wd: Bool


TOGGLES = ("bn", "wl", "da", "mx", "uf", "wd")


def config_id(ab: AblationConfig) -> int:
    """The paper's configuration id (0..63): the index of the six switches, in the order
    BN WL DA MX UF WD, in `itertools.product([True, False], repeat=6)` — so 31 is "BN only",
    63 is "nothing" and 0 is "everything", as in the paper's Tables II–III."""
    return sum((0 if getattr(ab, t) else 1) << (5 - i) for i, t in enumerate(TOGGLES))


def config_name(ab: AblationConfig) -> str:
    """'BN+DA', or 'none' when every switch is off."""
    return "+".join(t.upper() for t in TOGGLES if getattr(ab, t)) or "none"


def ablation_from_id(cid: int) -> AblationConfig:
    return AblationConfig(**{t: not (cid >> (5 - i)) & 1 for i, t in enumerate(TOGGLES)})


def parse_configs(spec: str | Sequence[str | int]) -> list[int]:
    """`all`, or ids (31) and names ('BN+DA', 'da+bn', 'none') -> sorted config ids."""
    if isinstance(spec, str):
        if spec != "all":
            raise ValueError(f"grid.configs must be 'all' or a list of ids/names, got {spec!r}")
        return list(range(64))
    if not spec:
        raise ValueError("grid.configs is empty: give 'all' or at least one id/name")
    canon = lambda name: frozenset(name.lower().split("+"))  # noqa: E731 - order-free names
    by_name = {canon(config_name(ablation_from_id(i))): i for i in range(64)}
    ids = set()
    for item in spec:
        if isinstance(item, int) and not isinstance(item, bool) and 0 <= item < 64:
            ids.add(item)
        elif isinstance(item, str) and canon(item) in by_name:
            ids.add(by_name[canon(item)])
        else:
            raise ValueError(f"grid.configs: {item!r} is neither an id 0..63 nor a name like BN+DA or none")
    return sorted(ids)


@dataclass(frozen=True, config=_STRICT)
class AugmentConfig:
    """DA: flips, small rotation, zoom, lighting (fastai's get_transforms defaults)."""

    flip_vertical: Bool
    rotate: Annotated[float, Field(ge=0.0, le=180.0)]
    zoom: Annotated[float, Field(ge=1.0, le=2.0)]
    lighting: Annotated[float, Field(ge=0.0, lt=1.0)]


@dataclass(frozen=True, config=_STRICT)
class TrainConfig:
    seed: Seed
    epochs: Annotated[int, Strict(), Field(ge=1)]
    batch_size: Annotated[int, Strict(), Field(ge=2)]
    lr: PosFloat
    weight_decay: Annotated[float, Field(ge=0.0)]  # used when ablation.wd is on; off = 0
    mixup_alpha: PosFloat
    label_smoothing: Prob
    augment: AugmentConfig
    body_lr_ratio: Annotated[float, Field(gt=0.0, le=1.0)]  # body params' LR / head LR (fastai slice(lr): 0.1)
    wd_on_bn: Bool  # WD also decays BN weights and biases (fastai's bn_wd=True)
    device: Literal["auto", "cpu", "cuda"]
    num_workers: Count
    threads: Count  # torch intra-op threads; 0 = torch's default
    log_model: Bool
    share_features: Bool  # UF-off cells train heads on shared frozen-body features (same numbers)
    loss: Literal["ce", "focal", "logit_adjusted", "class_balanced"]  # the imbalance baselines
    focal_gamma: Annotated[float, Field(ge=0.0, le=10.0)]
    cb_beta: Annotated[float, Field(ge=0.0, lt=1.0)]  # class_balanced: Cui et al.'s effective-number beta
    calibration: Literal["none", "temperature"]  # post-hoc temperature scaling fitted on validation


@dataclass(frozen=True, config=_STRICT)
class PretrainConfig:
    """The synthetic source task: leaf condition on crops no dataset targets, lesions `severity`x."""

    out_dir: Str
    crops: Annotated[tuple[Str, ...], Field(min_length=1)]
    severity: Annotated[float, Field(ge=0.1, le=10.0)]
    per_class: Annotated[int, Strict(), Field(ge=2)]
    image_size: Size
    epochs: Annotated[int, Strict(), Field(ge=1)]
    batch_size: Annotated[int, Strict(), Field(ge=2)]
    lr: PosFloat
    seed: Seed


Replicates = Annotated[int, Strict(), Field(ge=1, le=1000)]


@dataclass(frozen=True, config=_STRICT)
class HeadlineConfig:
    """Configurations run on more replicates than the rest: the paper's contrasts."""

    configs: tuple[Union[Int, Str], ...]  # ids and names, checked by parse_configs
    replicates: Replicates


# The imbalance literature's answers, run as fixed grid cells beside the paper's configurations:
# method -> the train.* values it sets on the base configuration.
BASELINE_METHODS = {
    "focal": {"loss": "focal"},  # Lin et al. 2017
    "logit_adjusted": {"loss": "logit_adjusted"},  # Menon et al. 2021
    "class_balanced": {"loss": "class_balanced"},  # Cui et al. 2019
    "temperature": {"calibration": "temperature"},  # post-hoc, fitted on validation
}


@dataclass(frozen=True, config=_STRICT)
class BaselinesConfig:
    """Each method on `config` (the paper's `none`, 63, by default), on the headline replicates."""

    methods: tuple[Literal["focal", "logit_adjusted", "class_balanced", "temperature"], ...]
    config: Union[Int, Str]

    @model_validator(mode="after")
    def _known(self):
        try:
            parse_configs([self.config])
        except ValueError as exc:
            raise ValueError(str(exc).replace("grid.configs", "grid.baselines.config")) from None
        if len(set(self.methods)) != len(self.methods):
            raise ValueError(f"grid.baselines.methods lists a method twice: {list(self.methods)}")
        return self


@dataclass(frozen=True, config=_STRICT)
class GridConfig:
    """Which cells `finalbn grid` runs: (configs × replicates ∪ headline configs × their replicates)
    × archs × every dataset. A replicate is a fresh split draw plus a training seed."""

    configs: Union[Literal["all"], tuple[Union[Int, Str], ...]]  # ids and names are checked by parse_configs
    replicates: Replicates
    headline: HeadlineConfig
    baselines: BaselinesConfig
    archs: Annotated[tuple[Str, ...], Field(min_length=1)]
    workers: Annotated[int, Strict(), Field(ge=1)]

    @model_validator(mode="after")
    def _known(self):
        parse_configs(self.configs)
        if self.headline.configs:
            parse_configs(self.headline.configs)
        return self

    @property
    def max_replicates(self) -> int:
        """How many split draws `prepare` must write."""
        return max(self.replicates, self.headline.replicates if self.headline.configs else 1)


@dataclass(frozen=True, config=_STRICT)
class CeilingConfig:
    """The separability probe run before the grid (`finalbn ceiling`)."""

    per_class: Annotated[int, Strict(), Field(ge=2)]  # balanced probe set: up to this many per class
    folds: Annotated[int, Strict(), Field(ge=2, le=20)]
    seed: Seed


@dataclass(frozen=True, config=_STRICT)
class ReportConfig:
    bootstrap: Annotated[int, Strict(), Field(ge=100)]  # bootstrap resamples for the CIs
    seed: Seed


@dataclass(frozen=True, config=_STRICT)
class TrackingConfig:
    experiment: Str


Range = Optional[tuple[float, float]]  # [low, high]; null switches the dimension off
Choices = Optional[tuple[Any, ...]]


@dataclass(frozen=True, config=_STRICT)
class SearchSpace:
    """The Optuna search space: each dimension a [low, high] range, a list of choices, or null
    (off: the value of params.yaml is used). Ranges marked log are sampled on a log scale."""

    switches: Optional[tuple[Literal["bn", "wl", "da", "mx", "uf", "wd"], ...]] = None
    lr: Range = None  # log
    weight_decay: Range = None  # log
    dropout_0: Range = None
    dropout_1: Range = None
    hidden: Choices = None
    final: Optional[tuple[Literal["bn", "selu", "none"], ...]] = None
    final_bn_momentum: Range = None  # log
    final_bn_eps: Range = None  # log
    final_bn_affine: Choices = None
    final_bias: Choices = None
    label_smoothing: Range = None
    mixup_alpha: Range = None
    batch_size: Choices = None
    epochs: Optional[tuple[int, int]] = None
    arch: Optional[tuple[Str, ...]] = None
    loss: Optional[tuple[Literal["ce", "focal", "logit_adjusted", "class_balanced"], ...]] = None
    calibration: Optional[tuple[Literal["none", "temperature"], ...]] = None


@dataclass(frozen=True, config=_STRICT)
class SearchConfig:
    """`finalbn search`: an Optuna study over `space`, scored on a validation metric."""

    study: Name
    storage: Str  # a journal file path, or an RDB URL (postgresql://...) for several machines
    n_trials: Annotated[int, Strict(), Field(ge=1)]
    workers: Annotated[int, Strict(), Field(ge=1)]
    objective: Literal["val_auroc", "val_minority_f1", "val_ap", "val_balanced_loss", "val_auroc+ece"]
    pruner: Literal["median", "hyperband", "none"]
    pruner_startup_trials: Count
    pruner_warmup_epochs: Count
    stale_after_s: Annotated[float, Field(ge=0.0)]  # a RUNNING trial older than this is a dead worker's
    sampler_seed: Seed
    replicate: Count  # the split the trials train on
    replicates: Replicates  # after the study: the best trial and the grid's best on replicates 0..n-1, tested
    space: SearchSpace


@dataclass(frozen=True, config=_STRICT)
class Config:
    datasets: Annotated[tuple[DatasetConfig, ...], Field(min_length=1)]
    synthetic: SyntheticConfig
    split: SplitConfig
    model: ModelConfig
    ablation: AblationConfig
    train: TrainConfig
    pretrain: PretrainConfig
    grid: GridConfig
    ceiling: CeilingConfig
    report: ReportConfig
    tracking: TrackingConfig
    search: SearchConfig

    @model_validator(mode="after")
    def _unique_names(self):
        names = [d.name for d in self.datasets]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"dataset names must be unique, repeated: {sorted(dup)}")
        return self

    def dataset(self, name: str) -> DatasetConfig:
        for d in self.datasets:
            if d.name == name:
                return d
        raise ConfigError(f"no dataset named {name!r} (have: {', '.join(d.name for d in self.datasets)})")


# ---------------------------------------------------------------- loading


def load_config(paths: Sequence[str | Path], overrides: Sequence[str] = ()) -> Config:
    """Merge the YAML files in order, apply `a.b=value` overrides, validate strictly."""
    raw: dict[str, Any] = {}
    for p in paths:
        raw = _merge(raw, _read_yaml(Path(p)))
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not key=value (e.g. split.seed=3)")
        _assign(raw, key.strip(), parse_value(value))
    return validate(raw)


def validate(raw: dict[str, Any]) -> Config:
    try:
        return Config(**raw) if isinstance(raw, dict) else Config(raw)  # type: ignore[arg-type]
    except ValidationError as exc:
        raise ConfigError(_one_line(exc)) from None
    except TypeError as exc:  # e.g. a section that is not a mapping
        raise ConfigError(f"params: {exc}") from None


def to_dict(cfg: Any) -> Any:
    """Plain dict/list form of a config (for config.yaml artifacts and flattened params)."""
    if dataclasses.is_dataclass(cfg):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, (tuple, list)):
        return [to_dict(v) for v in cfg]
    return cfg


def flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}, 'l': [x, y]} -> {'a.b': 1, 'l.0': x, 'l.1': y}."""
    out: dict[str, Any] = {}
    items = d.items() if isinstance(d, dict) else enumerate(d) if isinstance(d, list) else None
    if items is None:
        return {prefix: d}
    for k, v in items:
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict) or (isinstance(v, list) and v and isinstance(v[0], dict)):
            out.update(flatten(v, key))
        else:
            out[key] = v
    return out


def parse_value(text: str) -> Any:
    """YAML scalar/list parsing for overrides; `3e-4` (a string to YAML 1.1) becomes a float."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, str) and re.fullmatch(r"[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+", value.strip()):
        return float(value)
    return value


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"params file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"params file {path}{where} is not valid YAML") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"params file {path} must be a mapping of sections")
    return data


def _merge(base: Any, top: Any) -> Any:
    if isinstance(base, dict) and isinstance(top, dict):
        out = copy.deepcopy(base)
        for k, v in top.items():
            out[k] = _merge(out.get(k), v) if k in out else copy.deepcopy(v)
        return out
    return copy.deepcopy(top)


def _assign(raw: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node: Any = raw
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        where = ".".join(parts[: i + 1])
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"unknown key '{where}': '{'.'.join(parts[:i])}' has {len(node)} entries (0..{len(node) - 1})")
            idx = int(part)
            if last:
                node[idx] = value
            else:
                node = node[idx]
        elif isinstance(node, dict):
            if last:
                node[part] = value  # an unknown leaf is caught by validation with the allowed keys
            else:
                if part not in node:
                    allowed = _allowed_at(parts[:i])
                    raise ConfigError(f"unknown key '{where}'" + (f" (allowed: {', '.join(allowed)})" if allowed else ""))
                node = node[part]
        else:
            raise ConfigError(f"unknown key '{where}': '{'.'.join(parts[:i])}' is a value, not a section")


def _allowed_at(loc: Sequence[Any]) -> list[str]:
    """Field names of the dataclass reached by following `loc` from Config, or []."""
    tp: Any = Config
    for part in loc:
        tp = _unwrap(tp)
        if dataclasses.is_dataclass(tp):
            hints = typing.get_type_hints(tp, include_extras=True)
            if part not in hints:
                return []
            tp = hints[part]
        elif typing.get_origin(tp) in (tuple, list):
            tp = typing.get_args(tp)[0]
        else:
            return []
    tp = _unwrap(tp)
    return [f.name for f in dataclasses.fields(tp)] if dataclasses.is_dataclass(tp) else []


def _unwrap(tp: Any) -> Any:
    while typing.get_origin(tp) is Annotated:
        tp = typing.get_args(tp)[0]
    if typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        tp = args[0] if len(args) == 1 else tp
    return tp


def _field_loc(loc: Sequence[Any]) -> list[Any]:
    """The config path part of a pydantic error location (drops union-branch tags like literal['all'])."""
    out = []
    for p in loc:
        if isinstance(p, str) and ("[" in p or p in ("int", "str", "float", "bool") or p.startswith("function")):
            break
        out.append(p)
    return [p for p in out if p != "__root__"]


def _one_line(exc: ValidationError) -> str:
    errors = exc.errors()
    err = errors[0]
    loc = _field_loc(err["loc"])
    key = ".".join(str(p) for p in loc)
    kind = err["type"]
    if kind in ("unexpected_keyword_argument", "extra_forbidden"):
        allowed = _allowed_at(loc[:-1])
        return f"unknown key '{key}'" + (f" (allowed: {', '.join(allowed)})" if allowed else "")
    if kind in ("missing", "missing_argument"):
        return f"missing key '{key}' (every key must be set in params.yaml)"
    # A union reports one error per branch: say every way the value could have been right.
    same = [e for e in errors if _field_loc(e["loc"]) == loc]
    msgs = list(dict.fromkeys(e["msg"].replace("Value error, ", "") for e in same))
    msg = " or ".join(msgs)
    shown = err.get("input")
    got = "" if isinstance(shown, (dict, tuple)) or kind == "value_error" else f" (got {shown!r})"
    return f"bad value for '{key}': {msg}{got}" if key else f"bad config: {msg}"

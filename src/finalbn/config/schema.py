"""The sections of `params.yaml` as strict, frozen pydantic dataclasses, and `ConfigError`.

    cfg = Config(**yaml.safe_load(open("params.yaml")))   # what `load.validate` does, one-line errors
    cfg.model.arch, cfg.train.lr, cfg.dataset("synthetic-apple").image_size

`params.yaml` is the only place defaults live; this module only says what shape and range each
key has. The switches (`AblationConfig`) and the id/name vocabulary live in `study`.
"""

from __future__ import annotations

import codecs
import glob
from typing import Annotated, Any, Literal

from pydantic import Field, Strict, model_validator
from pydantic.dataclasses import dataclass

from finalbn.config.beyond import AnomalyConfig, BaselineMethod, NeedsConfig, SensitivityConfig
from finalbn.config.cost import CostConfig
from finalbn.config.strict import (
    STRICT,
    Bool,
    Count,
    Int,
    Name,
    Pair,
    PosFloat,
    Prob,
    Replicates,
    Seed,
    Size,
    Str,
)
from finalbn.config.study import (
    FINAL_LAYERS,
    POSTHOC_METHODS,
    TOGGLES,
    AblationConfig,
    parse_configs,
)

# Literals spelled once: the study's tuples are the source of the allowed values.
Toggle = Literal[TOGGLES]  # type: ignore[valid-type]  # a runtime tuple: pydantic reads it, mypy cannot
Executor = Literal["local", "ray"]  # how cells and trials fan out: local processes, or Ray tasks
FinalLayer = Literal[FINAL_LAYERS]  # type: ignore[valid-type]  # a runtime tuple, as Toggle
Loss = Literal["ce", "focal", "logit_adjusted", "class_balanced", "ldam_drw"]
Calibration = Literal["none", "temperature"]
PostHoc = Literal[POSTHOC_METHODS]  # type: ignore[valid-type]  # a runtime tuple, as Toggle
Sampler = Literal["shuffle", "class_balanced"]
Detector = Literal["classifier", "patchcore"]


class ConfigError(ValueError):
    """A bad params file or override; the message is one line naming the key."""


@dataclass(frozen=True, config=STRICT)
class DatasetConfig:
    """One imbalanced binary task (`finalbn.data.sources` reads it).

    plantvillage/synthetic: `crop`. folders: `majority`/`minority` folder lists (globs allowed).
    csv: `labels` (a table, absolute or relative to root), `image_column`, `label_column`, and
    `majority`/`minority` as values of the label column (numbers compare as numbers: `1.0` = `1`), or
    with `one_hot` the class columns (a row's class: the listed column holding 1); `table_separator`
    and `table_encoding` override what `finalbn.data.tables` detects.
    Groups (`finalbn.data.groups`): csv `group_column` (a patient or lesion id), or folders
    `group_by_folder` (the folder the patterns' wildcards matched); a group never straddles splits.
    `intensity`: how samples of more than 8 bits, or float samples, map to 0..255 (`images.decode`):
    auto (the bits the data uses: PNG sBIT, TIFF tags, else the image's maximum), container (the
    type's full range; float 0..1, clipped), or [lo, hi] (fixed, clipped). `max_pixels`: the
    largest image decoded, at the size it decodes (a JPEG at reduced scale for image_size)."""

    name: Name
    source: Literal["synthetic", "plantvillage", "folders", "csv"]
    root: Str
    image_size: Size
    crop: Str | None = None
    majority: tuple[Str, ...] = ()
    minority: tuple[Str, ...] = ()
    labels: Str | None = None
    image_column: Str | None = None
    label_column: Str | None = None
    group_column: Str | None = None  # csv: the table's column of patient/lesion ids (one group per value)
    group_by_folder: Bool = False  # folders: the folder(s) the patterns' wildcards matched are the group
    # csv (finalbn.data.tables): a column per class (ISIC 2019), majority/minority naming class columns, no label_column
    one_hot: Bool = False
    table_separator: Str | None = None  # csv: one character, or `tab`; null = sniffed (, ; tab |)
    table_encoding: Str | None = None  # csv: a Python codec (cp1252, utf-16); null = BOM, else UTF-8, else cp1252
    intensity: Literal["auto", "container"] | tuple[float, float] = "auto"  # 16-bit, float: see above
    max_pixels: Annotated[int, Strict(), Field(ge=1)] = 89_478_485  # images.MAX_PIXELS, Pillow's default

    @model_validator(mode="after")
    def _intensity_range(self):
        if not isinstance(self.intensity, str) and not self.intensity[0] < self.intensity[1]:
            raise ValueError(f"intensity [lo, hi] needs lo < hi (got {list(self.intensity)})")
        return self

    @model_validator(mode="after")
    def _source_fields(self):
        table = {"labels": self.labels, "image_column": self.image_column, "label_column": self.label_column}
        if self.source in ("synthetic", "plantvillage"):
            if not self.crop:
                raise ValueError(f"source {self.source} needs 'crop' (e.g. Apple)")
            if self.majority or self.minority:
                raise ValueError(f"source {self.source} takes 'crop', not majority/minority lists")
        else:
            what = "folders (or glob patterns)" if self.source == "folders" else "values of label_column"
            if not self.majority or not self.minority:
                raise ValueError(f"source {self.source} needs non-empty 'majority' and 'minority' lists ({what})")
            if self.crop:
                raise ValueError(f"source {self.source} takes majority/minority lists, not 'crop'")
        if self.source == "csv":
            missing = [k for k, v in table.items() if not v and not (k == "label_column" and self.one_hot)]
            if missing:
                raise ValueError(
                    f"source csv needs {', '.join(repr(k) for k in missing)} (the table, its image and label columns)"
                )
        elif any(table.values()) or self.group_column:
            raise ValueError(
                f"source {self.source} takes no "
                f"{', '.join(repr(k) for k, v in {**table, 'group_column': self.group_column}.items() if v)} "
                "(those are for source csv)"
            )
        if self.group_by_folder:
            self._group_patterns()
        self._table_options()
        return self

    def _table_options(self) -> None:
        """one_hot, table_separator, table_encoding: csv only, each well-formed."""
        given = [k for k in ("one_hot", "table_separator", "table_encoding") if getattr(self, k)]
        if given and self.source != "csv":
            raise ValueError(f"source {self.source} takes no {', '.join(map(repr, given))} (those are for source csv)")
        if self.one_hot and self.label_column:
            raise ValueError("one_hot takes no 'label_column': majority and minority name the class columns")
        sep = self.table_separator
        if sep is not None and sep not in ("tab", "\\t") and (len(sep) != 1 or sep.isalnum() or sep in '"\r\n'):
            raise ValueError(f"table_separator {sep!r} is not one character (e.g. ';', ',', '|') or 'tab'")
        if self.table_encoding is not None:
            try:
                codecs.lookup(self.table_encoding)
            except LookupError:
                raise ValueError(
                    f"table_encoding {self.table_encoding!r} is not an encoding Python knows "
                    "(e.g. utf-8, cp1252, utf-16)"
                ) from None

    def _group_patterns(self) -> None:
        """group_by_folder: every entry a glob pattern without `**` (the wildcards' matches are the group)."""
        if self.source != "folders":
            raise ValueError(
                f"source {self.source} takes no 'group_by_folder' (it is for source folders with glob "
                "patterns; a table's groups are 'group_column')"
            )
        plain = [e for e in self.majority + self.minority if not glob.has_magic(e)]
        if plain:
            raise ValueError(
                f"group_by_folder needs glob patterns (e.g. '*/0'), the group being the folder their "
                f"wildcards match; not a pattern: {', '.join(map(repr, plain))}"
            )
        deep = [e for e in self.majority + self.minority if "**" in e]
        if deep:
            raise ValueError(
                f"group_by_folder cannot group by '**' (it matches any depth): {', '.join(map(repr, deep))}; "
                "write one wildcard per folder level (e.g. '*/0')"
            )


@dataclass(frozen=True, config=STRICT)
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
    # crop -> healthy images for that crop instead of `healthy` (the dataset's crop needs many more)
    healthy_by_crop: dict[Str, Annotated[int, Strict(), Field(ge=1)]] = Field(default_factory=dict)


@dataclass(frozen=True, config=STRICT)
class SplitConfig:
    seed: Seed
    train: Pair
    val: Pair
    test: Pair
    # None: off. Else look-alike images (perceptual hashes at most this many of 64 bits apart) are
    # drawn together like identical copies (finalbn.data.neardup)
    near_duplicates: Annotated[int, Strict(), Field(ge=0, le=32)] | None = None
    # true: no two replicates share a test image (the pool must hold replicates x test images per class);
    # majority: only the healthy test images are disjoint (splits.disjoint_for)
    disjoint_test: Bool | Literal["majority"] = False

    @model_validator(mode="after")
    def _train_both(self):
        if min(self.train) < 1:
            raise ValueError("train needs at least one image of each class")
        return self


@dataclass(frozen=True, config=STRICT)
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
    single_logit: Bool = False  # one sigmoid logit instead of two softmax logits (a sensitivity variant)


@dataclass(frozen=True, config=STRICT)
class AugmentConfig:
    """DA: flips, small rotation, zoom, lighting (fastai's get_transforms defaults)."""

    flip_vertical: Bool
    rotate: Annotated[float, Field(ge=0.0, le=180.0)]
    zoom: Annotated[float, Field(ge=1.0, le=2.0)]
    lighting: Annotated[float, Field(ge=0.0, lt=1.0)]


@dataclass(frozen=True, config=STRICT)
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
    loss: Loss  # the imbalance baselines
    focal_gamma: Annotated[float, Field(ge=0.0, le=10.0)]
    cb_beta: Annotated[float, Field(ge=0.0, lt=1.0)]  # class_balanced: Cui et al.'s effective-number beta
    calibration: Calibration  # post-hoc temperature scaling fitted on validation
    posthoc: PostHoc  # a post-hoc rival applied to the trained head (finalbn.train.posthoc)
    sampler: Sampler  # class_balanced: minority images oversampled, each class equally likely per draw
    ldam_scale: PosFloat  # LDAM-DRW (Cao et al. 2019): logit scale s
    ldam_max_margin: Annotated[float, Field(ge=0.0)]  # the largest class margin (the minority's)
    drw_start: Prob  # the share of epochs before deferred re-weighting starts
    detector: Detector  # patchcore: no classifier, the healthy-only anomaly baseline (`anomaly`)


@dataclass(frozen=True, config=STRICT)
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


@dataclass(frozen=True, config=STRICT)
class HeadlineConfig:
    """Configurations run on more replicates than the rest: the paper's contrasts."""

    configs: tuple[Int | Str, ...]  # ids and names, checked by parse_configs
    replicates: Replicates


@dataclass(frozen=True, config=STRICT)
class BaselinesConfig:
    """Each method on `config` (the paper's `none`, 63, by default), on the headline replicates."""

    methods: tuple[BaselineMethod, ...]
    config: Int | Str

    @model_validator(mode="after")
    def _known(self):
        try:
            parse_configs([self.config])
        except ValueError as exc:
            raise ValueError(str(exc).replace("grid.configs", "grid.baselines.config")) from None
        if len(set(self.methods)) != len(self.methods):
            raise ValueError(f"grid.baselines.methods lists a method twice: {list(self.methods)}")
        return self


@dataclass(frozen=True, config=STRICT)
class GridConfig:
    """Which cells `finalbn grid` runs: (configs × replicates ∪ headline configs × their replicates)
    × archs × every dataset. A replicate is a fresh split draw plus a training seed."""

    configs: Literal["all"] | tuple[Int | Str, ...]  # ids and names are checked by parse_configs
    replicates: Replicates
    headline: HeadlineConfig
    baselines: BaselinesConfig
    archs: Annotated[tuple[Str, ...], Field(min_length=1)]
    workers: Annotated[int, Strict(), Field(ge=1)]
    executor: Executor = "local"  # local shard processes, or Ray tasks (`ray`)

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


@dataclass(frozen=True, config=STRICT)
class CeilingConfig:
    """The separability probe run before the grid (`finalbn ceiling`)."""

    per_class: Annotated[int, Strict(), Field(ge=2)]  # balanced probe set: up to this many per class
    folds: Annotated[int, Strict(), Field(ge=2, le=20)]
    seed: Seed


@dataclass(frozen=True, config=STRICT)
class SelectionConfig:
    """How a configuration is chosen (`finalbn.stats.selection`) and the decision rules shipped with it."""

    replicates: Replicates  # K: a configuration is ranked on replicates 0..K-1 (the search races over them)
    prevalences: Annotated[tuple[Annotated[float, Field(gt=0.0, lt=1.0)], ...], Field(min_length=1)]


@dataclass(frozen=True, config=STRICT)
class ReportConfig:
    bootstrap: Annotated[int, Strict(), Field(ge=100)]  # bootstrap resamples for the CIs
    seed: Seed
    # field prevalences at which every cell's test metrics and the verdict's contrasts are given
    prevalences: Annotated[tuple[Annotated[float, Field(gt=0.0, lt=1.0)], ...], Field(min_length=1)] = (
        0.5,
        0.1,
        0.05,
        0.01,
    )


@dataclass(frozen=True, config=STRICT)
class TrackingConfig:
    experiment: Str
    cell_figures: Literal["all", "train", "none"]  # which cell runs draw their five figures


Range = tuple[float, float] | None  # [low, high]; null switches the dimension off
Choices = tuple[Any, ...] | None


@dataclass(frozen=True, config=STRICT)
class SearchSpace:
    """The Optuna search space: each dimension a [low, high] range, a list of choices, or null
    (off: the value of params.yaml is used). Ranges marked log are sampled on a log scale."""

    switches: tuple[Toggle, ...] | None = None
    lr: Range = None  # log
    weight_decay: Range = None  # log
    dropout_0: Range = None
    dropout_1: Range = None
    hidden: Choices = None
    final: tuple[FinalLayer, ...] | None = None
    final_bn_momentum: Range = None  # log
    final_bn_eps: Range = None  # log
    final_bn_affine: Choices = None
    final_bias: Choices = None
    label_smoothing: Range = None
    mixup_alpha: Range = None
    batch_size: Choices = None
    epochs: tuple[int, int] | None = None
    arch: tuple[Str, ...] | None = None
    loss: tuple[Loss, ...] | None = None
    calibration: tuple[Calibration, ...] | None = None


@dataclass(frozen=True, config=STRICT)
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
    stale_after_s: Annotated[float, Field(ge=0.0)]  # a RUNNING trial naming no worker, older than this, is dead
    sampler_seed: Seed
    space: SearchSpace
    executor: Executor = "local"  # local worker processes, or Ray tasks (`ray`)
    heartbeat_s: Annotated[int, Strict(), Field(ge=1)] = 60  # an RDB storage's heartbeat; dead after 3 missed


@dataclass(frozen=True, config=STRICT)
class RayConfig:
    """The Ray executor (`--executor ray`): where the cluster is and what each task asks of it.
    A task is one unit of grid cells (a family sharing features, or one UF-on configuration) or
    one search worker."""

    address: Str | None = None  # null = $RAY_ADDRESS if set, else a Ray started on this machine for the run
    num_cpus: Annotated[float, Field(gt=0.0)] = 1.0  # CPUs per task (its torch threads, rounded down)
    num_gpus: Annotated[float, Field(ge=0.0)] = 0.0  # GPUs per task: 0.25 packs four tasks on a GPU
    max_retries: Annotated[int, Strict(), Field(ge=0)] = 3  # a task whose worker died runs again


@dataclass(frozen=True, config=STRICT)
class Config:
    datasets: Annotated[tuple[DatasetConfig, ...], Field(min_length=1)]
    synthetic: SyntheticConfig
    split: SplitConfig
    model: ModelConfig
    ablation: AblationConfig
    train: TrainConfig
    anomaly: AnomalyConfig
    pretrain: PretrainConfig
    grid: GridConfig
    ceiling: CeilingConfig
    selection: SelectionConfig
    report: ReportConfig
    sensitivity: SensitivityConfig
    needs: NeedsConfig
    tracking: TrackingConfig
    search: SearchConfig
    ray: RayConfig = RayConfig()
    cost: CostConfig | None = None  # the projection's prices (None: stages project nothing)

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

"""Typed, strict configuration for every finalbn command. Load with::

    cfg = load_config(["params.yaml"], ["split.seed=3", "datasets.0.crop=Pepper"])

An unknown key, a wrong type or an out-of-range value raises `ConfigError` with one line naming
the key and what is allowed, before any work starts.

    strict   the strict scalar types the dataclasses are built from
    schema   the sections of params.yaml (`Config`, `ModelConfig`, ...) and `ConfigError`
    study    the six switches and the study's vocabulary: config ids and names, the final layers,
             the imbalance baselines, the params that leave a cell's numbers alone
    derived  what a Config implies: a grid cell's configuration, a replicate's seed, the final layer
    load     load_config, validate, to_dict, flatten, parse_value
    overrides  `with_overrides`: a config derived in-process (not on this face: outside a cell's key)

The face names what other packages use; a section's class (`TrainConfig`, `GridConfig`, ...) is
imported from `finalbn.config.schema` where one is needed.
"""

from __future__ import annotations

from finalbn.config.derived import cell_seed, configure, final_layer, final_layer_for, has_final_bn
from finalbn.config.load import flatten, load_config, parse_value, to_dict, validate
from finalbn.config.schema import (
    AugmentConfig,
    Config,
    ConfigError,
    DatasetConfig,
    RayConfig,
    SplitConfig,
)
from finalbn.config.study import (
    BASELINE_METHODS,
    FINAL_LAYERS,
    NOT_CELL_KEY_PARAMS,
    NOT_RESULT_PARAMS,
    TOGGLES,
    AblationConfig,
    ablation_from_id,
    config_id,
    config_name,
    parse_configs,
)

__all__ = [
    "BASELINE_METHODS",
    "FINAL_LAYERS",
    "NOT_CELL_KEY_PARAMS",
    "NOT_RESULT_PARAMS",
    "TOGGLES",
    "AblationConfig",
    "AugmentConfig",
    "Config",
    "ConfigError",
    "DatasetConfig",
    "RayConfig",
    "SplitConfig",
    "ablation_from_id",
    "cell_seed",
    "config_id",
    "config_name",
    "configure",
    "final_layer",
    "final_layer_for",
    "flatten",
    "has_final_bn",
    "load_config",
    "parse_configs",
    "parse_value",
    "to_dict",
    "validate",
]

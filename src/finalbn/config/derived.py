"""What a configuration implies: a grid cell's configuration, a replicate's seed, and the final
layer before the softmax — derived in one place from the study's vocabulary (`study`).

    final_layer(cfg.model, cfg.ablation)      # "bn" | "selu" | "none"
    cell_seed(cfg, replicate)                 # train.seed + replicate
    configure(cfg, "resnet34", 31, "focal")   # params.yaml as one grid cell trains it
"""

from __future__ import annotations

import dataclasses

from finalbn.config.schema import Config, ModelConfig
from finalbn.config.study import BASELINE_METHODS, AblationConfig, ablation_from_id


def final_layer_for(final_variant: str, bn: bool) -> str:
    """What sits after the last Linear, one of `FINAL_LAYERS`: the BN switch `bn` adds
    `final_variant` ("bn", or the paper's "selu" variant); with the switch off, nothing ("none").
    The rule on its two facts, wherever they come from (a config, a run's params and tags, a
    search trial's draw)."""
    return final_variant if bn else "none"


def final_layer(model: ModelConfig, ablation: AblationConfig) -> str:
    """`final_layer_for` a configuration: `model.final_variant` and the BN switch `ablation.bn`."""
    return final_layer_for(model.final_variant, ablation.bn)


def has_final_bn(model: ModelConfig, ablation: AblationConfig) -> bool:
    """Whether the network ends in BatchNorm1d before the softmax (the mechanism under study)."""
    return final_layer(model, ablation) == "bn"


def cell_seed(cfg: Config, replicate: int) -> int:
    """Training seed of a replicate: a replicate re-draws the split and re-seeds training."""
    return cfg.train.seed + replicate


def configure(cfg: Config, arch: str, config: int, baseline: str | None = None) -> Config:
    """`cfg` with a grid cell's arch, switches (paper id `config`) and imbalance baseline method
    (a key of `BASELINE_METHODS`, whose train.* values it sets; "" or None: the paper's cell)."""
    train = dataclasses.replace(cfg.train, **BASELINE_METHODS[baseline]) if baseline else cfg.train
    return dataclasses.replace(
        cfg, model=dataclasses.replace(cfg.model, arch=arch), ablation=ablation_from_id(config), train=train
    )

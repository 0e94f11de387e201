"""params.yaml's sections for the stages beyond the paper: the sensitivity stage, the anomaly
baseline (PatchCore) and the data-needs planner (typed and strict, as `schema`'s).
"""

from __future__ import annotations

from typing import Annotated, Literal, TypeAlias

from pydantic import Field, Strict, model_validator
from pydantic.dataclasses import dataclass

from finalbn.config.strict import STRICT, Bool, Replicates, Seed
from finalbn.config.study import BASELINE_METHODS, NO_HEAD, ON_FINAL_BN

BaselineMethod: TypeAlias = Literal[tuple(BASELINE_METHODS)]  # type: ignore[valid-type]  # the dict's keys, at run time


@dataclass(frozen=True, config=STRICT)
class AnomalyConfig:
    """The PatchCore baseline (`finalbn.models.patchcore`): coreset share, bank cap, patch width."""

    coreset: Annotated[float, Field(gt=0.0, le=1.0)]
    max_bank: Annotated[int, Strict(), Field(ge=1)]
    dim: Annotated[int, Strict(), Field(ge=1)]


@dataclass(frozen=True, config=STRICT)
class CostlyLevels:
    """The sensitivity levels that cost most (`sensitivity.costly: true` adds them to the lists)."""

    imbalance: tuple[Annotated[float, Field(gt=0.0, lt=0.5)], ...] = ()
    batch_size: tuple[Annotated[int, Strict(), Field(ge=2)], ...] = ()
    final_bn_momentum: tuple[Annotated[float, Field(gt=0.0, le=1.0)], ...] = ()
    frozen_bn: tuple[Literal["eval", "train"], ...] = ()


@dataclass(frozen=True, config=STRICT)
class SensitivityConfig:
    """The `sensitivity` stage (`finalbn.stages.sensitivity`): the headline contrast, final BN alone
    vs nothing (31 − 63), under other settings, each on replicates 0..replicates-1. A level equal
    to params.yaml's own is the reference, whose cells are the grid's."""

    replicates: Replicates
    imbalance: tuple[Annotated[float, Field(gt=0.0, lt=0.5)], ...] = ()  # minority share of the training split
    batch_size: tuple[Annotated[int, Strict(), Field(ge=2)], ...] = ()
    final_bn_momentum: tuple[Annotated[float, Field(gt=0.0, le=1.0)], ...] = ()
    frozen_bn: tuple[Literal["eval", "train"], ...] = ()  # the body's frozen BN layers: eval, or train (fastai's)
    single_logit: Bool = True  # one sigmoid logit (with BN over it) against two softmax logits
    bias_shift: Bool = True  # 31 against 63 with a minority-logit bias learned on validation
    inference_removal: Bool = True  # 31 trained with its final BN, run without it, against 63
    workers: Annotated[int, Strict(), Field(ge=1)] = 2
    costly: Bool = False  # add `costly_levels` to the lists above
    costly_levels: CostlyLevels = CostlyLevels()

    def values(self, factor: str) -> tuple:
        """A factor's levels: its list, with its costly levels when `costly` is on."""
        return tuple(getattr(self, factor)) + (tuple(getattr(self.costly_levels, factor)) if self.costly else ())


@dataclass(frozen=True, config=STRICT)
class NeedsConfig:
    """The data-needs planner (`finalbn.stages.needs`): minority counts, replicates, the target."""

    counts: Annotated[tuple[Annotated[int, Strict(), Field(ge=1)], ...], Field(min_length=3)]
    replicates: Replicates
    rival: BaselineMethod
    target_f1: Annotated[float, Field(gt=0.0, lt=1.0)]
    prevalence: Annotated[float, Field(gt=0.0, lt=1.0)]
    bootstrap: Annotated[int, Strict(), Field(ge=100)] = 1000
    seed: Seed = 0
    workers: Annotated[int, Strict(), Field(ge=1)] = 2

    @model_validator(mode="after")
    def _a_rival_on_63(self):
        if self.rival in NO_HEAD or self.rival in ON_FINAL_BN or self.rival == "temperature":
            raise ValueError(
                f"needs.rival={self.rival} is no rival on a plain model (63): name a loss, sampler or post-hoc method"
            )
        return self

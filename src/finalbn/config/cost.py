"""params.yaml's `cost` section: what the study costs on the machine that measured it.

`finalbn.stages.cost` prices each stage from it before the stage spends its time; it changes no
result (no stage lists it among its DVC params, no cell key reads it).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator
from pydantic.dataclasses import dataclass

from finalbn.config.strict import STRICT, Size, Str

CELL_KINDS = ("uf_on", "uf_on_da", "first", "warm", "first_mx", "first_da", "tracking", "posthoc", "anomaly")
# kinds `finalbn bench --cells` does not measure: a post-hoc cell right after its base (evaluation only) and a
# PatchCore cell (the body's patch features of the split, a coreset, nearest neighbours); priced from params
EXTRA_KINDS = ("posthoc", "anomaly")
FIXED_STAGES = ("install", "synthesize", "prepare", "store", "ceiling", "report", "export")


@dataclass(frozen=True, config=STRICT)
class CostConfig:
    """What the study costs on the machine that measured it, so that each stage says its projected
    time before spending it (`finalbn.stages.cost`): seconds of one cell of each kind
    (`finalbn bench --cells`: uf_on ... first_da, plus `tracking`, a cell's MLflow overhead) for
    `arch` at `image_size` px, one thread per process, and the fixed stages' seconds as `make run`
    measured them. A `finalbn bench --cells` result for the same arch on this machine
    (results/bench-cells.json) replaces `cells`."""

    machine: Str
    arch: Str
    image_size: Size
    cells: dict[Literal[CELL_KINDS], Annotated[float, Field(ge=0.0)]]  # type: ignore[valid-type]
    stages: dict[Literal[FIXED_STAGES], Annotated[float, Field(ge=0.0)]] = Field(default_factory=dict)  # type: ignore[valid-type]
    # the share of the search's trial replicates that run (a pruned trial stops early), as make run measured it
    search_share: Annotated[float, Field(gt=0.0, le=1.0)] = 1.0
    # a sensitivity level grid's start-up (its worker process, the grid's set-up and results), seconds
    level_startup: Annotated[float, Field(ge=0.0)] = 0.0

    @model_validator(mode="after")
    def _every_kind(self):
        missing = [k for k in CELL_KINDS if k not in self.cells]
        if missing:
            raise ValueError(f"cost.cells lacks {', '.join(missing)}")
        return self

"""The study's vocabulary: the six switches, the paper's configuration ids and names, the final
layers, the imbalance baselines, and which params leave a cell's numbers alone — each fact in one
place, for the grid, the search, the export and the report (`derived` applies them to a Config).

    config_id(cfg.ablation)                   # 31 = "BN only", 63 = "none", 0 = everything
    parse_configs(["BN+DA", 63])              # -> [23, 63]

Pure functions and constants: nothing here reads a file or imports torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic.dataclasses import dataclass

from finalbn.config.strict import STRICT, Bool

TOGGLES = ("bn", "wl", "da", "mx", "uf", "wd")

# What can sit after the last Linear, before the softmax (`final_layer`; `models.create_model(final=)`).
FINAL_LAYERS = ("bn", "selu", "none")

# The imbalance literature's answers, run as fixed grid cells beside the paper's configurations:
# method -> the train.* values it sets on the base configuration.
BASELINE_METHODS: dict[str, dict[str, Any]] = {
    "focal": {"loss": "focal"},  # Lin et al. 2017
    "logit_adjusted": {"loss": "logit_adjusted"},  # Menon et al. 2021
    "class_balanced": {"loss": "class_balanced"},  # Cui et al. 2019
    "temperature": {"calibration": "temperature"},  # post-hoc, fitted on validation
}

# train.* keys (flattened, as `load.flatten` spells them) that do not change what a cell computes:
# where and how fast it runs and what is logged. A search study's name leaves them out.
NOT_RESULT_PARAMS = frozenset(
    {"train.device", "train.num_workers", "train.threads", "train.log_model", "train.share_features"}
)
# A cell's result key leaves train.seed out as well: the seed enters the key as the cell's own
# seed (`cell_seed`: train.seed + replicate), so the same training seed is the same cell.
NOT_CELL_KEY_PARAMS = NOT_RESULT_PARAMS | {"train.seed"}


@dataclass(frozen=True, config=STRICT)
class AblationConfig:
    """The paper's six switches; `config_id` below turns them into the paper's config id."""

    bn: Bool
    wl: Bool
    da: Bool
    mx: Bool
    uf: Bool
    wd: Bool


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

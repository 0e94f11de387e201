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

# What a trained head's outputs may be changed by after training (`finalbn.train.posthoc`).
POSTHOC_METHODS = (
    "none",
    "logit_adjustment",
    "vector_scaling",
    "standardisation",
    "tau_norm",
    "crt",
    "lws",
    "remove_final_bn",
)

# The imbalance literature's answers, run as fixed grid cells beside the paper's configurations:
# method -> the train.* values it sets on the base configuration. The post-hoc ones change a trained
# cell's outputs only: a process that has just trained their base cell reuses its head (`cell.run_cell`).
BASELINE_METHODS: dict[str, dict[str, Any]] = {
    "focal": {"loss": "focal"},  # Lin et al. 2017
    "logit_adjusted": {"loss": "logit_adjusted"},  # Menon et al. 2021 (= Balanced Softmax, Ren et al. 2020)
    "class_balanced": {"loss": "class_balanced"},  # Cui et al. 2019
    "ldam_drw": {"loss": "ldam_drw"},  # Cao et al. 2019
    "balanced_sampling": {"sampler": "class_balanced"},  # minority oversampling (Kang et al. 2020's sampler)
    "temperature": {"calibration": "temperature"},  # post-hoc, fitted on validation
    "posthoc_logit_adjustment": {"posthoc": "logit_adjustment"},  # Menon et al. 2021, tau on validation
    "vector_scaling": {"posthoc": "vector_scaling"},  # Guo et al. 2017
    "logit_standardisation": {"posthoc": "standardisation"},  # a final BN's inference map, without training it
    "tau_norm": {"posthoc": "tau_norm"},  # Kang et al. 2020
    "crt": {"posthoc": "crt"},  # Kang et al. 2020
    "lws": {"posthoc": "lws"},  # Kang et al. 2020
    "final_bn_removed": {"posthoc": "remove_final_bn"},  # Kocaman et al. 2021: trained with it, run without
    "patchcore": {"detector": "patchcore"},  # Roth et al. 2022: healthy images only, no classifier
}
# Methods run on the base configuration with the final BN switched on (63 -> 31): what they change is it.
ON_FINAL_BN = frozenset({"final_bn_removed"})
# Methods whose numbers do not depend on the base configuration's switches (no head is trained).
NO_HEAD = frozenset({"patchcore"})
POSTHOC_BASELINES = frozenset(m for m, v in BASELINE_METHODS.items() if "posthoc" in v or "calibration" in v)


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

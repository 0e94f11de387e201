"""Which cells the grid runs, their keys, and how they are dealt to shards.

    cells = all_cells(cfg)                    # [Cell(dataset, arch, config_id, replicate, baseline)]
    mine = share_order(shard_cells(cells, 3, 8))

Cells: every configuration of `grid.configs` on replicates 0..grid.replicates-1, plus the
headline configurations on replicates 0..grid.headline.replicates-1, plus the imbalance baselines
(`grid.baselines`), each on its base configuration over the headline replicates.

Shards split the grid into *units* that never straddle two shards: with UF off a whole *family*
— (dataset, arch, UF, DA, MX) — whose cells see the same backbone inputs (cells differing only in
the head-side toggles BN, WL, WD, or in a baseline's loss, at one replicate, DA and MX feed the
frozen backbone the same images); with UF on (nothing to share) one configuration. Either way a
parent run and all of its replicates live in one shard (workers never race to create a parent).
Units are dealt to shards by their estimated cost, largest first, so that shards end together.
Within a shard, cells run in `share_order` — family, replicate, configuration — so a share group
runs back to back on the frozen body's features computed once (`finalbn.train.features`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from finalbn.config import Config, ablation_from_id, config_id, config_name, configure, parse_configs
from finalbn.config.study import NO_HEAD, ON_FINAL_BN, POSTHOC_BASELINES
from finalbn.train.keys import result_key

# A cell's time in warm-head cells, by kind (`cell_kind`), measured with `finalbn bench --cells` on CPU
# (efficientnet_lite0, 64 px, one thread): UF on 98-100 s; the first cell of an augmented, a MixUp and the
# plain family 47, 39 and 7.8 s; a head on features in memory 3.8 s with its tracking.
KIND_COST = {
    "uf_on": 26.0,
    "uf_on_da": 26.0,
    "first_da": 12.0,
    "first_mx": 10.0,
    "first": 2.0,
    "warm": 1.0,
    "posthoc": 0.3,
    "anomaly": 2.0,
}


@dataclass(frozen=True)
class Cell:
    dataset: str
    arch: str
    config_id: int
    replicate: int
    baseline: str = ""  # an imbalance baseline (BASELINE_METHODS) on this configuration; "" = the paper's cell

    @property
    def family(self) -> tuple:
        """The cells that see the same frozen-body inputs: (dataset, arch, UF, DA, MX); a method with no
        head (PatchCore: its own patch features) is a family of its own."""
        ab = ablation_from_id(self.config_id)
        own = (self.baseline,) if self.baseline in NO_HEAD else ()
        return (self.dataset, self.arch, ab.uf, ab.da, ab.mx, *own)

    @property
    def label(self) -> str:
        """The configuration's name, with its baseline: `none + focal`."""
        name = config_name(ablation_from_id(self.config_id))
        return f"{name} + {self.baseline}" if self.baseline else name

    @property
    def parent(self) -> tuple:
        """What the cell's parent run groups: (dataset, arch, configuration, baseline)."""
        return (self.dataset, self.arch, self.config_id, self.baseline)

    @property
    def name(self) -> str:
        return f"{self.dataset} {self.arch} {self.label} r{self.replicate}"

    def run_name(self, where: bool = False, setting: str = "") -> str:
        """The MLflow run name: what differs between cells first (`BN+WL r3`), then the setting of a
        labelled grid (`Setting.label`: `BN r3 · batch_size=16`), the dataset and arch after it only
        when the grid has several (`where`); they are tags on every run."""
        return f"{self.label} r{self.replicate}" + self._after(where, setting)

    def parent_name(self, where: bool = False, setting: str = "") -> str:
        """The parent run's name: `BN+WL (config 15)`, with the setting, dataset and arch as in `run_name`."""
        return f"{self.label} (config {self.config_id})" + self._after(where, setting)

    def _after(self, where: bool, setting: str) -> str:
        return (f" · {setting}" if setting else "") + (f" · {self.dataset} {self.arch}" if where else "")


@dataclass(frozen=True)
class Setting:
    """What a labelled grid changes from params.yaml (a sensitivity level): `label` follows its
    runs' names (`BN (config 31) · batch_size=16`), `tags` ((name, value) pairs) go on its parents
    and cells. Neither is part of a key: the runs are found by key whatever they are called."""

    label: str
    tags: tuple[tuple[str, str], ...] = ()


def several_places(cfg: Config) -> bool:
    """Whether run names must say the dataset and arch (the grid has more than one of either)."""
    return len(cfg.datasets) > 1 or len(cfg.grid.archs) > 1


def all_cells(cfg: Config) -> list[Cell]:
    """Every configuration on `grid.replicates` replicates, the headline ones on more, and the
    baselines on the headline replicates (none without headline configurations)."""
    g = cfg.grid
    wanted = {(cid, r, "") for cid in parse_configs(g.configs) for r in range(g.replicates)}
    if g.headline.configs:
        wanted |= {(cid, r, "") for cid in parse_configs(g.headline.configs) for r in range(g.headline.replicates)}
        base = parse_configs([g.baselines.config])[0]
        wanted |= {(baseline_base(base, m), r, m) for m in g.baselines.methods for r in range(g.headline.replicates)}
    return [Cell(d.name, arch, cid, r, m) for d in cfg.datasets for arch in g.archs for cid, r, m in sorted(wanted)]


def baseline_base(config: int, method: str) -> int:
    """The configuration a baseline method runs on: `config` (grid.baselines.config), with the final
    BN switched on for a method that changes it (`ON_FINAL_BN`: 63 -> 31)."""
    if method not in ON_FINAL_BN:
        return config
    return config_id(dataclasses.replace(ablation_from_id(config), bn=True))


def _unit(cell: Cell) -> tuple:
    """What one shard must own whole: a family with UF off (its cells share features), one
    configuration (with its replicates and parent) with UF on."""
    return cell.family if not cell.family[2] else (*cell.family, cell.config_id, cell.baseline)


def cell_kind(config_id: int, first: bool, share: bool = True) -> str:
    """What a cell costs, as a kind: uf_on / uf_on_da (the body trains), or with UF off the
    first cell of its (family, replicate) — first / first_mx / first_da: the body's features of
    the split, of each epoch's mixed, or augmented (and mixed) batches — or warm (the head alone
    on features in memory); with sharing off every UF-off cell is a first."""
    ab = ablation_from_id(config_id)
    if ab.uf:
        return "uf_on_da" if ab.da else "uf_on"
    if share and not first:
        return "warm"
    return "first_da" if ab.da else "first_mx" if ab.mx else "first"


def cell_kinds(
    cells: Sequence[Cell], share: bool = True, kept: Callable[[Cell], bool] | None = None
) -> dict[Cell, str]:
    """Each cell's kind, in the share order the shards run them in. `kept(cell)`: the body's
    features of the cell's split are on disk (`features.on_disk`), so a plain family's first cell
    only trains its head (warm); augmented and mixed families still run the body every epoch."""
    seen: set[tuple] = set()
    out: dict[Cell, str] = {}
    for c in share_order(cells):
        if c.baseline in NO_HEAD:
            out[c] = "anomaly"
            continue
        base = dataclasses.replace(c, baseline="")
        if share and c.baseline in POSTHOC_BASELINES and base in out and not ablation_from_id(c.config_id).uf:
            out[c] = "posthoc"  # right after its base, in one process: its trained head is reused
            continue
        kind = cell_kind(c.config_id, (c.family, c.replicate) not in seen, share)
        out[c] = "warm" if kind == "first" and share and kept is not None and kept(c) else kind
        seen.add((c.family, c.replicate))
    return out


def unit_costs(cells: Sequence[Cell], share: bool = True) -> dict[tuple, float]:
    """Each unit's cost (its cells' `KIND_COST`s), the costliest first (ties by the unit's sorted
    order: every process computes the same order)."""
    costs: dict[tuple, float] = {}
    for c, kind in cell_kinds(cells, share).items():
        costs[_unit(c)] = costs.get(_unit(c), 0.0) + KIND_COST[kind]
    return {u: costs[u] for u in sorted(costs, key=lambda u: (-costs[u], repr(u)))}


def units(cells: Sequence[Cell], share: bool = True) -> list[list[Cell]]:
    """The cells by unit, the costliest unit first: what the Ray executor submits as tasks (the
    costliest start first, so the last to end is a cheap one)."""
    return [[c for c in cells if _unit(c) == u] for u in unit_costs(cells, share)]


def shard_cells(cells: Sequence[Cell], index: int, count: int, share: bool = True) -> list[Cell]:
    """The cells of shard `index` of `count`: whole units, each to the least loaded shard by the
    cells' measured costs (`KIND_COST`), the costliest first (every process computes the same deal)."""
    costs = unit_costs(cells, share)
    load, owner = [0.0] * count, {}
    for u in costs:
        i = min(range(count), key=lambda k: (load[k], k))
        owner[u] = i
        load[i] += costs[u]
    return [c for c in cells if owner[_unit(c)] == index]


def share_order(cells: Sequence[Cell]) -> list[Cell]:
    """Cells in the order that lets UF-off cells share the frozen body's features: by family
    (dataset, arch, UF, DA, MX), then replicate, then configuration — the cells of one share group
    run one after another, while their features are in memory."""
    return sorted(cells, key=lambda c: (c.family, c.replicate, c.config_id, c.baseline))


def cell_config(cfg: Config, cell: Cell) -> Config:
    """params.yaml with the cell's arch, switches and baseline method."""
    return configure(cfg, cell.arch, cell.config_id, cell.baseline)


def cell_key(cfg: Config, cell: Cell, splits_dir: Path, with_replicate: bool = True) -> str:
    """Hash of everything that changes a cell's result (without the replicate: its parent's key)."""
    return result_key(cell_config(cfg, cell), cell.dataset, cell.replicate if with_replicate else None, splits_dir)

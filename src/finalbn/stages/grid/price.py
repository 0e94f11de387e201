"""What the grid's cells will cost: each priced as its kind (`plan.cell_kinds`) at measured seconds.

    seconds = cell_seconds(todo, prices, share=True)              # {cell: projected seconds}
    wall = grid_wall(cells, todo, prices, processes=2, share=True)  # the busiest shard's sum

Kinds are taken over the cells still to train, in the share order the shards run them in: when a
family's first cell is already in the store, the next one computes the features. A grid with
several shard processes ends when its busiest shard does (`plan.shard_cells` deals whole units over
every cell, finished or not, so the deal is the one the shards make). Prices: `finalbn.stages.cost`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from finalbn.config import Config
from finalbn.data.splits import split_dir
from finalbn.stages.cost import Prices, cell_prices
from finalbn.stages.grid.plan import Cell, cell_kinds, shard_cells
from finalbn.train import features

PriceBook = dict[tuple[str, int], Prices]  # (arch, image size) -> its measured cells


Kept = Callable[[Cell], bool]  # the body's features of the cell's split are on disk (`plan.cell_kinds`)


def kept_on_disk(cfg: Config, splits: Path) -> Kept | None:
    """Whether each cell's split already has its body's features on disk (`features.on_disk`, read
    once per dataset, arch and replicate); None where no fixed body's features are kept (a body whose
    BN layers train, or `FINALBN_FEATURE_CACHE=off`)."""
    if cfg.model.frozen_bn != "eval" or not features.disk_enabled():
        return None
    memo: dict[tuple[str, str, int], bool] = {}

    def kept(c: Cell) -> bool:
        k = (c.dataset, c.arch, c.replicate)
        if k not in memo:
            manifest = split_dir(splits, c.dataset, c.replicate) / "manifest.csv"
            memo[k] = features.on_disk(manifest, cfg.dataset(c.dataset).image_size, c.arch)
        return memo[k]

    return kept


def cell_seconds(
    cfg: Config, todo: Sequence[Cell], book: PriceBook, share: bool = True, kept: Kept | None = None
) -> dict[Cell, float]:
    """Each cell of `todo` at its kind's measured seconds (with tracking), for its arch and size."""
    return {c: book[_pair(cfg, c)].cell(kind) for c, kind in cell_kinds(todo, share, kept).items()}


def grid_wall(
    cfg: Config,
    cells: Sequence[Cell],
    todo: Sequence[Cell],
    book: PriceBook,
    processes: int,
    share: bool = True,
    kept: Kept | None = None,
) -> float:
    """The grid's projected wall seconds: the busiest of `processes` shards over its cells in `todo`."""
    seconds = cell_seconds(cfg, todo, book, share, kept)
    return max(
        (sum(seconds.get(c, 0.0) for c in shard_cells(cells, i, processes, share)) for i in range(processes)),
        default=0.0,
    )


def _pair(cfg: Config, cell: Cell) -> tuple[str, int]:
    return cell.arch, cfg.dataset(cell.dataset).image_size


def price_book(cfg: Config, cells: Sequence[Cell]) -> tuple[PriceBook | None, str]:
    """Prices for every (arch, image size) of `cells`, or (None, the first arch not priced)."""
    book: PriceBook = {}
    for pair in sorted({_pair(cfg, c) for c in cells}):
        prices = cell_prices(cfg, *pair)
        if prices is None:
            return None, f"{pair[0]} at {pair[1]} px"
        book[pair] = prices
    return book, ""


def sources(book: PriceBook) -> str:
    """Where a book's prices come from, once each."""
    return "; ".join(sorted({p.source for p in book.values()}))

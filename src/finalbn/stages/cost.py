"""What a stage will cost, said before it is spent, and how much of it is left while it runs.

    prices = cell_prices(cfg, "efficientnet_lite0", 48)     # seconds of a cell of each kind, or None
    log(projection_line("grid", 700.0, "140 cells at 2 processes", prices.source))
    bar = Progress("grid", [31.0, 4.0, 2.3, ...])            # one entry per item, its projected seconds
    bar.done(0); log(f"... {bar.left()}")                    # "about 9 min 40 s left"

Prices come from measured cells (`finalbn bench --cells`: one cell of each kind, `KINDS`), either
this machine's own measurement (results/bench-cells.json, written by that command) or params'
`cost` section (the machine that measured it is named there). A measurement is for one arch at one
image size; another size is scaled by its pixel count (a cell's compute is the body's, which
scales with pixels; the head-only `warm` cell does not depend on it), another arch is not priced:
the stages then say so, and what measures it.

The time left is the projection rescaled by how fast the items have gone so far: items of mixed
kinds (a 32-s UF-on cell, a 2-s head) make a plain items-per-second rate wrong by a factor of ten,
while the ratio of elapsed to projected seconds of the finished items is steady.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from finalbn.config import Config
from finalbn.config.cost import EXTRA_KINDS

KINDS = ("uf_on", "uf_on_da", "first", "warm", "first_mx", "first_da")
SIZE_FREE = ("warm", "tracking", "posthoc")  # a head on features in memory; MLflow's bookkeeping
BENCH_CELLS = Path("results/bench-cells.json")


@dataclass(frozen=True)
class Prices:
    """Seconds of one cell of each kind (`KINDS`, plus `tracking`) and where they come from."""

    seconds: Mapping[str, float]
    source: str

    def cell(self, kind: str) -> float:
        """A cell of `kind` with its tracking, in seconds (a kind nothing measured: as a `first` cell,
        the dearest head-only kind)."""
        return self.seconds.get(kind, self.seconds["first"]) + self.seconds.get("tracking", 0.0)


def _scaled(seconds: Mapping[str, float], measured: int, size: int) -> dict[str, float]:
    f = (size / measured) ** 2
    return {k: v if k in SIZE_FREE else v * f for k, v in seconds.items()}


def _bench_file(path: Path, arch: str, size: int) -> Prices | None:
    """This machine's `finalbn bench --cells` measurement of `arch` on CPU, if there is one."""
    try:
        data = json.loads(path.read_text())
        row = data["archs"][arch]["seconds"]
        measured, device = int(data["size"]), str(data["device"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if device != "cpu" or not all(k in row for k in KINDS):
        return None
    at = f"{measured} px" if measured == size else f"{measured} px, scaled to {size}"
    return Prices(_scaled(row, measured, size), f"this machine's finalbn bench --cells ({path}, {at})")


def _with_extra(found: Prices, cfg: Config, size: int) -> Prices:
    """A bench file's prices with the kinds it does not measure (`EXTRA_KINDS`) from params' `cost`."""
    c = cfg.cost
    if c is None:
        return found
    extra = {k: v for k, v in _scaled(dict(c.cells), c.image_size, size).items() if k in EXTRA_KINDS}
    return Prices({**extra, **found.seconds}, found.source)


def cell_prices(cfg: Config, arch: str, size: int, bench: Path = BENCH_CELLS) -> Prices | None:
    """Seconds of a cell of each kind for `arch` at `size` px on CPU: this machine's bench file,
    else params' `cost` (scaled by pixels to `size`); None when neither measured `arch`."""
    found = _bench_file(bench, arch, size)
    if found is not None:
        return _with_extra(found, cfg, size)
    c = cfg.cost
    if c is None or c.arch != arch:
        return None
    at = f"{c.image_size} px" if c.image_size == size else f"{c.image_size} px, scaled to {size}"
    return Prices(_scaled(dict(c.cells), c.image_size, size), f"params.yaml cost, measured on {c.machine} ({at})")


def fixed(cfg: Config, stage: str) -> float:
    """A fixed stage's seconds as params' `cost.stages` gives them (0 when not given)."""
    return float(dict(cfg.cost.stages).get(stage, 0.0)) if cfg.cost is not None else 0.0


def duration(seconds: float) -> str:
    """`12 min 30 s`, `1 h 05 min`, `40 s`."""
    s = max(int(round(seconds)), 0)
    if s >= 3600:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    return f"{s // 60} min {s % 60:02d} s" if s >= 60 else f"{s} s"


def projection_line(stage: str, seconds: float | None, what: str, source: str = "", unpriced: str = "") -> str:
    """One line said before a stage spends its time: its projected wall time and what it rests on
    (`seconds` None: what is not priced, and how to price it)."""
    if seconds is None:
        return (
            f"{stage}: {what}; no projection: no measured cells for {unpriced or 'this arch'} here "
            "(`finalbn bench --cells` measures them, about 5 minutes)"
        )
    return f"{stage}: {what}; projected {duration(seconds)} on this machine" + (
        f" (priced by {source})" if source else ""
    )


class Progress:
    """The time left of a stage whose items have projected seconds `projected` (in run order).

    `done(i)` marks item i finished; `left()` is "about 9 min 40 s left": the projected seconds of
    the unfinished items times (elapsed / projected seconds of the finished ones). With `bar` (on a
    terminal by default) a tqdm bar on stderr shows the same, in projected seconds of work."""

    def __init__(self, stage: str, projected: Sequence[float], bar: bool | None = None, position: int = 0) -> None:
        self.projected = [max(float(p), 1e-3) for p in projected]
        self.finished = [False] * len(self.projected)
        self.t0 = time.perf_counter()
        show = sys.stderr.isatty() if bar is None else bar
        self._bar: Any = tqdm(
            total=round(sum(self.projected), 1),
            desc=stage,
            unit="s",
            disable=not show or not self.projected,
            position=position,
            leave=False,
            bar_format="{desc}: {percentage:3.0f}%|{bar}| {postfix} [{elapsed}<{remaining}]",
            postfix=f"0/{len(self.projected)}",
        )

    def done(self, i: int) -> None:
        if not self.finished[i]:
            self.finished[i] = True
            self._bar.set_postfix_str(f"{sum(self.finished)}/{len(self.finished)}", refresh=False)
            self._bar.update(round(self.projected[i], 1))

    def left_seconds(self) -> float:
        spent = sum(p for p, f in zip(self.projected, self.finished) if f)
        rest = sum(p for p, f in zip(self.projected, self.finished) if not f)
        rate = (time.perf_counter() - self.t0) / spent if spent else 1.0
        return rest * rate

    def left(self) -> str:
        return f"about {duration(self.left_seconds())} left" if not all(self.finished) else "done"

    def close(self) -> None:
        self._bar.close()

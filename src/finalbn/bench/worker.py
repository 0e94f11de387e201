"""The process side of `bench.scaling.processes`: what each of N processes sharing one device runs.

    spans = workers.map_processes(timed_cells, [(cfg, arch, ds, splits, configs, n, Barrier(folder, n))] * n, n)

Kept apart from `scaling` (and `cells`) so that a spawned process imports the training code alone,
not the grid, the tracking adapter or the figures: a process's start-up is not part of what is timed,
but it is part of the measurement's wall time.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from finalbn.cluster import workers
from finalbn.config import Config, DatasetConfig, configure
from finalbn.train.cell import run_cell


@dataclasses.dataclass(frozen=True)
class Barrier:
    """`parties` processes wait in `wait` until all have arrived, each leaving a file in `folder`
    (picklable, no server process; the processes of one barrier have distinct pids). TimeoutError
    after `timeout` seconds."""

    folder: Path
    parties: int
    timeout: float = 600.0

    def wait(self) -> None:
        (self.folder / str(os.getpid())).touch()
        deadline = time.monotonic() + self.timeout
        while sum(1 for _ in self.folder.iterdir()) < self.parties:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.parties} processes did not all reach the barrier in {self.timeout:.0f} s")
            time.sleep(0.005)


def timed_cells(
    cfg: Config, arch: str, ds: DatasetConfig, splits: Path, configs: Sequence[int], n: int, barrier: Barrier
) -> tuple[float, float]:
    """One of `n` processes: a one-epoch warm-up cell (CUDA context, kernels, the split read from
    the decode cache), the barrier, then a cell of each of `configs` (paper ids) on replicate 0 with
    `arch`; the timed span (start, end) in Unix seconds (wall clock: the processes' spans are
    compared). torch threads: `train.threads`, else the cores shared out over `n`."""
    prior = torch.get_num_threads()
    c = dataclasses.replace(
        cfg, train=dataclasses.replace(cfg.train, threads=workers.threads_per_worker(n, cfg.train.threads))
    )
    one_epoch = dataclasses.replace(c, train=dataclasses.replace(c.train, epochs=1))
    run_cell(configure(one_epoch, arch, configs[0]), ds, splits)
    barrier.wait()
    start = time.time()
    for cid in configs:
        run_cell(configure(c, arch, cid), ds, splits, replicate=0)
    end = time.time()
    torch.set_num_threads(prior)  # n = 1 runs in the calling process
    return start, end

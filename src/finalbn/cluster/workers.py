"""Local fan-out: N processes of one finalbn command, or one function over N spawned processes.

    code = run_commands(lambda i: ["grid", "--shard", f"{i}/2"], workers=2)   # worst exit code
    rows = map_processes(rerun, calls, workers=2)

Used by the grid (shard processes), the search (worker processes on one study journal, and the
comparison's missing runs). Ctrl-C reaches every child (each closes its runs) before it
propagates. With several GPUs each process gets one (`CUDA_VISIBLE_DEVICES`, round-robin); with
one GPU they share it.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch


def threads_per_worker(workers: int, configured: int = 0) -> int:
    """torch threads for each of `workers` processes: `configured`, or the cores shared out."""
    return configured or max(1, (os.cpu_count() or 1) // workers)


def gpu_env(index: int, environ: Mapping[str, str], gpus: int | None = None) -> dict[str, str]:
    """The environment of local worker `index`: with several GPUs, one GPU per worker, round-robin
    (`CUDA_VISIBLE_DEVICES`); with one GPU all workers share it (several cells at once fill it)."""
    env = dict(environ)
    if gpus is None:
        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if gpus > 1 and "CUDA_VISIBLE_DEVICES" not in environ:
        env["CUDA_VISIBLE_DEVICES"] = str(index % gpus)
    return env


def run_commands(
    argv_of: Callable[[int], Sequence[str]], workers: int, env_of: Callable[[int], Mapping[str, str]] | None = None
) -> int:
    """Start `workers` processes `python -m finalbn <argv_of(i)>` (environment `env_of(i)`, default
    this one), wait for all; returns the worst exit code."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "finalbn", *argv_of(i)],
            env={**(env_of(i) if env_of else os.environ), "FINALBN_CHILD": "1"},
        )
        for i in range(workers)
    ]
    try:
        codes = [p.wait() for p in procs]
    except KeyboardInterrupt:
        for p in procs:
            p.send_signal(signal.SIGINT)
        for p in procs:
            p.wait()
        raise
    return max(codes)


def map_processes(fn: Callable[..., Any], calls: list[tuple], workers: int) -> list[Any]:
    """`fn(*call)` for each call: here, or in `workers` spawned processes (results in order)."""
    if workers <= 1 or len(calls) <= 1:
        return [fn(*c) for c in calls]
    with cf.ProcessPoolExecutor(max_workers=min(workers, len(calls)), mp_context=mp.get_context("spawn")) as pool:
        futures = [pool.submit(fn, *c) for c in calls]
        try:
            return [f.result() for f in futures]
        except BaseException:
            for f in futures:
                f.cancel()
            raise

"""What each rival of the final BN costs, as a share of one plain cell, measured in one run.

    .venv/bin/python benchmarks/bench_rivals.py [--splits data/splits] [--replicates 0 1] [--threads 1]

The real cell code (`cell.run_cell`) on the embedded default's prepared splits (run `finalbn
synthesize` and `finalbn prepare --dataset synthetic-apple --out data/splits` first), in the order a
grid shard runs them (`grid.plan.share_order`): per replicate, the plain cell (63) with the frozen
body's features already in memory (warm), then each baseline method of params' `grid.baselines.methods`
on its base configuration. A post-hoc method right after its base reuses the base's trained head
(`finalbn.train.trained`): its time is its post-hoc step and its evaluation alone. Without MLflow
(a grid cell adds its tracking, `cost.cells.tracking`). Prints, per method, the median seconds over the
replicates and the ratio to the warm plain cell; a benchmark prints what it measured, it asserts nothing.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from finalbn.config import configure, load_config
from finalbn.config.study import ON_FINAL_BN, POSTHOC_BASELINES
from finalbn.stages.grid.plan import baseline_base
from finalbn.train import features, trained
from finalbn.train.cell import run_cell

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--splits", default="data/splits")
    ap.add_argument("--replicates", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_config([ROOT / "params.yaml"], [f"train.threads={args.threads}"])
    ds, arch, splits = cfg.datasets[0].name, cfg.model.arch, Path(args.splits)
    base = 63
    seconds: dict[str, list[float]] = {}
    for r in args.replicates:
        features.CACHE.clear()
        trained.HEADS.clear()
        run_cell(configure(cfg, arch, base), ds, splits, replicate=r)  # the body's features in memory
        trained.HEADS.clear()
        # the post-hoc methods right after the plain cell (as a shard runs them); then 31, BN removed; the rest
        methods = sorted(cfg.grid.baselines.methods, key=lambda m: (m not in POSTHOC_BASELINES, m in ON_FINAL_BN))
        for method in ["", *methods]:
            cid = baseline_base(base, method) if method else base
            if method in ON_FINAL_BN:
                run_cell(configure(cfg, arch, cid), ds, splits, replicate=r)  # its base (31) first, as a shard runs it
            t0 = time.perf_counter()
            run_cell(configure(cfg, arch, cid, method or None), ds, splits, replicate=r)
            seconds.setdefault(method or "plain (63), warm", []).append(time.perf_counter() - t0)
    ref = statistics.median(seconds["plain (63), warm"])
    print(
        f"rivals on {arch} at {cfg.datasets[0].image_size} px, replicates {args.replicates}, {args.threads} thread(s)"
    )
    print(f"{'method':<28} {'seconds':>8} {'x plain cell':>13}")
    for method, xs in seconds.items():
        m = statistics.median(xs)
        print(f"{method:<28} {m:>8.2f} {m / ref:>13.2f}")


if __name__ == "__main__":
    main()

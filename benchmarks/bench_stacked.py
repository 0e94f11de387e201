"""Head-only cells one at a time vs trained as one stack (`finalbn.train.stacked`), in one run.

    .venv/bin/python benchmarks/bench_stacked.py [--splits data/splits] [--repeats 2] [--threads 1]
        [--modes exact vmap]

The real cell code (`cell.run_cell`, `stacked.run_stacked`) on the embedded default's split: the
prepared `--splits` (run `finalbn synthesize` and `finalbn prepare --dataset synthetic-apple --out
data/splits` first), or, without it, synthetic Apple leaves drawn and split in a temporary folder
(params.yaml's split counts, its image size). Two families of replicate 0, each warm (the frozen
body's features computed once beforehand, as in a grid shard): K = 4, the final-BN cells BN, BN+WL,
BN+WD, BN+WL+WD (31, 15, 30, 14); K = 8, the cells without it, none, WL, WD, WL+WD (63, 47, 62, 46)
and the four imbalance baselines on 63 (focal, logit-adjusted, class-balanced, temperature). A stack
holds the cells of one replicate only: a replicate is another split and seed, so its features differ.
For each family and mode: the cells one at a time, then stacked, alternately `--repeats` times;
medians; cells per second each way, their ratio, and the largest difference of any test probability
between the two. A benchmark prints what it measured; it asserts nothing.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from finalbn.config import configure, load_config
from finalbn.data.splits import prepare_dataset
from finalbn.synthetic import generate
from finalbn.train.cell import run_cell
from finalbn.train.stacked import MODES, run_stacked

ROOT = Path(__file__).resolve().parents[1]
FAMILIES = {
    "final BN (K=4)": ["31", "15", "30", "14"],
    "no final BN + baselines (K=8)": [
        "63",
        "47",
        "62",
        "46",
        "63:focal",
        "63:logit_adjusted",
        "63:class_balanced",
        "63:temperature",
    ],
}


def _split(tmp: Path, overrides: list[str]) -> tuple[list[str], Path]:
    """Synthetic Apple leaves drawn and split in `tmp` (the params' split counts): (overrides, splits)."""
    cfg = load_config([ROOT / "params.yaml"], overrides)
    s = cfg.split
    healthy = s.train[0] + s.val[0] + s.test[0] + 20
    per_disease = math.ceil((s.train[1] + s.val[1] + s.test[1]) / 4) + 10
    t0 = time.perf_counter()
    generate(tmp / "raw", seed=0, image_size=64, crops=["Apple"], healthy=healthy, per_disease=per_disease)
    overrides = [*overrides, f"datasets.0.root={tmp / 'raw'}"]
    cfg = load_config([ROOT / "params.yaml"], overrides)
    prepare_dataset(cfg.datasets[0], cfg.split, tmp / "splits", progress=False, replicates=1)
    print(f"{healthy + 4 * per_disease} synthetic images drawn and split in {time.perf_counter() - t0:.0f} s")
    return overrides, tmp / "splits"


def _family(cfg, cells: list[str]):
    return [configure(cfg, cfg.model.arch, int(c.split(":")[0]), c.split(":")[1] if ":" in c else "") for c in cells]


def measure(cfg, splits: Path, repeats: int, modes: list[str]) -> None:
    """Print, per family and mode, one-at-a-time vs stacked cells per second (medians of `repeats`)."""
    ds = cfg.datasets[0].name
    for name, cells in FAMILIES.items():
        cfgs = _family(cfg, cells)
        run_cell(cfgs[0], ds, splits)  # warm: the family's features computed, the split decoded
        for mode in modes:
            alone_s, stacked_s, diff = [], [], 0.0
            for _ in range(repeats):
                t0 = time.perf_counter()
                alone = [run_cell(c, ds, splits) for c in cfgs]
                alone_s.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                stacked = run_stacked(cfgs, ds, splits, mode=mode)
                stacked_s.append(time.perf_counter() - t0)
                diff = max(
                    diff,
                    *(float(np.abs(a.probs_last - b.probs_last).max()) for a, b in zip(alone, stacked)),
                    *(float(np.abs(a.probs_sel - b.probs_sel).max()) for a, b in zip(alone, stacked)),
                )
            a, b = statistics.median(alone_s), statistics.median(stacked_s)
            k = len(cfgs)
            print(
                f"{name}, mode {mode}: one at a time {a:.2f} s ({k / a:.2f} cells/s), stacked {b:.2f} s "
                f"({k / b:.2f} cells/s): stacked/alone speed {a / b:.2f}x; largest test-probability "
                f"difference {diff:.1e} (medians of {repeats})",
                flush=True,
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--splits", type=Path, default=None, help="prepared splits (default: drawn in a temp folder)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: params.yaml's train.threads)")
    ap.add_argument("--modes", nargs="+", default=["exact", "vmap"], choices=MODES)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    os.environ["FINALBN_FEATURE_CACHE"] = "off"  # the first cell of each mode runs the body

    overrides = [f"train.device={args.device}"] + ([f"train.threads={args.threads}"] if args.threads else [])
    with tempfile.TemporaryDirectory(prefix="bench_stacked_") as tmp:
        splits = args.splits
        if splits is None:
            overrides, splits = _split(Path(tmp), overrides)
        cfg = load_config([ROOT / "params.yaml"], overrides)
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        print(
            f"{cfg.model.arch} at {cfg.datasets[0].image_size} px, {cfg.train.epochs} epochs of batch "
            f"{cfg.train.batch_size}, {torch.get_num_threads()} thread(s), device {args.device}",
            flush=True,
        )
        measure(cfg, splits, args.repeats, args.modes)


if __name__ == "__main__":
    main()

"""Throughput of one training cell at the paper's counts (1000/10 train, 150/7 val, 150/150 test).

    python benchmarks/bench_cell.py --sizes 32 64 --epochs 2 [--device cuda]

Generates synthetic Apple leaves in a temporary folder, prepares the split, and trains the
final-BN cell with the backbone frozen (UF off) and with its BN layers unfrozen (UF on), with the
default arch's weights (efficientnet_lite0: ImageNet, offline; `--weights none` for random init). Prints train images/s, wall seconds per cell and the UF-on/UF-off time ratio, all measured
in this one run (a benchmark prints; it does not assert).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[32, 64])
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--arch", default="efficientnet_lite0")
    ap.add_argument("--weights", default="imagenet")
    args = ap.parse_args()

    # lazy: `--help` answers without importing torch
    from finalbn.config import load_config
    from finalbn.data.splits import prepare_dataset
    from finalbn.synthetic import generate
    from finalbn.train.cell import run_cell

    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        generate(
            Path(tmp) / "raw",
            seed=0,
            image_size=64,
            crops=["Apple"],
            healthy=1310,
            per_disease=45,
            progress=False,
            severity=2.5,
        )
        for size in args.sizes:
            base = [
                f"datasets.0.root={tmp}/raw",
                f"datasets.0.image_size={size}",
                f"model.weights={args.weights}",
                f"model.arch={args.arch}",
                f"train.epochs={args.epochs}",
                f"train.device={args.device}",
            ]
            cfg = load_config([ROOT / "params.yaml"], base)
            prepare_dataset(cfg.datasets[0], cfg.split, Path(tmp) / "splits", progress=False)
            walls = {}
            for uf in (False, True):
                cfg = load_config([ROOT / "params.yaml"], base + [f"ablation.uf={str(uf).lower()}"])
                t0 = time.perf_counter()
                r = run_cell(cfg, cfg.datasets[0].name, Path(tmp) / "splits")
                walls[uf] = time.perf_counter() - t0
                print(
                    f"{args.arch} {size:>3} px UF {'on ' if uf else 'off'} on {r.device}: "
                    f"{r.fit.train_images / r.fit.train_seconds:7.0f} train img/s, {walls[uf]:6.1f} s per cell "
                    f"({args.epochs} epochs)",
                    flush=True,
                )
            print(
                f"{args.arch} {size:>3} px: UF on / UF off wall-time ratio {walls[True] / walls[False]:.2f}", flush=True
            )


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "src"))
    main()

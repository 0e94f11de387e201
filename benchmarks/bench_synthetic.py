"""Throughput of the synthetic leaf generator: in-process vs one process per core.

    .venv/bin/python benchmarks/bench_synthetic.py [--images 2000] [--size 64] [--dir DIR]

Writes into a temporary directory (removed afterwards; --dir picks the filesystem) and prints
images/s for workers=1 and workers=0 (one process per core) and their ratio, plus the rate of
drawing alone (no PNG, no files) so that a slow filesystem shows as such. A benchmark prints
numbers; it asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np

from finalbn.synthetic import DISEASES, generate, render_leaf

CROPS = ("Apple", "Pepper", "Tomato", "Grape")  # one of each leaf family


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=2000, help="about this many images per run")
    ap.add_argument("--size", type=int, default=64, help="image side in pixels")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dir", default=None, help="parent of the temporary output directory")
    args = ap.parse_args()

    # Per crop: `healthy` plus one `per_disease` share per disease, in the default's ratio.
    per_crop = max(args.images // len(CROPS), 1 + len(DISEASES))
    per_disease = max(per_crop // 10, 1)
    healthy = per_crop - per_disease * len(DISEASES)
    print(f"{len(CROPS) * per_crop} images of {args.size} px per run, {os.cpu_count()} cores")
    n = min(len(CROPS) * per_crop, 500)
    t0 = time.perf_counter()
    for i in range(n):
        render_leaf(
            np.random.default_rng([args.seed, i]),
            args.size,
            CROPS[i % len(CROPS)],
            None if i % 5 == 0 else DISEASES[i % len(DISEASES)],
        )
    print(f"drawing only, 1 process: {n / (time.perf_counter() - t0):.0f} images/s")
    rates = {}
    for workers in (1, 0):
        with tempfile.TemporaryDirectory(prefix="bench_synthetic_", dir=args.dir) as tmp:
            stats = generate(
                tmp,
                seed=args.seed,
                image_size=args.size,
                crops=CROPS,
                healthy=healthy,
                per_disease=per_disease,
                workers=workers,
                progress=False,
            )
        rates[workers] = stats["images_per_second"]
        print(
            f"workers={workers} ({stats['workers']} process{'es' if stats['workers'] > 1 else ''}): "
            f"{stats['images']} images in {stats['seconds']:.2f} s = {rates[workers]:.0f} images/s"
        )
    print(f"speed-up workers=0 / workers=1: {rates[0] / rates[1]:.2f}x")


if __name__ == "__main__":
    main()

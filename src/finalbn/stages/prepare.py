"""The `prepare` stage: scan and validate a dataset's images, then draw one seeded 99 %/1 % split
per replicate.

    finalbn prepare --dataset synthetic-apple --out data/splits
    # -> data/splits/<dataset>/<replicate>/manifest.csv, split.json (counts, rejected files, sha256)

Reads `datasets`, `split` and the replicate counts (`grid.replicates`, `grid.headline`); the
work itself is `splits.prepare_dataset`.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from finalbn.config import Config
from finalbn.splits import prepare_dataset


def main(cfg: Config, args: argparse.Namespace) -> int:
    names = args.dataset or [d.name for d in cfg.datasets]
    datasets = [cfg.dataset(n) for n in names]  # unknown names fail before any work
    n = cfg.grid.max_replicates
    for ds in datasets:
        summaries = prepare_dataset(ds, cfg.split, Path(args.out), progress=sys.stderr.isatty(), replicates=n)
        summary = summaries[0]
        c = summary["counts"]
        print(f"prepare {ds.name}: {n} replicate split(s) of train {c['train']['majority']}/{c['train']['minority']}, "
              f"val {c['val']['majority']}/{c['val']['minority']}, test {c['test']['majority']}/{c['test']['minority']} "
              f"({summary['classes'][0]}/{summary['classes'][1]}); {len(summary['rejected'])} files rejected; "
              f"-> {Path(args.out) / ds.name}/<replicate>/manifest.csv")
    return 0

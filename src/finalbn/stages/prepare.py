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


def _extra(summary: dict) -> str:
    """The summary line's account of skipped table rows, copies and glob patterns (split.json has each)."""
    out = ""
    table = summary.get("table")
    if table:
        kinds = ", ".join(f"{n} {k}" for k, n in table["skipped_by_reason"].items())
        out += f"; table: {table['rows']} rows, {table['used']} used, {len(table['skipped'])} skipped" + \
            (f" ({kinds})" if kinds else "")
    if summary["duplicate_groups"]:
        out += f"; {len(summary['duplicate_groups'])} groups of identical copies, each kept in one split"
    for which, pats in summary.get("patterns", {}).items():
        out += "".join(f"; {which} {p!r}: {len(folders)} folders" for p, folders in pats.items())
    return out


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
              f"({summary['classes'][0]}/{summary['classes'][1]}); {len(summary['rejected'])} files rejected"
              f"{_extra(summary)}; -> {Path(args.out) / ds.name}/<replicate>/manifest.csv")
    return 0

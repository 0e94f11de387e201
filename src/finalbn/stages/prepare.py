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
from finalbn.data.splits import prepare_dataset
from finalbn.data.tables import read_as


def _extra(summary: dict) -> str:
    """The summary line's account of skipped table rows (and a table not read as UTF-8 with commas),
    copies and glob patterns (split.json has each)."""
    out = ""
    table = summary.get("table")
    if table:
        kinds = ", ".join(f"{n} {k}" for k, n in table["skipped_by_reason"].items())
        out += f"; table: {table['rows']} rows, {table['used']} used, {len(table['skipped'])} skipped" + (
            f" ({kinds})" if kinds else ""
        )
        if table.get("encoding", "utf-8") not in ("utf-8", "utf-8-sig") or table.get("separator", ",") != ",":
            out += f", {read_as(table)}"  # e.g. read as cp1252 (fallback: not UTF-8), separator ';' (sniffed)
    if summary["duplicate_groups"]:
        out += f"; {len(summary['duplicate_groups'])} groups of identical copies, each kept in one split"
    for which, pats in summary.get("patterns", {}).items():
        out += "".join(f"; {which} {p!r}: {len(folders)} folders" for p, folders in pats.items())
    groups = summary.get("groups")  # group_column / group_by_folder: no group in two splits
    if groups:
        out += f"; groups ({groups['by']}): " + ", ".join(
            f"{groups['per_split'][s]} {s}" for s in ("train", "val", "test")
        )
        alone = groups["ungrouped"]
        if alone["images"]:
            out += (
                f"; {alone['images']} images without a group value, each its own group ("
                + ", ".join(f"{alone['per_split'][s]} {s}" for s in ("train", "val", "test"))
                + " drawn)"
            )
    return out + _decoded(summary)


def _decoded(summary: dict) -> str:
    """What the images hold, when any has more than 8 bits or floats, and any range that came from
    the images themselves rather than from the files' records (split.json's `decoded`)."""
    dec, out = summary.get("decoded") or {}, ""
    rule = summary.get("intensity", "auto")
    rule = rule if isinstance(rule, str) else "[{:g}, {:g}]".format(*rule)
    if dec.get("high_bit_depth"):
        out += f"; decoded (intensity {rule}): " + ", ".join(f"{n} {k}" for k, n in dec["counts"].items())
    if dec.get("inferred_depths"):
        depths = ", ".join(f"{n} as {b}-bit" for b, n in dec["inferred_depths"].items())
        out += f"; bit depth read off the image maximum (no sBIT or TIFF record): {depths}"
        if rule.startswith("auto:"):  # depth.dataset_auto
            out += f" (the data set's depth: training and the field read a darker such image as {rule[5:]}-bit too)"
    if dec.get("own_range"):
        out += (
            f"; {dec['own_range']} images scaled by their own min..max (floats outside 0..1 or negative values: "
            f"ambiguous; --set datasets.{summary['dataset']}.intensity=[lo,hi] fixes one range)"
        )
    return out


def main(cfg: Config, args: argparse.Namespace) -> int:
    names = args.dataset or [d.name for d in cfg.datasets]
    datasets = [cfg.dataset(n) for n in names]  # unknown names fail before any work
    n = cfg.grid.max_replicates
    for ds in datasets:
        summaries = prepare_dataset(ds, cfg.split, Path(args.out), progress=sys.stderr.isatty(), replicates=n)
        summary = summaries[0]
        c = summary["counts"]
        print(
            f"prepare {ds.name}: {n} replicate split(s) of train {c['train']['majority']}/{c['train']['minority']}, "
            f"val {c['val']['majority']}/{c['val']['minority']}, test {c['test']['majority']}/{c['test']['minority']} "
            f"({summary['classes'][0]}/{summary['classes'][1]}); {len(summary['rejected'])} files rejected"
            f"{_extra(summary)}; -> {Path(args.out) / ds.name}/<replicate>/manifest.csv"
        )
    return 0

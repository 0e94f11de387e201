"""The `prepare` stage: an image collection -> the paper's seeded 99 %/1 % split, per replicate.

    summaries = prepare_dataset(cfg.dataset("synthetic-apple"), cfg.split, Path("data/splits"), replicates=5)

Scans the dataset's class folders, validates every image (`finalbn.images`), and for each
replicate r draws disjoint train/val/test sets with exactly the requested [majority, minority]
counts (seeded by split.seed and r, so each replicate picks other minority images), writing
`<out>/<name>/<r>/manifest.csv` (path, label, split, source_class, sha256) and `split.json`
(counts per split and source class, rejected files with reasons, the manifest's hash).
Same params and same files give byte-identical outputs.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from finalbn.config import DatasetConfig, SplitConfig
from finalbn.errors import DataError  # re-exported: raised here
from finalbn.images import Rejected, scan_folder
from finalbn.io import write_text

SPLITS = ("train", "val", "test")
LABELS = (0, 1)  # 0 = majority (healthy), 1 = minority (diseased)
MANIFEST_COLUMNS = ("path", "label", "split", "source_class", "sha256")


@dataclass(frozen=True)
class ClassFolders:
    """Where each label's images live: [(source_class, folder)] per label."""

    majority: list[tuple[str, Path]]
    minority: list[tuple[str, Path]]
    names: tuple[str, str]  # human names of label 0 and 1


def class_folders(ds: DatasetConfig) -> ClassFolders:
    """Resolve a dataset's majority/minority folders, or raise DataError naming what is missing."""
    root = Path(ds.root)
    if not root.is_dir():
        raise DataError(f"dataset {ds.name}: root folder {root} does not exist")
    if ds.source in ("synthetic", "plantvillage"):
        # PlantVillage layout: <Crop>___<condition>; majority = healthy, minority = every disease pooled.
        folders = sorted(p for p in root.iterdir() if p.is_dir() and "___" in p.name)
        crops = sorted({p.name.split("___")[0] for p in folders})
        mine = [p for p in folders if p.name.split("___")[0] == ds.crop]
        if not mine:
            raise DataError(f"dataset {ds.name}: no <{ds.crop}>___<condition> folders under {root} (crops found: {', '.join(crops) or 'none'})")
        healthy = [p for p in mine if p.name.split("___", 1)[1].lower() == "healthy"]
        diseased = [p for p in mine if p not in healthy]
        if not healthy:
            raise DataError(f"dataset {ds.name}: folder {root / (ds.crop + '___healthy')} does not exist")
        if not diseased:
            raise DataError(f"dataset {ds.name}: no disease folders {ds.crop}___<disease> under {root}")
        return ClassFolders([(p.name, p) for p in healthy], [(p.name, p) for p in diseased], ("healthy", "diseased"))
    majority = [(d, root / d) for d in ds.majority]
    minority = [(d, root / d) for d in ds.minority]
    for _, p in majority + minority:
        if not p.is_dir():
            raise DataError(f"dataset {ds.name}: class folder {p} does not exist")
    return ClassFolders(majority, minority, ("majority", "minority"))


def scan_dataset(folders: ClassFolders, progress: bool = True) -> tuple[dict[int, list[tuple[str, Path]]], list[Rejected]]:
    """Usable (source_class, path) per label, and every rejected file with its reason."""
    usable: dict[int, list[tuple[str, Path]]] = {0: [], 1: []}
    rejected: list[Rejected] = []
    jobs = [(label, cls, folder) for label, group in enumerate((folders.majority, folders.minority)) for cls, folder in group]
    # Sequential on purpose: images.load_rgb guards decompression bombs with warnings.catch_warnings,
    # which is not thread-safe.
    for label, cls, folder in tqdm(jobs, desc="scan folders", unit="folder", disable=not progress):
        ok, bad = scan_folder(folder)
        usable[label].extend((cls, p) for p in ok)
        rejected.extend(bad)
    return usable, sorted(rejected, key=lambda r: r.path)


def draw_split(usable: dict[int, list[tuple[str, Path]]], split: SplitConfig, names: tuple[str, str],
               sources: tuple[str, str], replicate: int = 0) -> list[dict]:
    """Seeded, disjoint train/val/test rows with exactly the requested counts per label."""
    rows: list[dict] = []
    for label in LABELS:
        need = [getattr(split, s)[label] for s in SPLITS]
        pool = sorted(usable[label], key=lambda item: str(item[1]))
        if len(pool) < sum(need):
            raise DataError(f"class {names[label]} ({sources[label]}) has {len(pool)} usable images, the split needs {sum(need)} "
                            f"({' + '.join(f'{n} {s}' for n, s in zip(need, SPLITS))})")
        # One generator per label, so changing the minority counts never reshuffles the majority.
        order = np.random.default_rng([split.seed, replicate, label]).permutation(len(pool))
        start = 0
        for name, n in zip(SPLITS, need):
            for idx in sorted(order[start:start + n], key=lambda i: str(pool[i][1])):
                cls, path = pool[idx]
                rows.append({"path": path.as_posix(), "label": label, "split": name, "source_class": cls})
            start += n
    rows.sort(key=lambda r: (SPLITS.index(r["split"]), r["label"], r["path"]))
    return rows


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def split_dir(splits_dir: Path, dataset: str, replicate: int) -> Path:
    """Where one replicate's manifest.csv and split.json live."""
    return Path(splits_dir) / dataset / str(replicate)


def prepare_dataset(ds: DatasetConfig, split: SplitConfig, out_root: Path, progress: bool = True,
                    replicates: int = 1) -> list[dict]:
    """Scan and validate once, then split and write manifest.csv + split.json per replicate;
    returns the summaries (one per replicate)."""
    folders = class_folders(ds)
    usable, rejected = scan_dataset(folders, progress=progress)
    sources = tuple(", ".join(c for c, _ in g) for g in (folders.majority, folders.minority))
    draws = [draw_split(usable, split, folders.names, sources, r) for r in range(replicates)]  # type: ignore[arg-type]
    paths = sorted({r["path"] for rows in draws for r in rows})
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        hashes = dict(zip(paths, tqdm(pool.map(sha256_file, paths), total=len(paths),
                                      desc=f"hash {ds.name}", unit="img", disable=not progress)))
    return [_write_split(ds, split, out_root, folders, usable, rejected, rows, hashes, r)
            for r, rows in enumerate(draws)]


def _write_split(ds: DatasetConfig, split: SplitConfig, out_root: Path, folders: ClassFolders, usable, rejected,
                 rows: list[dict], hashes: dict[str, str], replicate: int) -> dict:
    for row in rows:
        row["sha256"] = hashes[row["path"]]

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=MANIFEST_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    manifest = buf.getvalue()

    counts = {s: {"majority": 0, "minority": 0, "by_source_class": {}} for s in SPLITS}
    for r in rows:
        c = counts[r["split"]]
        c["majority" if r["label"] == 0 else "minority"] += 1
        c["by_source_class"][r["source_class"]] = c["by_source_class"].get(r["source_class"], 0) + 1
    available = Counter(cls for label in LABELS for cls, _ in usable[label])
    summary = {
        "dataset": ds.name,
        "source": ds.source,
        "root": Path(ds.root).as_posix(),
        "classes": list(folders.names),
        "source_classes": {"majority": [c for c, _ in folders.majority], "minority": [c for c, _ in folders.minority]},
        "seed": split.seed,
        "replicate": replicate,
        "counts": counts,
        "usable": dict(sorted(available.items())),
        "rejected": [{"path": r.path, "reason": r.reason} for r in rejected],
        "manifest_sha256": hashlib.sha256(manifest.encode()).hexdigest(),
    }
    out = split_dir(out_root, ds.name, replicate)
    out.mkdir(parents=True, exist_ok=True)
    # a failed run never leaves a half-written manifest under the final name
    write_text(out / "manifest.csv", manifest)
    write_text(out / "split.json", json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return summary


def read_manifest(path: str | Path) -> list[dict]:
    """Rows of a manifest.csv with `label` as int."""
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    for r in rows:
        r["label"] = int(r["label"])
    return rows

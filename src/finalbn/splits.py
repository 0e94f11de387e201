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
import difflib
import hashlib
import io
import json
import os
import re
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
        mine = crop_folders(root, ds.crop)
        if not mine:
            raise DataError(f"dataset {ds.name}: no <{ds.crop}>___<condition> folders under {root} "
                            f"({_look_alikes(root, ds.crop)})")
        healthy = [p for p, cond in mine if cond.lower() == "healthy"]
        diseased = [p for p, _ in mine if p not in healthy]
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


def crop_folders(root: Path, crop: str) -> list[tuple[Path, str]]:
    """(folder, condition) of one crop: `<crop>` then one or more underscores then the condition,
    as PlantVillage copies spell it: `Apple___healthy` (the original), `Tomato_healthy` and
    `Tomato__Target_Spot` (the Kaggle re-upload), `Pepper__bell___Bacterial_spot` and
    `Pepper,_bell___Bacterial_spot`. A condition holding `___` belongs to a longer crop name
    (crop `Pepper` does not take `Pepper__bell___Bacterial_spot`)."""
    pattern = re.compile(rf"{re.escape(crop)}_+(?P<cond>[^_].*)")
    found = []
    for p in sorted(root.iterdir()):
        m = pattern.fullmatch(p.name)
        if p.is_dir() and m and "___" not in m["cond"]:
            found.append((p, m["cond"]))
    return found


def _look_alikes(root: Path, crop: str) -> str:
    """The folders a user probably meant, for the message when a crop has none."""
    names = sorted(p.name for p in root.iterdir() if p.is_dir())
    crops = sorted({n.split("___")[0] if "___" in n else re.split(r"_+", n)[0] for n in names if "_" in n})
    close = [n for n in names if n.lower().startswith(crop.lower()[:4])] or \
        difflib.get_close_matches(crop, names, n=5, cutoff=0.5)
    return (f"look-alike folders: {', '.join(close[:6])}; " if close else "") + f"crops found: {', '.join(crops) or 'none'}"


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


Group = list[tuple[str, Path]]  # files of one content: [(source_class, path)], sorted by path


def content_groups(usable: dict[int, list[tuple[str, Path]]], hashes: dict[str, str] | None = None
                   ) -> dict[int, list[Group]]:
    """Per label, the usable files grouped by content: byte-identical copies (same sha256 in
    `hashes`, keyed by posix path) are one group; without hashes every file is its own group.
    Groups are sorted by their first path. Raises DataError when one content would carry both
    labels (a copy under each class, or a folder listed as both), naming the files."""
    by_key: dict[str, list[tuple[int, str, Path]]] = {}
    for label in LABELS:
        for cls, path in usable[label]:
            key = hashes[path.as_posix()] if hashes is not None else f"{label}:{path.as_posix()}"
            by_key.setdefault(key, []).append((label, cls, path))
    both = [sorted(m, key=lambda x: str(x[2])) for m in by_key.values() if len({x[0] for x in m}) > 1]
    if both:
        shown = "; ".join(" = ".join(f"{p.as_posix()} ({cls})" for _, cls, p in g) for g in both[:3])
        more = f", and {len(both) - 3} more" if len(both) > 3 else ""
        raise DataError(f"{len(both)} image(s) would carry both labels (the same content under the majority and "
                        f"the minority): {shown}{more}; remove the copies or fix the class lists")
    groups: dict[int, list[Group]] = {0: [], 1: []}
    for members in by_key.values():
        groups[members[0][0]].append(sorted(((cls, p) for _, cls, p in members), key=lambda x: str(x[1])))
    for label in LABELS:
        groups[label].sort(key=lambda g: str(g[0][1]))
    return groups


def draw_split(usable: dict[int, list[tuple[str, Path]]], split: SplitConfig, names: tuple[str, str],
               sources: tuple[str, str], replicate: int = 0, hashes: dict[str, str] | None = None) -> list[dict]:
    """Seeded, disjoint train/val/test rows with exactly the requested counts per label.

    Files are drawn as content groups (`content_groups`): a group of byte-identical copies goes
    whole into one split, so no image is both trained and tested on. In a seeded order of the
    groups each one goes to the first split (train, val, test) with room for all of it; with no
    duplicates this is the plain seeded draw. Raises DataError when a label cannot fill its counts."""
    rows: list[dict] = []
    groups = content_groups(usable, hashes)
    for label in LABELS:
        need = [getattr(split, s)[label] for s in SPLITS]
        pool = groups[label]
        files = sum(len(g) for g in pool)
        distinct = "" if files == len(pool) else f" ({len(pool)} distinct contents)"
        if files < sum(need):
            raise DataError(f"class {names[label]} ({sources[label]}) has {files} usable images{distinct}, the split "
                            f"needs {sum(need)} ({' + '.join(f'{n} {s}' for n, s in zip(need, SPLITS))})")
        # One generator per label, so changing the minority counts never reshuffles the majority.
        order = np.random.default_rng([split.seed, replicate, label]).permutation(len(pool))
        room = list(need)
        for idx in order:
            if not any(room):
                break
            fits = next((i for i, r in enumerate(room) if r >= len(pool[idx])), None)
            if fits is None:
                continue
            room[fits] -= len(pool[idx])
            rows += [{"path": path.as_posix(), "label": label, "split": SPLITS[fits], "source_class": cls}
                     for cls, path in pool[idx]]
        if any(room):
            raise DataError(f"class {names[label]} ({sources[label]}): groups of identical copies{distinct} cannot "
                            f"fill the split's exact counts ({' + '.join(f'{n} {s}' for n, s in zip(need, SPLITS))}); "
                            "remove the copies or lower the counts")
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
    # every usable file's content hash before drawing: copies are drawn together (draw_split)
    paths = sorted({p.as_posix() for label in LABELS for _, p in usable[label]})
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        hashes = dict(zip(paths, tqdm(pool.map(sha256_file, paths), total=len(paths),
                                      desc=f"hash {ds.name}", unit="img", disable=not progress)))
    draws = [draw_split(usable, split, folders.names, sources, r, hashes)  # type: ignore[arg-type]
             for r in range(replicates)]
    copies = [[p.as_posix() for _, p in g] for label in LABELS
              for g in content_groups(usable, hashes)[label] if len(g) > 1]
    return [_write_split(ds, split, out_root, folders, usable, rejected, rows, hashes, r, copies)
            for r, rows in enumerate(draws)]


def _write_split(ds: DatasetConfig, split: SplitConfig, out_root: Path, folders: ClassFolders, usable, rejected,
                 rows: list[dict], hashes: dict[str, str], replicate: int, copies: list[list[str]]) -> dict:
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
        # byte-identical copies, each group drawn whole into one split (or left out whole)
        "duplicate_groups": [{"sha256": hashes[g[0]], "paths": g,
                              "split": next((r["split"] for r in rows if r["path"] == g[0]), None)} for g in copies],
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

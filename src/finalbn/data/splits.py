"""The `prepare` stage: an image collection -> the paper's seeded 99 %/1 % split, per replicate.

    summaries = prepare_dataset(cfg.dataset("synthetic-apple"), cfg.split, Path("data/splits"), replicates=5)

Collects the dataset's images (`finalbn.data.sources`: PlantVillage folders, class folders or globs,
or a labels table), validates every image (`finalbn_field.images`), and for each
replicate r draws disjoint train/val/test sets with exactly the requested [majority, minority]
counts (seeded by split.seed and r, so each replicate picks other minority images), writing
`<out>/<name>/<r>/manifest.csv` (path, label, split, source_class, sha256) and `split.json`
(counts per split and source class, rejected files and skipped table rows with reasons, glob
patterns and what they matched, groups of copies and near-duplicates, the manifest's hash). Paths are written with
`images.escape_name`: a name that is not valid UTF-8 is escaped, reversibly (`read_manifest`
keeps the text; `images.unescape_name` opens it).
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
from pathlib import Path
from typing import Any, cast

import numpy as np
from tqdm import tqdm

from finalbn.config import DatasetConfig, SplitConfig
from finalbn.data.groups import draw_grouped, group_by, group_record
from finalbn.data.neardup import METHOD as NEAR_METHOD
from finalbn.data.neardup import near_duplicate_keys
from finalbn.data.refusals import explained
from finalbn.data.sources import LABELS, Collection, collect, decode_options
from finalbn.infra import faults
from finalbn.infra.errors import DataError  # re-exported: raised here
from finalbn.infra.io import replace_dir, temporary_dir, write_text
from finalbn_field.depth import dataset_auto
from finalbn_field.images import escape_name, formula_safe, unescape_name

SPLITS = ("train", "val", "test")
DISJOINT_STREAM = 7_919  # the seed stream of split.disjoint_test's one order of test images
MANIFEST_COLUMNS = ("path", "label", "split", "source_class", "sha256")


Group = list[tuple[str, Path]]  # files of one content: [(source_class, path)], sorted by path


def content_groups(
    usable: dict[int, list[tuple[str, Path]]], hashes: dict[str, str] | None = None
) -> dict[int, list[Group]]:
    """Per label, the usable files grouped by content: byte-identical copies (same sha256 in
    `hashes`, keyed by posix path) are one group; without hashes every file is its own group.
    Groups are sorted by their first path. Raises DataError when one content would carry both
    labels (a copy under each class, or a folder listed as both), naming the files."""
    by_key: dict[str, list[tuple[int, str, Path]]] = {}
    for label in LABELS:
        for cls, path in usable[label]:
            key = hashes[_text(path)] if hashes is not None else f"{label}:{_text(path)}"
            by_key.setdefault(key, []).append((label, cls, path))
    both = [sorted(m, key=lambda x: str(x[2])) for m in by_key.values() if len({x[0] for x in m}) > 1]
    if both:
        shown = "; ".join(" = ".join(f"{_text(p)} ({cls})" for _, cls, p in g) for g in both[:3])
        more = f", and {len(both) - 3} more" if len(both) > 3 else ""
        raise DataError(
            f"{len(both)} image(s) would carry both labels (the same content under the majority and "
            f"the minority): {shown}{more}; remove the copies or fix the class lists"
        )
    groups: dict[int, list[Group]] = {0: [], 1: []}
    for members in by_key.values():
        groups[members[0][0]].append(sorted(((cls, p) for _, cls, p in members), key=lambda x: str(x[1])))
    for label in LABELS:
        groups[label].sort(key=lambda g: str(g[0][1]))
    return groups


def disjoint_test_sets(
    pool: list[Group], size: int, replicates: int, seed: int, label: int, name: str
) -> list[list[int]]:
    """`replicates` disjoint sets of group indices holding exactly `size` files each, from one seeded
    order of the label's groups (the same for every replicate): `split.disjoint_test`. A group that
    does not fit the set being filled waits for the next one. Raises DataError naming the class when
    the pool cannot fill them all."""
    order = [int(i) for i in np.random.default_rng([seed, DISJOINT_STREAM, label]).permutation(len(pool))]
    chunks, waiting = [], order
    for r in range(replicates):
        room, chunk, rest = size, [], []
        for idx in waiting:
            if room >= len(pool[idx]) and room:
                chunk.append(idx)
                room -= len(pool[idx])
            else:
                rest.append(idx)
        if room:
            files = sum(len(g) for g in pool)
            raise DataError(
                f"split.disjoint_test: class {name} has {files} usable images, {replicates} disjoint test "
                f"sets of {size} need {replicates * size} (filled {r}); lower the replicates or the test "
                "count, or set split.disjoint_test: false"
            )
        chunks.append(chunk)
        waiting = rest
    return chunks


def disjoint_for(split: SplitConfig, label: int) -> bool:
    """Whether `split.disjoint_test` gives class `label` (0 majority, 1 minority) test images no other
    replicate tests on: `true` both classes, `majority` the healthy class only (a large healthy test
    set per replicate, so that one false alarm moves precision at a low prevalence little, while the
    few diseased images are shared), `false` neither."""
    return split.disjoint_test is True or (split.disjoint_test == "majority" and label == 0)


def draw_split(
    usable: dict[int, list[tuple[str, Path]]],
    split: SplitConfig,
    names: tuple[str, str],
    sources: tuple[str, str],
    replicate: int = 0,
    hashes: dict[str, str] | None = None,
    replicates: int = 1,
    group_of: dict[str, str] | None = None,
    by: str = "group",
) -> list[dict]:
    """Seeded, disjoint train/val/test rows with exactly the requested counts per label.

    Files are drawn as content groups (`content_groups`): a group of byte-identical copies goes
    whole into one split, so no image is both trained and tested on. In a seeded order of the
    groups each one goes to the first split (train, val, test) with room for all of it; with no
    duplicates this is the plain seeded draw. With `split.disjoint_test` (`disjoint_for`: both classes, or
    the majority only), replicate r's test set of that class is
    the r-th of `replicates` disjoint sets (`disjoint_test_sets`), and train and val are drawn from the
    rest: no two replicates share a test image. Raises DataError when a label cannot fill its counts.
    With `group_of` (escaped path -> a patient's or lesion's id, `by` naming them) the draw is
    `groups.draw_grouped`: no group in two splits."""
    if group_of is not None:
        return draw_grouped(content_groups(usable, hashes), group_of, split, names, sources, replicate, replicates, by)
    rows: list[dict] = []
    groups = content_groups(usable, hashes)
    for label in LABELS:
        need = [getattr(split, s)[label] for s in SPLITS]
        pool = groups[label]
        files = sum(len(g) for g in pool)
        distinct = "" if files == len(pool) else f" ({len(pool)} distinct contents)"
        if files < sum(need):
            raise DataError(
                f"class {names[label]} ({sources[label]}) has {files} usable images{distinct}, the split "
                f"needs {sum(need)} ({' + '.join(f'{n} {s}' for n, s in zip(need, SPLITS))})"
            )
        # One generator per label, so changing the minority counts never reshuffles the majority.
        order: np.ndarray | list[int] = np.random.default_rng([split.seed, replicate, label]).permutation(len(pool))
        room = list(need)
        disjoint = disjoint_for(split, label)
        if disjoint:
            test = disjoint_test_sets(
                pool, need[2], replicates, split.seed, label, f"{names[label]} ({sources[label]})"
            )
            mine = set(test[replicate])
            order = [i for i in test[replicate]] + [i for i in order if i not in mine]
            room = [0, 0, need[2]]  # the test set first, then train and val from the rest
        for step in ((2,), (0, 1, 2)) if disjoint else ((0, 1, 2),):
            for idx in order:
                if not any(room):
                    break
                if disjoint and (idx in mine) != (step == (2,)):
                    continue
                fits = next((i for i in step if room[i] >= len(pool[idx])), None)
                if fits is None:
                    continue
                room[fits] -= len(pool[idx])
                rows += [
                    {"path": _text(path), "label": label, "split": SPLITS[fits], "source_class": cls}
                    for cls, path in pool[idx]
                ]
            if disjoint and step == (2,):
                room = [need[0], need[1], 0]
        if any(room):
            raise DataError(
                f"class {names[label]} ({sources[label]}): groups of copies or near-duplicates{distinct} cannot "
                f"fill the split's exact counts ({' + '.join(f'{n} {s}' for n, s in zip(need, SPLITS))}); "
                "remove the copies or lower the counts"
            )
    rows.sort(key=lambda r: (SPLITS.index(r["split"]), r["label"], r["path"]))
    return rows


def _text(path: Path) -> str:
    """A path as the manifest writes it (posix, escaped where the name is not valid UTF-8)."""
    return escape_name(path.as_posix())


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def split_dir(splits_dir: Path, dataset: str, replicate: int) -> Path:
    """Where one replicate's manifest.csv and split.json live."""
    return Path(splits_dir) / dataset / str(replicate)


def prepare_dataset(
    ds: DatasetConfig, split: SplitConfig, out_root: Path, progress: bool = True, replicates: int = 1
) -> list[dict]:
    """Collect and validate once, then split and write manifest.csv + split.json per replicate;
    returns the summaries (one per replicate)."""
    found = collect(ds, progress=progress)
    decoding = decoding_record(ds, found)  # refuses images whose bit depth auto would guess differently
    sources = tuple(", ".join(found.source_classes[k]) for k in ("majority", "minority"))
    # every usable file's content hash before drawing: copies are drawn together (draw_split)
    paths = sorted({_text(p) for label in LABELS for _, p in found.usable[label]})
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        hashes = dict(
            zip(
                paths,
                tqdm(
                    pool.map(lambda t: sha256_file(unescape_name(t)), paths),
                    total=len(paths),
                    desc=f"hash {ds.name}",
                    unit="img",
                    disable=not progress,
                ),
            )
        )
    content_groups(found.usable, hashes)  # refuses one content under both labels, before any grouping
    keys, near = hashes, None
    if split.near_duplicates is not None:
        keys, across = near_duplicate_keys(found.usable, hashes, split.near_duplicates, progress, decode_options(ds))
        near = {"method": NEAR_METHOD, "max_distance": split.near_duplicates, "across_labels": across}
    with explained(ds, found, out_root):  # a refused draw also says why rows and files were not usable
        draws = [
            draw_split(
                found.usable,
                split,
                found.names,
                sources,  # type: ignore[arg-type]
                r,
                keys,
                replicates,
                found.groups,
                group_by(ds) or "",
            )
            for r in range(replicates)
        ]
    copies = [
        [_text(p) for _, p in g] for label in LABELS for g in content_groups(found.usable, keys)[label] if len(g) > 1
    ]
    # every replicate is written into a hidden folder that then replaces <out>/<dataset> at once: a
    # failure half-way (a full disk, a kill) leaves the earlier set as it was, never a mixed one
    dest = Path(out_root) / ds.name
    with temporary_dir(dest) as tmp:
        summaries = [
            _write_split(ds, split, tmp, found, rows, hashes, r, copies, near, decoding) for r, rows in enumerate(draws)
        ]
        replace_dir(tmp, dest)
    return summaries


def decoding_record(ds: DatasetConfig, found: Collection) -> dict:
    """split.json's `intensity` and `max_pixels` (what training and the export decode with) and
    `decoded`: how many usable images of each kind (`images.Decoded.label`, e.g. 'I;16 12-bit
    (sBIT)'), how many hold more than 8 bits or floats, how many were scaled by their own min..max,
    and the depths read off images' maxima (no sBIT or TIFF record). Under `auto`, images without a
    record that all imply one depth make it the data set's (`intensity: auto:12`, `depth.dataset_auto`):
    training and the field then read a darker image of that kind at the same depth.

    Raises DataError (one line, naming the fix) when, under `auto`, those maxima imply different
    depths (each image would be scaled its own way), or when, under a fixed [lo, hi], images lie
    mostly outside it (they would train as blank black or white images)."""
    infos = {p: found.decoded[p] for label in LABELS for _, p in found.usable[label] if p in found.decoded}
    # an "image maximum" range always records its depth (significant is an int there)
    inferred = cast("Counter[int]", Counter(i.significant for i in infos.values() if i.source == "image maximum"))
    fix = f"set intensity in datasets.{ds.name} of params.yaml, or --set datasets.{ds.name}.intensity="
    if ds.intensity == "auto" and len(inferred) > 1:
        looks = ", ".join(f"{n} look {b}-bit" for b, n in sorted(inferred.items()))
        floats = sum(i.kind == "f" for i in infos.values())
        also = (
            (f" ({floats} float images among them would need a data set of their own: one range cannot hold both)")
            if floats
            else ""
        )
        raise DataError(
            f"dataset {ds.name}: {sum(inferred.values())} images record no bit depth and their maxima "
            f"imply different depths ({looks}), so intensity auto would scale each its own way; "
            f"{fix}[0,{2 ** max(inferred) - 1}] (the largest depth's range) or container{also}"
        )
    blank = {p: i for p, i in infos.items() if i.blank}
    if blank:
        path, info = next(iter(sorted(blank.items())))
        assert info.data is not None  # `blank` is only true with the image's own range
        rule: str | tuple[float, float] = (
            ds.intensity if isinstance(ds.intensity, str) else "[{:g}, {:g}]".format(*ds.intensity)
        )
        raise DataError(
            f"dataset {ds.name}: {len(blank)} images would train as blank images under intensity "
            f"{rule}: their values fall outside it or within one of its 256 levels (e.g. "
            f"{escape_name(path)}: {info.label}, values {info.data[0]:g}..{info.data[1]:g}); "
            f"{fix}[lo,hi] with a range that holds them, or give them a data set of their own"
        )
    rule = dataset_auto(set(inferred)) if ds.intensity == "auto" else ds.intensity
    return {
        "intensity": rule,
        "max_pixels": ds.max_pixels,
        "decoded": {
            "counts": dict(sorted(Counter(i.label for i in infos.values()).items())),
            "high_bit_depth": sum(i.deep for i in infos.values()),
            "own_range": sum(i.source == "image min..max" for i in infos.values()),
            "inferred_depths": {str(b): n for b, n in sorted(inferred.items())},
        },
    }


def _write_split(
    ds: DatasetConfig,
    split: SplitConfig,
    folder: Path,
    found: Collection,
    rows: list[dict],
    hashes: dict[str, str],
    replicate: int,
    copies: list[list[str]],
    near: dict | None,
    decoding: dict,
) -> dict:
    for row in rows:
        row["sha256"] = hashes[row["path"]]

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=MANIFEST_COLUMNS, lineterminator="\n")
    writer.writeheader()
    # a source class is a folder name or a label value: written spreadsheet-safe (paths are, by escape_name)
    writer.writerows({**r, "source_class": formula_safe(r["source_class"])} for r in rows)
    manifest = buf.getvalue()

    counts: dict[str, dict[str, Any]] = {s: {"majority": 0, "minority": 0, "by_source_class": {}} for s in SPLITS}
    for r in rows:
        c = counts[r["split"]]
        c["majority" if r["label"] == 0 else "minority"] += 1
        c["by_source_class"][r["source_class"]] = c["by_source_class"].get(r["source_class"], 0) + 1
    available = Counter(cls for label in LABELS for cls, _ in found.usable[label])
    split_of = {r["path"]: r["split"] for r in rows}
    summary = {
        "dataset": ds.name,
        "source": ds.source,
        "root": escape_name(Path(ds.root).as_posix()),
        "classes": list(found.names),
        "source_classes": found.source_classes,
        "seed": split.seed,
        "replicate": replicate,
        "counts": counts,
        "usable": dict(sorted(available.items())),
        "rejected": [{"path": escape_name(r.path), "reason": r.reason} for r in found.rejected],
        # byte-identical copies (and near-duplicates, when on), each group drawn whole into one split
        "duplicate_groups": [
            {
                "sha256": hashes[g[0]],
                "paths": g,
                "split": split_of.get(g[0]),
                **({"near": True} if len({hashes[p] for p in g}) > 1 else {}),
            }
            for g in copies
        ],
        "near_duplicates": near,  # null: off (split.near_duplicates); else the method and its threshold
        "manifest_sha256": hashlib.sha256(manifest.encode()).hexdigest(),
        **decoding,  # intensity, max_pixels (training decodes with them) and what the images hold
    }
    if found.patterns:
        summary["patterns"] = found.patterns  # each glob pattern and the folders it matched
    if found.table is not None:
        summary["table"] = found.table  # csv: rows used, and every skipped row with its line and reason
    if found.groups is not None:  # group_column / group_by_folder: each group and its one split
        summary["groups"] = group_record(found.groups, rows, copies, group_by(ds) or "")
    out = folder / str(replicate)  # <folder> becomes <out>/<dataset> once every replicate is written (`split_dir`)
    out.mkdir(parents=True, exist_ok=True)
    # a failed run never leaves a half-written manifest under the final name
    write_text(out / "manifest.csv", manifest)
    write_text(out / "split.json", json.dumps(summary, indent=2, sort_keys=True) + "\n")
    faults.point("prepare.replicate")
    return summary


def read_manifest(path: str | Path) -> list[dict]:
    """Rows of a manifest.csv with `label` as int; `path` as written (escaped: open it through
    `images.unescape_name`)."""
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    for r in rows:
        r["label"] = int(r["label"])
    return rows

"""Where a dataset's images and labels come from: the three sources, one shape out.

    found = collect(cfg.dataset("isic"))
    found.usable[1]     # [(source_class, path)] of the minority, every image decoded once
    found.rejected      # [Rejected(path, reason)]: files that are not usable images
    found.table         # source csv: the rows skipped, each with its line and reason

- `plantvillage` (and `synthetic`): `<crop>_+<condition>` folders under root (`crop_folders`);
  majority = healthy (any case), minority = every disease pooled.
- `folders`: `majority`/`minority` lists of folders relative to root; an entry that is not a
  folder but a glob pattern (`*/0`) takes every folder it matches (recorded per pattern).
- `csv`: one image folder plus a table (`labels`); `image_column` names a file relative to
  root, with or without its suffix (or a bare id: the one file under root with that name),
  `label_column` a value of `majority` or `minority` (numbers compare as numbers), or with
  `one_hot` the class column holding 1 (`finalbn.data.tables`, which also detects the separator and
  encoding). Rows whose image is missing or ambiguous, listed again, or whose label is in neither
  list (or, one-hot, none or several) are skipped and reported per row (`table.skipped`).

Raises DataError (one line) for a missing root, folder, table or column, an empty table, or a
pattern that matches nothing. Nothing here writes anything.
"""

from __future__ import annotations

import difflib
import glob
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import pandas as pd
from tqdm import tqdm

from finalbn.config import DatasetConfig
from finalbn.data import tables
from finalbn.data.groups import folder_groups, table_groups
from finalbn.data.tables import label_key
from finalbn.infra.errors import DataError
from finalbn_field.images import Decoded, Rejected, check_image, escape_name, is_system, scan_folder

LABELS = (0, 1)  # 0 = majority (healthy), 1 = minority (diseased)
Files = dict[int, list[tuple[str, Path]]]  # per label: [(source_class, path)]


@dataclass(frozen=True)
class ClassFolders:
    """Where each label's images live: [(source_class, folder)] per label."""

    majority: list[tuple[str, Path]]
    minority: list[tuple[str, Path]]
    names: tuple[str, str]  # human names of label 0 and 1
    patterns: dict[str, dict[str, list[str]]] = field(default_factory=dict)  # label -> pattern -> folders


@dataclass(frozen=True)
class Collection:
    """A dataset's usable images per label, what was rejected, and how they were found."""

    usable: Files
    rejected: list[Rejected]
    names: tuple[str, str]
    source_classes: dict[str, list[str]]  # "majority"/"minority": folder names, or label values (csv)
    patterns: dict[str, dict[str, list[str]]]  # folders: each glob pattern and the folders it matched
    table: dict | None = None  # csv: path, rows, used, skipped [{line, image, label, reason}], by reason
    groups: dict[str, str] | None = None  # group_column/group_by_folder: escaped path -> its group ("": none)
    decoded: dict[Path, Decoded] = field(default_factory=dict)  # usable file -> what decoding it found


def decode_options(ds: DatasetConfig) -> dict:
    """How `ds`'s images decode (`images.decode`'s max_pixels, intensity and size): prepare, the
    probe and near-duplicate hashing alike (training reads them from split.json)."""
    return {"max_pixels": ds.max_pixels, "intensity": ds.intensity, "size": ds.image_size}


def collect(ds: DatasetConfig, progress: bool = True) -> Collection:
    """Every usable image of `ds` per label, each decoded once (`images.check_image`)."""
    if ds.source == "csv":
        return _collect_csv(ds, progress)
    folders = class_folders(ds)
    decoded: dict[Path, Decoded] = {}
    usable, rejected = scan_dataset(folders, progress, decode_options(ds), decoded)
    return Collection(
        usable,
        rejected,
        folders.names,
        {"majority": [c for c, _ in folders.majority], "minority": [c for c, _ in folders.minority]},
        folders.patterns,
        groups=folder_groups(ds, folders.patterns, usable) if ds.group_by_folder else None,
        decoded=decoded,
    )


# ---------------------------------------------------------------- folders


def class_folders(ds: DatasetConfig) -> ClassFolders:
    """Resolve a dataset's majority/minority folders, or raise DataError naming what is missing."""
    root = Path(ds.root)
    if not root.is_dir():
        raise DataError(f"dataset {ds.name}: root folder {escape_name(root)} does not exist")
    if ds.source in ("synthetic", "plantvillage"):
        crop = cast(str, ds.crop)  # a str: DatasetConfig requires `crop` for these sources
        mine = crop_folders(root, crop)
        if not mine:
            raise DataError(
                f"dataset {ds.name}: no <{ds.crop}>___<condition> folders under {escape_name(root)} "
                f"({_look_alikes(root, crop)})"
            )
        healthy = [p for p, cond in mine if cond.lower() == "healthy"]
        diseased = [p for p, _ in mine if p not in healthy]
        if not healthy:
            raise DataError(f"dataset {ds.name}: folder {escape_name(root / (crop + '___healthy'))} does not exist")
        if not diseased:
            raise DataError(f"dataset {ds.name}: no disease folders {ds.crop}___<disease> under {escape_name(root)}")
        return ClassFolders([(p.name, p) for p in healthy], [(p.name, p) for p in diseased], ("healthy", "diseased"))
    patterns: dict[str, dict[str, list[str]]] = {}
    lists = [
        _expand(ds, root, entries, which, patterns)
        for which, entries in (("majority", ds.majority), ("minority", ds.minority))
    ]
    return ClassFolders(lists[0], lists[1], ("majority", "minority"), patterns)


def _expand(
    ds: DatasetConfig, root: Path, entries: tuple[str, ...], which: str, patterns: dict[str, dict[str, list[str]]]
) -> list[tuple[str, Path]]:
    """[(name relative to root, folder)] for one label's entries: a folder as written, or, when no
    such folder exists and the entry is a glob pattern, every (non-system) folder it matches."""
    out: dict[Path, str] = {}
    for entry in entries:
        path = root / entry
        if path.is_dir():
            out.setdefault(path, entry)
            continue
        if not glob.has_magic(entry):
            raise DataError(f"dataset {ds.name}: class folder {escape_name(path)} does not exist")
        try:
            hits = sorted(p for p in root.glob(entry) if p.is_dir() and not is_system(p, root))
        except (ValueError, NotImplementedError) as exc:
            raise DataError(
                f"dataset {ds.name}: {which} pattern {entry!r} is not a pattern relative to root ({exc})"
            ) from None
        if not hits:
            raise DataError(f"dataset {ds.name}: {which} pattern {entry!r} matches no folder under {escape_name(root)}")
        names = [escape_name(p.relative_to(root).as_posix()) for p in hits]
        patterns.setdefault(which, {})[entry] = names
        for p, name in zip(hits, names):
            out.setdefault(p, name)
    return [(name, p) for p, name in out.items()]


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
    names = sorted(escape_name(p.name) for p in root.iterdir() if p.is_dir())
    crops = sorted({n.split("___")[0] if "___" in n else re.split(r"_+", n)[0] for n in names if "_" in n})
    close = [n for n in names if n.lower().startswith(crop.lower()[:4])] or difflib.get_close_matches(
        crop, names, n=5, cutoff=0.5
    )
    return (
        f"look-alike folders: {', '.join(close[:6])}; " if close else ""
    ) + f"crops found: {', '.join(crops) or 'none'}"


def scan_dataset(
    folders: ClassFolders, progress: bool = True, decode: dict | None = None, found: dict[Path, Decoded] | None = None
) -> tuple[Files, list[Rejected]]:
    """Usable (source_class, path) per label, and every rejected file with its reason; `decode`:
    `decode_options`, `found` collects what decoding each usable file found."""
    usable: Files = {0: [], 1: []}
    rejected: list[Rejected] = []
    jobs = [
        (label, cls, folder)
        for label, group in enumerate((folders.majority, folders.minority))
        for cls, folder in group
    ]
    # Sequential on purpose: images.load_rgb guards decompression bombs with warnings.catch_warnings,
    # which is not thread-safe.
    for label, cls, folder in tqdm(jobs, desc="scan folders", unit="folder", disable=not progress):
        ok, bad = scan_folder(folder, **(decode or {}), found=found)
        usable[label].extend((cls, p) for p in ok)
        rejected.extend(bad)
    return usable, sorted(rejected, key=lambda r: r.path)


# ---------------------------------------------------------------- a labels table


def read_table(ds: DatasetConfig) -> tuple[Path, pd.DataFrame, dict]:
    """The labels table of a csv dataset, every cell as text (`0`/`1` labels and names with
    leading zeros stay as written; surrounding spaces are dropped), and how it was read (encoding,
    separator: `tables.read`). Raises DataError (one line) for a missing, unreadable or empty
    table, or a missing column (naming the columns there are, and how the table was read)."""
    table = Path(cast(str, ds.labels))  # a str: DatasetConfig requires `labels` for source csv
    table = table if table.is_absolute() else Path(ds.root) / table
    if not table.is_file():
        raise DataError(f"dataset {ds.name}: labels table {table} does not exist")
    classes = list(dict.fromkeys(v.strip() for v in (*ds.majority, *ds.minority))) if ds.one_hot else []
    given = {
        "image_column": ds.image_column,
        "label_column": ds.label_column,
        "group_column": getattr(ds, "group_column", None),
    }
    needed = {k: v for k, v in given.items() if v}
    df, how = tables.read(
        table,
        f"dataset {ds.name}: labels table {table}",
        [*needed.values(), *classes],
        ds.table_separator,
        ds.table_encoding,
    )
    columns = (
        f"columns: {', '.join(map(repr, df.columns))} ({tables.read_as(how)}: set table_separator and "
        "table_encoding if the table is written otherwise)"
    )
    for key, col in needed.items():
        if col not in df.columns:
            raise DataError(f"dataset {ds.name}: labels table {table} has no column {col!r} ({key}); {columns}")
    missing = [c for c in classes if c not in df.columns]
    if missing:
        raise DataError(
            f"dataset {ds.name}: labels table {table} has no class column(s) "
            f"{', '.join(map(repr, missing))} (one_hot: majority/minority name columns); {columns}"
        )
    if df.empty:
        raise DataError(f"dataset {ds.name}: labels table {table} has a header but no rows")
    return table, df, how


def _index(root: Path) -> tuple[dict[str, Path], dict[str, list[Path]], dict[str, list[Path]]]:
    """Files under root by relative path, by relative path without its suffix, and by file name
    with and without its suffix (whatever the folder: HAM10000's part_1/, part_2/)."""
    exact: dict[str, Path] = {}
    stems: dict[str, list[Path]] = {}
    names: dict[str, list[Path]] = {}
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not is_system(Path(folder) / d, root))
        for name in sorted(files):
            p = Path(folder) / name
            if is_system(p, root):
                continue
            rel = p.relative_to(root).as_posix()
            exact[rel] = p
            stems.setdefault(rel[: len(rel) - len(p.suffix)] if p.suffix else rel, []).append(p)
            for key in dict.fromkeys((name, name[: len(name) - len(p.suffix)] if p.suffix else name)):
                names.setdefault(key, []).append(p)
    return exact, stems, names


def _collect_csv(ds: DatasetConfig, progress: bool) -> Collection:
    root = Path(ds.root)
    if not root.is_dir():
        raise DataError(f"dataset {ds.name}: root folder {escape_name(root)} does not exist")
    table, df, how = read_table(ds)
    group_values = table_groups(ds, table, df)  # group_column: one value per row, or None
    # a label value -> (label, source class as listed); numbers compare as numbers (tables.label_key)
    label_of = {
        **{label_key(v): (0, v.strip()) for v in ds.majority},
        **{label_key(v): (1, v.strip()) for v in ds.minority},
    }
    both = sorted({v.strip() for v in ds.majority if label_key(v) in {label_key(m) for m in ds.minority}})
    if both:
        raise DataError(
            f"dataset {ds.name}: label value(s) {', '.join(map(repr, both))} listed as both majority and minority"
        )
    exact, stems, names = _index(root)
    skipped: list[dict] = []
    first: dict[Path, dict] = {}  # file -> its first row
    for i, (name, (value, why)) in enumerate(zip(df[ds.image_column], tables.row_labels(ds, df))):
        row = {"line": i + 2, "image": name.strip(), "label": value}  # line 1 is the header
        reason, path = _resolve(row["image"], root, exact, stems, names)
        reason = reason or why  # one-hot: no class, several classes, a value not 0/1
        if reason is None and label_key(row["label"]) not in label_of:
            reason = f"label {row['label']!r} is in neither majority nor minority"
        if reason is None and path in first:
            reason = f"the same image as line {first[path]['line']} (listed again)"
            if label_key(first[path]["label"]) != label_key(row["label"]):
                reason += f" with another label ({first[path]['label']!r} vs {row['label']!r})"
                first[path]["conflict"] = True
        if reason is not None:
            skipped.append({**row, "reason": reason})
            continue
        assert path is not None  # _resolve gives a file whenever it gives no reason
        first[path] = row
    for path, row in list(first.items()):
        if row.pop("conflict", False):  # listed with two labels: neither is trusted
            skipped.append({**row, "reason": "listed again with another label: the image is left out"})
            del first[path]
    usable: Files = {0: [], 1: []}
    rejected: list[Rejected] = []
    decoded: dict[Path, Decoded] = {}
    for path, row in tqdm(sorted(first.items()), desc=f"check {ds.name}", unit="img", disable=not progress):
        reason = check_image(path, **decode_options(ds), found=decoded)
        if reason is None:
            label, cls = label_of[label_key(row["label"])]
            usable[label].append((cls, path))
        else:
            rejected.append(Rejected(str(path), reason))
    skipped.sort(key=lambda r: r["line"])
    kinds = Counter(row_kind(r["reason"]) for r in skipped)
    info = {
        "path": table.as_posix(),
        "image_column": ds.image_column,
        "label_column": ds.label_column,
        "rows": int(len(df)),
        "used": len(first),
        "skipped": skipped,
        "skipped_by_reason": dict(sorted(kinds.items())),
        **how,
        **({"one_hot": True} if ds.one_hot else {}),
    }  # how: encoding, separator, and where each came from
    groups = (
        None
        if group_values is None
        else {
            escape_name(p.as_posix()): group_values[first[p]["line"] - 2] for label in LABELS for _, p in usable[label]
        }
    )
    return Collection(
        usable,
        rejected,
        ("majority", "minority"),
        {"majority": list(ds.majority), "minority": list(ds.minority)},
        {},
        info,
        groups,
        decoded,
    )


def _resolve(
    name: str, root: Path, exact: dict[str, Path], stems: dict[str, list[Path]], names: dict[str, list[Path]]
) -> tuple[str | None, Path | None]:
    """(None, file) for a table's image name, else (reason, None): the file at that path relative
    to root, else the one there with that name plus a suffix, else (a name without a folder) the
    one file anywhere under root with that name, with or without its suffix."""
    if not name:
        return "no image name", None
    rel = Path(name).as_posix().lstrip("/")
    if rel in exact:
        return None, exact[rel]
    hits = stems.get(rel, [])
    where = f"are named {rel}.*"
    if not hits and "/" not in rel:
        hits, where = names.get(rel, []), f"under the root are named {rel} or {rel}.*"
    if len(hits) == 1:
        return None, hits[0]
    if len(hits) > 1:
        shown = ", ".join(escape_name(p.relative_to(root).as_posix()) for p in hits[:5])
        more = f", and {len(hits) - 5} more" if len(hits) > 5 else ""
        return f"ambiguous: {len(hits)} files {where} ({shown}{more})", None
    return f"no image file {rel} (with or without a suffix) under the root", None


def row_kind(reason: str) -> str:
    """A skipped row's reason, in a word, for the counts."""
    for key, kind in (
        ("no image file", "missing image"),
        ("ambiguous", "ambiguous name"),
        ("no image name", "no name"),
        ("neither majority", "label in neither list"),
        ("another label", "conflicting labels"),
        ("listed again", "listed again"),
        ("no class:", "no class"),
        ("several classes", "several classes"),
        ("not 0 or 1", "not 0 or 1"),
    ):
        if key in reason:
            return kind
    return "other"

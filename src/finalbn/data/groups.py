"""Group-aware splits: a patient's (or lesion's) images never straddle train, val and test.

    values = table_groups(ds, table, df)             # csv `group_column`: each row's value
    groups = folder_groups(ds, patterns, usable)     # folders `group_by_folder`: the wildcards' matches
    rows = draw_grouped(pool, groups, split, names, sources, replicate, replicates, "patient_id")

A draw unit is the union (union-find) of a user's groups and the content groups of their images
(identical copies, near-duplicates, `splits.content_groups`): a copy shared by two patients joins
them. An image with no group value is a unit of its own (counted in `split.json`). In one seeded
order of the units each goes whole to one split (`assign`): first the units holding minority
images, each to the first split still short of minority images (the scarce class first), then
units to the splits short of majority images, then every unit left in proportion to each split's
need, so that a split draws from many groups. Each split's exact per-label counts are then drawn,
in a seeded order, from its own units' images (copies whole; its majority images in the data set's
share from groups with and without minority images); images not drawn are simply unused. A split
its units cannot fill is refused, naming the counts.
"""

from __future__ import annotations

import glob
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from finalbn.config import DatasetConfig, SplitConfig
from finalbn.infra.errors import DataError
from finalbn_field.images import escape_name

SPLITS = ("train", "val", "test")
LABELS = (0, 1)
GROUP_STREAM = 104_729  # the seed stream of the grouped draw's order of units
DISJOINT_GROUP_STREAM = 7_927  # split.disjoint_test with groups: the one order of units for the test sets

Group = list[tuple[str, Path]]  # files of one content (splits.Group)


def group_by(ds: DatasetConfig) -> str | None:
    """What a dataset's groups are: its group_column, `folder`, or None (no groups)."""
    return ds.group_column or ("folder" if ds.group_by_folder else None)


def table_groups(ds: DatasetConfig, table: Path, df) -> list[str] | None:
    """The group_column's value of each row of a labels table (None when the key is unset)."""
    if not ds.group_column:
        return None
    if ds.group_column not in df.columns:
        raise DataError(
            f"dataset {ds.name}: labels table {table} has no column {ds.group_column!r} (group_column); "
            f"columns: {', '.join(map(repr, df.columns))}"
        )
    return [str(v).strip() for v in df[ds.group_column]]


def folder_groups(
    ds: DatasetConfig, patterns: dict[str, dict[str, list[str]]], usable: dict[int, list[tuple[str, Path]]]
) -> dict[str, str]:
    """group_by_folder: each usable file's group, the folder levels its pattern's wildcards matched
    (`*/0` matching `10253/0` -> `10253`, the same group as `10253/1` under `*/1`)."""
    of_folder: dict[str, str] = {}
    for which, entries in (("majority", ds.majority), ("minority", ds.minority)):
        for entry in entries:
            matched = patterns.get(which, {}).get(entry)
            if matched is None:
                raise DataError(
                    f"dataset {ds.name}: group_by_folder: {which} entry {entry!r} is a folder of that "
                    "name, not a pattern, so its images have no group; rename the folder or set "
                    "group_by_folder: false"
                )
            wild = [i for i, part in enumerate(PurePosixPath(entry).parts) if glob.has_magic(part)]
            for folder in matched:
                parts = folder.split("/")
                of_folder.setdefault(folder, "/".join(parts[i] for i in wild if i < len(parts)))
    return {escape_name(p.as_posix()): of_folder[cls] for label in LABELS for cls, p in usable[label]}


@dataclass
class Unit:
    """Content groups drawn together: one or more of the user's groups, or one ungrouped image."""

    members: dict[int, list[Group]]  # per label

    def files(self, label: int) -> int:
        return sum(len(g) for g in self.members[label])


def units(pool: dict[int, list[Group]], groups: dict[str, str]) -> list[Unit]:
    """The draw units: content groups joined by a shared group value (union-find), sorted by first path."""
    items = [(label, g) for label in LABELS for g in pool[label]]
    parent = list(range(len(items)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first_of: dict[str, int] = {}
    for i, (_, g) in enumerate(items):
        for _, path in g:
            name = groups.get(escape_name(path.as_posix()), "")
            if name:
                a, b = root(first_of.setdefault(name, i)), root(i)
                parent[max(a, b)] = min(a, b)
    out: dict[int, Unit] = {}
    for i, (label, g) in enumerate(items):
        out.setdefault(root(i), Unit({0: [], 1: []})).members[label].append(g)
    return sorted(out.values(), key=lambda u: min(str(g[0][1]) for label in LABELS for g in u.members[label]))


def _fit(short: list[str], left: dict[str, int], have: int) -> str:
    """The first split short of images that `have` fills without waste, else the first one short."""
    return next((s for s in short if left[s] >= have), short[0])


def assign(
    pool: list[Unit],
    order: list[int],
    need: dict[str, list[int]],
    share: float,
    taken: set[int] | frozenset[int] = frozenset(),
    spread: bool = True,
) -> dict[int, str]:
    """Unit index -> split for the splits in `need` ({split: [majority, minority]}), in `order`
    (units in `taken` left out). First the units holding minority images, each to the first split
    short of minority images; then units for the majority images, in two kinds: a split's majority
    need times `share` (the data set's share of majority images that lie in units with minority
    images) from such units, the rest from units without, so that no split's majority images come
    only from (say) patients who also have a melanoma; a pass fills any split still short. With
    `spread`, every unit left goes to a split in proportion to its need (`_spread`), so that a split
    draws its images from many groups, not the one or two that happened to fill it."""
    out: dict[int, str] = {}
    left = {s: n[1] for s, n in need.items()}
    for u in order:
        short = [s for s in left if left[s] > 0]
        if not short:
            break
        if u not in taken and pool[u].files(1):
            out[u] = s = _fit(short, left, pool[u].files(1))
            left[s] -= pool[u].files(1)
    quota = {s: {True: round(n[0] * share), False: n[0] - round(n[0] * share)} for s, n in need.items()}
    for u, s in out.items():
        quota[s][True] -= pool[u].files(0)
    for by_kind in (True, False):
        for u in order:
            if u in out or u in taken or not pool[u].files(0):
                continue
            kind = pool[u].files(1) > 0
            left = {s: q[kind] if by_kind else q[True] + q[False] for s, q in quota.items()}
            short = [s for s in left if left[s] > 0]
            if short:
                out[u] = s = _fit(short, left, pool[u].files(0))
                quota[s][kind] -= pool[u].files(0)
    return _spread(pool, order, need, out, taken) if spread else out


def _spread(pool: list[Unit], order: list[int], need: dict, out: dict, taken: set[int] | frozenset[int]) -> dict:
    """`out` plus every other unit (in `order`): one holding minority images to the split whose
    minority images so far, this unit's included, are fewest per image it needs; any other unit
    likewise by majority images."""
    given = {kind: {s: 0 for s in need} for kind in (True, False)}
    for u, s in out.items():
        kind = pool[u].files(1) > 0
        given[kind][s] += pool[u].files(int(kind))
    for u in order:
        if u in out or u in taken:
            continue
        kind = pool[u].files(1) > 0
        label = 1 if kind else 0
        have = pool[u].files(label)
        open_ = [s for s in need if need[s][label] > 0]
        if have and open_:
            out[u] = s = min(open_, key=lambda s: (given[kind][s] + have) / need[s][label])
            given[kind][s] += have
    return dict(sorted(out.items()))


def disjoint_tests(pool: list[Unit], need: list[int], share: float, seed: int, replicates: int) -> dict[int, int]:
    """split.disjoint_test: unit index -> the replicate whose test set it is in, from one seeded
    order of the units (the same for every replicate): each test set filled in turn (`assign`),
    then the other units spread evenly over them."""
    once = [int(i) for i in np.random.default_rng([seed, DISJOINT_GROUP_STREAM]).permutation(len(pool))]
    chunks: dict[int, int] = {}
    for r in range(replicates):
        chunks.update({u: r for u in assign(pool, once, {"test": need}, share, set(chunks), spread=False)})
    return _spread(pool, once, {r: need for r in range(replicates)}, chunks, set())


def _take(groups: list[Group], room: int, rng: np.random.Generator) -> tuple[list[Group], list[Group], int]:
    """(groups drawn, groups left, room left): first-fit in a seeded order, copies whole."""
    drawn, rest = [], []
    for idx in rng.permutation(len(groups)):
        if room and len(groups[int(idx)]) <= room:
            room -= len(groups[int(idx)])
            drawn.append(groups[int(idx)])
        else:
            rest.append(groups[int(idx)])
    return drawn, rest, room


def _draw_assigned(
    found: list[Unit],
    where: dict[int, str],
    need: dict[str, list[int]],
    share: float,
    seed: list[int],
    names: tuple[str, str],
) -> tuple[list[dict], list[str]]:
    """(rows, shortfalls): each split's exact counts from its own units' images; the majority's in
    the two kinds' shares (`assign`), topped up from either kind where one falls short."""
    rows, short = [], []
    for k, s in enumerate(SPLITS):
        mine = [found[u] for u in sorted(where) if where[u] == s]
        for label in LABELS:
            rng = np.random.default_rng([*seed, k, label])
            kinds = [[g for u in mine if bool(u.files(1)) == kind for g in u.members[label]] for kind in (True, False)]
            quota = round(need[s][0] * share) if label == 0 else need[s][1]
            a, rest_a, left_a = _take(kinds[0], quota, rng)
            b, rest_b, left_b = _take(kinds[1], need[s][label] - quota, rng)
            c, _, room = _take(rest_a + rest_b, left_a + left_b, rng)
            rows += [
                {"path": escape_name(p.as_posix()), "label": label, "split": s, "source_class": cls}
                for g in a + b + c
                for cls, p in g
            ]
            if room:
                give = sum(len(g) for kind in kinds for g in kind)
                short.append(
                    f"{s} {names[label]} needs {need[s][label]}, its groups give {give}"
                    + (" (groups of copies that do not add up to it)" if give >= need[s][label] else "")
                )
    return rows, short


def draw_grouped(
    pool: dict[int, list[Group]],
    groups: dict[str, str],
    split: SplitConfig,
    names: tuple[str, str],
    sources: tuple[str, str],
    replicate: int,
    replicates: int,
    by: str,
) -> list[dict]:
    """`splits.draw_split` when the dataset has groups: rows with exactly the requested counts, no
    unit (group, copies) in two splits. With `split.disjoint_test` the units are cut once into
    `replicates` disjoint test sets and replicate r's train and val come from the other units.
    Raises DataError naming the counts when a label or a split cannot be filled."""
    if split.disjoint_test == "majority":
        raise DataError(
            f"split.disjoint_test: majority cannot be kept with groups ({by}): a group goes whole into one "
            "split with both its classes; set split.disjoint_test: true or false"
        )
    need = {s: list(getattr(split, s)) for s in SPLITS}
    for label in LABELS:
        files = sum(len(g) for g in pool[label])
        if files < sum(n[label] for n in need.values()):
            raise DataError(
                f"class {names[label]} ({sources[label]}) has {files} usable images, the split needs "
                f"{sum(n[label] for n in need.values())} "
                f"({' + '.join(f'{need[s][label]} {s}' for s in SPLITS)})"
            )
    found = units(pool, groups)
    share = sum(u.files(0) for u in found if u.files(1)) / max(1, sum(u.files(0) for u in found))
    order = [int(i) for i in np.random.default_rng([split.seed, replicate, GROUP_STREAM]).permutation(len(found))]
    if split.disjoint_test:
        test = {
            u: "test"
            for u, r in disjoint_tests(found, need["test"], share, split.seed, replicates).items()
            if r == replicate
        }
        where = {**test, **assign(found, order, {"train": need["train"], "val": need["val"]}, share, set(test))}
    else:
        where = assign(found, order, need, share)
    rows, short = _draw_assigned(found, where, need, share, [split.seed, replicate, GROUP_STREAM], names)
    if short:
        with_minority = sum(1 for u in found if u.files(1))
        which = f" (split.disjoint_test, replicate {replicate} of {replicates})" if split.disjoint_test else ""
        raise DataError(
            f"groups ({by}){which}: a group goes whole into one split, and the groups cannot fill it: "
            f"{'; '.join(short)} ({with_minority} groups hold {names[1]} images, "
            f"{sum(len(g) for g in pool[1])} images in all); lower the split counts or add groups"
        )
    rows.sort(key=lambda r: (SPLITS.index(r["split"]), r["label"], r["path"]))
    return rows


def group_record(groups: dict[str, str], rows: list[dict], copies: list[list[str]], by: str) -> dict:
    """split.json's `groups`: what grouped the images, how many groups, groups per split, the split
    of each group (null: none of its images drawn), images without a group, groups joined by copies."""
    split_of = {r["path"]: r["split"] for r in rows}
    named: dict[str, str | None] = {}
    alone: dict[str, str | None] = {}
    for path, name in sorted(groups.items()):
        if name:
            named[name] = named.get(name) or split_of.get(path)
        else:
            alone[path] = split_of.get(path)
    joined: dict[frozenset, None] = {}
    for paths in copies:
        shared = frozenset(groups.get(p, "") for p in paths) - {""}
        if len(shared) > 1:
            joined[shared] = None
    return {
        "by": by,
        "groups": len(named),
        "per_split": {s: sum(1 for v in named.values() if v == s) for s in SPLITS},
        "unused": sum(1 for v in named.values() if v is None),
        "split_of": named,
        "ungrouped": {
            "images": len(alone),
            "per_split": {s: sum(1 for v in alone.values() if v == s) for s in SPLITS},
            "paths": sorted(alone),
        },
        "joined_by_copies": sorted(sorted(g) for g in joined),
    }

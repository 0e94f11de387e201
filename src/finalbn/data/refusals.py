"""Why a dataset's rows and files were not usable, kept when its split is refused.

    with explained(ds, found, out_root):
        draws = [draw_split(...) for r in range(replicates)]

A DataError inside (`class malignant (malignant) has 3 usable images, the split needs 5 ...`)
comes out as one line that also counts why rows and files were not usable, by kind, with an
example each (and, for labels in neither list, the label values seen, most frequent first),
naming `<out_root>/<dataset>/refused.json`, which lists every rejected file and skipped row with
its reason. With nothing refused the error passes unchanged and no file is written; a run that
draws its splits removes a refused.json left by an earlier one.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from finalbn.config import DatasetConfig
from finalbn.data.sources import Collection, row_kind
from finalbn.infra.errors import DataError
from finalbn.infra.io import write_json
from finalbn_field.images import escape_name

REFUSED = "refused.json"
USED_ANYWAY = {"listed again"}  # a row repeating a used one: its image is used (once)
SHOWN = 5  # label values named in the line
# a rejected file's reason (images.load_rgb, scan_folder), in a word
_FILE_KINDS = (
    ("system file", "system file"),
    ("not an image", "not an image"),
    ("truncated", "truncated or corrupt"),
    ("corrupt", "truncated or corrupt"),
    ("empty file", "empty file"),
    ("broken link", "broken link"),
    ("no such file", "missing file"),
    ("pixel limit", "too large"),
    ("decompression-bomb", "too large"),
    ("no pixels", "no pixels"),
    ("EXIF", "unreadable EXIF"),
    ("cannot convert mode", "unsupported mode"),
    ("cannot read", "unreadable file"),
    ("not a regular file", "not a regular file"),
)


def file_kind(reason: str) -> str:
    """A rejected file's reason in a word: `not an image`, `truncated or corrupt`, ..."""
    for key, kind in _FILE_KINDS:
        if key in reason:
            return kind
    return reason.split(" (")[0].split(":")[0][:40]


@contextlib.contextmanager
def explained(ds: DatasetConfig, found: Collection, out_root: Path) -> Iterator[None]:
    """Re-raise a DataError with the reasons rows and files were not usable, written to refused.json."""
    target = Path(out_root) / ds.name / REFUSED
    try:
        yield
    except DataError as exc:
        counts = not_usable(found, Path(ds.root))
        if not counts["rows"] and not counts["files"]:
            raise
        write_json(
            target,
            {
                "dataset": ds.name,
                "error": str(exc),
                "not_usable": {
                    "rows": {k: v["count"] for k, v in counts["rows"].items()},
                    "files": {k: v["count"] for k, v in counts["files"].items()},
                    "labels_seen": counts["labels_seen"],
                },
                "rejected": [{"path": escape_name(r.path), "reason": r.reason} for r in found.rejected],
                "skipped": (found.table or {}).get("skipped", []),
            },
        )
        raise DataError(f"{exc}; not usable: {summary(counts)}; every reason in {escape_name(target)}") from None
    target.unlink(missing_ok=True)


def not_usable(found: Collection, root: Path) -> dict:
    """{"rows": {kind: {"count", "example"}}, "files": {...}, "labels_seen": {label: count}}, the
    kinds most frequent first; rows repeating a used one are left out (their image is used)."""
    rows: dict[str, dict] = {}
    seen: Counter[str] = Counter()
    for r in (found.table or {}).get("skipped", []):
        kind = row_kind(r["reason"])
        if kind in USED_ANYWAY:
            continue
        if kind == "label in neither list":
            seen[r["label"]] += 1
        rows.setdefault(kind, {"count": 0, "example": f"line {r['line']}: {_short(r['image'] or r['reason'])}"})
        rows[kind]["count"] += 1
    files: dict[str, dict] = {}
    for f in found.rejected:
        files.setdefault(file_kind(f.reason), {"count": 0, "example": _short(_relative(f.path, root))})
        files[file_kind(f.reason)]["count"] += 1
    return {"rows": _by_count(rows), "files": _by_count(files), "labels_seen": dict(seen.most_common())}


def _by_count(kinds: dict[str, dict]) -> dict[str, dict]:
    return dict(sorted(kinds.items(), key=lambda kv: (-kv[1]["count"], kv[0])))


def summary(counts: dict) -> str:
    """`3 rows label in neither list (labels seen: 'x' 2, 'y' 1; e.g. line 20: ISIC_1), 1 file not an image (e.g. a.jpg)`."""
    parts = []
    for kind, c in counts["rows"].items():
        labels = ""
        if kind == "label in neither list" and counts["labels_seen"]:
            shown = list(counts["labels_seen"].items())[:SHOWN]
            more = len(counts["labels_seen"]) - len(shown)
            labels = (
                "labels seen: "
                + ", ".join(f"{k!r} {n}" for k, n in shown)
                + (f", {more} more values" if more else "")
                + "; "
            )
        parts.append(f"{c['count']} row{'s' * (c['count'] != 1)} {kind} ({labels}e.g. {c['example']})")
    parts += [
        f"{c['count']} file{'s' * (c['count'] != 1)} {kind} (e.g. {c['example']})"
        for kind, c in counts["files"].items()
    ]
    return ", ".join(parts)


def _relative(path: str, root: Path) -> str:
    try:
        return escape_name(Path(path).relative_to(root).as_posix())
    except ValueError:
        return escape_name(path)


def _short(text: str, limit: int = 60) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."

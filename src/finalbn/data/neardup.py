"""Near-duplicate grouping by perceptual hash: an option of `prepare` (`split.near_duplicates`,
off by default), for collections where the same photo comes back resized, recompressed or
re-saved (ISIC's duplicate lists, phone and chat copies).

    keys, across = near_duplicate_keys(usable, sha256_of, max_distance=4)

Each image gets imagehash's 64-bit DCT perceptual hash (`imagehash.phash`, of the image as
`images.load_rgb` decodes it). Two images of the same label whose hashes differ in at most
`max_distance` of 64 bits are near-duplicates, linked transitively (union-find), and share one
draw key: `splits.draw_split` then puts the whole group into one split, as it does with
byte-identical copies. Pairs across the two labels are not merged (a lesion can be all that
tells two photos apart); they are returned for the record.
"""

from __future__ import annotations

from pathlib import Path

import imagehash
import numpy as np
from tqdm import tqdm

from finalbn_field.images import escape_name, load_rgb

METHOD = "imagehash.phash (64-bit DCT hash), Hamming distance"
MAX_ACROSS = 50  # cross-label pairs recorded


def phash64(path: str | Path, decode: dict | None = None) -> int:
    """The 64-bit perceptual hash of an image file as an int (`decode`: load_rgb's keyword
    arguments, `sources.decode_options`). Raises images.BadImage."""
    with load_rgb(path, **(decode or {})) as img:
        bits = imagehash.phash(img).hash.flatten()  # (64,) bool
    return int(np.packbits(bits).view(">u8")[0])


def groups_within(hashes: np.ndarray, max_distance: int) -> list[int]:
    """Union-find roots of (N,) uint64 hashes: i and j share a root when a chain of pairs, each
    at most `max_distance` bits apart, links them. O(N^2 / 2) popcounts, vectorised per row."""
    parent = list(range(len(hashes)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i in range(len(hashes) - 1):
        close = np.nonzero(np.bitwise_count(hashes[i] ^ hashes[i + 1 :]) <= max_distance)[0] + i + 1
        for j in close:
            a, b = root(i), root(int(j))
            if a != b:
                parent[max(a, b)] = min(a, b)
    return [root(i) for i in range(len(hashes))]


def near_duplicate_keys(
    usable: dict[int, list[tuple[str, Path]]],
    sha256_of: dict[str, str],
    max_distance: int,
    progress: bool = False,
    decode: dict | None = None,
) -> tuple[dict[str, str], list[list[str]]]:
    """(draw key per escaped path, cross-label near pairs). A file's key is its sha256, or, in a
    near-duplicate group holding more than one content, `near:<label>:<smallest sha256>`."""
    keys = dict(sha256_of)
    per_label: dict[int, tuple[list[str], np.ndarray]] = {}
    for label, files in usable.items():
        paths = sorted({escape_name(p.as_posix()) for _, p in files})
        raw = {escape_name(p.as_posix()): p for _, p in files}
        hashes = np.array(
            [
                phash64(raw[t], decode)
                for t in tqdm(paths, desc=f"perceptual hash, label {label}", unit="img", disable=not progress)
            ],
            dtype=np.uint64,
        )
        per_label[label] = (paths, hashes)
        roots = groups_within(hashes, max_distance)
        members: dict[int, list[str]] = {}
        for t, r in zip(paths, roots):
            members.setdefault(r, []).append(t)
        for group in members.values():
            shas = {sha256_of[t] for t in group}
            if len(shas) > 1:
                for t in group:
                    keys[t] = f"near:{label}:{min(shas)}"
    across: list[list[str]] = []
    (p0, h0), (p1, h1) = per_label.get(0, ([], np.zeros(0, np.uint64))), per_label.get(1, ([], np.zeros(0, np.uint64)))
    for j, h in enumerate(h1):
        for i in np.nonzero(np.bitwise_count(h0 ^ h) <= max_distance)[0]:
            if len(across) < MAX_ACROSS:
                across.append([p0[int(i)], p1[j]])
    return keys, across

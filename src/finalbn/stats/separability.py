"""The separability ceiling as the stages exchange it: its file, its threshold and its wording.

    write_ceiling(results, Path("results/ceiling/synthetic-apple.json"))   # the ceiling stage
    read_ceilings(Path("results/ceiling"))                                  # the report
    ceiling_sentence(result)                                               # the report's opening line

The ceiling stage (`stages.ceiling`) measures it; the report opens with it. Both read the
threshold `LOW` and the wording from here, so they say the same thing.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from finalbn.infra import io

LOW = 0.9  # below this the report says the features barely see the cue


def ceiling_sentence(result: dict) -> str:
    """The report's opening line about the ceiling."""
    auc = result.get("auroc", math.nan)
    head = (
        f"Separability ceiling ({result.get('dataset')}, {result.get('arch')} at {result.get('image_size')} px): "
        f"a balanced linear probe on the frozen body's features reaches a cross-validated AUROC of "
        f"{auc:.3f} ± {result.get('auroc_std', math.nan):.3f} ({result.get('images')})"
    )
    if auc < LOW:
        return (
            head + f". Below {LOW}: the features barely see the cue, so the study below measures mostly "
            "noise; no head, with or without a final BN, can do much better."
        )
    return head + ": the features do see the cue, so differences between heads are about using it."


def write_ceiling(results: list[dict], path: Path) -> None:
    io.write_json(path, {"ceilings": results})


def read_ceilings(folder: Path) -> list[dict]:
    """Every measurement in the ceiling stage's JSON files under `folder` (none when it is missing).
    Raises ValueError for a file that is not a ceiling output."""
    if not folder.is_dir():
        return []
    out = []
    for path in sorted(folder.glob("*.json")):
        try:
            out.extend(json.loads(path.read_text())["ceilings"])
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"ceiling file {path} is not a `finalbn ceiling` output ({exc})") from None
    return out

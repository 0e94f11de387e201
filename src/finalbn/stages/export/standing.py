"""Each grid configuration's standing in the export's choice: what its parent run carries in the UI.

    table = standings(runs, k=5, chosen="ab12...")   # {config key: Standing}

The number the choice uses is each configuration's mean validation AUROC at the last epoch over
replicates 0..k-1 (`finalbn.stats.selection.rank`), not the parent's own `val_auroc` (the mean over
all its replicates, at the selected epoch). A configuration is a candidate when it ends in a final BN,
ships as trained (no post-hoc step, not PatchCore) and has all k replicates; candidates are ranked
1, 2, ... as the export ranks them (ties: lower validation balanced loss, then fewer switches), so
sorting the grid's parents by `selection/rank` puts the champion first. Configurations of the
search's trials have no grid parent; their ranks still count.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from finalbn.stages.export.select import candidate_rows, is_final_bn, ships_as_trained
from finalbn.stats import selection
from finalbn.tracking import RunRecord
from finalbn.tracking import records as tags


@dataclass(frozen=True)
class Standing:
    """One configuration's standing: `val_auroc` the choice's number (NaN without a replicate in
    0..k-1), `replicates` how many of 0..k-1 it has, `rank` among candidates (None: not one), `why` a
    short reason when it is not, `chosen` whether it is the export's choice."""

    val_auroc: float
    replicates: int
    rank: int | None
    why: str
    chosen: bool


def standings(runs: list[RunRecord], k: int, chosen: str) -> dict[str, Standing]:
    """{configuration key: Standing} of every configuration among `runs` (FINISHED cell runs)."""
    rows, _ = candidate_rows(runs)
    ranked = selection.rank(rows, k) if len(rows) else rows
    ranks = {
        str(r["key"]): int(r["rank"]) for _, r in ranked.iterrows() if bool(r.get("eligible")) and int(r["tier"]) == 0
    }
    by_key: dict[str, dict[int, RunRecord]] = {}
    for r in runs:
        key, rep = r.tags.get(tags.CONFIG_KEY), int(r.tags.get(tags.REPLICATE, 0))
        if (
            key
            and rep < k
            and (rep not in by_key.setdefault(key, {}) or (r.end_time or 0) > (by_key[key][rep].end_time or 0))
        ):
            by_key[key][rep] = r
    out = {}
    for key, reps in by_key.items():
        vals = [x.metrics.get("val_last_auroc", math.nan) for x in reps.values()]
        any_run = next(iter(reps.values()))
        if not is_final_bn(any_run):
            why = "no final BN"
        elif not ships_as_trained(any_run):
            why = "a rival's post-hoc step or detector"
        elif len(reps) < k:
            why = f"{len(reps)} of the {k} replicates 0..{k - 1}"
        else:
            why = ""
        out[key] = Standing(
            float(np.nanmean(vals)) if not all(math.isnan(v) for v in vals) else math.nan,
            len(reps),
            ranks.get(key),
            why,
            key == chosen,
        )
    return out

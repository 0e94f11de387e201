"""The export's choice written onto the grid's parent runs and the search's runs, so that the UI sorts
as the export chose.

    mark_parents(["finalbn/grid"], {key: {"val_auroc": 0.93, "replicates": 5, "rank": 1, "why": "", "chosen": True}})
    mark_cells(["finalbn/search"], table)   # each search run by its configuration key

Each parent run (tag finalbn.parent=true) whose `parent_key` is a key of the table (and, with
`mark_cells`, each cell run whose `config_key` is) gets the metrics
`selection_val_auroc` (the number the choice uses: mean validation AUROC at the last epoch over
replicates 0..k-1), `selection_replicates` and, for a candidate, `selection_rank` (1 = the
champion), and the tags `selection.candidate` (true/false), `selection.why` (why not) and
`selection.chosen`. What the table means is `finalbn.stages.export.standing`'s.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from finalbn.tracking import query
from finalbn.tracking.records import CONFIG_KEY, PARENT, PARENT_KEY
from finalbn.tracking.runs import log_batch, set_tag

CANDIDATE, WHY, CHOSEN = "selection.candidate", "selection.why", "selection.chosen"


def _mark(run_id: str, row: Mapping) -> None:
    metrics = {"selection_val_auroc": row["val_auroc"], "selection_replicates": float(row["replicates"])}
    if row.get("rank") is not None:
        metrics["selection_rank"] = float(row["rank"])
    log_batch(run_id, metrics)
    set_tag(run_id, CANDIDATE, "true" if row.get("rank") is not None else "false")
    set_tag(run_id, WHY, row.get("why", "") or "a candidate")
    set_tag(run_id, CHOSEN, "true" if row.get("chosen") else "false")


def mark_parents(experiments: Sequence[str], table: Mapping[str, Mapping]) -> int:
    """Write each parent's standing (module docstring); returns how many parents were marked."""
    marked = 0
    for run in query.search(list(experiments), f"tags.`{PARENT}` = 'true'"):
        row = table.get(run.tags.get(PARENT_KEY, ""))
        if row is not None:
            _mark(run.run_id, row)
            marked += 1
    return marked


def mark_cells(experiments: Sequence[str], table: Mapping[str, Mapping]) -> int:
    """Write each FINISHED cell run's configuration standing (by its `config_key`: the search's
    trials and comparison runs, which have no parent per configuration); returns how many."""
    marked = 0
    for run in query.finished_cell_runs(list(experiments)):
        row = table.get(run.tags.get(CONFIG_KEY, ""))
        if row is not None:
            _mark(run.run_id, row)
            marked += 1
    return marked

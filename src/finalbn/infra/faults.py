"""Fault points: where the crash tests stop a stage to kill it (SIGKILL, Ctrl-C) at a known moment.

    faults.point("grid.cell")        # a no-op unless FINALBN_FAULT names this point

With `FINALBN_FAULT=<point>[@<n>]` and `FINALBN_FAULT_READY=<file>` in the environment, the n-th
time (default the first) this process reaches `<point>` it writes `<file>` (its pid) and waits
there until a signal ends it: the test that set them sends SIGKILL, or SIGINT twice, to the
process group, as an OOM killer, a pre-empted node or a user's Ctrl-C would. Without them a
point costs one dictionary lookup. The technique is that of failpoints in databases
(FoundationDB's `BUGGIFY`, etcd's gofail, TiKV's fail-rs): the production code path, stopped
at a named place. The points, in pipeline order, are in POINTS (tests/test_faults.py kills at them).
"""

from __future__ import annotations

import os
import time

ENV, READY = "FINALBN_FAULT", "FINALBN_FAULT_READY"

POINTS = {
    "prepare.replicate": "prepare: a replicate's split written, the next one not yet",
    "ceiling.run": "ceiling: inside its MLflow run, features being measured",
    "grid.cell": "grid: inside a cell, its run open, its first epoch trained",
    "grid.between": "grid: between two cells, the first one's run FINISHED",
    "search.cell": "search: inside a trial, its replicate's run open, its first epoch trained",
    "search.compare": "search: the study done, its comparison training the missing runs",
    "report.write": "report: some of its files written, the others not",
    "export.cell": "export: retraining the chosen cell, its run open, its first epoch trained",
    "export.onnx": "export: the ONNX file written to its temporary name, not yet checked",
    "export.register": "export: a model version registered, its alias not yet set",
}

_hits: dict[str, int] = {}


def point(name: str) -> None:
    """Stop here (until killed) when FINALBN_FAULT names `name` and this is its n-th hit."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    where, _, nth = spec.partition("@")
    if where != name:
        return
    _hits[name] = _hits.get(name, 0) + 1
    if _hits[name] != int(nth or 1):
        return
    ready = os.environ.get(READY)
    if ready:
        with open(ready, "w", encoding="utf-8") as fh:
            fh.write(f"{os.getpid()}\n")
    while True:  # a signal ends the wait: SIGKILL the process, SIGINT raises KeyboardInterrupt here
        time.sleep(0.05)

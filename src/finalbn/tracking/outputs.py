"""The run that records the report's output (the ceiling's measurements are runs its core records
through its tracker, `finalbn.stages.ceiling.record`).

    log_report(Path("report"), "finalbn/report")   # every file of the folder, the verdict as tags
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import cast

from finalbn.tracking.fingerprint import note_run
from finalbn.tracking.records import FAILED, FINISHED, REPORT
from finalbn.tracking.runs import create_run, end_run, log_artifacts, log_batch, metric_name, set_tag
from finalbn.tracking.store import experiment_id


def log_report(out_dir: Path, experiment: str) -> str:
    """Log every file of `out_dir` as artifacts of a new run named "report" (tag finalbn.report=true,
    never finalbn.train.cell) in `experiment`; the headline numbers of summary.json become its metrics
    and the verdict a tag. Returns the run id."""
    out = Path(out_dir)
    if not out.is_dir():
        raise FileNotFoundError(f"{out} does not exist: build the report first")
    exp_id = cast(str, experiment_id(experiment, create=True))  # a str: create=True never gives None
    run_id = create_run(exp_id, "report", {REPORT: "true"})
    try:
        log_artifacts(run_id, str(out))
        summary_path = out / "summary.json"
        if summary_path.is_file():
            s = json.loads(summary_path.read_text(encoding="utf-8"))
            log_batch(
                run_id,
                {metric_name(k): float(v) for k, v in (s.get("metrics") or {}).items() if isinstance(v, (int, float))},
            )
            for i, line in enumerate(s.get("verdict") or []):
                set_tag(run_id, f"verdict_{i}", str(line))
        end_run(run_id, FINISHED)
    except BaseException:
        end_run(run_id, FAILED)
        raise
    note_run(run_id)  # the report's files cannot cite the run they are logged to: its fingerprint does
    return run_id

"""The run that records the report's output (the ceiling's measurements are runs its core records
through its tracker, `finalbn.stages.ceiling.record`).

    log_report(Path("report"), "finalbn/report")   # every file of the folder, the verdict as tags and Description

Its artifacts are the folder's files: report.html is the report as the artifact viewer shows it
(its figures inside, `finalbn.stages.report.html`); report.md and the PNGs are the same as files.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import cast

from mlflow.utils.validation import MAX_TAG_VAL_LENGTH

from finalbn.tracking.fingerprint import note_run
from finalbn.tracking.records import FAILED, FINISHED, NOTE, REPORT
from finalbn.tracking.runs import create_run, end_run, log_artifacts, log_batch, metric_name, set_tag
from finalbn.tracking.store import client, experiment_id


def log_report(out_dir: Path, experiment: str) -> str:
    """Log every file of `out_dir` as artifacts of a new run named "report" (tag finalbn.report=true,
    never finalbn.train.cell) in `experiment`; the headline numbers of summary.json become its metrics,
    each verdict sentence a tag (`verdict_<i>`), and its `description` (the verdict in full, Markdown)
    the run's Description. Returns the run id. FileNotFoundError when the folder does not exist."""
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
            if s.get("description"):  # MLflow's own limit, not `runs.set_tag`'s shorter cut: the whole verdict
                client().set_tag(run_id, NOTE, fit_note(str(s["description"])))
        end_run(run_id, FINISHED)
    except BaseException:
        end_run(run_id, FAILED)
        raise
    note_run(run_id)  # the report's files cannot cite the run they are logged to: its fingerprint does
    return run_id


def fit_note(text: str, limit: int = MAX_TAG_VAL_LENGTH) -> str:
    """`text` whole when a tag holds it (MLflow keeps `limit` characters of a tag value), else its
    first lines that fit and a last line saying where the rest is."""
    if len(text) <= limit:
        return text
    tail = f"\n\n(cut at MLflow's {limit} characters of a description: report.html has the rest)"
    kept = text[: limit - len(tail)]
    return kept[: kept.rfind("\n")].rstrip() + tail if "\n" in kept else kept + tail

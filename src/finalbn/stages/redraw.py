"""`finalbn figures`: draw a cell run's five figures later, from what the run logged.

    finalbn figures --run-id 3f51fe95c0a94d7c8e6a0d4f3c2b1a90 [more run ids]

A grid's cells do not draw their figures as they finish (`tracking.cell_figures: train`: a
second of CPU a cell, more than a warm cell's training on a GPU). This draws them on demand from
the run's `history.csv`, `predictions/test_predictions.csv`, `reliability.json`, its test ECE
metrics and tags — the same figures `cellrun.cell_figures` draws inside a cell — and logs them
under the run's `plots/`, as a cell with `tracking.cell_figures: all` would have.
"""

from __future__ import annotations

import argparse
import io
import json
from typing import cast

import numpy as np
import pandas as pd

from finalbn import tracking
from finalbn.config import Config
from finalbn.infra.errors import UsageError
from finalbn.stages.cellrun import cell_figures
from finalbn.stats import metrics
from finalbn.tracking import records as tags_

NEEDED = ("history.csv", "predictions/test_predictions.csv", "reliability.json")


def _inputs(run_id: str) -> dict:
    """What the figures need from one run. Raises UsageError naming the run and what it lacks."""
    run = tracking.get_run(run_id)
    if run is None:
        raise UsageError(f"run {run_id} is not in the tracking store {tracking.tracking_uri()}")
    texts = {name: tracking.artifact_text(run_id, name) for name in NEEDED}
    missing = [n for n, t in texts.items() if t is None] + [
        m for m in ("test_ece", "test_sel_ece") if m not in run.metrics
    ]
    if missing:
        raise UsageError(f"run {run_id} ({run.name}) is not a finished cell run: it lacks {', '.join(missing)}")
    preds = pd.read_csv(io.StringIO(texts["predictions/test_predictions.csv"]))
    labels = preds["label"].to_numpy(dtype=np.int64)
    p1 = preds["p1_last"].to_numpy(dtype=np.float64)
    probs = np.column_stack([1.0 - p1, p1])
    reliability = json.loads(cast(str, texts["reliability.json"]))  # a str: `missing` raised for None
    t = run.tags
    return {
        "history": pd.read_csv(io.StringIO(texts["history.csv"])).to_dict("records"),
        "labels": labels,
        "probs_last": probs,
        "reliability_last": reliability["last"],
        "reliability_sel": reliability["selected"],
        "confusion": metrics.confusion(labels, probs.argmax(1)).tolist(),
        "selected_epoch": int(t.get(tags_.SELECTED_EPOCH, 0)),
        "title": f"{t.get(tags_.DATASET, '')} r{t.get(tags_.REPLICATE, '')} {t.get(tags_.CONFIG_NAME, run.name)} "
        f"(config {t.get(tags_.CONFIG_ID, '?')})",
        "ece_last": run.metrics["test_ece"],
        "ece_sel": run.metrics["test_sel_ece"],
    }


def main(cfg: Config, args: argparse.Namespace) -> int:
    """Every run's inputs are read (one-line error on the first that lacks one) before any is drawn."""
    inputs = {run_id: _inputs(run_id) for run_id in dict.fromkeys(args.run_id)}
    for run_id, kw in inputs.items():
        figs = cell_figures(**kw)
        for name, fig in figs.items():
            tracking.log_figure(run_id, fig, f"plots/{name}")
        print(f"figures: run {run_id}: {', '.join(f'plots/{n}' for n in figs)}")
    return 0

"""The figures of a grid configuration's parent run, drawn once when the parent closes
(`grid.shard._close_parent`), so the MLflow UI shows a configuration's replicates at a glance:

    paths = log_parent_figures(tracker, parent_id, tracker.children(cfg, "grid", parent_key), "BN (config 31)")
    # ["plots/loss_curves.png", "plots/reliability.png"] on the parent

`plots/loss_curves.png`: train and validation loss per epoch, one faint line per replicate and their
mean (the replicates' per-epoch metrics, `Tracker.metric_history`). `plots/reliability.png`: the
reliability diagram of the replicates' validation predictions pooled (each cell run's
`cellrun.VAL_PREDICTIONS`, binned as `finalbn.stats.metrics.reliability_bins`). A parent whose
replicates logged neither gets no figure (one line on the log, no error). Cost: per replicate two
metric histories and one small CSV read from the store, then two small PNGs.
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Callable, Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from finalbn.plots import cellplots
from finalbn.stages.cellrun import VAL_PREDICTIONS
from finalbn.stages.tracker import Tracker
from finalbn.stats import metrics
from finalbn.tracking.records import RunRecord

__all__ = ["LOSS_CURVES", "LOSS_KEYS", "RELIABILITY", "log_parent_figures", "loss_curves", "parent_figures"]

LOSS_KEYS = ("train_loss", "val_loss")  # the per-epoch names `train.engine` logs (step = epoch)
LOSS_CURVES = "plots/loss_curves.png"
RELIABILITY = "plots/reliability.png"
_NEEDS = {LOSS_CURVES: "per-epoch loss", RELIABILITY: VAL_PREDICTIONS}  # a figure -> what it is drawn from
_LINES = (("train_loss", "tab:blue", "train"), ("val_loss", "tab:orange", "validation"))  # as report/figures' Fig. 3
# Fixed margins: constrained layout costs ~0.3 s a figure (cellplots._MARGINS)
_MARGINS = {"left": 0.12, "right": 0.97, "bottom": 0.13, "top": 0.88}

_log = logging.getLogger(__name__)

History = Mapping[int, Mapping[str, float]]  # {epoch: {metric: value}}, `Tracker.metric_history`


def loss_curves(histories: Sequence[History], title: str = "") -> Figure:
    """Train (blue) and validation (orange) cross-entropy per epoch: a faint line per replicate
    and, bold, their mean over the replicates that logged that epoch. `histories`: one
    {epoch: {"train_loss", "val_loss"}} per replicate; a missing value is a gap. Raises ValueError
    when no replicate logged either loss."""
    epochs = sorted({e for h in histories for e, row in h.items() if any(k in row for k in LOSS_KEYS)})
    if not epochs:
        raise ValueError(f"no replicate has a per-epoch {' or '.join(LOSS_KEYS)}")
    x = np.array(epochs, dtype=np.float64)
    fig, ax = plt.subplots(figsize=(6, 4), gridspec_kw=_MARGINS)
    for key, color, label in _LINES:
        # (replicates, epochs); NaN where a replicate did not log the loss at that epoch
        table = np.array([[h.get(e, {}).get(key, np.nan) for e in epochs] for h in histories], dtype=np.float64)
        table = table[~np.isnan(table).all(axis=1)]
        if not len(table):
            continue
        for row in table:
            ax.plot(x, row, color=color, alpha=0.3, linewidth=1, marker=".", markersize=3)
        counts = (~np.isnan(table)).sum(axis=0)
        mean = np.where(counts > 0, np.nansum(table, axis=0) / np.maximum(counts, 1), np.nan)
        ax.plot(x, mean, color=color, linewidth=2.2, marker="o", markersize=4, label=f"{label}, mean of {len(table)}")
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
    ax.set_ylabel("cross-entropy")
    ax.grid(alpha=0.3)
    ax.legend()
    if title:
        ax.set_title(title)
    return fig


def _validation_predictions(tracker: Tracker, run_id: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(labels, P(diseased) at the last epoch) of one cell run's validation images, or None when
    it logged none (an older run, or an empty file)."""
    text = tracker.artifact_text(run_id, VAL_PREDICTIONS)
    rows = list(csv.DictReader(io.StringIO(text or "")))
    if not rows or not {"label", "p1_last"} <= rows[0].keys():
        return None
    return np.array([int(r["label"]) for r in rows]), np.array([float(r["p1_last"]) for r in rows])


def parent_figures(tracker: Tracker, children: Sequence[RunRecord], name: str) -> dict[str, Figure]:
    """{artifact path: figure} for the parent of `children` (its FINISHED replicates), named
    `name`: LOSS_CURVES when one logged a per-epoch loss, RELIABILITY when one logged its
    validation predictions; {} when none did. The caller logs and closes the figures."""
    figs: dict[str, Figure] = {}
    histories = [tracker.metric_history(c.run_id, LOSS_KEYS) for c in children]
    if any(histories):
        figs[LOSS_CURVES] = loss_curves(histories, f"{name}: {len(children)} replicates")
    pooled = [p for p in (_validation_predictions(tracker, c.run_id) for c in children) if p is not None]
    if pooled:
        labels = np.concatenate([y for y, _ in pooled])
        p1 = np.concatenate([p for _, p in pooled])
        probs = np.column_stack([1.0 - p1, p1])  # (N, 2) softmax rows, as `metrics` takes them
        ece = metrics.ece(labels, probs)
        title = f"{name}: validation, {len(pooled)} replicates pooled\n{len(labels)} images, ECE {ece:.3f}"
        figs[RELIABILITY] = cellplots.reliability_diagram(metrics.reliability_bins(labels, probs), title)
    return figs


def log_parent_figures(
    tracker: Tracker,
    parent_id: str,
    children: Sequence[RunRecord],
    name: str,
    log: Callable[[str], None] = _log.warning,
) -> list[str]:
    """Draw `parent_figures` and log each onto the run `parent_id` (open or ended) under its path;
    the paths logged. One `log` line names a figure its replicates had no data for."""
    figs = parent_figures(tracker, children, name)
    try:
        missing = [f"{p} (no {what})" for p, what in _NEEDS.items() if p not in figs]
        if missing:
            log(f"parent run {parent_id} ({name}): {len(children)} finished replicate(s), no {', '.join(missing)}")
        for path, fig in figs.items():
            tracker.log_figure_to(parent_id, fig, path)
    finally:
        for fig in figs.values():  # closed by the tracker; here too when logging one failed
            plt.close(fig)
    return list(figs)

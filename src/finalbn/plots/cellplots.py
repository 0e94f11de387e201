"""Matplotlib figures for the study, returned as ``Figure`` objects to be logged as artifacts.

The Agg backend is selected at import (no display needed). Every function but the two
``*_panel`` ones creates exactly one pyplot figure and returns it without showing or saving it;
the caller saves or logs it and then must call ``plt.close(fig)`` so figures do not pile up over
a long run. ``softmax_panel`` and ``reliability_panel`` draw the same on a given Axes (the
report's multi-panel figures use them).

    fig = reliability_diagram(metrics.reliability_bins(y, probs), title="ECE 0.041")

Inputs follow ``finalbn.stats.metrics``: ``y_true`` are class indices (0 = healthy/majority,
1 = diseased/minority), ``probs`` are ``(N, 2)`` softmax rows, ``bins`` is the dict returned by
``metrics.reliability_bins``. Bad inputs raise ``ValueError`` with a one-line message.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

__all__ = [
    "confusion_matrix_plot",
    "loss_curves",
    "reliability_diagram",
    "reliability_panel",
    "softmax_panel",
    "softmax_scatter",
]

# Fixed margins: a per-cell figure is drawn for every run, and constrained layout cost ~0.35 s a cell.
_MARGINS = {"left": 0.12, "right": 0.97, "bottom": 0.13, "top": 0.88}
_BIN_KEYS = ("lower", "upper", "count", "accuracy", "confidence")


def _series(history: list[dict], key: str) -> np.ndarray:
    """Values of one history key as floats; a missing key or None becomes NaN (a gap)."""
    return np.array([np.nan if row.get(key) is None else float(row[key]) for row in history], dtype=np.float64)


def loss_curves(history: list[dict], title: str = "") -> Figure:
    """Two panels over epochs: train/val loss (left); val accuracy and val minority F1 (right).

    ``history`` rows: ``{"epoch", "train_loss", "val_loss", "val_accuracy", "val_minority_f1"}``.
    A missing value (key absent or None) is left as a gap; ``epoch`` is required in every row.
    """
    if not history:
        raise ValueError("history is empty")
    if any("epoch" not in row or row["epoch"] is None for row in history):
        raise ValueError("every history row needs an 'epoch'")
    epochs = _series(history, "epoch")
    fig, (ax_loss, ax_score) = plt.subplots(
        1, 2, figsize=(10, 4), gridspec_kw=_MARGINS | {"wspace": 0.25, "top": 0.82, "left": 0.07}
    )
    ax_loss.plot(epochs, _series(history, "train_loss"), marker="o", label="train loss")
    ax_loss.plot(epochs, _series(history, "val_loss"), marker="o", label="val loss")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("cross-entropy")
    ax_loss.set_title("loss")
    ax_loss.legend()
    ax_loss.grid(alpha=0.3)
    ax_score.plot(epochs, _series(history, "val_accuracy"), marker="o", label="val accuracy")
    ax_score.plot(epochs, _series(history, "val_minority_f1"), marker="o", label="val minority F1")
    ax_score.set_xlabel("epoch")
    ax_score.set_ylabel("score")
    ax_score.set_ylim(-0.02, 1.02)
    ax_score.set_title("validation")
    ax_score.legend()
    ax_score.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    return fig


def softmax_scatter(y_true, probs, title: str = "") -> Figure:
    """The paper's Fig. 4: softmax outputs of every test image, ordered by ground truth.

    x = image index after a stable sort by label (all class 0, then all class 1); blue points
    P(class 0), red points P(class 1), black step line the ground truth (0/1), dashed line at 0.5.
    """
    y = np.asarray(y_true)
    p = np.asarray(probs, dtype=np.float64)
    if y.ndim != 1 or y.size == 0:
        raise ValueError(f"y_true must be a non-empty 1-D array, got shape {y.shape}")
    if p.ndim != 2 or p.shape[1] != 2:
        raise ValueError(f"probs must have shape (N, 2), got {p.shape}")
    if p.shape[0] != y.shape[0]:
        raise ValueError(f"y_true has {y.shape[0]} samples but probs has {p.shape[0]} rows")
    fig, ax = plt.subplots(figsize=(8, 4), gridspec_kw=_MARGINS)
    softmax_panel(ax, y, p[:, 0], p[:, 1])
    ax.legend(loc="center left", fontsize="small")
    if title:
        ax.set_title(title)
    return fig


def reliability_diagram(bins: dict, title: str = "") -> Figure:
    """Accuracy per confidence bin (blue bars) against the diagonal, with the gap to the mean
    confidence (red hatched bars, from accuracy to confidence). Empty bins are not drawn.

    ``bins`` is ``metrics.reliability_bins(...)``; put the ECE in ``title`` if wanted.
    """
    missing = [k for k in _BIN_KEYS if k not in bins]
    if missing:
        raise ValueError(f"bins is missing keys {missing} (expected {list(_BIN_KEYS)})")
    n = len(bins["lower"])
    if n == 0 or any(len(bins[k]) != n for k in _BIN_KEYS):
        raise ValueError("bins lists must be non-empty and of equal length")
    fig, ax = plt.subplots(figsize=(5, 5), gridspec_kw=_MARGINS)
    reliability_panel(ax, bins, title)
    return fig


def softmax_panel(ax: Axes, y, p0, p1, marker_size: float = 10) -> None:
    """Fig. 4's drawing on a given Axes: P(class 0) blue and P(class 1) red per image after a
    stable sort by label `y`, the ground truth as a black step line, a dashed line at 0.5.
    Legend and title are the caller's."""
    y = np.asarray(y)
    order = np.argsort(y, kind="stable")
    x = np.arange(y.shape[0])
    ax.scatter(x, np.asarray(p0, dtype=np.float64)[order], s=marker_size, color="tab:blue", label="P(class 0, healthy)")
    ax.scatter(x, np.asarray(p1, dtype=np.float64)[order], s=marker_size, color="tab:red", label="P(class 1, diseased)")
    ax.plot(x, y[order].astype(np.float64), color="black", drawstyle="steps-mid", linewidth=1.5, label="ground truth")
    ax.axhline(0.5, color="gray", linestyle="--", linewidth=1, label="0.5")
    ax.set_xlabel("test image (ordered by ground truth)")
    ax.set_ylabel("softmax output")
    ax.set_ylim(-0.05, 1.05)


def reliability_panel(ax: Axes, bins: dict, title: str = "", fontsize: str | None = None) -> None:
    """The reliability diagram drawn on a given Axes (see `reliability_diagram`); `fontsize` of
    the legend and the title, matplotlib's defaults when None. `bins` is not validated here."""
    lower = np.asarray(bins["lower"], dtype=np.float64)
    width = np.asarray(bins["upper"], dtype=np.float64) - lower
    full = [i for i, c in enumerate(bins["count"]) if c and bins["accuracy"][i] is not None]
    acc = np.array([bins["accuracy"][i] for i in full], dtype=np.float64)
    conf = np.array([bins["confidence"][i] for i in full], dtype=np.float64)
    ax.bar(lower[full], acc, width=width[full], align="edge", color="tab:blue", edgecolor="black", label="accuracy")
    ax.bar(
        lower[full],
        conf - acc,
        bottom=acc,
        width=width[full],
        align="edge",
        color="tab:red",
        alpha=0.3,
        edgecolor="tab:red",
        hatch="//",
        label="gap",
    )
    ax.plot([0, 1], [0, 1], color="gray", linestyle="--", label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    size: dict[str, Any] = {"fontsize": fontsize} if fontsize else {}  # None would override the title's larger default
    ax.legend(loc="upper left", **size)
    if title:
        ax.set_title(title, **size)


def confusion_matrix_plot(cm, class_names: Sequence[str] = ("healthy", "diseased")) -> Figure:
    """Confusion matrix heat map (rows = true class, columns = predicted) with counts written in."""
    m = np.asarray(cm)
    k = len(class_names)
    if m.ndim != 2 or m.shape != (k, k):
        raise ValueError(f"cm must have shape ({k}, {k}) to match class_names, got {m.shape}")
    fig, ax = plt.subplots(figsize=(4, 4), gridspec_kw=_MARGINS | {"left": 0.27, "right": 0.86})
    im = ax.imshow(m, cmap="Blues", vmin=0)
    threshold = m.max() / 2 if m.size and m.max() > 0 else 0
    for i in range(k):
        for j in range(k):
            value = m[i, j]
            text = f"{int(value)}" if float(value).is_integer() else f"{value:.2f}"
            ax.text(j, i, text, ha="center", va="center", color="white" if value > threshold else "black")
    ax.set_xticks(range(k), labels=list(class_names))
    ax.set_yticks(range(k), labels=list(class_names))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    return fig

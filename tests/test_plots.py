"""finalbn.plots.cellplots: each function returns one Figure that saves to a PNG and closes cleanly."""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import matplotlib.text
import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from finalbn.config import ablation_from_id, config_name
from finalbn.plots import cellplots
from finalbn.stages.report import figures
from finalbn.stats import metrics

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

Y = np.array([1, 0, 1, 0, 0, 0])
P1 = np.array([0.9, 0.1, 0.35, 0.3, 0.75, 0.45])
PROBS = np.column_stack([1 - P1, P1])

HISTORY = [
    {"epoch": 1, "train_loss": 0.9, "val_loss": 1.0, "val_accuracy": 0.6, "val_minority_f1": 0.0},
    {"epoch": 2, "train_loss": 0.6, "val_loss": 0.8, "val_accuracy": 0.7, "val_minority_f1": 0.3},
    {"epoch": 3, "train_loss": 0.4, "val_loss": 0.7, "val_accuracy": 0.8, "val_minority_f1": 0.5},
]


def _save_and_close(fig, tmp_path, name, before):
    assert isinstance(fig, Figure)
    assert len(plt.get_fignums()) == len(before) + 1  # exactly one new figure
    path = tmp_path / f"{name}.png"
    fig.savefig(path)
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 1000
    plt.close(fig)
    assert plt.get_fignums() == before  # no leak


def test_backend_is_agg():
    assert matplotlib.get_backend().lower() == "agg"


def test_loss_curves(tmp_path):
    before = plt.get_fignums()
    fig = cellplots.loss_curves(HISTORY, title="run 1")
    ax_loss, ax_score = fig.axes[:2]
    assert len(fig.axes) == 2
    lines = {ln.get_label(): ln for ln in ax_loss.get_lines()}
    np.testing.assert_allclose(lines["train loss"].get_xdata(), [1, 2, 3])
    np.testing.assert_allclose(lines["val loss"].get_ydata(), [1.0, 0.8, 0.7])
    scores = {ln.get_label(): ln for ln in ax_score.get_lines()}
    np.testing.assert_allclose(scores["val minority F1"].get_ydata(), [0.0, 0.3, 0.5])
    np.testing.assert_allclose(scores["val accuracy"].get_ydata(), [0.6, 0.7, 0.8])
    assert fig._suptitle.get_text() == "run 1"
    _save_and_close(fig, tmp_path, "loss", before)


def test_loss_curves_missing_values_are_gaps(tmp_path):
    before = plt.get_fignums()
    fig = cellplots.loss_curves([{"epoch": 0, "train_loss": 1.0}, {"epoch": 1, "train_loss": 0.5, "val_loss": None}])
    val = next(ln for ln in fig.axes[0].get_lines() if ln.get_label() == "val loss")
    assert np.isnan(val.get_ydata()).all()
    _save_and_close(fig, tmp_path, "loss_gaps", before)


def test_loss_curves_rejects_empty():
    with pytest.raises(ValueError):
        cellplots.loss_curves([])
    with pytest.raises(ValueError, match="epoch"):
        cellplots.loss_curves([{"train_loss": 1.0}])


def test_softmax_scatter(tmp_path):
    before = plt.get_fignums()
    fig = cellplots.softmax_scatter(Y, PROBS, title="with final BN")
    ax = fig.axes[0]
    assert ax.get_title() == "with final BN"
    # stable order: class-0 samples (indices 1,3,4,5) then class-1 samples (0,2)
    order = [1, 3, 4, 5, 0, 2]
    blue, red = ax.collections[:2]
    np.testing.assert_allclose(blue.get_offsets()[:, 1], PROBS[order, 0])
    np.testing.assert_allclose(red.get_offsets()[:, 1], PROBS[order, 1])
    np.testing.assert_allclose(red.get_offsets()[:, 0], np.arange(6))
    truth = next(ln for ln in ax.get_lines() if ln.get_label() == "ground truth")
    np.testing.assert_array_equal(truth.get_ydata(), [0, 0, 0, 0, 1, 1])
    assert truth.get_color() == "black"
    half = next(ln for ln in ax.get_lines() if ln.get_label() == "0.5")
    assert half.get_linestyle() == "--"
    np.testing.assert_allclose(half.get_ydata(), [0.5, 0.5])
    _save_and_close(fig, tmp_path, "scatter", before)


def test_softmax_scatter_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"\(N, 2\)"):
        cellplots.softmax_scatter([0, 1], np.full((2, 3), 1 / 3))
    with pytest.raises(ValueError, match="samples"):
        cellplots.softmax_scatter([0, 1, 1], PROBS[:2])


def test_reliability_diagram(tmp_path):
    bins = metrics.reliability_bins(Y, PROBS)
    ece = metrics.ece(Y, PROBS)
    before = plt.get_fignums()
    fig = cellplots.reliability_diagram(bins, title=f"ECE = {ece:.3f}")
    ax = fig.axes[0]
    assert ax.get_title() == f"ECE = {ece:.3f}"
    full = [i for i, c in enumerate(bins["count"]) if c]
    assert len(full) == 5  # empty bins are not drawn
    acc_bars = ax.containers[0]
    gap_bars = ax.containers[1]
    np.testing.assert_allclose([r.get_height() for r in acc_bars], [bins["accuracy"][i] for i in full])
    np.testing.assert_allclose([r.get_x() for r in acc_bars], [bins["lower"][i] for i in full])
    # gap bar spans accuracy -> confidence
    np.testing.assert_allclose([r.get_y() + r.get_height() for r in gap_bars], [bins["confidence"][i] for i in full])
    diag = next(ln for ln in ax.get_lines() if ln.get_label() == "perfect calibration")
    np.testing.assert_allclose(diag.get_ydata(), [0, 1])
    _save_and_close(fig, tmp_path, "reliability", before)


def test_reliability_diagram_rejects_bad_bins():
    with pytest.raises(ValueError, match="missing"):
        cellplots.reliability_diagram({"lower": [0.0], "upper": [1.0]})


def test_confusion_matrix_plot(tmp_path):
    cm = metrics.confusion(Y, PROBS.argmax(axis=1))
    assert cm.tolist() == [[3, 1], [1, 1]]
    before = plt.get_fignums()
    fig = cellplots.confusion_matrix_plot(cm)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.texts] == ["3", "1", "1", "1"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["healthy", "diseased"]
    np.testing.assert_array_equal(ax.images[0].get_array(), cm)
    _save_and_close(fig, tmp_path, "cm", before)


def test_confusion_matrix_plot_rejects_wrong_shape():
    with pytest.raises(ValueError, match="shape"):
        cellplots.confusion_matrix_plot(np.zeros((3, 3)))


def test_panels_draw_on_a_given_axes(tmp_path):
    """The report's multi-panel figures draw the same panels as the single-figure functions."""
    bins = metrics.reliability_bins(Y, PROBS)
    before = plt.get_fignums()
    fig, (ax_rel, ax_soft) = plt.subplots(1, 2)
    cellplots.reliability_panel(ax_rel, bins, "pooled", fontsize="small")
    cellplots.softmax_panel(ax_soft, Y, PROBS[:, 0], PROBS[:, 1], marker_size=8)
    single = cellplots.reliability_diagram(bins)
    np.testing.assert_allclose(
        [r.get_height() for r in ax_rel.containers[0]], [r.get_height() for r in single.axes[0].containers[0]]
    )
    assert ax_rel.get_title() == "pooled" and single.axes[0].get_title() == ""
    plt.close(single)
    np.testing.assert_allclose(ax_soft.collections[1].get_offsets()[:, 1], PROBS[[1, 3, 4, 5, 0, 2], 1])
    assert ax_soft.collections[0].get_sizes().tolist() == [8]
    _save_and_close(fig, tmp_path, "panels", before)


def _smallest_font_pt(fig) -> float:
    sizes = [t.get_fontsize() for t in fig.findobj(matplotlib.text.Text) if t.get_visible() and t.get_text().strip()]
    return min(sizes)


def test_the_reports_crowded_figures_are_readable_at_their_rendered_size(tmp_path, monkeypatch):
    """configs.png (64 configurations) and effects.png: every text at least MIN_TEXT_PX high when the
    figure is shown RENDER_PX wide (a Markdown viewer), i.e. its font in points against its width."""
    seen = {}
    save = Figure.savefig

    def spy(self, path, *a, **k):
        name = re.sub(r"^\.(.+)\.\d+\.[0-9a-f]{8}\.tmp$", r"\1", Path(path).name)  # its atomic write's temporary
        seen[name] = (_smallest_font_pt(self), self.get_figwidth())
        return save(self, path, *a, **k)

    monkeypatch.setattr(Figure, "savefig", spy)
    rng = np.random.default_rng(0)
    cells = pd.DataFrame(
        [
            {
                "dataset": "d",
                "arch": "a",
                "config_id": c,
                "config_name": config_name(ablation_from_id(c)),
                "replicate": r,
                "val_auroc": rng.random(),
                "test_auroc": rng.random(),
                "test_f1_1": rng.random(),
            }
            for c in range(64)
            for r in range(2)
        ]
    )
    figures.fig_configs(cells, tmp_path / "configs.png")
    eff = pd.DataFrame(
        [
            {
                "metric": "f1_1",
                "effect": f"e{i}",
                "kind": "main",
                "estimate": 0.1 * i,
                "ci_low": 0.0,
                "ci_high": 0.2 * i,
                "boot_low": float("nan"),
                "boot_high": float("nan"),
                "scope": "d/a",
                "label": f"effect number {i}",
            }
            for i in range(30)
        ]
    )
    figures.fig_effects(eff, tmp_path / "effects.png")
    assert set(seen) == {"configs.png", "effects.png"}
    for name, (pt, width) in seen.items():
        assert pt >= figures.min_font_pt(width), f"{name}: {pt} pt in a {width}-inch figure"

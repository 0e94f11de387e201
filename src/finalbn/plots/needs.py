"""The data-needs figure: minority F1 against the number of minority training images, per method.

    fig_needs(table, curves, result, Path("results/needs/needs.png"))

Dots: replicates; lines: the fitted inverse power-law curves (`finalbn.stats.learning`); the target
F1 as a dashed line, the images needed for it (with its bootstrap interval) on the final BN's curve.
A leaf (matplotlib via `finalbn.plots.cellplots`).
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from finalbn.infra.io import save_figure
from finalbn.plots import cellplots  # noqa: F401  (selects the Agg backend before pyplot is imported)

COLOURS = ("tab:red", "tab:blue", "tab:green", "tab:purple")


def fig_needs(table: pd.DataFrame, curves: pd.DataFrame, result: dict, path: Path) -> Figure:
    """Save the figure to `path` and return it (the caller closes it). `table`: method, n, replicate, f1 (`needs.scored`); `curves`:
    method, n, f1 (each fitted curve on a grid of n); `result`: `needs.answer`'s dict."""
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    rng = np.random.default_rng(0)
    for colour, method in zip(COLOURS, dict.fromkeys(table["method"])):
        g = table[table["method"] == method]
        jitter = np.exp(rng.uniform(-0.06, 0.06, len(g)))
        ax.scatter(g["n"] * jitter, g["f1"], s=12, alpha=0.5, color=colour)
        means = g.groupby("n")["f1"].mean()
        ax.plot(means.index, means.to_numpy(), "o", color=colour, markersize=6, label=f"{method} (mean)")
        c = curves[curves["method"] == method] if len(curves) else curves
        if len(c):
            ax.plot(c["n"], c["f1"], "-", color=colour, alpha=0.8)
        need = result.get("needed", {}).get(method, {})
        n = need.get("n")
        if isinstance(n, (int, float)) and math.isfinite(n) and colour == COLOURS[0]:
            lo, hi = need.get("ci_low"), need.get("ci_high")
            ax.axvline(n, color=colour, linestyle=":", alpha=0.8)
            if isinstance(lo, (int, float)) and isinstance(hi, (int, float)) and math.isfinite(lo):
                ax.axvspan(lo, hi if math.isfinite(hi) else ax.get_xlim()[1], color=colour, alpha=0.08)
    ax.axhline(result.get("target_f1", 0.8), color="gray", linestyle="--", label="target")
    ax.set_xscale("log")
    ax.set_xlabel("minority (defect) training images, majority fixed")
    ax.set_ylabel(f"minority F1 at π = {result.get('prevalence', float('nan')):g} (validation cut)")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title("How many defect images? Replicates (dots) and fitted learning curves", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    return fig

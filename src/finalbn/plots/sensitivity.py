"""The sensitivity figures: the headline contrast and both configurations' F1 per level of a factor.

    fig_factor(rows_of_one_factor, "batch_size", Path("results/sensitivity/batch_size.png"))
    fig_factors(all_rows, Path("report/sensitivity.png"))      # one row of panels per factor

A leaf (matplotlib via `finalbn.plots.cellplots`): the sensitivity stage draws one figure per factor, the
report all of them in one.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np
import pandas as pd

from finalbn.infra.io import save_figure
from finalbn.plots import cellplots  # noqa: F401  (selects the Agg backend before pyplot is imported)

TITLES = {
    "imbalance": "training minority share",
    "batch_size": "batch size",
    "final_bn_momentum": "final BN momentum",
    "frozen_bn": "frozen body BN mode",
    "single_logit": "output layer",
    "final_bn_at_inference": "final BN at inference",
    "bias_shift": "rival of the final BN",
}


def draw_factor(axes, rows: pd.DataFrame, factor: str) -> None:
    """On two Axes. Left: minority F1 of 31 and of its rival per level, at the largest and the
    smallest π. Right: 31 − rival with its 95 % t interval over replicates at each π; the reference
    level (params.yaml's own setting) is marked, and so is a level whose comparison is `collapsed` at
    some π (a model flagging almost nothing or almost everything: no gain to read)."""
    pis = sorted(rows["prevalence"].unique(), reverse=True)
    levels = list(dict.fromkeys(rows["level"]))
    x = np.arange(len(levels))
    shown = [pis[0], pis[-1]] if len(pis) > 1 else pis
    for pi, style in zip(shown, ("-", "--")):
        sub = rows[np.isclose(rows["prevalence"], pi)].set_index("level").reindex(levels)
        axes[0].plot(x, sub["f1_bn"], "o" + style, color="tab:red", label=f"final BN (31), π = {pi:g}")
        axes[0].plot(x, sub["f1_rival"], "s" + style, color="tab:blue", label=f"{sub['rival'].iloc[0]}, π = {pi:g}")
    axes[0].set_ylabel("test minority F1 (mean)")
    axes[0].set_ylim(0, 1)
    axes[0].legend(fontsize="x-small")
    offsets = np.linspace(-0.25, 0.25, len(pis)) if len(pis) > 1 else [0.0]
    for pi, dx in zip(pis, offsets):
        sub = rows[np.isclose(rows["prevalence"], pi)].set_index("level").reindex(levels)
        est = sub["estimate"].to_numpy(float)
        lo = np.nan_to_num(est - sub["ci_low"].to_numpy(float))
        hi = np.nan_to_num(sub["ci_high"].to_numpy(float) - est)
        axes[1].errorbar(x + dx, est, yerr=[lo, hi], fmt="o", capsize=3, label=f"π = {pi:g}")
    axes[1].axhline(0, color="gray", linestyle="--")
    axes[1].set_ylabel("31 − rival, minority F1")
    axes[1].legend(fontsize="x-small", title="field prevalence", title_fontsize="x-small")
    refs = set(rows.loc[rows["reference"].astype(bool), "level"])
    broke = set(rows.loc[rows["collapsed"].fillna(False).astype(bool), "level"]) if "collapsed" in rows else set()
    labels = [f"{lv}\n(reference)" if lv in refs else lv for lv in levels]
    labels = [f"{lab}\n(collapsed)" if lv in broke else lab for lab, lv in zip(labels, levels)]
    n = int(rows["n"].max()) if len(rows) and not math.isnan(rows["n"].max()) else 0
    for ax in axes:
        ax.set_xticks(x, labels=labels, fontsize="small")
        ax.set_xlabel(f"{TITLES.get(factor, factor)} ({n} replicates; intervals: 95% t)")
        ax.grid(alpha=0.3)


def fig_factor(rows: pd.DataFrame, factor: str, path: Path) -> None:
    """One factor's figure (`draw_factor`)."""
    levels = rows["level"].nunique()
    fig, axes = plt.subplots(1, 2, figsize=(max(9, 2.2 * levels + 5), 4.3), layout="constrained")
    draw_factor(axes, rows, factor)
    fig.suptitle(
        f"sensitivity of final BN alone vs nothing (31 − 63) to the {TITLES.get(factor, factor)}", fontsize="small"
    )
    save_figure(fig, path, dpi=90)
    plt.close(fig)


def fig_factors(rows: pd.DataFrame, path: Path) -> None:
    """Every factor of a sensitivity.csv, one row of `draw_factor` panels each."""
    factors = list(dict.fromkeys(rows["factor"]))
    fig, axes = plt.subplots(len(factors), 2, figsize=(12, 3.8 * len(factors)), layout="constrained", squeeze=False)
    for ax_pair, factor in zip(axes, factors):
        draw_factor(ax_pair, rows[rows["factor"] == factor], factor)
    fig.suptitle("sensitivity of final BN alone vs nothing (31 − 63): one setting changed at a time", fontsize="small")
    save_figure(fig, path, dpi=90)
    plt.close(fig)

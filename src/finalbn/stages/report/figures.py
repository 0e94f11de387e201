"""The report's figures, each written to a PNG path (matplotlib, Agg backend).

    fig_configs(cells, "configs.png")     # AUROC and minority F1 per configuration, replicate spread
    fig_effects(effects, "effects.png")   # estimates with their intervals
    fig_prevalence(means, effects, "prevalence.png")   # 31 and 63, and their difference, at each π

Fig. 4's softmax panels and the reliability panels are drawn by `finalbn.plots.cellplots`, as in the per-run
figures, so the two look alike.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np
import pandas as pd

from finalbn.infra.io import save_figure
from finalbn.plots import cellplots  # first: it selects the Agg backend before pyplot is imported
from finalbn.stages.report.tables import BN_ID, NONE_ID, WL_ID, bins_ece  # noqa: E402


def placeholder(path: Path, message: str) -> None:
    fig, ax = plt.subplots(figsize=(6, 2))
    ax.axis("off")
    ax.text(0.5, 0.5, message, ha="center", va="center", wrap=True)
    save_figure(fig, path, dpi=80)
    plt.close(fig)


def fig_ceiling(ceilings: list[dict], path: Path, low: float) -> None:
    """One bar per (dataset, arch): the probe's CV AUROC ± std over folds, the 0.5 and `low` lines."""
    fig, ax = plt.subplots(figsize=(8, 0.6 * len(ceilings) + 1.8), layout="constrained")
    y = np.arange(len(ceilings))[::-1]
    auc = [c["auroc"] for c in ceilings]
    ax.barh(
        y,
        auc,
        xerr=[c.get("auroc_std", 0) for c in ceilings],
        color=["tab:green" if a >= low else "tab:red" for a in auc],
        capsize=3,
    )
    ax.axvline(0.5, color="gray", linestyle=":", label="chance")
    ax.axvline(low, color="black", linestyle="--", label=f"{low}: the features see the cue")
    ax.set_yticks(y, labels=[f"{c['dataset']} {c['arch']} {c['image_size']} px" for c in ceilings])
    ax.set_xlim(0.4, 1.0)
    ax.set_xlabel("CV AUROC of a balanced linear probe\non the frozen body's pooled features")
    ax.legend(fontsize="small", loc="lower left")
    save_figure(fig, path, dpi=90)
    plt.close(fig)


# A report figure is read in a Markdown viewer about RENDER_PX wide; text smaller than MIN_TEXT_PX there
# is unreadable. A figure W inches wide, shown RENDER_PX wide, draws a font of f points
# f * RENDER_PX / (W * 72) px high: `min_font_pt(W)` is the least font such a figure may use.
RENDER_PX, MIN_TEXT_PX = 880, 9


def min_font_pt(width_in: float) -> float:
    """The smallest font (points) readable in a figure `width_in` inches wide shown RENDER_PX wide."""
    return MIN_TEXT_PX * width_in * 72 / RENDER_PX


def fig_configs(cells: pd.DataFrame, path: Path) -> None:
    """Per (dataset, arch): test AUROC and minority F1 of every configuration (last epoch), ordered
    by validation AUROC, one row per configuration (names on the y axis, readable); a bar for the
    mean, a dot per replicate."""
    pairs = sorted(set(zip(cells["dataset"], cells["arch"])))
    n = max(cells.groupby(["dataset", "arch"])["config_id"].nunique().max(), 1)
    fig, axes = plt.subplots(
        len(pairs), 2, figsize=(10, (0.2 * n + 1.6) * len(pairs)), squeeze=False, layout="constrained", sharey="row"
    )
    for i, (ds, arch) in enumerate(pairs):
        sub = cells[(cells["dataset"] == ds) & (cells["arch"] == arch)]
        order = (
            sub.groupby("config_id")["val_auroc"].mean().sort_values(ascending=False, na_position="last").index.tolist()
        )
        pos = {cid: len(order) - 1 - k for k, cid in enumerate(order)}  # the best on top
        names = sub.drop_duplicates("config_id").set_index("config_id")["config_name"]
        for j, (col, what) in enumerate((("test_auroc", "test AUROC"), ("test_f1_1", "test minority F1"))):
            ax = axes[i][j]
            means = sub.groupby("config_id")[col].mean()
            colors = ["tab:red" if "BN" in names[c].split("+") else "tab:blue" for c in order]
            ax.barh([pos[c] for c in order], [means[c] for c in order], color=colors, alpha=0.35, height=0.8)
            ax.scatter(sub[col], [pos[c] for c in sub["config_id"]], s=8, color="black", zorder=3)
            ax.set_yticks([pos[c] for c in order], labels=[f"{c} {names[c]}" for c in order], fontsize=8)
            ax.set_ylim(-0.6, len(order) - 0.4)
            ax.set_xlim(0, 1.02)
            ax.set_xlabel(what, fontsize=9)
            ax.tick_params(axis="x", labelsize=8)
            ax.grid(axis="x", alpha=0.3)
        axes[i][0].set_title(
            f"{ds} {arch}: red = final BN on; best validation AUROC on top; dots = replicates", fontsize=9, loc="left"
        )
    save_figure(fig, path, dpi=90)
    plt.close(fig)


def fig_effects(eff: pd.DataFrame, path: Path) -> None:
    """Forest plot of the minority-F1 effects on the test set as drawn: paired contrasts over
    replicates with their t intervals (image-level bootstrap in orange, secondary), and the
    factorial's effects — with their intervals when replicated, as bare points when exploratory."""
    rows = eff[(eff["metric"] == "f1_1") & ~eff["effect"].astype(str).str.contains("π=")].reset_index(drop=True)
    fig, ax = plt.subplots(figsize=(10, 0.3 * len(rows) + 2.0), layout="constrained")
    y = np.arange(len(rows))[::-1]
    colors = {"contrast": "tab:red", "main": "tab:blue", "interaction": "tab:purple", "simple": "tab:green"}
    for yi, r in zip(y, rows.to_dict("records")):
        est = r["estimate"]
        if not math.isfinite(est):
            ax.annotate("not estimable", (1.01, yi), xycoords=("axes fraction", "data"), va="center", fontsize=8)
            continue
        color = colors.get(r["kind"], "gray")
        if math.isfinite(r["ci_low"]):
            ax.errorbar(est, yi, xerr=[[est - r["ci_low"]], [r["ci_high"] - est]], fmt="o", color=color, capsize=3)
        else:  # exploratory: an estimate without an interval
            ax.plot(est, yi, "o", mfc="none", color=color)
        if math.isfinite(r.get("boot_low", math.nan)):
            ax.plot([r["boot_low"], r["boot_high"]], [yi - 0.2, yi - 0.2], color="tab:orange", linewidth=2)
    ax.axvline(0, color="gray", linestyle="--")
    multi = rows["scope"].nunique() > 1
    ax.set_yticks(
        y, labels=[f"{r['scope']}: {r['label']}" if multi else r["label"] for r in rows.to_dict("records")], fontsize=9
    )
    ax.tick_params(axis="x", labelsize=9)
    ax.set_xlabel(
        "effect on test minority F1: 95 % t interval over replicates; orange: image-level\nbootstrap "
        "(secondary); hollow: exploratory (one replicate, no interval)",
        fontsize=9,
    )
    ax.set_title(
        "contrasts over replicates (red), factorial main effects (blue),\nBN×X interactions (purple), "
        "simple effects of BN (green)",
        fontsize=9,
    )
    ax.grid(axis="x", alpha=0.3)
    save_figure(fig, path, dpi=90)
    plt.close(fig)


def fig_prevalence(means: pd.DataFrame, eff: pd.DataFrame, curves: dict, path: Path) -> None:
    """Top: minority F1 of 31 and 63 against the field prevalence (mean over replicates, last
    epoch; each model at its validation cut for π, and at the argmax), and 31 − 63 with its t
    interval at each π: at the validation cut, and at the argmax for both epoch protocols. Bottom: the PR curve
    of every replicate of 31 (red) and 63 (blue) reweighted to each π. `curves`: π -> config ->
    [(recall, precision), ...] of one (dataset, arch)."""
    pis = sorted(curves, reverse=True)
    ncol = max(2, len(pis))
    fig = plt.figure(figsize=(min(2.6 * ncol, 10.5), 7.5), layout="constrained")  # readable: min_font_pt
    grid = fig.add_gridspec(2, ncol)
    ax0, ax1 = fig.add_subplot(grid[0, : ncol // 2]), fig.add_subplot(grid[0, ncol // 2 :])
    for cid, color, name in ((BN_ID, "tab:red", "BN (31)"), (NONE_ID, "tab:blue", "none (63)")):
        m = means[means["config_id"] == cid].sort_values("prevalence")
        if "cut_f1_1" in m and m["cut_f1_1"].notna().any():
            ax0.plot(m["prevalence"], m["cut_f1_1"], "o-", color=color, label=f"{name}, validation cut for π")
        ax0.plot(m["prevalence"], m["f1_1"], "x:", color=color, label=f"{name}, argmax")
    ax0.set_xscale("log")
    ax0.set_xlabel("field prevalence π (share diseased)")
    ax0.set_ylabel("minority F1 (mean over replicates)")
    ax0.set_ylim(0, 1)
    ax0.legend(fontsize="small")
    ax0.grid(alpha=0.3)
    ids = eff["effect"].astype(str)
    series = (
        ("validation cut for π, last epoch", ids.str.startswith("31-63 cut π="), "o", 1.0),
        ("argmax, last epoch", (ids == "31-63") | ids.str.startswith("31-63 π="), "x", 1.06),
        ("argmax, epoch selected on validation", (ids == "31-63 sel") | ids.str.startswith("31-63 sel π="), "s", 1.12),
    )
    for label, which, style, offset in series:
        r = eff[which & (eff["kind"] == "contrast") & eff["prevalence"].notna()].sort_values("prevalence")
        if len(r):
            lo = (r["estimate"] - r["ci_low"]).fillna(0).to_numpy()
            hi = (r["ci_high"] - r["estimate"]).fillna(0).to_numpy()
            ax1.errorbar(r["prevalence"] * offset, r["estimate"], yerr=[lo, hi], fmt=style, capsize=3, label=label)
    ax1.axhline(0, color="gray", linestyle="--")
    ax1.set_xscale("log")
    ax1.set_xlabel("field prevalence π")
    ax1.set_ylabel("31 − 63 minority F1, 95% t interval")
    ax1.legend(fontsize="small")
    ax1.grid(alpha=0.3)
    for i, pi in enumerate(pis):
        ax = fig.add_subplot(grid[1, i])
        for cid, color in ((NONE_ID, "tab:blue"), (BN_ID, "tab:red")):
            for recall, precision in curves[pi].get(cid, []):
                ax.plot(recall, precision, color=color, alpha=0.35, linewidth=0.9)
        ax.axhline(pi, color="gray", linestyle=":", linewidth=0.8)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.set_title(f"PR curve at π = {pi:g}", fontsize="small")
        ax.set_xlabel("recall")
        if i == 0:
            ax.set_ylabel("precision (reweighted)")
    fig.suptitle(
        "final BN (31, red) against none (63, blue) at the prevalence the user will meet; "
        "PR curves: one line per replicate",
        fontsize="small",
    )
    save_figure(fig, path, dpi=90)
    plt.close(fig)


def fig_by_setting(setting: pd.DataFrame, path: Path) -> None:
    """BN's effect per (UF, WL) setting: the factorial pairs (dot: mean, bar: range) and the
    matched pair over replicates (square with its t interval)."""
    rows = setting.reset_index(drop=True)
    fig, ax = plt.subplots(figsize=(9, 0.6 * len(rows) + 2.0), layout="constrained")
    y = np.arange(len(rows))[::-1]
    for yi, r in zip(y, rows.to_dict("records")):
        if math.isfinite(r["factorial_estimate"]):
            ax.plot([r["factorial_min"], r["factorial_max"]], [yi + 0.12] * 2, color="tab:blue", alpha=0.5)
            ax.plot(r["factorial_estimate"], yi + 0.12, "o", color="tab:blue")
        if math.isfinite(r["pair_estimate"]):
            lo, hi = r["pair_ci_low"], r["pair_ci_high"]
            err = [[r["pair_estimate"] - lo], [hi - r["pair_estimate"]]] if math.isfinite(lo) else None
            ax.errorbar(r["pair_estimate"], yi - 0.12, xerr=err, fmt="s", color="tab:red", capsize=3)
    multi = rows["scope"].nunique() > 1
    ax.set_yticks(
        y, labels=[f"{r['scope']}: {r['setting']}" if multi else r["setting"] for r in rows.to_dict("records")]
    )
    ax.axvline(0, color="gray", linestyle="--")
    ax.set_xlabel("final BN on − off, test minority F1 (last epoch)")
    ax.set_title(
        "blue: factorial pairs over DA, MX, WD (dot mean, line range; exploratory with one replicate)\n"
        "red: the matched pair with the other switches off, 95% t interval over replicates",
        fontsize="small",
    )
    ax.grid(axis="x", alpha=0.3)
    save_figure(fig, path, dpi=90)
    plt.close(fig)


def fig3(curves: pd.DataFrame, path: Path) -> None:
    pairs = sorted(set(zip(curves["dataset"], curves["arch"])))
    fig, axes = plt.subplots(
        len(pairs), 3, figsize=(10.5, 3.3 * len(pairs)), squeeze=False, sharey="row", layout="constrained"
    )
    titles = {NONE_ID: "without final BN (63)", WL_ID: "with WL, no BN (47)", BN_ID: "with final BN (31)"}
    for i, (ds, arch) in enumerate(pairs):
        for j, cid in enumerate((NONE_ID, WL_ID, BN_ID)):
            ax = axes[i][j]
            c = curves[(curves["dataset"] == ds) & (curves["arch"] == arch) & (curves["config_id"] == cid)]
            ax.set_title(f"{ds} {arch}: {titles[cid]}", fontsize="small")
            ax.grid(alpha=0.3)
            if c.empty:
                ax.text(0.5, 0.5, "no runs", ha="center", va="center", transform=ax.transAxes)
                continue
            for key, color in (("train_loss", "tab:blue"), ("val_loss", "tab:orange")):
                m, s = c[f"{key}_mean"].to_numpy(float), c[f"{key}_std"].to_numpy(float)
                ax.plot(c["epoch"], m, marker="o", ms=3, color=color, label=key.replace("_", " "))
                ax.fill_between(c["epoch"], m - s, m + s, color=color, alpha=0.2)
            ax.set_xlabel("epoch")
            if j == 0:
                ax.set_ylabel("loss (mean ± std over replicates)")
            ax.legend(fontsize="small")
    save_figure(fig, path, dpi=90)
    plt.close(fig)


def fig4(pairs: dict, path: Path, p1) -> None:
    keys = sorted(pairs)
    fig, axes = plt.subplots(len(keys), 2, figsize=(10, 3.5 * len(keys)), squeeze=False, layout="constrained")
    for i, key in enumerate(keys):
        rep, p63, p31 = pairs[key]
        for j, (df, name) in enumerate(((p63, "without final BN (63)"), (p31, "with final BN (31)"))):
            p = p1(df).to_numpy(float)
            ax = axes[i][j]
            cellplots.softmax_panel(ax, df["label"].to_numpy(int), 1 - p, p, marker_size=8)
            ax.set_title(f"{key[0]} {key[1]} replicate {rep}: {name}, last epoch", fontsize="small")
    axes[0][0].legend(loc="center left", fontsize=8)
    save_figure(fig, path, dpi=90)
    plt.close(fig)


def fig_reliability(b63: dict | None, n63: int, b31: dict | None, n31: int, path: Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(10, 5), layout="constrained")
    for ax, b, n, name in ((axes[0], b63, n63, "without final BN (63)"), (axes[1], b31, n31, "with final BN (31)")):
        if b is None:
            ax.axis("off")
            ax.text(0.5, 0.5, f"{name}: no reliability.json", ha="center", va="center")
        else:
            cellplots.reliability_panel(ax, b, f"{name}, {n} runs pooled, ECE {bins_ece(b):.3f}", fontsize="small")
    save_figure(fig, path, dpi=90)
    plt.close(fig)


def fig_reliability_at(panels: list[tuple[str, dict | None]], path: Path) -> None:
    """Reliability diagrams reweighted to a prevalence (`prevalence.reliability_at` bins): one
    panel per (title, bins); a missing bins dict says so."""
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 5), layout="constrained", squeeze=False)
    for ax, (title, b) in zip(axes[0], panels):
        if b is None:
            ax.axis("off")
            ax.text(0.5, 0.5, f"{title}: no test predictions", ha="center", va="center")
            continue
        shown = {**b, "count": [1 if w > 0 else 0 for w in b["weight"]]}  # bars where the reweighted bin holds mass
        ece = sum(w * abs(a - c) for w, a, c in zip(b["weight"], b["accuracy"], b["confidence"]) if w)
        cellplots.reliability_panel(ax, shown, f"{title}, ECE {ece:.3f}", fontsize="small")
    save_figure(fig, path, dpi=90)
    plt.close(fig)


def fig_methods(groups: list[tuple[str, pd.DataFrame]], path: Path, title: str) -> None:
    """Test minority F1 and AUROC per method (a dot per replicate, a bar for the mean; lines join
    a replicate's values across methods: the pairing every interval uses). `groups`: (label, rows
    with `replicate`, `test_f1_1`, `test_auroc`), the final-BN references first."""
    fig, axes = plt.subplots(1, 2, figsize=(max(8, 1.6 * len(groups) + 3), 4.5), layout="constrained")
    for ax, (col, what) in zip(axes, (("test_f1_1", "test minority F1"), ("test_auroc", "test AUROC"))):
        x = np.arange(len(groups))
        means = [float(g[col].mean()) if len(g) else math.nan for _, g in groups]
        # red = final BN on, as in every figure: the label names the configuration (`best trial 9 (BN+WL)`)
        ax.bar(
            x,
            means,
            color=[
                "tab:red" if re.search(r"(?<![A-Za-z])BN(?![A-Za-z])", label) else "tab:blue" for label, _ in groups
            ],
            alpha=0.35,
        )
        by_rep: dict[int, list[tuple[np.integer, float]]] = {}  # (x position, value) by replicate
        for xi, (_, g) in zip(x, groups):
            ax.scatter([xi] * len(g), g[col], s=12, color="black", zorder=3)
            for r, v in zip(g["replicate"], g[col]):
                by_rep.setdefault(int(r), []).append((xi, float(v)))
        for pts in by_rep.values():
            ax.plot([p[0] for p in pts], [p[1] for p in pts], color="gray", alpha=0.25, linewidth=0.8)
        ax.set_xticks(x, labels=[label for label, _ in groups], rotation=30, ha="right", fontsize="small")
        ax.set_ylim(0, 1.02)
        ax.set_ylabel(what)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(title, fontsize="small")
    save_figure(fig, path, dpi=90)
    plt.close(fig)

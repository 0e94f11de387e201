"""The imbalance baselines against the final BN: the methods a reviewer names first (focal loss,
logit-adjusted loss, class-balanced weights, temperature scaling), each run by the grid on its base
configuration (`grid.baselines.config`, 63 = none) over the headline replicates.

    table = imbalance_table(cells)      # cells with a `baseline` column ("" = the paper's cells)

One row per method and (dataset, arch), plus the two references none (63) and BN only (31): test
metrics at the last epoch, mean and std over replicates, and the paired per-replicate differences
(same split, same seed) against BN only and against the method's own base without it, with t
intervals. Test labels decide nothing here either: no method is chosen, all are shown.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from finalbn.stages.report.markdown import interval_text
from finalbn.stages.report.tables import BN_ID, NONE_ID
from finalbn.stats import t_interval

METRICS = {"f1_1": "test_f1_1", "f1_1_pc": "test_f1_1_pc", "f1_1_vt": "test_f1_1_vt", "auroc": "test_auroc",
           "ap": "test_ap",
           "ece": "test_ece", "val_auroc": "val_auroc"}
COLUMNS = (["dataset", "arch", "method", "config_id", "replicates"]
           + [c for m in METRICS for c in (m, f"{m}_std")]
           + [f"{d}_{k}" for d in ("f1_1_vs_bn", "auroc_vs_bn", "f1_1_vs_base") for k in ("estimate", "ci_low", "ci_high", "n")])


def _paired(a: pd.DataFrame, b: pd.DataFrame, col: str) -> dict:
    """t interval of a - b over the replicates both have."""
    x, y = a.set_index("replicate")[col], b.set_index("replicate")[col]
    both = x.index.intersection(y.index)
    return t_interval((x.loc[both].astype(float) - y.loc[both].astype(float)).to_numpy())


def imbalance_table(cells: pd.DataFrame) -> pd.DataFrame:
    """References (none 63, BN only 31) and every baseline present in `cells`, per (dataset, arch)."""
    if "baseline" not in cells:
        return pd.DataFrame(columns=COLUMNS)
    rows = []
    for (ds, arch), sub in cells.groupby(["dataset", "arch"], sort=True):
        paper = sub[sub["baseline"] == ""]
        extra = sub[sub["baseline"] != ""]
        if extra.empty:
            continue
        bn = paper[paper["config_id"] == BN_ID]
        entries = [("none (63)", paper[paper["config_id"] == NONE_ID], None), ("BN only (31)", bn, None)]
        for method, g in extra.groupby("baseline", sort=False):
            base_id = int(g["config_id"].iloc[0])
            entries.append((f"{method}", g, paper[paper["config_id"] == base_id]))
        for label, g, base in entries:
            if g.empty:
                continue
            row = {"dataset": ds, "arch": arch, "method": label, "config_id": int(g["config_id"].iloc[0]),
                   "replicates": int(len(g))}
            for name, col in METRICS.items():
                row[name] = float(g[col].mean())
                row[f"{name}_std"] = float(g[col].std(ddof=1)) if len(g) > 1 else 0.0
            comparisons = {"f1_1_vs_bn": (bn, "test_f1_1"), "auroc_vs_bn": (bn, "test_auroc"),
                           "f1_1_vs_base": (base, "test_f1_1")}
            for name, (ref, col) in comparisons.items():
                r = _paired(g, ref, col) if ref is not None and not ref.empty and label != "BN only (31)" else None
                for k in ("estimate", "ci_low", "ci_high", "n"):
                    row[f"{name}_{k}"] = r[k] if r is not None else (np.nan if k != "n" else 0)
            rows.append(row)
    return pd.DataFrame(rows, columns=COLUMNS)


def _interval(row: pd.Series, name: str) -> str:
    if not row[f"{name}_n"]:
        return "—"
    return interval_text(row[f"{name}_estimate"], row[f"{name}_ci_low"], row[f"{name}_ci_high"])


def shown(table: pd.DataFrame) -> pd.DataFrame:
    """The report's view: means and the paired intervals as text."""
    out = table[["dataset", "arch", "method", "replicates"]].copy()
    out["minority F1"] = [f"{m:.3f} ± {s:.3f}" for m, s in zip(table["f1_1"], table["f1_1_std"])]
    out["F1 prior-corrected"] = [f"{v:.3f}" if v == v else "n/a (no prior)" for v in table["f1_1_pc"]]
    out["F1 at the validation cut"] = table["f1_1_vt"].round(3)
    out["AUROC"] = [f"{m:.3f} ± {s:.3f}" for m, s in zip(table["auroc"], table["auroc_std"])]
    out["ECE"] = table["ece"].round(3)
    out["ΔF1 vs BN only"] = [_interval(r, "f1_1_vs_bn") for _, r in table.iterrows()]
    out["ΔAUROC vs BN only"] = [_interval(r, "auroc_vs_bn") for _, r in table.iterrows()]
    out["ΔF1 vs its base"] = [_interval(r, "f1_1_vs_base") for _, r in table.iterrows()]
    return out


def compact_line(table: pd.DataFrame) -> str:
    """The verdict's one line on the baselines (the section below gives each its sentence):
    which fall short of BN only, which beat it, which are not distinguishable."""
    by: dict[str, list[str]] = {}
    for line in summary_lines(table):
        method, rest = line.split(" (on config", 1)
        by.setdefault(rest.split(" — ", 1)[1].split(",", 1)[0], []).append(method)
    return "; ".join(f"{word}: {', '.join(methods)}" for word, methods in by.items())


def summary_lines(table: pd.DataFrame) -> list[str]:
    """One sentence per baseline: does it reach the final BN's minority F1?"""
    lines = []
    for _, r in table.iterrows():
        if r["method"] in ("none (63)", "BN only (31)") or not r["f1_1_vs_bn_n"]:
            continue
        lo, hi = r["f1_1_vs_bn_ci_low"], r["f1_1_vs_bn_ci_high"]
        if np.isfinite(hi) and hi < 0:
            word = "falls short of BN only"
        elif np.isfinite(lo) and lo > 0:
            word = "beats BN only"
        else:
            word = "is not distinguishable from BN only"
        lines.append(f"{r['method']} (on config {r['config_id']}): minority F1 {r['f1_1']:.3f} — {word}, "
                     f"ΔF1 {_interval(r, 'f1_1_vs_bn')} over {int(r['f1_1_vs_bn_n'])} replicates; "
                     f"against its base without it ΔF1 {_interval(r, 'f1_1_vs_base')}.")
    return lines

"""The imbalance baselines against the final BN: the methods a reviewer names first (focal loss,
logit-adjusted loss, class-balanced weights, temperature scaling), each run by the grid on its base
configuration (`grid.baselines.config`, 63 = none) over the headline replicates.

    table = imbalance_table(cells)      # cells with a `baseline` column ("" = the paper's cells)

One row per method and (dataset, arch), plus the two references none (63) and BN only (31): test
metrics at the last epoch, mean and std over replicates, and the paired per-replicate differences
(same split, same seed) against BN only and against the method's own base without it, with t
intervals, t test p values and Holm-adjusted p values: one family `baselines` per (dataset, arch),
every paired comparison of the table. A method that cannot move a decision (temperature scaling, or
any method whose test minority F1 equals its base's on every shared replicate: its argmax is its
base's) is marked `moves_decisions` False and listed apart, neither beating nor falling short of BN.
A number over one replicate is exploratory (one replicate). Test labels decide nothing here either:
no method is chosen, all are shown.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from finalbn.stages.report.markdown import interval_text
from finalbn.stages.report.tables import BN_ID, NONE_ID
from finalbn.stats.inference import clipped, holm, t_interval

FAMILY = "baselines"
COMPARISONS = ("f1_1_vs_bn", "auroc_vs_bn", "f1_1_vs_base")
DECISION_TOL = 1e-9
EXPLORATORY = "exploratory (one replicate)"

METRICS = {
    "f1_1": "test_f1_1",
    "f1_1_pc": "test_f1_1_pc",
    "f1_1_vt": "test_f1_1_vt",
    "auroc": "test_auroc",
    "ap": "test_ap",
    "ece": "test_ece",
    "val_auroc": "val_auroc",
}
COLUMNS = (
    ["dataset", "arch", "method", "config_id", "replicates", "moves_decisions", "base_ece", "family"]
    + [c for m in METRICS for c in (m, f"{m}_std")]
    + [f"{d}_{k}" for d in COMPARISONS for k in ("estimate", "ci_low", "ci_high", "n", "p", "p_holm")]
)


def _paired(a: pd.DataFrame, b: pd.DataFrame, col: str) -> dict:
    """t interval of a - b over the replicates both have (its p as computed), clipped to [-1, 1]: `col`
    is a metric in [0, 1] (minority F1, AUROC)."""
    x, y = a.set_index("replicate")[col], b.set_index("replicate")[col]
    both = x.index.intersection(y.index)
    return clipped(t_interval((x.loc[both].astype(float) - y.loc[both].astype(float)).to_numpy()), -1.0, 1.0)


def moves_decisions(method: str, g: pd.DataFrame, base: pd.DataFrame | None) -> bool:
    """False for temperature scaling (by name) and for a method whose test minority F1 equals its
    base's on every replicate both have (to DECISION_TOL): its argmax decisions are its base's."""
    if "temperature" in str(method).lower():
        return False
    if base is None or base.empty:
        return True
    x, y = g.set_index("replicate")["test_f1_1"], base.set_index("replicate")["test_f1_1"]
    both = x.index.intersection(y.index)
    if both.empty:
        return True
    d = x.loc[both].astype(float).to_numpy() - y.loc[both].astype(float).to_numpy()
    return not bool(np.all(np.isfinite(d)) and np.all(np.abs(d) <= DECISION_TOL))


def _holm_per_scope(table: pd.DataFrame) -> pd.DataFrame:
    """`{comparison}_p_holm`: Holm over every comparison's p of one (dataset, arch) (family `baselines`)."""
    for _, idx in table.groupby(["dataset", "arch"], sort=False).groups.items():
        p = np.concatenate([table.loc[idx, f"{c}_p"].to_numpy(float) for c in COMPARISONS])
        adj = holm(p)
        for i, c in enumerate(COMPARISONS):
            table.loc[idx, f"{c}_p_holm"] = adj[i * len(idx) : (i + 1) * len(idx)]
    return table


def imbalance_table(cells: pd.DataFrame) -> pd.DataFrame:
    """References (none 63, BN only 31) and every baseline present in `cells`, per (dataset, arch);
    paired comparisons with t p values, Holm-adjusted within the scope (family `baselines`)."""
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
            row = {
                "dataset": ds,
                "arch": arch,
                "method": label,
                "config_id": int(g["config_id"].iloc[0]),
                "replicates": int(len(g)),
                "moves_decisions": moves_decisions(label, g, base) if base is not None else True,
                "base_ece": float(base["test_ece"].mean()) if base is not None and not base.empty else np.nan,
                "family": FAMILY,
            }
            for name, col in METRICS.items():
                row[name] = float(g[col].mean())
                row[f"{name}_std"] = float(g[col].std(ddof=1)) if len(g) > 1 else 0.0
            comparisons = {
                "f1_1_vs_bn": (bn, "test_f1_1"),
                "auroc_vs_bn": (bn, "test_auroc"),
                "f1_1_vs_base": (base, "test_f1_1"),
            }
            for name, (ref, col) in comparisons.items():
                r = _paired(g, ref, col) if ref is not None and not ref.empty and label != "BN only (31)" else None
                for k in ("estimate", "ci_low", "ci_high", "n", "p"):
                    row[f"{name}_{k}"] = r[k] if r is not None else (np.nan if k != "n" else 0)
                row[f"{name}_p_holm"] = np.nan
            rows.append(row)
    table = pd.DataFrame(rows, columns=COLUMNS)
    table["moves_decisions"] = table["moves_decisions"].astype(bool)
    return _holm_per_scope(table) if len(table) else table


def _interval(row: pd.Series, name: str) -> str:
    if not row[f"{name}_n"]:
        return "—"
    if int(row[f"{name}_n"]) == 1:
        return f"{row[f'{name}_estimate']:+.3f}, {EXPLORATORY}"
    return interval_text(row[f"{name}_estimate"], row[f"{name}_ci_low"], row[f"{name}_ci_high"])


def p_text(p: float) -> str:
    """A p value to 2 significant digits; "n/a" where there is none (one replicate, no pair)."""
    return f"{p:.2g}" if np.isfinite(p) else "n/a"


def shown(table: pd.DataFrame) -> pd.DataFrame:
    """The report's view: means and the paired intervals as text, Holm-adjusted p (family `baselines`)."""
    out = table[["dataset", "arch", "method"]].copy()
    out["replicates"] = [f"{n}, {EXPLORATORY}" if n == 1 else str(n) for n in table["replicates"]]
    out["minority F1"] = [f"{m:.3f} ± {s:.3f}" for m, s in zip(table["f1_1"], table["f1_1_std"])]
    out["F1 prior-corrected"] = [f"{v:.3f}" if v == v else "n/a (no prior)" for v in table["f1_1_pc"]]
    out["F1 at the validation cut"] = table["f1_1_vt"].round(3)
    out["AUROC"] = [f"{m:.3f} ± {s:.3f}" for m, s in zip(table["auroc"], table["auroc_std"])]
    out["ECE"] = table["ece"].round(3)
    for name, head in (
        ("f1_1_vs_bn", "ΔF1 vs BN only"),
        ("auroc_vs_bn", "ΔAUROC vs BN only"),
        ("f1_1_vs_base", "ΔF1 vs its base"),
    ):
        out[head] = [_interval(r, name) for _, r in table.iterrows()]
        out[f"Holm p, {head}"] = [p_text(p) for p in table[f"{name}_p_holm"]]
    out["moves decisions"] = ["yes" if m else "no: listed apart" for m in table["moves_decisions"]]
    return out


def _apart(r: pd.Series) -> bool:
    return not bool(r["moves_decisions"])


def _word(r: pd.Series) -> str:
    """How a method that moves decisions stands against BN only: by the Holm-adjusted p of its ΔF1."""
    if int(r["f1_1_vs_bn_n"]) == 1:
        return f"is {EXPLORATORY} against BN only"
    p, est = r["f1_1_vs_bn_p_holm"], r["f1_1_vs_bn_estimate"]
    if np.isfinite(p) and p < 0.05 and est < 0:
        return "falls short of BN only"
    if np.isfinite(p) and p < 0.05 and est > 0:
        return "beats BN only"
    return "is not distinguishable from BN only"


def _methods(table: pd.DataFrame) -> list[pd.Series]:
    return [r for _, r in table.iterrows() if r["method"] not in ("none (63)", "BN only (31)") and r["f1_1_vs_bn_n"]]


APART = "listed apart as changing no decision"


def _reps(r: pd.Series) -> str:
    n = int(r["f1_1_vs_bn_n"])
    return f"{n} replicate{'s' if n != 1 else ''}"


def compact_line(table: pd.DataFrame) -> str:
    """The verdict's one line on the baselines (the section below gives each its sentence):
    "word: method, method; word: method" — which fall short of BN only, which beat it, which are not
    distinguishable (by the Holm-adjusted p, family `baselines`), and apart those that change no decision."""
    by: dict[str, list[str]] = {}
    for r in _methods(table):
        by.setdefault(APART if _apart(r) else _word(r), []).append(str(r["method"]))
    if APART in by:
        by[APART] = by.pop(APART)  # the rivals that cannot move a decision come last
    return "; ".join(f"{word}: {', '.join(methods)}" for word, methods in by.items())


def summary_lines(table: pd.DataFrame) -> list[str]:
    """One sentence per baseline: does it reach the final BN's minority F1 (Holm-adjusted p, family
    `baselines`)? A method that changes no decision is listed apart with its ECE against its base's."""
    lines = []
    for r in _methods(table):
        holm_bn = f"Holm-adjusted p = {p_text(r['f1_1_vs_bn_p_holm'])} (family `{FAMILY}`)"
        if _apart(r):
            lines.append(
                f"{r['method']} (on config {r['config_id']}) changes no decision (its argmax equals its "
                f"base's): listed apart, ECE {r['ece']:.3f} vs {r['base_ece']:.3f} (its base); minority F1 "
                f"{r['f1_1']:.3f}, its base's, ΔF1 vs BN only {_interval(r, 'f1_1_vs_bn')} over "
                f"{_reps(r)}, {holm_bn}: not counted for or against BN only."
            )
            continue
        lines.append(
            f"{r['method']} (on config {r['config_id']}): minority F1 {r['f1_1']:.3f} — {_word(r)}, "
            f"ΔF1 {_interval(r, 'f1_1_vs_bn')} over {_reps(r)}, {holm_bn}; "
            f"against its base without it ΔF1 {_interval(r, 'f1_1_vs_base')}, Holm-adjusted p = "
            f"{p_text(r['f1_1_vs_base_p_holm'])}."
        )
    return lines

"""The report's section on the Optuna search, from `finalbn search`'s results/search.json.

    table, groups, lines = search_section(json.loads(Path("results/search.json").read_text()))

`table`: one row per compared configuration (the best trial on validation, the grid's best, BN
only), validation and test means over the same replicates and the best trial's paired differences;
`groups`: per-replicate rows for the figure; `lines`: what the study was and what it found.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from finalbn.stages.report.markdown import interval_text

COLUMNS = [
    "configuration",
    "config",
    "replicates",
    "val_auroc",
    "val_f1_1",
    "test_f1_1",
    "test_auroc",
    "best_minus_f1_1",
    "best_minus_f1_1_ci_low",
    "best_minus_f1_1_ci_high",
    "best_minus_auroc",
    "best_minus_auroc_ci_low",
    "best_minus_auroc_ci_high",
]
LABELS = {"bn_only_31": "BN only", "grid_best": "grid's best on validation"}


def _f(x: Any) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


def _mean(rows: list[dict], key: str) -> float:
    vals = [_f(r.get(key)) for r in rows]
    vals = [v for v in vals if math.isfinite(v)]
    return sum(vals) / len(vals) if vals else math.nan


def search_section(summary: dict) -> tuple[pd.DataFrame, list[tuple[str, pd.DataFrame]], list[str]]:
    comp, best, states = summary.get("comparison") or {}, summary.get("best") or {}, summary.get("states") or {}
    lines = [
        f"Study `{summary.get('study', '?')}`: {summary.get('trials', 0)} trials "
        f"({', '.join(f'{n} {k}' for k, n in states.items() if n) or 'none'}), objective "
        f"`{summary.get('objective', '?')}` on validation"
        + (f", {summary['trials_per_hour']:.0f} finished trials per hour" if summary.get("trials_per_hour") else "")
        + "."
    ]
    if best:
        ties = best.get("tied_on_objective") or []
        reps = best.get("replicates") or []
        lines.append(
            f"Best on validation: trial {best['number']} ({best.get('config_name', '?')}), "
            f"{summary.get('objective')} {_f(best.get('value')):.4f}"
            + (f" (the mean over replicates {', '.join(str(r) for r in reps)})" if reps else "")
            + (
                f"; {len(ties)} trials tied on it, broken by the lower validation balanced loss"
                if len(ties) > 1
                else ""
            )
            + "."
        )
        params = ", ".join(
            f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in best.get("params", {}).items()
        )
        lines.append(f"Its parameters: {params}.")
    if not comp:
        lines.append(summary.get("note") or "No comparison on test: the study has no complete trial.")
        return pd.DataFrame(columns=COLUMNS), [], lines
    mine = comp.get("runs", [])
    tested = comp.get("replicates_tested")
    if tested:
        lines.append(
            f"Tested on replicates {', '.join(str(r) for r in tested)}: "
            + (
                "held out, none of them used to choose a configuration."
                if comp.get("held_out")
                else "the ones the choices were made on (none held out)."
            )
            + (f" {comp['note']}" if comp.get("note") else "")
        )
    table_rows: list[dict] = []
    groups: list[tuple[str, pd.DataFrame]] = []
    for arm in ("bn_only_31", "grid_best"):
        c = comp.get(arm)
        if not c:
            continue
        reps = {r["replicate"] for r in c.get("rows", [])}
        df_f1 = c.get("best_trial_minus_test_f1_1", {})
        df_auc = c.get("best_trial_minus_test_auroc", {})
        table_rows.append(
            {
                "configuration": LABELS[arm],
                "config": f"{c['config_id']} {c['config_name']}",
                "replicates": c["replicates"],
                "val_auroc": _mean(c.get("rows", []), "val_auroc"),
                "val_f1_1": _mean(c.get("rows", []), "val_f1_1"),
                "test_f1_1": _mean(c.get("rows", []), "test_f1_1"),
                "test_auroc": _mean(c.get("rows", []), "test_auroc"),
                "best_minus_f1_1": _f(df_f1.get("estimate")),
                "best_minus_f1_1_ci_low": _f(df_f1.get("ci_low")),
                "best_minus_f1_1_ci_high": _f(df_f1.get("ci_high")),
                "best_minus_auroc": _f(df_auc.get("estimate")),
                "best_minus_auroc_ci_low": _f(df_auc.get("ci_low")),
                "best_minus_auroc_ci_high": _f(df_auc.get("ci_high")),
            }
        )
        groups.append(
            (
                f"{LABELS[arm]} ({c['config_id']} {c.get('config_name', '')})".replace(" )", ")"),
                pd.DataFrame(c.get("rows", [])),
            )
        )
        sub = [r for r in mine if r["replicate"] in reps]
        if math.isfinite(_f(df_f1.get("estimate"))):
            lo, hi = _f(df_f1.get("ci_low")), _f(df_f1.get("ci_high"))
            ci = f" [95% CI {lo:+.3f}, {hi:+.3f}]" if math.isfinite(lo) else f" ({df_f1.get('note') or 'no interval'})"
            lines.append(
                f"Best trial vs {LABELS[arm]} (config {c['config_id']} {c['config_name']}), test minority F1 "
                f"at the argmax {_mean(sub, 'test_f1_1'):.3f} vs {_mean(c.get('rows', []), 'test_f1_1'):.3f}: "
                f"{_f(df_f1.get('estimate')):+.3f}{ci} over {c['replicates']} replicates"
                + _at_validation_cut(c, sub)
                + "."
            )
    table_rows.insert(
        0,
        {
            "configuration": f"best trial {comp.get('best_trial')}",
            "config": best.get("config_name", "?"),
            "replicates": len(mine),
            "val_auroc": _mean(mine, "val_auroc"),
            "val_f1_1": _mean(mine, "val_f1_1"),
            "test_f1_1": _mean(mine, "test_f1_1"),
            "test_auroc": _mean(mine, "test_auroc"),
        },
    )
    groups.append((f"best trial {comp.get('best_trial')} ({best.get('config_name', '?')})", pd.DataFrame(mine)))
    return pd.DataFrame(table_rows, columns=COLUMNS), groups, lines


def _at_validation_cut(c: dict, mine: list[dict]) -> str:
    """The same comparison with each model at the cut chosen on its own validation predictions for
    the test set's prevalence (`test_f1_1_vt`): the argmax suits balanced classes only, and the test
    set's are not (comparisons written before this number was kept have none)."""
    d = c.get("best_trial_minus_test_f1_1_vt") or {}
    est, lo, hi = _f(d.get("estimate")), _f(d.get("ci_low")), _f(d.get("ci_high"))
    if not math.isfinite(est):
        return ""
    ci = f" [95% CI {lo:+.3f}, {hi:+.3f}]" if math.isfinite(lo) else ""
    return (
        f"; each at its validation cut {_mean(mine, 'test_f1_1_vt'):.3f} vs "
        f"{_mean(c.get('rows', []), 'test_f1_1_vt'):.3f}: {est:+.3f}{ci}"
    )


def shown(table: pd.DataFrame) -> pd.DataFrame:
    """The report's view: means rounded, the best trial's paired differences as text."""
    out = table[["configuration", "config", "replicates"]].copy()
    for col in ("val_auroc", "val_f1_1", "test_f1_1", "test_auroc"):
        out[col] = table[col].round(3)
    out["best − this, F1"] = [
        interval_text(*v)
        for v in table[["best_minus_f1_1", "best_minus_f1_1_ci_low", "best_minus_f1_1_ci_high"]].to_numpy()
    ]
    out["best − this, AUROC"] = [
        interval_text(*v)
        for v in table[["best_minus_auroc", "best_minus_auroc_ci_low", "best_minus_auroc_ci_high"]].to_numpy()
    ]
    return out

"""Effects of the switches with the replicate as the unit, and the neutral verdict built on them.

    eff, verdicts, methods, settings = study_effects(cells, predictions_for, prevalences=[0.5, 0.1, 0.05, 0.01])

Per (dataset, arch):

* **Paired contrasts** of two configurations (31 − 63: the paper's "final BN alone vs nothing";
  15 − 47: final BN with WL on; 31 − 47: the paper's "BN improvement"; 31 against the free
  prior-corrected baseline of 63): one difference per replicate (same split, same seed), mean with
  a t interval over replicates — the primary interval. Each is given on the test set as drawn and,
  for 31 − 63 (and 15 − 47), at every prevalence of `report.prevalences` (the test set reweighted
  to π, `report.prevalence`) and at both epoch protocols (last epoch; epoch selected on validation).
  A hierarchical bootstrap (replicates, then test images within each) is kept as a secondary column:
  it counts the image noise a second time, since the replicate spread already holds it.
* **The factorial**: minority F1 on ±1-coded switches. With two or more complete replicates of all
  64 configurations, statsmodels OLS (main effects and all two-way interactions) with standard
  errors clustered by replicate, intervals and p values. With one, the effects of the saturated 2^6
  design are given as *exploratory* estimates, without interval or p value: cells of one replicate
  share their split and seed, so the small contrasts Lenth's method would take for noise are not
  noise of the kind a new split brings (the 31 near-zero contrasts involving a switch that does
  nothing would set the scale). An effect is (mean with the switch on) − (mean with it off) =
  2 × coefficient.
* **By setting**: BN's effect within each (UF, WL) setting — the factorial's pairs (averaged over DA,
  MX and WD, with their range) and, where the matched pair (the other switches off) has two or more
  replicates, its paired t interval. A main effect averages over settings in which BN does very
  different things (it rescues UF models that collapse).

Multiplicity: one Holm family per section, named in `family`: `verdict` (every p value the verdict
states), `factorial` (its rows, when replicated), `other contrasts` (the effects table's rest).
Wording is neutral ("changes minority F1 by +0.12 [+0.05, +0.19]"; "rules out a gain larger than
+0.03") and set against the paper's reported range.

The generic pieces (t interval, Holm, detectable difference) live in `finalbn.stats.inference`; `t_interval`
stays importable from here too.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from finalbn.stages.report import prevalence as prev
from finalbn.stages.report.factorial import (  # noqa: F401  (re-exported: the report's statistics in one place)
    SETTING_COLUMNS,
    by_setting,
    coded,
    complete_replicates,
    factorial_effects,
    factorial_exploratory,
    factorial_ols,
)
from finalbn.stages.report.facts import with_directions
from finalbn.stages.report.pairs import (  # noqa: F401
    FACTORIAL,
    OTHER,
    SIGNIFICANT,
    VERDICT,
    PredictionsFor,
    boot_pairs,
    hierarchical_bootstrap,
    paired_differences,
    prevalence_effect_id,
)
from finalbn.stages.report.tables import BN_ID, BNWL_ID, NONE_ID, WL_ID
from finalbn.stages.report.verdict import PAPER, _versus_paper, describe, verdict_lines  # noqa: F401
from finalbn.stats.inference import clipped, holm, t_interval

EFFECT_COLUMNS = [
    "scope",
    "effect",
    "label",
    "metric",
    "kind",
    "prevalence",
    "protocol",
    "estimate",
    "ci_low",
    "ci_high",
    "p",
    "family",
    "p_holm",
    "n",
    "boot_low",
    "boot_high",
    "method",
    "note",
]


# (effect id, label, metric, config a, its column, config b, its column, family) on the test set as
# drawn; a row marked VERDICT joins the verdict's family only when the test set's own prevalence is one
# of `report.prevalences` (it then stands for that π), else it is in OTHER.
CONTRASTS = [
    (
        "31-63",
        "final BN alone vs nothing (31 − 63), argmax cut",
        "f1_1",
        BN_ID,
        "test_f1_1",
        NONE_ID,
        "test_f1_1",
        VERDICT,
    ),
    (
        "31-63 sel",
        "final BN alone vs nothing (31 − 63), argmax cut, selected epoch",
        "f1_1",
        BN_ID,
        "test_sel_f1_1",
        NONE_ID,
        "test_sel_f1_1",
        OTHER,
    ),
    ("15-47", "final BN with WL on (15 − 47), argmax cut", "f1_1", BNWL_ID, "test_f1_1", WL_ID, "test_f1_1", OTHER),
    (
        "15-47 sel",
        "final BN with WL on (15 − 47), argmax cut, selected epoch",
        "f1_1",
        BNWL_ID,
        "test_sel_f1_1",
        WL_ID,
        "test_sel_f1_1",
        OTHER,
    ),
    (
        "31-pc63",
        "final BN vs the free prior correction (31 − prior-corrected 63)",
        "f1_1",
        BN_ID,
        "test_f1_1",
        NONE_ID,
        "test_f1_1_pc",
        OTHER,
    ),
    (
        "31-63 auroc",
        "final BN alone vs nothing (31 − 63), AUROC",
        "auroc",
        BN_ID,
        "test_auroc",
        NONE_ID,
        "test_auroc",
        VERDICT,
    ),
    ("31-47", "final BN vs WL (31 − 47)", "f1_1", BN_ID, "test_f1_1", WL_ID, "test_f1_1", OTHER),
    (
        "pc63-63",
        "prior correction alone (prior-corrected 63 − 63)",
        "f1_1",
        NONE_ID,
        "test_f1_1_pc",
        NONE_ID,
        "test_f1_1",
        OTHER,
    ),
    (
        "31-63 ap",
        "final BN alone vs nothing (31 − 63), average precision",
        "ap",
        BN_ID,
        "test_ap",
        NONE_ID,
        "test_ap",
        OTHER,
    ),
    ("31-63 ece", "final BN alone vs nothing (31 − 63), ECE", "ece", BN_ID, "test_ece", NONE_ID, "test_ece", OTHER),
]
# (effect id stem, label stem, metric, wide column metric, config a, config b, family, protocols) at each
# prevalence: the argmax cut (TPR and FPR as measured), the cut chosen on validation for π (the export's
# decision rule), and AP reweighted to π (ranking quality, no cut).
PREVALENCE_CONTRASTS = [
    (
        "31-63",
        "final BN alone vs nothing (31 − 63), argmax cut",
        "f1_1",
        "f1_1",
        BN_ID,
        NONE_ID,
        VERDICT,
        ("last", "sel"),
    ),
    (
        "31-63 cut",
        "final BN alone vs nothing (31 − 63), each model at its validation cut for π",
        "f1_1",
        "cut_f1_1",
        BN_ID,
        NONE_ID,
        VERDICT,
        ("last",),
    ),
    (
        "31-63 ap",
        "final BN alone vs nothing (31 − 63), average precision",
        "ap",
        "ap",
        BN_ID,
        NONE_ID,
        VERDICT,
        ("last",),
    ),
    ("15-47", "final BN with WL on (15 − 47), argmax cut", "f1_1", "f1_1", BNWL_ID, WL_ID, OTHER, ("last", "sel")),
]
LOW_FPR_ID = "31-63 tpr@fpr"  # TPR at the false-alarm rate prevalence.LOW_FPR: one row, free of π
INTERACTION_ID = "BNxWL"  # (15 − 47) − (31 − 63): does WL change what final BN does? (the replicated 2 × 2)


def pool_overlap(
    sub: pd.DataFrame, predictions_for: PredictionsFor | None, cid: int = BN_ID, label: int = 1
) -> dict | None:
    """How much the replicates' test sets of one class (1 diseased, 0 healthy) share: the mean over
    pairs of replicates of |A ∩ B| / mean(|A|, |B|), the distinct images over all of them, and the
    replicates compared (from the test predictions of config `cid`); None with fewer than 2
    replicates. Under `overlap["healthy"]`, the same for the healthy images."""
    if predictions_for is None:
        return None
    sets: dict[int, list[set[str]]] = {0: [], 1: []}
    for rid in sub.loc[sub["config_id"] == cid, "run_id"]:
        p = predictions_for(rid)
        if p is not None and "label" in p and "path" in p:
            for k in (0, 1):
                sets[k].append(set(p.loc[p["label"].astype(int) == k, "path"].astype(str)))

    def share(found):
        found = [s for s in found if s]
        if len(found) < 2:
            return None
        shares = [len(a & b) / ((len(a) + len(b)) / 2) for a, b in itertools.combinations(found, 2)]
        return {
            "share": float(np.mean(shares)),
            "distinct": len(set().union(*found)),
            "replicates": len(found),
            "per_replicate": float(np.mean([len(s) for s in found])),
        }

    out = share(sets[label])
    if out is not None:
        out["healthy"] = share(sets[0])
    return out


def _contrast_specs(prevalences: Sequence[float], test_pi: float | None):
    """CONTRASTS, then the prevalence contrasts at every π of the list (the argmax rows at the test
    set's own π are CONTRASTS' rows on the test set as drawn), then TPR at a low false-alarm rate.
    Selected-epoch rows are never in the verdict's family (a secondary protocol)."""
    own = not prevalences or (
        test_pi is not None and any(math.isclose(pi, test_pi, abs_tol=1e-9) for pi in prevalences)
    )
    specs = [
        (eid, label, metric, a, ma, b, mb, fam if own else OTHER, test_pi, "sel" if " sel" in eid else "last")
        for eid, label, metric, a, ma, b, mb, fam in CONTRASTS
    ]
    for pi in prevalences:
        for stem, label, metric, wide, a, b, fam, protocols in PREVALENCE_CONTRASTS:
            for protocol in protocols:
                if wide == "f1_1" and test_pi is not None and math.isclose(pi, test_pi, abs_tol=1e-9):
                    continue  # the row on the test set as drawn stands for it
                col = prev.column(wide, pi, protocol)
                when = ", selected epoch" if protocol == "sel" else ""
                specs.append(
                    (
                        prevalence_effect_id(stem, pi, protocol),
                        f"{label} at π = {pi:g}{when}",
                        metric,
                        a,
                        col,
                        b,
                        col,
                        fam if protocol == "last" else OTHER,
                        pi,
                        protocol,
                    )
                )
    if prevalences:
        col = prev.column("tpr_at_fpr", prevalences[0])
        specs.append(
            (
                LOW_FPR_ID,
                f"final BN alone vs nothing (31 − 63), TPR at a false-alarm rate of {prev.LOW_FPR:.0%}",
                "tpr",
                BN_ID,
                col,
                NONE_ID,
                col,
                VERDICT,
                math.nan,
                "last",
            )
        )
    return specs


def interaction(sub: pd.DataFrame, column: str) -> dict:
    """BN × WL on the replicated 2 × 2 (configs 31, 63, 15, 47): per replicate (15 − 47) − (31 − 63)
    in `column`, t interval over the replicates where all four ran (finalbn.stats.inference.t_interval)."""
    key = ["dataset", "arch", "replicate"]
    if column not in sub:
        return t_interval(np.array([]))
    wide = sub[sub["config_id"].isin([BN_ID, NONE_ID, BNWL_ID, WL_ID])].pivot_table(
        index=key, columns="config_id", values=column, aggfunc="first"
    )
    if not {BN_ID, NONE_ID, BNWL_ID, WL_ID} <= set(wide.columns):
        return t_interval(np.array([]))
    wide = wide.dropna(subset=[BN_ID, NONE_ID, BNWL_ID, WL_ID])
    d = (wide[BNWL_ID] - wide[WL_ID]) - (wide[BN_ID] - wide[NONE_ID])
    return t_interval(d.to_numpy(dtype=float))


def study_effects(
    cells: pd.DataFrame,
    predictions_for: PredictionsFor | None = None,
    n_boot: int = 2000,
    seed: int = 0,
    prevalences: Sequence[float] = (),
    test_pi: float | None = None,
    train_pi: float | None = None,
    calibration: pd.DataFrame | None = None,
    context: dict[str, str] | None = None,
) -> tuple[pd.DataFrame, dict[str, list[str]], dict[str, str], pd.DataFrame]:
    """(effects table, verdict lines per scope, factorial method sentence per scope, BN by setting).

    `cells` carries the prevalence columns of `prevalence.widen` for `prevalences` (missing ones
    give empty contrasts); `test_pi`: the test set's own prevalence; `train_pi`: the training
    prior; `calibration`: `tables.calibration_at` rows, for the verdict's calibration sentence;
    `context`: scope -> what the study is here (source, arch, image size), for the paper comparison.
    effects.csv's `direction` (gain / loss / null / n/a) follows each row's Holm-adjusted p."""
    rows: list[dict] = []
    verdicts, methods, settings = {}, {}, []
    specs = _contrast_specs(prevalences, test_pi)
    for (ds, arch), sub in cells.groupby(["dataset", "arch"], sort=True):
        scope = f"{ds}/{arch}"
        start = len(rows)
        for eid, label, metric, a, ma, b, mb, fam, pi, protocol in specs:
            d = paired_differences(sub, a, ma, b, mb)
            row = {
                "scope": scope,
                "effect": eid,
                "label": label,
                "metric": metric,
                "kind": "contrast",
                "prevalence": pi if pi is not None else math.nan,
                "protocol": protocol,
                **clipped(t_interval(d["diff"].to_numpy()), -1.0, 1.0),  # two metrics in [0, 1]: p as computed
                "boot_low": math.nan,
                "boot_high": math.nan,
                "method": "paired over replicates, t interval",
                "family": fam,
            }
            if ma == mb and ma in ("test_f1_1", "test_sel_f1_1") and len(d) >= 2:
                pairs = boot_pairs(d, sub, a, b, predictions_for, "p1_last" if ma == "test_f1_1" else "p1_sel")
                if pairs:
                    row["boot_low"], row["boot_high"] = hierarchical_bootstrap(pairs, n_boot, seed)
            rows.append(row)
        if prevalences:
            rows.append(_interaction_row(sub, scope, max(prevalences), test_pi))
        fac, how = factorial_effects(sub)
        methods[scope] = how
        for r in fac.to_dict("records"):
            rows.append(
                {
                    "scope": scope,
                    "label": f"factorial: {r['effect']}",
                    "metric": "f1_1",
                    "prevalence": test_pi if test_pi is not None else math.nan,
                    "protocol": "last",
                    "boot_low": math.nan,
                    "boot_high": math.nan,
                    "note": "",
                    **clipped(r, -1.0, 1.0),  # (mean with a switch on) − (mean off) of F1 in [0, 1]
                }
            )
        mine = pd.DataFrame(rows[start:])
        for fam in (VERDICT, OTHER):
            idx = np.flatnonzero((mine["family"] == fam).to_numpy())
            for i, h in zip(idx, holm(mine["p"].to_numpy(float)[idx])):
                rows[start + i]["p_holm"] = h
        setting = _clipped_pairs(by_setting(sub, scope))
        settings.append(setting)
        extra = {
            "overlap": pool_overlap(sub, predictions_for),
            "train_pi": train_pi,
            "test_pi": test_pi,
            "cells": sub,
            "here": (context or {}).get(scope, ""),
            "prevalences": list(prevalences),
            "rates": _rates(sub),
            "calibration": None if calibration is None else calibration[calibration["scope"] == scope],
        }
        verdicts[scope] = verdict_lines(pd.DataFrame(rows[start:]), how, setting, extra)
    eff = pd.DataFrame(rows)
    setting_df = pd.concat(settings, ignore_index=True) if settings else pd.DataFrame(columns=SETTING_COLUMNS)
    if eff.empty:
        return pd.DataFrame(columns=[*EFFECT_COLUMNS, "direction"]), verdicts, methods, setting_df
    for c in EFFECT_COLUMNS:
        if c not in eff:
            eff[c] = math.nan if c not in ("note", "method", "family") else ""
    eff["note"] = eff["note"].fillna("")
    eff["family"] = eff["family"].fillna("")
    return with_directions(eff[EFFECT_COLUMNS]), verdicts, methods, setting_df


def _interaction_row(sub: pd.DataFrame, scope: str, top: float, test_pi: float | None) -> dict:
    """The BN × WL row (`interaction`) at the argmax cut at π = `top` (the test set reweighted to balanced classes)."""
    col = "test_f1_1" if test_pi is not None and math.isclose(top, test_pi, abs_tol=1e-9) else prev.column("f1_1", top)
    return {
        "scope": scope,
        "effect": INTERACTION_ID,
        "metric": "f1_1",
        "kind": "contrast",
        "label": f"BN × WL interaction, (15 − 47) − (31 − 63), argmax cut at π = {top:g}",
        "prevalence": top,
        "protocol": "last",
        **clipped(interaction(sub, col), -2.0, 2.0),  # a difference of two differences of F1
        "boot_low": math.nan,
        "boot_high": math.nan,
        "method": "paired over replicates, t interval",
        "family": VERDICT,
    }


def _clipped_pairs(setting: pd.DataFrame) -> pd.DataFrame:
    """`by_setting`'s rows with each matched pair's t interval (BN on − BN off, minority F1)
    clipped to [-1, 1], as the verdict, by_setting.csv and the report print it."""
    out = setting.copy()
    for col in ("pair_ci_low", "pair_ci_high"):
        if col in out:
            out[col] = out[col].astype(float).clip(-1.0, 1.0)
    return out


def _rates(sub: pd.DataFrame) -> dict:
    """Mean test TPR (sensitivity) and TNR (specificity) of configs 31 and 63, last epoch."""
    out = {}
    for cid in (BN_ID, NONE_ID):
        g = sub[sub["config_id"] == cid]
        out[cid] = (float(g["test_recall_1"].mean()), float(g["test_recall_0"].mean())) if len(g) else None
    return out

"""The verdict's facts, and the three sentences a practitioner acts on, built only from them.

    facts = verdict_facts(eff_of_one_scope, cells_of_that_scope, prevalences=[0.5, 0.1, 0.05, 0.01])
    lines = opening_lines(facts)   # does final BN help at my prevalence, with which cut, how sure

A fact is one row of effects.csv (estimate, 95 % t interval over replicates, Holm-adjusted p in its
family) with what the sentences need beside it: its `quantity` (`cut`: minority F1 with each model at
the cut chosen on its validation images for π, the export's decision rule; `argmax`: at P(diseased) >
0.5; `ap`: average precision reweighted to π; `tpr_at_fpr`; `auroc`), its `direction` (`gain` / `loss`
when the Holm-adjusted p is below SIGNIFICANT, by sign; `not distinguishable` when it is not; `not
estimable` without an interval) and whether the two models compared have both `collapsed` (mean TPR or TNR below COLLAPSED:
they flag almost nothing or almost everything, and their difference says nothing about final BN).
The sentences print each number as effects.csv holds it, to three decimals (a test parses them back).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from finalbn.stages.report import prevalence as prev
from finalbn.stages.report.pairs import SIGNIFICANT, VERDICT, prevalence_effect_id
from finalbn.stages.report.tables import BN_ID, NONE_ID

COLLAPSED = 0.1  # a model whose mean TPR or TNR is below this flags almost nothing (or everything)
FACT_COLUMNS = [
    "quantity",
    "prevalence",
    "effect",
    "estimate",
    "ci_low",
    "ci_high",
    "p_holm",
    "n",
    "direction",
    "collapsed",
    "tpr_bn",
    "tpr_none",
    "fpr_bn",
    "fpr_none",
    "negatives",
    "positives",
]


def direction(r: dict) -> str:
    """gain / loss (Holm-adjusted p < SIGNIFICANT, by sign), not distinguishable, not estimable (no
    interval). Words, not `null`/`n/a`, which CSV readers take for missing values."""
    lo, hi, est = r.get("ci_low", math.nan), r.get("ci_high", math.nan), r.get("estimate", math.nan)
    if not (math.isfinite(lo) and math.isfinite(hi) and math.isfinite(est)):
        return "not estimable"
    p = r.get("p_holm", math.nan)
    p = p if math.isfinite(p) else r.get("p", math.nan)
    if math.isfinite(p) and p < SIGNIFICANT and est != 0:
        return "gain" if est > 0 else "loss"
    return "not distinguishable"


def triple(est: float, lo: float, hi: float) -> str:
    """`+0.120 [+0.050, +0.190]`: how every verdict number is printed."""
    return f"{est:+.3f} [{lo:+.3f}, {hi:+.3f}]"


def _mean(sub: pd.DataFrame, cid: int, col: str) -> float:
    v = sub.loc[sub["config_id"] == cid, col] if col in sub else pd.Series(dtype=float)
    v = pd.to_numeric(v, errors="coerce").dropna()
    return float(v.mean()) if len(v) else math.nan


def verdict_facts(
    eff: pd.DataFrame, sub: pd.DataFrame, prevalences: Sequence[float], test_pi: float | None = None
) -> pd.DataFrame:
    """FACT_COLUMNS for one (dataset, arch): the 31 − 63 contrasts at each π (validation cut,
    argmax, AP), TPR at a low false-alarm rate and AUROC. `eff`: that scope's effects rows;
    `sub`: its paper cells with the wide π columns of `prevalence.widen`."""
    by = {r["effect"]: r for r in eff.to_dict("records")}
    paper = sub[sub["baseline"] == ""] if "baseline" in sub else sub
    rows = []

    def add(quantity, pi, eid, tpr_col=None, fpr_col=None):
        r = by.get(eid)
        if r is None:
            return
        t_bn, t_none = (_mean(paper, BN_ID, tpr_col), _mean(paper, NONE_ID, tpr_col)) if tpr_col else (math.nan,) * 2
        f_bn, f_none = (_mean(paper, BN_ID, fpr_col), _mean(paper, NONE_ID, fpr_col)) if fpr_col else (math.nan,) * 2
        collapsed = all(
            math.isfinite(t) and math.isfinite(f) and (t < COLLAPSED or 1 - f < COLLAPSED)
            for t, f in ((t_bn, f_bn), (t_none, f_none))
        )
        neg_col = prev.column("negatives", pi) if pi is not None and math.isfinite(pi) else None
        rows.append(
            {
                "quantity": quantity,
                "prevalence": pi,
                "effect": eid,
                "estimate": r["estimate"],
                "ci_low": r["ci_low"],
                "ci_high": r["ci_high"],
                "p_holm": r.get("p_holm", math.nan),
                "n": int(r.get("n", 0) or 0),
                "direction": direction(r),
                "collapsed": collapsed,
                "tpr_bn": t_bn,
                "tpr_none": t_none,
                "fpr_bn": f_bn,
                "fpr_none": f_none,
                "negatives": _mean(paper, BN_ID, neg_col) if neg_col else math.nan,
                "positives": _mean(paper, BN_ID, neg_col.replace("negatives", "positives")) if neg_col else math.nan,
            }
        )

    for pi in sorted(prevalences, reverse=True):
        own = test_pi is not None and math.isclose(pi, test_pi, abs_tol=1e-9)
        add("cut", pi, prevalence_effect_id("31-63 cut", pi), prev.column("cut_tpr", pi), prev.column("cut_fpr", pi))
        add(
            "argmax",
            pi,
            "31-63" if own else prevalence_effect_id("31-63", pi),
            prev.column("tpr", pi),
            prev.column("fpr", pi),
        )
        add("ap", pi, prevalence_effect_id("31-63 ap", pi))
    add("tpr_at_fpr", math.nan, "31-63 tpr@fpr")
    add("auroc", math.nan, "31-63 auroc")
    return pd.DataFrame(rows, columns=FACT_COLUMNS)


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _rules_out(r) -> str:
    """What a row that is not distinguishable from zero says: the gains and losses its interval rules
    out, or, when the unadjusted interval excludes zero, that only Holm's adjustment keeps zero in."""
    if r.ci_low > 0 or r.ci_high < 0:
        return (
            f"at π = {r.prevalence:g} the unadjusted interval excludes zero, Holm's adjustment does not "
            f"(Holm-adjusted p = {r.p_holm:.2g})"
        )
    return f"at π = {r.prevalence:g} the data rule out a gain larger than {r.ci_high:+.3f} and a loss larger than {-r.ci_low:.3f}"


def _by_direction(rows: pd.DataFrame) -> str:
    """`it helps at π = 0.5 and 0.1, ...` from the rows' directions; collapsed rows apart."""
    words = {
        "gain": "helps",
        "loss": "hurts",
        "not distinguishable": "is not distinguishable from zero",
        "not estimable": "is not estimable",
    }
    parts = []
    for d in ("gain", "loss", "not distinguishable", "not estimable"):
        pis = [f"{r.prevalence:g}" for r in rows.itertuples() if r.direction == d and not r.collapsed]
        if pis:
            parts.append(f"{words[d]} at π = {_join(pis)}")
    nulls = [r for r in rows.itertuples() if r.direction == "not distinguishable" and not r.collapsed]
    text = "; ".join(parts) if parts else "has no estimate"
    if nulls:
        text += " (" + "; ".join(_rules_out(r) for r in nulls) + ")"
    broken = [r for r in rows.itertuples() if r.collapsed]
    if broken:
        text += "; " + "; ".join(
            f"at π = {r.prevalence:g} both models collapse (mean TPR {r.tpr_bn:.2f} with final "
            f"BN, {r.tpr_none:.2f} without): that difference says nothing about final BN"
            for r in broken
        )
    return text


def _listed(rows: pd.DataFrame) -> str:
    return "; ".join(f"π = {r.prevalence:g}: {triple(r.estimate, r.ci_low, r.ci_high)}" for r in rows.itertuples())


def opening_lines(facts: pd.DataFrame, family_size: int | None = None) -> list[str]:
    """Three sentences: does final BN help at each π (validation cut), with which cut (against the
    argmax cut), how sure (ranking quality, replicates, what one false alarm moves). Empty without
    a validation-cut fact."""
    cut = facts[(facts["quantity"] == "cut") & facts["estimate"].notna()]
    if cut.empty:
        return []
    n = int(cut["n"].max())
    family = f" of {family_size} contrasts" if family_size else ""
    lines = [
        f"**Does final BN help at your prevalence?** With each model at the cut chosen on its own validation "
        f"images for the prevalence π (the exported decision rule), final BN alone vs nothing (31 − 63) changes "
        f"minority F1 at {_listed(cut)}. It {_by_direction(cut)}. (Helps or hurts: Holm-adjusted p < "
        f"{SIGNIFICANT:g} within the verdict's family{family}; 95 % intervals over {n} replicates.)"
    ]
    arg = facts[(facts["quantity"] == "argmax") & facts["estimate"].notna()]
    if len(arg):
        text = (
            f"**Which cut?** Ship the cut fit for your prevalence (`finalbn-field --prevalence π` applies the "
            f"card's rule). At the argmax cut (flag when P(diseased) > 0.5), which fits balanced classes only, the "
            f"same contrast is {_listed(arg)}. It {_by_direction(arg)}."
        )
        cut_dir = {round(r.prevalence, 12): r.direction for r in cut.itertuples()}
        moved: dict[tuple[str, str], list[str]] = {}
        for r in arg.itertuples():
            c = cut_dir.get(round(r.prevalence, 12))
            if not r.collapsed and c not in (None, r.direction):
                moved.setdefault((r.direction, c), []).append(f"{r.prevalence:g}")
        said = {
            "gain": "a gain",
            "loss": "a loss",
            "not distinguishable": "not distinguishable from zero",
            "not estimable": "not estimable",
        }
        for (a, c), pis in moved.items():
            text += (
                f" At π = {_join(pis)} the argmax cut's {'result' if a.startswith('not') else a} does not hold at the "
                f"cut fit for π, where the contrast is {said[c]}: it is the cut's, not final BN's."
            )
        lines.append(text)
    lines.append(_how_sure(facts, cut, n))
    return lines


def _how_sure(facts: pd.DataFrame, cut: pd.DataFrame, n: int) -> str:
    parts = []
    ap = facts[(facts["quantity"] == "ap") & facts["estimate"].notna()]
    if len(ap):
        low = ap.loc[ap["prevalence"].idxmin()]
        parts.append(
            f"average precision reweighted to π = {low.prevalence:g} changes by "
            f"{triple(low.estimate, low.ci_low, low.ci_high)} ({_word(low.direction)})"
        )
    for q, name in (("tpr_at_fpr", f"TPR at a false-alarm rate of {prev.LOW_FPR:.0%}"), ("auroc", "AUROC")):
        r = facts[(facts["quantity"] == q) & facts["estimate"].notna()]
        if len(r):
            r = r.iloc[0]
            parts.append(f"{name} by {triple(r.estimate, r.ci_low, r.ci_high)} ({_word(r.direction)})")
    text = "**How sure?** Ranking quality, free of any cut: " + ("; ".join(parts) if parts else "not measured") + "."
    low = cut.loc[cut["prevalence"].idxmin()]
    neg, tpr = low.negatives, low.tpr_bn
    if math.isfinite(neg) and neg > 0 and math.isfinite(tpr):
        pi = low.prevalence
        one = 1 - (pi * tpr) / (pi * tpr + (1 - pi) / neg) if tpr > 0 else math.nan
        text += (
            f" Each of the {n} replicates tests on {neg:.0f} healthy images"
            + (f" and {low.positives:.0f} diseased ones" if math.isfinite(low.positives) else "")
            + f": at π = {pi:g} a single false alarm is {(1 - pi) / neg / pi:.2f} of the diseased share"
            + (
                f" and moves precision from 1 to {1 - one:.2f} at final BN's TPR there ({tpr:.2f})"
                if math.isfinite(one)
                else ""
            )
            + "."
        )
    return text


def _word(d: str) -> str:
    return {
        "gain": "a gain, Holm-adjusted",
        "loss": "a loss, Holm-adjusted",
        "not distinguishable": "not distinguishable from zero",
        "not estimable": "no interval",
    }[d]


def with_directions(eff: pd.DataFrame) -> pd.DataFrame:
    """effects.csv with `direction` (`direction`: by the row's own family's Holm p)."""
    out = eff.copy()
    out["direction"] = [direction(r) for r in out.to_dict("records")] if len(out) else []
    return out


def family_size(eff: pd.DataFrame) -> int:
    """The number of tests in the verdict's Holm family of one scope."""
    return int(((eff["family"] == VERDICT) & np.isfinite(pd.to_numeric(eff["p"], errors="coerce"))).sum())

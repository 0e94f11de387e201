"""The verdict's wording: neutral sentences from the effects table.

    lines = verdict_lines(effects_of_one_scope, factorial_how, setting, extra)
    describe("X", row)       # "X changes minority F1 by +0.120 [+0.050, +0.190] (95 % CI; 10 replicates; ...)"

It opens with the three sentences of `facts.opening_lines` (does final BN help at each prevalence,
at the cut fit for it; which cut; how sure), then the paper's contrast as the paper measured it
(balanced test set, argmax cut) beside the paper's range with the terms that differ and a margin,
the epoch protocol, the BN × WL interaction, BN per setting, the factorial, calibration, power,
what the intervals describe. Estimates come with their interval and Holm-adjusted p, and what the
interval rules out when it holds zero. Numbers are printed to three decimals, as effects.csv has them.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from finalbn.stages.report.facts import family_size, opening_lines, triple, verdict_facts
from finalbn.stages.report.pairs import SIGNIFICANT, VERDICT, prevalence_effect_id
from finalbn.stats.inference import detectable_difference

# The paper's Table I (VGG19, 10 runs, Apple / Pepper / Tomato, a balanced 150/150 test set at the
# argmax cut): the same contrasts, reported range.
PAPER = {
    "31-63": (0.234, 0.662, "+0.23 (Pepper) to +0.66 (Apple)"),
    "31-47": (0.064, 0.162, '+0.06 (Pepper) to +0.16 (Apple), its "BN total improvement"'),
}
PAPER_SETTING = "VGG19 fine-tuned on PlantVillage photographs (Table I, 10 runs)"
MARGIN = 0.05  # minority F1: an interval nearer a range's end than this "touches" it, never "lies outside"


def _fmt_p(p: float) -> str:
    return "n/a" if not math.isfinite(p) else f"{p:.2g}"


def _exploratory(r: dict) -> bool:
    return str(r.get("method", "")).startswith("exploratory")


def describe(label: str, r: dict, what: str = "minority F1") -> str:
    """One neutral sentence: estimate, interval, Holm p, and what the interval rules out."""
    est, lo, hi, n = r["estimate"], r.get("ci_low", math.nan), r.get("ci_high", math.nan), int(r.get("n", 0) or 0)
    if not math.isfinite(est):
        return f"{label}: not estimable here ({r.get('note') or 'no data'})."
    if _exploratory(r):
        return f"{label} changes {what} by {est:+.3f} on one replicate (exploratory: no interval, no p value)."
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return f"{label} changes {what} by {est:+.3f} ({r.get('note') or 'no interval'}; {n} replicate(s))."
    unit = f"{n} replicates" if r.get("kind") == "contrast" else r.get("method", "")
    p = r.get("p_holm", math.nan)
    p_text = f"Holm-adjusted p = {_fmt_p(p)}" if math.isfinite(p) else f"p = {_fmt_p(r.get('p', math.nan))}"
    text = f"{label} changes {what} by {triple(est, lo, hi)} (95 % CI; {unit}; {p_text})"
    if lo > 0 or hi < 0:
        return text + "."
    return text + f": the data rule out a gain larger than {hi:+.3f} and a loss larger than {-lo:.3f}."


def _interval(r: dict) -> str:
    est, lo, hi = r["estimate"], r.get("ci_low", math.nan), r.get("ci_high", math.nan)
    return f"{est:+.3f}" if not math.isfinite(lo) else f"{est:+.3f} [{lo:+.3f}, {hi:+.3f}]"


def _versus_paper(eid: str, r: dict, here: str = "") -> str:
    """The paper's range beside an interval, with the terms that differ and a margin (MARGIN)."""
    if eid not in PAPER or not (math.isfinite(r["ci_low"]) and math.isfinite(r["ci_high"])):
        return ""
    low, high, text = PAPER[eid]
    lo, hi = r["ci_low"], r["ci_high"]
    if hi < low - MARGIN:
        where = f"lies below it by more than {MARGIN:g}"
    elif lo > high + MARGIN:
        where = f"lies above it by more than {MARGIN:g}"
    elif lo >= low and hi <= high:
        where = "lies within it"
    elif hi < low or lo > high:
        where = f"lies outside it by less than the margin of {MARGIN:g}: too close to call a difference"
    else:
        where = "overlaps it"
    return (
        f" The paper reports {text} with {PAPER_SETTING}: this interval {where}. "
        + (f"Here: {here}; data" if here else "Data")
        + ", architecture and image size differ, so this "
        "compares the direction and size of an effect, not a replication."
    )


def classify(r: dict) -> str:
    """'holds' / 'reverses' (Holm-adjusted p below SIGNIFICANT, by sign), else 'vanishes'."""
    p = r.get("p_holm", math.nan)
    p = p if math.isfinite(p) else r.get("p", math.nan)
    if not (math.isfinite(p) and p < SIGNIFICANT):
        return "vanishes"
    return "holds" if r["estimate"] > 0 else "reverses"


def at_each_prevalence(by: dict, stem: str, prevalences, test_pi, protocol: str = "last") -> list[tuple[float, dict]]:
    """(π, effect row) of a contrast at every prevalence, highest first; the test set's own π is the
    row on the test set as drawn."""
    raw = stem if protocol == "last" else f"{stem} sel"
    out = []
    for pi in sorted(set(prevalences) | ({test_pi} if test_pi is not None else set()), reverse=True):
        eid = (
            raw
            if test_pi is not None and math.isclose(pi, test_pi, abs_tol=1e-9)
            else prevalence_effect_id(stem, pi, protocol)
        )
        if eid in by and math.isfinite(by[eid]["estimate"]):
            out.append((pi, by[eid]))
    return out


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _protocol_line(by: dict, extra: dict) -> str | None:
    sel = at_each_prevalence(by, "31-63", extra["prevalences"], extra["test_pi"], "sel")
    last = dict(at_each_prevalence(by, "31-63", extra["prevalences"], extra["test_pi"]))
    if not sel:
        return None
    listed = "; ".join(
        f"{_interval(r)} at π = {pi:.2g}" + (f" (last epoch {last[pi]['estimate']:+.3f})" if pi in last else "")
        for pi, r in sel
    )
    text = (
        f"Epoch protocol (secondary; the argmax cut, effects.csv family `other contrasts`): at the epoch selected "
        f"on validation AUROC instead of the last, 31 − 63 is {listed}."
    )
    if "15-47 sel" in by and "15-47" in by and math.isfinite(by["15-47 sel"]["estimate"]):
        text += (
            f" With WL on, 15 − 47 is {_interval(by['15-47 sel'])} at the selected epoch against "
            f"{_interval(by['15-47'])} at the last."
        )
    flips = [
        pi
        for pi, r in sel
        if pi in last and np.sign(r["estimate"]) != np.sign(last[pi]["estimate"]) and classify(r) != "vanishes"
    ]
    if flips:
        text += f" The sign differs between the protocols at π = {_join([f'{p:g}' for p in flips])}."
    return text


def _setting_line(setting: pd.DataFrame) -> str | None:
    if setting is None or setting.empty or not setting["factorial_estimate"].notna().any():
        return None
    parts = []
    for r in setting.to_dict("records"):
        txt = f"{r['setting']} {r['factorial_estimate']:+.2f} ({r['factorial_min']:+.2f} to {r['factorial_max']:+.2f})"
        if r["pair_replicates"] >= 2 and math.isfinite(r["pair_ci_low"]):
            txt += (
                f", matched pair {r['pair']} {r['pair_estimate']:+.2f} [{r['pair_ci_low']:+.2f}, "
                f"{r['pair_ci_high']:+.2f}] over {r['pair_replicates']} replicates"
            )
        parts.append(txt)
    pairs = int(setting["factorial_pairs"].iloc[0])
    one = "factorial_exploratory" in setting and bool(setting["factorial_exploratory"].fillna(False).astype(bool).any())
    return (
        "BN's effect depends on the setting (minority F1; factorial pairs averaged over DA, MX and WD, "
        f"{pairs} per setting, their range in parentheses"
        + ("; exploratory: those pairs rest on one replicate, no interval" if one else "")
        + "): "
        + "; ".join(parts)
        + ". A main effect averages over these settings."
    )


def _calibration_line(cal: pd.DataFrame | None, train_pi: float | None) -> str | None:
    if cal is None or cal.empty or train_pi is None:
        return None
    c = cal[cal["comparison"] == "config 31 vs 63"]

    def get(pi_kind, bn, m):
        r = c[(c["at"] == pi_kind) & (c["final_bn"] == bn)]
        return float(r[f"{m}_mean"].iloc[0]) if len(r) and math.isfinite(r[f"{m}_mean"].iloc[0]) else math.nan

    vals = {
        (k, bn, m): get(k, bn, m)
        for k in ("test set", "training prior")
        for bn in (False, True)
        for m in ("ece", "brier")
    }
    if not all(math.isfinite(v) for v in vals.values()):
        return None
    return (
        f"Calibration (31 vs 63, last epoch): on the test set as drawn final BN changes ECE from "
        f"{vals['test set', False, 'ece']:.3f} to {vals['test set', True, 'ece']:.3f} (Brier "
        f"{vals['test set', False, 'brier']:.3f} → {vals['test set', True, 'brier']:.3f}); reweighted to the "
        f"training prior (π = {train_pi:.2g}) from {vals['training prior', False, 'ece']:.3f} to "
        f"{vals['training prior', True, 'ece']:.3f} (Brier {vals['training prior', False, 'brier']:.3f} → "
        f"{vals['training prior', True, 'brier']:.3f}). A softmax trained on the 1 % prior gives probabilities "
        "for that prior; final BN re-centres the logits on each batch and moves them toward balanced classes, "
        "which suits a balanced test set and not a field with the training prior."
    )


def _power_line(by: dict) -> str | None:
    r = by.get("31-63")
    if r is None or not math.isfinite(r.get("sd", math.nan)) or int(r["n"]) < 2:
        return None
    n = int(r["n"])
    text = (
        f"Power: with {n} replicates and the spread of the 31 − 63 differences on the test set as drawn (argmax; SD "
        f"{r['sd']:.3f}), the smallest paired difference in minority F1 detected with 80 % power (two-sided "
        f"α = 0.05, before Holm) is {detectable_difference(r['sd'], n):.3f}"
    )
    low = [(k, v) for k, v in by.items() if k.startswith("31-63 π=") and math.isfinite(v.get("sd", math.nan))]
    if low:
        k, v = min(low, key=lambda kv: kv[1]["prevalence"])
        text += (
            f"; at π = {v['prevalence']:g} (SD {v['sd']:.3f}) it is {detectable_difference(v['sd'], int(v['n'])):.3f}"
        )
    return text + "."


def _overlap_line(overlap: dict | None) -> str | None:
    if not overlap:
        return None
    h = overlap.get("healthy")
    healthy = ""
    if h:
        healthy = (
            f" Their healthy test images ({h['per_replicate']:.0f} per replicate) are "
            + (
                "disjoint: no two replicates share one"
                if h["share"] == 0
                else f"shared at {h['share']:.0%} on average ({h['distinct']} distinct)"
            )
            + "."
        )
    if overlap["share"] == 0:
        return (
            f"What the intervals describe: the {overlap['replicates']} replicates' diseased test sets share no "
            f"image ({overlap['distinct']} distinct; `split.disjoint_test`), so they are independent draws "
            "of test images from the pool as well as of splits and training seeds." + healthy
        )
    return (
        f"What the intervals describe: the replicates draw their diseased test images from one finite pool; two "
        f"replicates' diseased test sets share {overlap['share']:.0%} of their images on average "
        f"({overlap['per_replicate']:.0f} per replicate, {overlap['distinct']} distinct over "
        f"{overlap['replicates']} replicates)." + healthy + " The intervals are for re-drawing splits and "
        "training seeds over these images, not for new diseased images from the field (`split.disjoint_test: "
        "true` gives each replicate its own test images of both classes when the pool holds enough)."
    )


def _paper_line(by: dict, extra: dict, top: float | None) -> str | None:
    """The paper's contrast as the paper measured it: a balanced test set at the argmax cut."""
    tp = extra["test_pi"]
    if top is not None and not (tp is not None and math.isclose(top, tp, abs_tol=1e-9)):
        eid = f"31-63 π={top:g}"
    else:
        eid = "31-63"
    r = by.get(eid)
    if (r is None or not math.isfinite(r["estimate"])) and eid != "31-63":
        eid, r = "31-63", by.get("31-63")  # no predictions to reweight: the test set as drawn
    if r is None or not math.isfinite(r["estimate"]):
        return None
    where = (f"the test set reweighted to π = {top:g}" if eid != "31-63" else "the test set as drawn") + ", argmax cut"
    return (
        f"The paper's contrast, measured as the paper did ({where}, last epoch): "
        + describe("final BN alone vs nothing (31 − 63)", r)
        + _versus_paper("31-63", r, extra.get("here", ""))
    )


def _wl_line(by: dict, extra: dict) -> str | None:
    r = by.get("BNxWL")
    if r is None or not math.isfinite(r["estimate"]):
        return None
    return describe(
        "The BN × WL interaction, (15 − 47) − (31 − 63) at the argmax cut on the balanced test set "
        "(does WL change what final BN does?),",
        r,
    ).replace(" changes minority F1 by", " is")


def verdict_lines(
    eff: pd.DataFrame, factorial_how: str, setting: pd.DataFrame | None = None, extra: dict | None = None
) -> list[str]:
    """The verdict: three sentences built from the facts (`facts.opening_lines`), then one sentence
    (or short paragraph) per further finding, in the order a reader needs them. `extra["cells"]`:
    the scope's cells with the wide π columns (without them there is no opening)."""
    extra = {
        "prevalences": [],
        "test_pi": None,
        "train_pi": None,
        "rates": {},
        "overlap": None,
        "calibration": None,
        "cells": None,
        "here": "",
        **(extra or {}),
    }
    records = eff.to_dict("records")
    by = {r["effect"]: r for r in records if r.get("kind") == "contrast"}
    lines = []
    if extra["cells"] is not None and extra["prevalences"]:
        facts = verdict_facts(eff, extra["cells"], extra["prevalences"], extra["test_pi"])
        lines += opening_lines(facts, family_size(eff) if "family" in eff else None)
    top = max(extra["prevalences"]) if extra["prevalences"] else None
    for line in (_paper_line(by, extra, top), _protocol_line(by, extra), _wl_line(by, extra), _setting_line(setting)):
        if line:
            lines.append(line)
    fac = {r["effect"]: r for r in records if r.get("kind") in ("main", "interaction", "simple")}
    if "BN" in fac:
        lines.append(describe("Factorial main effect: final BN", fac["BN"]) + f" ({factorial_how}.)")
    if "WD" in fac and math.isfinite(fac["WD"]["estimate"]):
        lines.append(
            describe("WD (1e-2, decoupled, BN and biases exempt)", fac["WD"])
            + (
                " That is almost nothing over 10 epochs of a head; fastai's coupling (train.wd_on_bn: true) "
                "is the paper profile's setting."
                if abs(fac["WD"]["estimate"]) < 0.02
                else ""
            )
        )
    for line in (
        _calibration_line(extra["calibration"], extra["train_pi"]),
        _power_line(by),
        _overlap_line(extra["overlap"]),
    ):
        if line:
            lines.append(line)
    n_family = sum(1 for r in records if r.get("family") == VERDICT and math.isfinite(r.get("p", math.nan)))
    if n_family:
        lines.append(
            f"Multiplicity: the Holm-adjusted p values of the opening sentences, the AUROC, TPR and AP rows "
            f"and the BN × WL interaction are adjusted within one family of {n_family} paired contrasts "
            "(effects.csv, family `verdict`); the factorial, the other contrasts, the baselines and the "
            "sensitivity stage are separate families, each named in its section. Intervals are unadjusted "
            "95 %."
        )
    return lines

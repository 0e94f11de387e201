"""The verdict's wording: neutral sentences from the effects table.

    lines = verdict_lines(effects_of_one_scope, factorial_how, setting, extra)
    describe("X", row)       # "X changes minority F1 by +0.12 [95% CI +0.05, +0.19] (10 replicates; ...)"

Estimates come with their interval and Holm-adjusted p, and what the interval rules out when it
holds zero; the paper's reported range is set beside the headline contrast; a contrast at a
prevalence "holds", "is not distinguishable from zero" or "reverses" by its Holm-adjusted p.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from finalbn.stages.report.pairs import SIGNIFICANT, VERDICT, prevalence_effect_id
from finalbn.stages.report.tables import BN_ID, NONE_ID
from finalbn.stats import detectable_difference

# The paper's Table I (VGG19, 10 runs, Apple / Pepper / Tomato): the same contrasts, reported range.
PAPER = {
    "31-63": (0.234, 0.662, "+0.23 (Pepper) to +0.66 (Apple), Table I (VGG19, 10 runs)"),
    "31-47": (0.064, 0.162, "+0.06 (Pepper) to +0.16 (Apple), Table I's \"BN total improvement\""),
}


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
        return f"{label} changes {what} by {est:+.2f} on one replicate (exploratory: no interval, no p value)."
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return f"{label} changes {what} by {est:+.2f} ({r.get('note') or 'no interval'}; {n} replicate(s))."
    unit = f"{n} replicates" if r.get("kind") == "contrast" else r.get("method", "")
    p = r.get("p_holm", math.nan)
    p_text = f"Holm-adjusted p = {_fmt_p(p)}" if math.isfinite(p) else f"p = {_fmt_p(r.get('p', math.nan))}"
    text = f"{label} changes {what} by {est:+.2f} [95% CI {lo:+.2f}, {hi:+.2f}] ({unit}; {p_text})"
    if lo > 0 or hi < 0:
        return text + "."
    return text + f": the data rule out a gain larger than {_small(hi, '+')} and a loss larger than {_small(-lo)}."


def _small(v: float, sign: str = "") -> str:
    """Two decimals, three where two would print a bound of zero."""
    return f"{v:{sign}.2f}" if abs(v) >= 0.005 else f"{v:{sign}.3f}"


def _interval(r: dict) -> str:
    est, lo, hi = r["estimate"], r.get("ci_low", math.nan), r.get("ci_high", math.nan)
    return f"{est:+.3f}" if not math.isfinite(lo) else f"{est:+.3f} [{lo:+.3f}, {hi:+.3f}]"


def _versus_paper(eid: str, r: dict) -> str:
    if eid not in PAPER or not (math.isfinite(r["ci_low"]) and math.isfinite(r["ci_high"])):
        return ""
    low, high, text = PAPER[eid]
    if r["ci_high"] < low:
        where = "lies entirely below"
    elif r["ci_low"] > high:
        where = "lies entirely above"
    elif r["ci_low"] >= low and r["ci_high"] <= high:
        where = "lies within"
    else:
        where = "overlaps"
    return f" The paper reports {text}: this interval {where} that range."


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
        eid = raw if test_pi is not None and math.isclose(pi, test_pi, abs_tol=1e-9) else \
            prevalence_effect_id(stem, pi, protocol)
        if eid in by and math.isfinite(by[eid]["estimate"]):
            out.append((pi, by[eid]))
    return out


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _prevalence_lines(by: dict, extra: dict) -> list[str]:
    rows = at_each_prevalence(by, "31-63", extra["prevalences"], extra["test_pi"])
    if len(rows) < 2:
        return []
    listed = "; ".join(f"{_interval(r)} at π = {pi:g}" for pi, r in rows)
    def kind(r):
        c = classify(r)
        if c == "vanishes" and math.isfinite(r.get("ci_low", math.nan)) and (r["ci_low"] > 0 or r["ci_high"] < 0):
            return "unadjusted"  # the 95 % interval excludes zero, Holm's adjustment does not
        return c

    groups = {k: [f"{pi:g}" for pi, r in rows if kind(r) == k] for k in ("holds", "unadjusted", "vanishes", "reverses")}
    parts = []
    if groups["holds"]:
        parts.append(f"holds at π = {_join(groups['holds'])}")
    if groups["unadjusted"]:
        parts.append(f"at π = {_join(groups['unadjusted'])} has an interval that excludes zero but not after Holm's "
                     "adjustment")
    if groups["vanishes"]:
        ruled = [f"π = {pi:g}: gain ≤ {_small(r['ci_high'], '+')}, loss ≤ {_small(-r['ci_low'])}" for pi, r in rows
                 if kind(r) == "vanishes" and math.isfinite(r.get("ci_low", math.nan))]
        parts.append(f"is not distinguishable from zero at π = {_join(groups['vanishes'])}"
                     + (f" (the data rule out, {'; '.join(ruled)})" if ruled else ""))
    if groups["reverses"]:
        parts.append(f"reverses at π = {_join(groups['reverses'])}")
    lines = [f"At the prevalence the user will meet (the test set reweighted to a field prevalence π: TPR and FPR "
             f"as measured, precision and F1 recomputed; last epoch), final BN alone vs nothing (31 − 63) changes "
             f"minority F1 by {listed}. The gain {_join(parts)} (Holm-adjusted p < {SIGNIFICANT} within the "
             f"verdict's family)."]
    rates = extra.get("rates") or {}
    if rates.get(BN_ID) and rates.get(NONE_ID):
        (t31, s31), (t63, s63) = rates[BN_ID], rates[NONE_ID]
        low = min(pi for pi, _ in rows)
        lines[-1] += (f" Final BN trades specificity for sensitivity: TPR {t63:.3f} → {t31:.3f}, TNR {s63:.3f} → "
                      f"{s31:.3f} (means over replicates); at π = {low:g} each healthy image weighs "
                      f"{(1 - low) / low:.0f} times a diseased one in precision, so the extra false alarms outweigh "
                      "the extra finds as π falls.")
    return lines


def _protocol_line(by: dict, extra: dict) -> str | None:
    sel = at_each_prevalence(by, "31-63", extra["prevalences"], extra["test_pi"], "sel")
    last = dict(at_each_prevalence(by, "31-63", extra["prevalences"], extra["test_pi"]))
    if not sel:
        return None
    listed = "; ".join(f"{_interval(r)} at π = {pi:g}" + (f" (last epoch {last[pi]['estimate']:+.3f})" if pi in last
                                                          else "") for pi, r in sel)
    text = f"Epoch protocol: at the epoch selected on validation AUROC instead of the last, 31 − 63 is {listed}."
    if "15-47 sel" in by and "15-47" in by and math.isfinite(by["15-47 sel"]["estimate"]):
        text += (f" With WL on, 15 − 47 is {_interval(by['15-47 sel'])} at the selected epoch against "
                 f"{_interval(by['15-47'])} at the last.")
    flips = [pi for pi, r in sel if pi in last and np.sign(r["estimate"]) != np.sign(last[pi]["estimate"])
             and classify(r) != "vanishes"]
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
            txt += (f", matched pair {r['pair']} {r['pair_estimate']:+.2f} [{r['pair_ci_low']:+.2f}, "
                    f"{r['pair_ci_high']:+.2f}] over {r['pair_replicates']} replicates")
        parts.append(txt)
    pairs = int(setting["factorial_pairs"].iloc[0])
    return ("BN's effect depends on the setting (minority F1; factorial pairs averaged over DA, MX and WD, "
            f"{pairs} per setting, their range in parentheses): " + "; ".join(parts)
            + ". A main effect averages over these settings.")


def _calibration_line(cal: pd.DataFrame | None, train_pi: float | None) -> str | None:
    if cal is None or cal.empty or train_pi is None:
        return None
    c = cal[cal["comparison"] == "config 31 vs 63"]

    def get(pi_kind, bn, m):
        r = c[(c["at"] == pi_kind) & (c["final_bn"] == bn)]
        return float(r[f"{m}_mean"].iloc[0]) if len(r) and math.isfinite(r[f"{m}_mean"].iloc[0]) else math.nan

    vals = {(k, bn, m): get(k, bn, m) for k in ("test set", "training prior") for bn in (False, True)
            for m in ("ece", "brier")}
    if not all(math.isfinite(v) for v in vals.values()):
        return None
    return (f"Calibration (31 vs 63, last epoch): on the balanced test set final BN changes ECE from "
            f"{vals['test set', False, 'ece']:.3f} to {vals['test set', True, 'ece']:.3f} (Brier "
            f"{vals['test set', False, 'brier']:.3f} → {vals['test set', True, 'brier']:.3f}); reweighted to the "
            f"training prior (π = {train_pi:.2g}) from {vals['training prior', False, 'ece']:.3f} to "
            f"{vals['training prior', True, 'ece']:.3f} (Brier {vals['training prior', False, 'brier']:.3f} → "
            f"{vals['training prior', True, 'brier']:.3f}). A softmax trained on the 1 % prior gives probabilities "
            "for that prior; final BN re-centres the logits on each batch and moves them toward balanced classes, "
            "which suits the 50/50 test set and not a field with the training prior.")


def _power_line(by: dict) -> str | None:
    r = by.get("31-63")
    if r is None or not math.isfinite(r.get("sd", math.nan)) or int(r["n"]) < 2:
        return None
    n = int(r["n"])
    text = (f"Power: with {n} replicates and the spread of the 31 − 63 differences on the test set (SD "
            f"{r['sd']:.3f}), the smallest paired difference in minority F1 detected with 80 % power (two-sided "
            f"α = 0.05, before Holm) is {detectable_difference(r['sd'], n):.3f}")
    low = [(k, v) for k, v in by.items() if k.startswith("31-63 π=") and math.isfinite(v.get("sd", math.nan))]
    if low:
        k, v = min(low, key=lambda kv: kv[1]["prevalence"])
        text += f"; at π = {v['prevalence']:g} (SD {v['sd']:.3f}) it is {detectable_difference(v['sd'], int(v['n'])):.3f}"
    return text + "."


def _overlap_line(overlap: dict | None) -> str | None:
    if not overlap:
        return None
    if overlap["share"] == 0:
        return (f"What the intervals describe: the {overlap['replicates']} replicates' diseased test sets share no "
                f"image ({overlap['distinct']} distinct; `split.disjoint_test`), so they are independent draws "
                "of test images from the pool as well as of splits and training seeds.")
    return (f"What the intervals describe: the replicates draw their test sets from one finite pool; two "
            f"replicates' diseased test sets share {overlap['share']:.0%} of their images on average "
            f"({overlap['per_replicate']:.0f} per replicate, {overlap['distinct']} distinct over "
            f"{overlap['replicates']} replicates). The intervals are for re-drawing splits and training seeds over "
            "these images, not for new images from the field (`split.disjoint_test: true` gives each replicate "
            "its own test images when the pool holds enough).")


def verdict_lines(eff: pd.DataFrame, factorial_how: str, setting: pd.DataFrame | None = None,
                  extra: dict | None = None) -> list[str]:
    """The verdict, one sentence (or short paragraph) per finding, in the order a reader needs them."""
    extra = {"prevalences": [], "test_pi": None, "train_pi": None, "rates": {}, "overlap": None,
             "calibration": None, **(extra or {})}
    records = eff.to_dict("records")
    by = {r["effect"]: r for r in records if r.get("kind") == "contrast"}
    lines = []
    tp = extra["test_pi"]
    if "31-63" in by:
        r = by["31-63"]
        where = f"on the test set as drawn (π = {tp:.2g}), last epoch" if tp is not None else "on the test set, last epoch"
        lines.append(f"Paper's contrast, {where}: " + describe("final BN alone vs nothing (31 vs 63)", r)
                     + _versus_paper("31-63", r))
    lines += _prevalence_lines(by, extra)
    protocol = _protocol_line(by, extra)
    if protocol:
        lines.append(protocol)
    if "15-47" in by:
        lines.append(describe("With WL on, final BN (15 vs 47)", by["15-47"]))
    setting_line = _setting_line(setting)
    if setting_line:
        lines.append(setting_line)
    fac = {r["effect"]: r for r in records if r.get("kind") in ("main", "interaction", "simple")}
    if "BN" in fac:
        lines.append(describe("Factorial main effect: final BN", fac["BN"]) + f" ({factorial_how}.)")
    if "31-63 auroc" in by:
        lines.append("Ranking vs threshold: " + describe("final BN alone vs nothing (31 vs 63)", by["31-63 auroc"],
                                                         "test AUROC"))
    if "31-pc63" in by:
        lines.append(describe("Final BN vs the free prior correction of no-BN (31 vs prior-corrected 63)",
                              by["31-pc63"]))
    if "WD" in fac and math.isfinite(fac["WD"]["estimate"]):
        lines.append(describe("WD (1e-2, decoupled, BN and biases exempt)", fac["WD"])
                     + (" That is almost nothing over 10 epochs of a head; fastai's coupling (train.wd_on_bn: true) "
                        "is the paper profile's setting." if abs(fac["WD"]["estimate"]) < 0.02 else ""))
    for line in (_calibration_line(extra["calibration"], extra["train_pi"]), _power_line(by),
                 _overlap_line(extra["overlap"])):
        if line:
            lines.append(line)
    n_family = sum(1 for r in records if r.get("family") == VERDICT and math.isfinite(r.get("p", math.nan)))
    if n_family:
        lines.append(f"Multiplicity: every Holm-adjusted p above is adjusted within one family, the {n_family} "
                     "paired contrasts this verdict states (effects.csv, family `verdict`: the test set as drawn "
                     "and each prevalence, both epoch protocols, WL on, AUROC, the prior correction); the factorial, "
                     "the other contrasts, the imbalance baselines and the search are separate families, each named "
                     "in its section. Intervals are unadjusted 95 %.")
    return lines

"""The report's sections that put the answer where the user will use it: at each field prevalence,
per (UF, WL) setting, calibrated at the training prior, and under the sensitivity stage's settings.

    at_pi, test_pi, notes = at_prevalences(all_cells, data, out, (0.5, 0.1, 0.05, 0.01), train_pi)
    prevalence_section(page, cells, data, at_pi, effects, prevalences, test_pi)

Each writes its CSV / PNG into the page's folder and appends its Markdown (`markdown.Page`).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from finalbn.infra.io import write_csv
from finalbn.plots.sensitivity import fig_factors
from finalbn.stages.report import figures
from finalbn.stages.report import prevalence as prev
from finalbn.stages.report.cells import CellData
from finalbn.stages.report.markdown import Page, interval_text, markdown_table
from finalbn.stages.report.pairs import prevalence_effect_id
from finalbn.stages.report.tables import BN_ID, NONE_ID, pooled_bins


def at_prevalences(all_cells: pd.DataFrame, data: CellData, out: Path, prevalences, train_pi):
    """prevalence.csv: every cell's test metrics at each prevalence (and the training prior); the
    test set's own prevalence (from the first predictions found); notes."""
    pis = sorted(set(prevalences) | ({train_pi} if train_pi else set()), reverse=True)
    table, notes = prev.cell_table(all_cells, data.prediction, pis, data.val_prediction)
    write_csv(out / "prevalence.csv", table)
    test_pi = None
    for rid in all_cells["run_id"]:
        p = data.prediction(rid)
        if p is not None and "label" in p and len(p):
            test_pi = prev.prevalence_of(p)
            break
    return table, test_pi, notes


def prevalence_section(
    page: Page, cells: pd.DataFrame, data: CellData, at_pi: pd.DataFrame, eff: pd.DataFrame, prevalences, test_pi
) -> None:
    """The answer at each prevalence: the table of 31 and 63 and their difference, prevalence.png."""
    title = "The answer at the prevalence the user will meet"
    if at_pi.empty:
        figures.placeholder(page.out / "prevalence.png", "no test predictions: no metric at any prevalence")
        page.section(title, "", ["no cell run has test predictions: nothing is reweighted to a prevalence"])
        return
    means = prev.means_at_prevalence(at_pi, [BN_ID, NONE_ID])
    rows = []
    for (ds, arch), sub in means.groupby(["dataset", "arch"], sort=True):
        scope_eff = eff[eff["scope"] == f"{ds}/{arch}"]
        by = {r["effect"]: r for r in scope_eff.to_dict("records") if r["kind"] == "contrast"}
        for pi in sorted(prevalences, reverse=True):
            m = {int(c): g.iloc[0] for c, g in sub[np.isclose(sub["prevalence"], pi)].groupby("config_id")}
            rows.append({"dataset": ds, "arch": arch, **_prevalence_row(m, by, pi, test_pi)})
    shown = pd.DataFrame(rows)
    first = sorted(set(zip(cells["dataset"], cells["arch"])))[0]
    curves = _pr_curves(cells[(cells["dataset"] == first[0]) & (cells["arch"] == first[1])], data, prevalences)
    figures.fig_prevalence(
        means[(means["dataset"] == first[0]) & (means["arch"] == first[1])],
        eff[eff["scope"] == f"{first[0]}/{first[1]}"],
        curves,
        page.out / "prevalence.png",
    )
    page.section(
        title,
        page.table(shown) + "\n\nThe test set reweighted to each field prevalence π (share of "
        "diseased images): each diseased test image stands for π / n₁ of the field and each healthy one "
        "for (1 − π) / n₀, so TPR and FPR at a cut are as measured and precision = π TPR / (π TPR "
        "+ (1 − π) FPR), F1 and the PR curve follow (label shift; Saerens et al. 2002). `validation cut`: "
        "each model at the cut with the best F1 at π on its own validation predictions (the export's "
        "decision rule; the test set chooses nothing); `argmax`: flag when P(diseased) > 0.5, which fits "
        "balanced classes only; AP: average precision reweighted to π (no cut). Means over replicates (last "
        "epoch); Δ: 31 − 63 paired by replicate, 95 % t interval, Holm-adjusted within the verdict's family. "
        "`healthy images`: the healthy test images each replicate's numbers rest on; `one false alarm`: "
        "precision at π with final BN's TPR at the validation cut and one false alarm, against 1 with none. "
        "`prevalence.csv` holds every cell at every π (precision, F1, accuracy, balanced accuracy, AP, ECE, "
        "Brier, the validation cut's TPR, FPR, precision and F1; both epoch protocols)."
        + (f" Figure: {first[0]}/{first[1]}." if cells[["dataset", "arch"]].drop_duplicates().shape[0] > 1 else "")
        + "\n\n![](prevalence.png)",
    )


def _prevalence_row(m: dict, by: dict, pi: float, test_pi: float | None) -> dict:
    """One row of the section's table at π: each model's F1 at its validation cut and at the argmax,
    AP, the paired differences, and what the low-π numbers rest on."""
    row: dict[str, float | str] = {"π": pi}

    def mean(cid, col):
        return float(m[cid][col]) if cid in m and col in m[cid] else math.nan

    own = test_pi is not None and math.isclose(pi, test_pi, abs_tol=1e-9)
    for head, col, eid in (
        ("F1 validation cut", "cut_f1_1", prevalence_effect_id("31-63 cut", pi)),
        ("F1 argmax", "f1_1", "31-63" if own else prevalence_effect_id("31-63", pi)),
        ("AP", "ap", prevalence_effect_id("31-63 ap", pi)),
    ):
        row[f"{head} BN (31)"], row[f"{head} none (63)"] = mean(BN_ID, col), mean(NONE_ID, col)
        r = by.get(eid)
        row[f"Δ {head}"] = (
            (
                interval_text(r["estimate"], r["ci_low"], r["ci_high"])
                + (f" (Holm p {r['p_holm']:.2g})" if math.isfinite(r.get("p_holm", math.nan)) else "")
            )
            if r
            else "—"
        )
    neg, tpr = mean(BN_ID, "negatives"), mean(BN_ID, "cut_tpr")
    row["healthy images"] = f"{neg:.0f}" if math.isfinite(neg) else "—"
    one = pi * tpr / (pi * tpr + (1 - pi) / neg) if math.isfinite(neg) and neg > 0 and tpr > 0 else math.nan
    row["one false alarm"] = f"precision 1 → {one:.2f}" if math.isfinite(one) else "—"
    return row


def _pr_curves(sub: pd.DataFrame, data: CellData, prevalences) -> dict:
    """π -> config -> [(recall, precision) per replicate] of configs 31 and 63, last epoch."""
    out: dict[float, dict[int, list]] = {float(pi): {} for pi in prevalences}
    for r in sub[sub["config_id"].isin([BN_ID, NONE_ID])].itertuples(index=False):
        p = data.prediction(r.run_id)
        if p is None or "p1_last" not in p or p["label"].nunique() < 2:
            continue
        for pi in prevalences:
            out[float(pi)].setdefault(int(r.config_id), []).append(
                prev.pr_curve_at(p["label"].to_numpy(int), p["p1_last"].to_numpy(float), pi)
            )
    return out


COLLAPSE = 0.1  # the sensitivity stage's COLLAPSE_RATE: a mean test TPR or TNR below it is a collapsed model


def _num(r) -> str:
    return f"{r.estimate:+.2f} [{r.ci_low:+.2f}, {r.ci_high:+.2f}]" if math.isfinite(r.ci_low) else f"{r.estimate:+.2f}"


def _broken(r, collapse: float = COLLAPSE) -> str:
    sides = [
        name
        for name, tp, tn in (("final BN", r.tpr_bn, r.tnr_bn), ("rival", r.tpr_rival, r.tnr_rival))
        if tp < collapse or tn < collapse
    ]
    who = "both models" if len(sides) == 2 else (sides[0] if sides else "a model")
    rates = f"TPR {r.tpr_bn:.2f} vs {r.tpr_rival:.2f}"
    if min(r.tnr_bn, r.tnr_rival) < collapse:
        rates += f", TNR {r.tnr_bn:.2f} vs {r.tnr_rival:.2f}"
    return f"{who} collapsed: {rates}"


def _sensitivity_line(t: pd.DataFrame, pis, n_family: int, old: bool) -> str:
    """The verdict's sentence on the sensitivity stage: per π the levels above and below zero, sign
    reversals between π values, collapsed comparisons apart."""
    rows = t[~t["reference"].astype(bool) & t["estimate"].notna()]
    ok = rows[~rows["collapsed"]]
    sentences = []
    for i, pi in enumerate(pis):
        at = ok[np.isclose(ok["prevalence"], pi)]
        ups = [f"{r.factor} {r.level} {_num(r)}" for r in at.itertuples() if r.direction == "above zero"]
        downs = [f"{r.factor} {r.level} {_num(r)}" for r in at.itertuples() if r.direction == "below zero"]
        rest = len(at) - len(ups) - len(downs)
        sentences.append(
            f"{'at' if i == 0 else 'At'} π = {pi:g}, above zero: {', '.join(ups) or 'none'}; below "
            f"zero: {', '.join(downs) or 'none'}; {rest} not distinguishable."
        )
    flips = []
    for (factor, level), g in ok.groupby(["factor", "level"], sort=False):
        hi, lo = g.loc[g["estimate"].idxmax()], g.loc[g["estimate"].idxmin()]
        if hi["estimate"] > 0 > lo["estimate"] and g["direction"].isin(["above zero", "below zero"]).any():
            flips.append(
                f"{factor} {level} ({hi['estimate']:+.2f} at π = {hi['prevalence']:g}, "
                f"{lo['estimate']:+.2f} at π = {lo['prevalence']:g})"
            )
    broke = []
    for (factor, level), g in rows[rows["collapsed"]].groupby(["factor", "level"], sort=False):
        r = next(g.itertuples())
        where = (
            ""
            if len(g) == rows[(rows["factor"] == factor) & (rows["level"] == level)].shape[0]
            else f" at π = {', '.join(f'{x:g}' for x in g['prevalence'])}"
        )
        broke.append(f"{factor} {level} ({_broken(r)}{where})")
    last = (
        f"Sign reversals between π values: {'; '.join(flips) or 'none'}; collapsed comparisons, not read as "
        f"gains or losses: {'; '.join(broke) or 'none'}."
    )
    line = (
        f"Sensitivity (section below; 31 − rival in minority F1 at the argmax cut, not the cut fit for π, so its "
        f"low-π losses may be the cut's as in the opening; one setting changed at a time, 95 % t "
        f"intervals; above or below zero: Holm-adjusted p < 0.05 within the sensitivity family of {n_family} "
        f"comparisons, every non-reference level at every π): " + " ".join(sentences) + " " + last
    )
    if old:
        line += " (This sensitivity.csv predates the Holm family: rerun `finalbn sensitivity`.)"
    return line


def sensitivity_section(page: Page, table: pd.DataFrame | None) -> list[str]:
    """Beyond the paper: the sensitivity section (every level at every π, Holm-adjusted within the
    stage's `sensitivity` family, collapsed comparisons marked) and sensitivity.png; the verdict's
    line: per π the levels above and below zero, then sign reversals between π values and collapsed
    comparisons (which are not read as gains or losses)."""
    title = "Beyond the paper: how sensitive is the headline contrast?"
    if table is None or table.empty:
        figures.placeholder(page.out / "sensitivity.png", "no sensitivity table: run `finalbn sensitivity`")
        page.section(
            title,
            "",
            ["no results/sensitivity/sensitivity.csv: run `finalbn sensitivity` (or `dvc repro sensitivity`)"],
        )
        return []
    collapse = COLLAPSE
    old = "direction" not in table  # a sensitivity.csv from before the Holm family: no direction to report
    t = table.assign(
        **{
            c: table[c] if c in table else v
            for c, v in (
                ("p_holm", math.nan),
                ("direction", "not distinguishable"),
                ("collapsed", False),
                ("tpr_bn", math.nan),
                ("tpr_rival", math.nan),
                ("tnr_bn", math.nan),
                ("tnr_rival", math.nan),
            )
        }
    )
    t["collapsed"] = t["collapsed"].fillna(False).astype(bool)
    # F1 − F1 lies in [-1, 1]: so does its printed interval, also from a sensitivity.csv written before
    # the stage clipped it (`analysis.contrasts`); p_holm and direction are the file's
    t[["ci_low", "ci_high"]] = t[["ci_low", "ci_high"]].astype(float).clip(-1.0, 1.0)

    fig_factors(t, page.out / "sensitivity.png")
    pis = sorted(t["prevalence"].unique(), reverse=True)
    shown = t.copy()
    shown["31 − rival"] = [interval_text(r.estimate, r.ci_low, r.ci_high) for r in shown.itertuples()]
    shown["collapsed"] = [_broken(r) if r.collapsed else "" for r in shown.itertuples()]
    shown = shown[
        [
            "factor",
            "level",
            "reference",
            "rival",
            "prevalence",
            "f1_bn",
            "f1_rival",
            "31 − rival",
            "p_holm",
            "direction",
            "collapsed",
            "n",
            "detectable",
        ]
    ]
    fam = t[~t["reference"].astype(bool) & t["p_holm"].notna()]
    page.section(
        title,
        markdown_table(shown) + "\n\nFinal BN alone vs nothing (31 − 63), one setting changed at a "
        "time (`sensitivity` in params.yaml), on the same replicates; the reference level is params.yaml's "
        "own setting (the grid's cells, tested in the verdict's own family). Minority F1 on the test set "
        "reweighted to each prevalence of `report.prevalences`; intervals: paired 95 % t over replicates; "
        f"`p_holm`: Holm-adjusted (Holm 1979) over the `sensitivity` family, the {len(fam)} non-reference "
        "rows (every level at every π); `direction`: above or below zero where p_holm < 0.05; `collapsed`: "
        f"a model whose mean test TPR or TNR is below {collapse:g} (it flags almost nothing or almost "
        "everything), so the difference is between broken classifiers, not a gain; `detectable`: the "
        "smallest paired difference found with 80 % power at that spread and replicate count. The bias-shift "
        "rows set 31 against 63 with a minority-logit bias learned on each cell's validation predictions "
        "for the prevalence it is judged at (the likelihood with the classes weighted π and 1 − π, the "
        "prior shift of Saerens et al. 2002), the simplest rival of a final BN."
        + (" This sensitivity.csv predates the Holm family: rerun `finalbn sensitivity`." if old else "")
        + "\n\n![](sensitivity.png)",
    )
    return [_sensitivity_line(t, pis, len(fam), old)]


def by_setting_section(page: Page, setting: pd.DataFrame) -> None:
    """BN's effect per (UF, WL) setting: by_setting.png and the section. Every number resting on one
    replicate (the factorial pairs where `factorial_exploratory`, a matched pair over one replicate) is
    labelled "exploratory (one replicate)" in the table and the text."""
    title = "Final BN's effect by setting (UF, WL)"
    if setting.empty or not (setting["factorial_estimate"].notna().any() or setting["pair_estimate"].notna().any()):
        figures.placeholder(page.out / "by_setting.png", "no BN pair in any (UF, WL) setting")
        page.section(title, "", ["no BN pair in any (UF, WL) setting"])
        return
    figures.fig_by_setting(setting, page.out / "by_setting.png")
    one = "exploratory (one replicate)"
    fx = (
        setting["factorial_exploratory"].fillna(False).astype(bool)
        if "factorial_exploratory" in setting
        else pd.Series(False, index=setting.index)
    )
    fr = setting["factorial_replicates"] if "factorial_replicates" in setting else setting["factorial_pairs"] * 0
    shown = setting.drop(columns=["uf", "wl", "factorial_exploratory", "factorial_replicates"], errors="ignore")
    shown = shown.drop(columns=["scope"] if setting["scope"].nunique() == 1 else [])
    shown.insert(
        shown.columns.get_loc("factorial_estimate"),
        "factorial evidence",
        [one if x else (f"{int(n)} replicates" if n == n and n else "—") for x, n in zip(fx, fr)],
    )
    shown.insert(
        shown.columns.get_loc("pair_estimate"),
        "pair evidence",
        [one if n == 1 else (f"{int(n)} replicates" if n else "—") for n in setting["pair_replicates"]],
    )
    labels = [
        f"({r['scope']}: {r['setting']})" if setting["scope"].nunique() > 1 else f"({r['setting']})"
        for r in setting.to_dict("records")
    ]

    def which(flags) -> str:
        chosen = [lab for lab, f in zip(labels, flags) if f]
        return "every setting" if len(chosen) == len(labels) else "the settings " + "; ".join(chosen)

    single_pairs = list(setting["pair_replicates"] == 1)
    if fx.any():
        caveat = (
            f"The factorial's per-setting numbers of {which(fx)} rest "
            f"on one replicate: {one}, without interval — one replicate's split and seed can move a "
            "difference as much as the effect itself, so where the matched pair has more replicates its "
            "mean (`pair_estimate`) is the number to read. "
        )
    else:
        caveat = "The factorial's per-setting numbers rest on the replicates in `factorial evidence`. "
    if any(single_pairs):
        caveat += f"The matched pairs of {which(single_pairs)} rest on one replicate: {one}, without interval. "
    page.section(
        title,
        markdown_table(shown) + "\n\nTest minority F1, last epoch. `factorial_*`: BN on − off over "
        "the factorial's pairs in the setting (DA, MX and WD on and off; every complete replicate): mean, "
        "smallest and largest. `pair_*`: the matched pair with DA, MX and WD off over its replicates, with a "
        "95 % t interval where it has two or more. " + caveat + "A factorial main effect averages these "
        "settings, in which final BN does different things: with UF on and no WL the model without it "
        "collapses toward the majority class, and BN rescues it.\n\n![](by_setting.png)",
    )


def calibration_section(
    page: Page, data: CellData, cells: pd.DataFrame, cal: pd.DataFrame, train_pi: float | None
) -> pd.DataFrame:
    """calibration.csv, reliability.png, reliability_prior.png, the section; the rows pooled over
    (dataset, arch) ("all")."""
    write_csv(page.out / "calibration.csv", cal)
    b63, n63, notes63 = pooled_bins(data, cells, NONE_ID)
    b31, n31, notes31 = pooled_bins(data, cells, BN_ID)
    cal_all = cal[cal["scope"] == "all"]
    body = markdown_table(cal_all.drop(columns=["scope"]))
    body += (
        "\n\nECE (15 equal-width bins of the top-class probability; Guo et al. 2017) and Brier (summed over "
        "both classes), last epoch. `test set`: the test set as drawn; `training prior`: the same "
        "images reweighted to the training prevalence"
        + (f" (π = {train_pi:.2g})" if train_pi else "")
        + ", the prior a plain softmax learns. They differ "
        "because calibration is a statement about a prior: a model whose probabilities match a 50/50 test set "
        "over-calls the minority where it is 1 %, and a model that learned the 1 % prior under-calls it on a "
        "50/50 set. Final BN re-centres the logits on each batch, moving the outputs toward balanced classes. "
        "`all configurations`: a mean of configuration means (each configuration weighs the same, however "
        "many replicates it ran)."
    )
    rel_notes = notes63 + notes31
    if b63 is not None or b31 is not None:
        figures.fig_reliability(b63, n63, b31, n31, page.out / "reliability.png")
        body += (
            "\n\nReliability diagrams on the test set as drawn (last epoch), bins of every run of the "
            "configuration pooled over datasets and replicates:\n\n![](reliability.png)"
        )
    else:
        figures.placeholder(page.out / "reliability.png", "no reliability.json of configs 63 and 31")
        rel_notes = rel_notes + ["no reliability.json of configs 63 or 31: no reliability diagram"]
    panels = _prior_bins(data, cells, train_pi)
    if panels:
        figures.fig_reliability_at(panels, page.out / "reliability_prior.png")
        body += (
            "\n\nThe same, reweighted to the training prior (bars where a bin holds reweighted images):"
            "\n\n![](reliability_prior.png)"
        )
    else:
        figures.placeholder(page.out / "reliability_prior.png", "no test predictions of configs 63 and 31")
    page.section(
        "Calibration: ECE and Brier with and without final BN, on the test set and at the training prior",
        body,
        rel_notes,
    )
    return cal_all


def _prior_bins(data: CellData, cells: pd.DataFrame, train_pi: float | None) -> list[tuple[str, dict | None]]:
    """Reliability bins at the training prior of configs 63 and 31, every replicate's test images
    pooled (equal class counts per replicate, so pooling keeps the weights)."""
    if not train_pi:
        return []
    panels = []
    for cid, name in ((NONE_ID, "without final BN (63)"), (BN_ID, "with final BN (31)")):
        ys, ps = [], []
        for rid in cells.loc[cells["config_id"] == cid, "run_id"]:
            p = data.prediction(rid)
            if p is not None and "p1_last" in p:
                ys.append(p["label"].to_numpy(int))
                ps.append(p["p1_last"].to_numpy(float))
        y = np.concatenate(ys) if ys else np.array([], dtype=int)
        ok = ys and (y == 1).any() and (y == 0).any()
        panels.append(
            (
                f"{name}, {len(ys)} runs at π = {train_pi:.2g}",
                prev.reliability_at(y, np.concatenate(ps), train_pi) if ok else None,
            )
        )
    return panels if any(b is not None for _, b in panels) else []

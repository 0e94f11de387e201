"""The study's report: tracked cell runs in; the ceiling, an honest verdict, the paper's tables
and figures out.

    summary = make_report(cfg, Path("data/splits"), Path("report"))   # `finalbn report`
    summary = build_report(collect("finalbn"), Path("report"), ceilings=[...])

report.md opens with the separability ceiling (can the frozen body see the cue at all?), then the
verdict (`effects.verdict_lines`: the paper's 31-vs-63 contrast over replicates, BN with WL on,
the factorial main effect, ranking vs threshold, WD), then the tables. Primary numbers are the
last epoch's; the validation-selected epoch is a labelled secondary column; every "best
configuration" is ranked on validation. A partial grid does not crash the report: a piece that
cannot be computed is a note in report.md, its CSV has its header only and its PNG says why, so
every output path exists (DVC outs). MLflow is read and written only through `finalbn.tracking`.

The package: `cells` (collecting runs), `tables`, `effects` (statistics and verdict wording),
`figures`, `markdown` (formatting).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from finalbn import tracking
from finalbn.ceiling import LOW, ceiling_sentence
from finalbn.report import figures
from finalbn.report import baselines as imbalance
from finalbn.report.cells import CellData, collect, empty_message, prepare
from finalbn.report.search import search_section
from finalbn.report.search import shown as search_shown
from finalbn.report.effects import study_effects
from finalbn.report.markdown import json_safe, markdown_table
from finalbn.report.tables import (
    BN_ID,
    NONE_ID,
    baselines_table,
    calibration_table,
    config_means,
    loss_curve_table,
    pooled_bins,
    prediction_pairs,
    table1,
    table2,
    table3,
    table4,
    p1_column,
)

__all__ = ["FILES", "CellData", "build_report", "collect", "make_report"]

FILES = ("report.md", "summary.json", "cells.csv", "table1.csv", "table2.csv", "table3.csv", "table4.csv",
         "baselines.csv", "fig3_loss_curves.csv", "fig3_loss_curves.png", "fig4_softmax.png", "calibration.csv",
         "reliability.png", "effects.csv", "effects.png", "configs.png", "ceiling.png", "imbalance.csv",
         "imbalance.png", "search.csv", "search.png")


def build_report(data: CellData, out_dir: Path, n_boot: int = 2000, seed: int = 0,
                 ceilings: list[dict] | None = None, search: dict | None = None) -> dict:
    """Write FILES into `out_dir`; return (and write as summary.json) the headline numbers.
    `search`: `finalbn search`'s summary (results/search.json), for its section.
    Raises ValueError when `data` holds no cell."""
    all_cells, dropped = prepare(data.cells, data.experiment)
    cells = all_cells[all_cells["baseline"] == ""].reset_index(drop=True)  # the paper's 64 configurations
    if cells.empty:
        raise ValueError(empty_message(data.experiment or "?") + " (only baseline cells)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    multi_arch = cells["arch"].nunique() > 1
    md: list[str] = []
    notes_in = list(data.notes) + ([f"{dropped} duplicate row(s) of the same cell were left out"] if dropped else [])

    def section(title: str, body: str, notes: list[str] = ()) -> None:
        md.extend([f"## {title}", ""])
        md.extend(f"> Note: {n}" for n in notes)
        if notes:
            md.append("")
        if body:
            md.extend([body, ""])

    def table(df: pd.DataFrame) -> str:
        return markdown_table(df.drop(columns=[] if multi_arch or "arch" not in df else ["arch"]))

    cells.drop(columns=["start_time"], errors="ignore").to_csv(out / "cells.csv", index=False)

    # -- the ceiling first: can the features see the cue at all?
    ceilings = list(ceilings or [])
    if ceilings:
        figures.fig_ceiling(ceilings, out / "ceiling.png", LOW)
        ceiling_md = "\n\n".join(ceiling_sentence(c) for c in ceilings) + "\n\n![](ceiling.png)"
    else:
        figures.placeholder(out / "ceiling.png", "no ceiling measured: run `finalbn ceiling`")
        ceiling_md = "> Note: no separability ceiling was measured (`finalbn ceiling`): nothing says whether the " \
                     "features can see the cue at all."

    # -- effects and verdict
    eff, verdicts, methods = study_effects(cells, data.prediction, n_boot=n_boot, seed=seed)
    eff.drop(columns=["verdict"], errors="ignore").to_csv(out / "effects.csv", index=False)
    if len(eff):
        figures.fig_effects(eff, out / "effects.png")
    else:
        figures.placeholder(out / "effects.png", "not enough cells for any effect")

    # -- ranking vs threshold
    base = baselines_table(cells)
    base.to_csv(out / "baselines.csv", index=False)
    shown = base[["dataset", "arch", "config", "replicates", "f1_1", "f1_1_std", "f1_1_sel", "f1_1_prior_corrected",
                  "auroc", "auroc_std", "ap", "balanced_accuracy", "val_auroc"]]
    section("Ranking vs threshold: the headline configurations",
            (table(shown) + "\n\nTest metrics, mean and std over replicates. `f1_1`: minority F1 at the last epoch "
             "(argmax); `f1_1_sel`: at the epoch selected on validation AUROC (secondary); `f1_1_prior_corrected`: "
             "the same model after adding log(n_healthy/n_diseased) of the training counts to the minority logit — "
             "a threshold that needs no training and no validation or test labels; AUROC and AP do not depend on "
             "any threshold.") if len(base) else "", [] if len(base) else ["no run of configs 63, 47, 31 or 15"])

    # -- the imbalance baselines against the final BN
    imb = imbalance.imbalance_table(all_cells)
    imb.to_csv(out / "imbalance.csv", index=False)
    if len(imb):
        groups_ = [(r, all_cells[(all_cells["baseline"] == "") & (all_cells["config_id"] == cid)])
                   for r, cid in (("none (63)", NONE_ID), ("BN only (31)", BN_ID))]
        groups_ += [(m, g) for m, g in all_cells[all_cells["baseline"] != ""].groupby("baseline", sort=False)]
        figures.fig_methods(groups_, out / "imbalance.png",
                            "the imbalance baselines (blue) against the final BN (red), test set, last epoch; "
                            "dots: replicates, lines join a replicate")
        section("The imbalance baselines against the final BN",
                "\n".join(f"- {line}" for line in imbalance.summary_lines(imb)) + "\n\n"
                + table(imbalance.shown(imb)) + "\n\nEach method on its base configuration (the paper's `none`, 63, "
                "unless `grid.baselines.config` says otherwise), over the headline replicates: focal loss (Lin et al. "
                "2017, γ = `train.focal_gamma`), logit-adjusted loss (Menon et al. 2021), class-balanced weights from "
                "the effective number of samples (Cui et al. 2019, β = `train.cb_beta`), post-hoc temperature scaling "
                "fitted on validation (it changes no argmax: its F1 is its base's, its ECE is not). "
                "`F1 prior-corrected` adds the training log-prior to the minority logit; the logit-adjusted loss "
                "has already taken it out in training, so correcting it again overshoots. "
                "Test metrics at the last epoch, mean ± std over replicates; Δ: paired per-replicate differences "
                "(same split, same seed), mean with a 95 % t interval.\n\n![](imbalance.png)")
    else:
        figures.placeholder(out / "imbalance.png", "no baseline cells: grid.baselines.methods is empty")
        section("The imbalance baselines against the final BN", "",
                ["no baseline cells (grid.baselines.methods, run on the headline replicates)"])

    # -- the search beyond the grid
    if search:
        st, sgroups, slines = search_section(search)
        st.to_csv(out / "search.csv", index=False)
        if sgroups:
            figures.fig_methods(sgroups, out / "search.png",
                                "the Optuna search's best trial (chosen on validation) against the grid, test set; "
                                "dots: replicates, lines join a replicate")
        else:
            figures.placeholder(out / "search.png", "the search has no comparison on test")
        plots = ", ".join(f"`{p}`" for p in search.get("plots", []))
        section("Beyond the grid: the Optuna search",
                "\n".join(f"- {line}" for line in slines)
                + (("\n\n" + markdown_table(search_shown(st))) if len(st) else "")
                + ("\n\n![](search.png)" if sgroups else "")
                + (f"\n\nOptuna's plots of the study: {plots}." if plots else ""))
    else:
        pd.DataFrame(columns=["configuration"]).to_csv(out / "search.csv", index=False)
        figures.placeholder(out / "search.png", "no search: run `finalbn search`")
        section("Beyond the grid: the Optuna search", "", ["no results/search.json: run `finalbn search`"])

    # -- Table I
    t1 = table1(cells)
    t1.to_csv(out / "table1.csv", index=False)
    section("Table I: test F1 without final BN, with WL (no BN), with final BN (no WL) — last epoch",
            table(t1) if not t1.empty else "", [] if not t1.empty else ["no run of config 63, 47 or 31"])

    # -- effects table
    if len(eff):
        shown_eff = eff[["scope", "label", "metric", "estimate", "ci_low", "ci_high", "boot_low", "boot_high",
                         "rep_low", "rep_high", "p", "p_holm", "n", "method"]]
        if cells.groupby(["dataset", "arch"]).ngroups == 1:
            shown_eff = shown_eff.drop(columns=["scope"])
        section("Effects on the test set (last epoch)",
                markdown_table(shown_eff) + "\n\n" + "\n".join(f"- {k}, the factorial: {v}." for k, v in methods.items())
                + "\n\n![](effects.png)")
    else:
        section("Effects on the test set (last epoch)", "", ["not enough cells for any effect"])

    # -- every configuration
    figures.fig_configs(cells, out / "configs.png")
    section("Every configuration: test AUROC and minority F1, replicate spread", "![](configs.png)")

    # -- Tables II, III
    t2 = table2(cells)
    t2.to_csv(out / "table2.csv", index=False)
    section("Table II: top 3 configurations per dataset, ranked on validation AUROC (test values beside)",
            table(t2) if not t2.empty else "", [] if not t2.empty else ["no configuration has a validation AUROC"])
    t3, t3_notes = table3(cells)
    t3.to_csv(out / "table3.csv", index=False)
    section("Table III: top and bottom 3 configurations by validation AUROC averaged over datasets "
            "(columns per dataset: test minority F1)", markdown_table(t3) if not t3.empty else "",
            t3_notes + ([] if not t3.empty else ["no configuration present in every dataset"]))

    # -- Table IV and Fig. 4
    pred_pairs, pred_notes = prediction_pairs(data, cells)
    t4 = table4(pred_pairs)
    t4.to_csv(out / "table4.csv", index=False)
    section("Table IV: P(class 1) of 5 minority test images without / with final BN (last epoch)",
            (table(t4) + "\n\nThe five minority images with the lowest P(class 1) without final BN, first "
             "replicate with both runs; the same images (joined on path) with final BN.") if not t4.empty else "",
            pred_notes if not t4.empty else pred_notes + ["Table IV needs predictions of configs 63 and 31"])
    if pred_pairs:
        figures.fig4(pred_pairs, out / "fig4_softmax.png", p1_column)
        section("Fig. 4: per-image test softmax outputs without / with final BN", "![](fig4_softmax.png)")
    else:
        figures.placeholder(out / "fig4_softmax.png", "not enough cells: no predictions of configs 63 and 31")
        section("Fig. 4: per-image test softmax outputs without / with final BN", "",
                ["needs test predictions of configs 63 and 31 for the same replicate"])

    # -- Fig. 3
    curves = loss_curve_table(data, cells)
    curves.to_csv(out / "fig3_loss_curves.csv", index=False)
    if not curves.empty:
        figures.fig3(curves, out / "fig3_loss_curves.png")
        section("Fig. 3: train / validation loss, mean ± std over replicates", "![](fig3_loss_curves.png)",
                ["one run per curve: the ±std band is 0"] if curves["runs"].max() <= 1 else [])
    else:
        figures.placeholder(out / "fig3_loss_curves.png", "no loss history of configs 63, 47, 31")
        section("Fig. 3: train / validation loss, mean ± std over replicates", "",
                ["no per-epoch loss history of configs 63, 47 or 31"])

    # -- calibration
    cal = calibration_table(cells)
    cal.to_csv(out / "calibration.csv", index=False)
    b63, n63, notes63 = pooled_bins(data, cells, NONE_ID)
    b31, n31, notes31 = pooled_bins(data, cells, BN_ID)
    cal_all = cal[cal["dataset"] == "all"]
    body = markdown_table(cal_all.drop(columns=["dataset"]))
    if b63 is not None or b31 is not None:
        figures.fig_reliability(b63, n63, b31, n31, out / "reliability.png")
        body += ("\n\nReliability diagrams (last epoch), bins of every run of the configuration pooled over "
                 "datasets and replicates:\n\n![](reliability.png)")
        rel_notes = notes63 + notes31
    else:
        figures.placeholder(out / "reliability.png", "no reliability.json of configs 63 and 31")
        rel_notes = notes63 + notes31 + ["no reliability.json of configs 63 or 31: no reliability diagram"]
    section("Calibration: ECE and Brier with and without final BN (last epoch)", body, rel_notes)

    # -- summary.json
    summary = _summary(cells, t1, eff, verdicts, ceilings, cal_all, multi_arch)
    summary["imbalance_baselines"] = json_safe(imb.to_dict("records"))
    if search and search.get("comparison"):
        summary["search"] = json_safe({k: search["comparison"].get(k) for k in ("best_trial", "best_trial_mean")}
                                      | {arm: {k: search["comparison"][arm].get(k) for k in
                                               ("config_id", "mean", "best_trial_minus_test_f1_1")}
                                         for arm in ("bn_only_31", "grid_best") if arm in search["comparison"]})
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")

    # -- report.md: ceiling, verdict and method first, then the sections gathered above
    reps = cells.groupby("config_id")["replicate"].nunique()
    header = [f"# Final BN report{f' — experiment {data.experiment}' if data.experiment else ''}", "",
              "## Can the features see the cue?", "", ceiling_md, "", "## Verdict", ""]
    for scope, lines in verdicts.items():
        if len(verdicts) > 1:
            header.append(f"**{scope}**")
            header.append("")
        header.extend(f"- {line}" for line in lines)
        header.append("")
    if len(imb):
        header += ["**Against the imbalance baselines** (each on `none`; test minority F1, paired over replicates; "
                   "section below)", ""]
        header.extend(f"- {line}" for line in imbalance.summary_lines(imb))
        header.append("")
    header += [
        "## How the numbers are computed", "",
        f"- {len(cells)} finished cell runs: datasets {', '.join(summary['datasets'])}; archs "
        f"{', '.join(summary['archs'])}; {summary['configs']} of 64 configurations; replicates per configuration "
        f"{int(reps.min())}–{int(reps.max())}. A replicate re-draws the split (which 10 minority training images, "
        "which validation and test images) and re-seeds training.",
        "- Primary numbers: test metrics at the last epoch (the paper's Table I protocol). Secondary, labelled `sel`: "
        "the epoch selected on validation AUROC (ties to the lower class-balanced validation loss). Every "
        "\"best configuration\" is ranked on mean validation AUROC; test labels decide nothing.",
        "- Contrasts (31 − 63 and the others): one paired difference per replicate (same split and seed), mean with "
        "a t interval; where predictions exist also a hierarchical bootstrap (replicates, then test images within "
        "each). The factorial: see the note under the effects table; its BN rows also get a replicate-scale "
        "interval (estimate ± t × the pooled replicate SD of the BN pair differences). Holm-adjusted p across "
        "the verdict's effects "
        "(and, for the other factorial rows, across the factorial's rows); intervals are unadjusted 95 %.",
        "- Configuration ids: index of (BN, WL, DA, MX, UF, WD) in itertools.product([True, False], repeat=6): "
        "31 = BN only, 47 = WL only, 15 = BN+WL, 63 = none.", ""]
    header.extend(f"> Note: {n}" for n in notes_in)
    if notes_in:
        header.append("")
    (out / "report.md").write_text("\n".join(header + md).rstrip() + "\n", encoding="utf-8")
    return summary


def _summary(cells, t1, eff, verdicts, ceilings, cal_all, multi_arch) -> dict:
    table1_summary = {}
    for r in t1[t1["class"] == "unhealthy (1)"].itertuples(index=False):
        table1_summary[f"{r.dataset}/{r.arch}" if multi_arch else r.dataset] = {
            "without_bn_f1_1": r.without_final_bn, "wl_f1_1": r.with_wl_no_bn, "bn_f1_1": r.with_final_bn_no_wl,
            "bn_improvement_f1_1": r.bn_improvement}
    effects: dict[str, dict] = {}
    for r in eff.to_dict("records"):
        effects.setdefault(r["scope"], {})[r["effect"]] = {k: r[k] for k in ("estimate", "ci_low", "ci_high", "rep_low",
                                                                              "rep_high", "p", "p_holm", "n", "metric")}

    def cal_value(metric: str, comparison: str, bn_on: bool) -> float:
        row = cal_all[(cal_all["comparison"] == comparison) & (cal_all["final_bn"] == bn_on)]
        return float(row[f"{metric}_mean"].iloc[0])

    best = {}
    for (ds, arch), sub in cells.groupby(["dataset", "arch"], sort=True):
        m = config_means(sub).reset_index().sort_values(["val_auroc", "config_id"], ascending=[False, True])
        if len(m) and pd.notna(m.iloc[0]["val_auroc"]):
            r = m.iloc[0]
            best[f"{ds}/{arch}"] = {"config_id": int(r["config_id"]), "val_auroc": r["val_auroc"],
                                    "test_f1_1": r["test_f1_1"], "test_auroc": r["test_auroc"]}
    metrics = {}
    first = next(iter(effects.values()), {})
    for eid, name in (("31-63", "bn_vs_none_f1"), ("15-47", "bn_with_wl_f1"), ("BN", "bn_factorial_f1"),
                      ("31-63 auroc", "bn_vs_none_auroc"), ("31-pc63", "bn_vs_prior_corrected_f1")):
        if eid in first:
            for k in ("estimate", "ci_low", "ci_high"):
                metrics[f"{name}_{k}"] = first[eid][k]
    if ceilings:
        metrics["ceiling_auroc"] = ceilings[0]["auroc"]
    summary = {
        "verdict": [line for lines in verdicts.values() for line in lines],
        "ceiling": [{k: c.get(k) for k in ("dataset", "arch", "image_size", "auroc", "auroc_std", "images", "low")}
                    for c in ceilings],
        "effects": effects,
        "table1": table1_summary,
        "best_config_on_validation": best,
        "ece": {"bn": cal_value("ece", "all configs, BN on vs off", True),
                "no_bn": cal_value("ece", "all configs, BN on vs off", False),
                "config31": cal_value("ece", "config 31 vs 63", True),
                "config63": cal_value("ece", "config 31 vs 63", False)},
        "brier": {"bn": cal_value("brier", "all configs, BN on vs off", True),
                  "no_bn": cal_value("brier", "all configs, BN on vs off", False)},
        "cells": int(len(cells)),
        "datasets": sorted(cells["dataset"].unique().tolist()),
        "archs": sorted(cells["arch"].unique().tolist()),
        "replicates": int(cells["replicate"].nunique()),
        "configs": int(cells["config_id"].nunique()),
        "metrics": metrics,
    }
    return json_safe(summary)


def read_ceilings(folder: Path) -> list[dict]:
    """Every measurement in the ceiling stage's JSON files under `folder` (none when it is missing)."""
    if not folder.is_dir():
        return []
    out = []
    for path in sorted(folder.glob("*.json")):
        try:
            out.extend(json.loads(path.read_text())["ceilings"])
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"ceiling file {path} is not a `finalbn ceiling` output ({exc})") from None
    return out


def read_search(path: Path | None) -> dict | None:
    """`finalbn search`'s summary, or None when there is none."""
    if path is None or not Path(path).is_file():
        return None
    try:
        out = json.loads(Path(path).read_text())
    except ValueError as exc:
        raise ValueError(f"search summary {path} is not JSON ({exc})") from None
    if not isinstance(out, dict) or "study" not in out:
        raise ValueError(f"search summary {path} is not a `finalbn search` output (no 'study')")
    return out


def make_report(cfg: Any, splits_dir: Path, out_dir: Path, ceiling: Path | None = None,
                search: Path | None = None) -> dict:
    """`finalbn report`: the current grid's FINISHED cells (by cell key) -> out_dir, logged to MLflow."""
    from finalbn import grid

    tracking.setup(cfg)
    wanted = {grid.cell_key(cfg, c, splits_dir) for c in grid.all_cells(cfg)}
    data = collect(cfg.tracking.experiment, keys=wanted)  # only this grid's cells: the store may hold others
    ceilings = read_ceilings(Path(ceiling)) if ceiling else []
    summary = build_report(data, out_dir, n_boot=cfg.report.bootstrap, seed=cfg.report.seed, ceilings=ceilings,
                           search=read_search(search))
    tracking.log_report(out_dir, cfg.tracking.experiment)
    return summary

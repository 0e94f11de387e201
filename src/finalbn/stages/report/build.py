"""Assembling the report: every output file of FILES from the cells, one function per section.

    summary = build_report(collect("finalbn"), Path("report"), ceilings=[...], search=None)

`build_report` reads top-down in report.md's order of sections; each `_section` function writes
its CSV / PNG and appends its Markdown to the page. The header (ceiling, verdict, method) is
written last, since it quotes numbers every section has computed, and put first in report.md.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from finalbn.infra import faults
from finalbn.infra.io import write_csv, write_text
from finalbn.stages.report import baselines as imbalance
from finalbn.stages.report import figures, rivals
from finalbn.stages.report import prevalence as prev
from finalbn.stages.report.answer import (
    at_prevalences,
    by_setting_section,
    calibration_section,
    prevalence_section,
    sensitivity_section,
)
from finalbn.stages.report.cells import CellData, empty_message, prepare
from finalbn.stages.report.choice import selection_table
from finalbn.stages.report.dvcplots import write_headline, write_plot_data
from finalbn.stages.report.effects import study_effects
from finalbn.stages.report.html import description, write_html
from finalbn.stages.report.markdown import Page, json_safe, markdown_table
from finalbn.stages.report.search import search_section
from finalbn.stages.report.search import shown as search_shown
from finalbn.stages.report.summary import headline_summary
from finalbn.stages.report.tables import (
    BN_ID,
    NONE_ID,
    baselines_table,
    calibration_table,
    flip_counts,
    loss_curve_table,
    p1_column,
    prediction_pairs,
    table1,
    table2,
    table3,
    table4,
)
from finalbn.stats.separability import LOW, ceiling_sentence

# The metrics at each π every cell carries as columns (`prevalence.column`): the effects' inputs.
WIDE_METRICS = (
    "f1_1",
    "precision_1",
    "ece",
    "brier",
    "ap",
    "tpr",
    "fpr",
    "cut_f1_1",
    "cut_precision_1",
    "cut_tpr",
    "cut_fpr",
    "tpr_at_fpr",
    "negatives",
    "positives",
)

FILES = (
    "report.md",
    "report.html",
    "summary.json",
    "headline.json",
    "plots/configs.csv",
    "plots/prevalence.csv",
    "cells.csv",
    "prevalence.csv",
    "prevalence.png",
    "sensitivity.png",
    "selection.csv",
    "table1.csv",
    "table2.csv",
    "table3.csv",
    "table4.csv",
    "baselines.csv",
    "fig3_loss_curves.csv",
    "fig3_loss_curves.png",
    "fig4_softmax.png",
    "calibration.csv",
    "reliability.png",
    "reliability_prior.png",
    "effects.csv",
    "effects.png",
    "by_setting.csv",
    "by_setting.png",
    "configs.png",
    "ceiling.png",
    "imbalance.csv",
    "imbalance.png",
    "search.csv",
    "search.png",
)


def build_report(
    data: CellData,
    out_dir: Path,
    n_boot: int = 2000,
    seed: int = 0,
    ceilings: list[dict] | None = None,
    search: dict | None = None,
    k: int = 5,
    prevalences: tuple[float, ...] = (0.5, 0.1, 0.05, 0.01),
    train_counts: tuple[int, int] | None = None,
    sensitivity: pd.DataFrame | None = None,
    context: dict[str, str] | None = None,
    needs: dict | None = None,
    needs_figure: Path | None = None,
) -> dict:
    """Write FILES into `out_dir`; return (and write as summary.json) the headline numbers.
    `search`: `finalbn search`'s summary (results/search.json), for its section; `k`: the
    replicates a configuration is chosen over (`selection.replicates`); `prevalences`: the field
    prevalences of `report.prevalences`; `train_counts`: (majority, minority) training images
    (`split.train`), whose prior the calibration is also given at; `sensitivity`: the sensitivity
    stage's table (results/sensitivity/sensitivity.csv), for its section; `context`: `dataset/arch` ->
    what the study is here (`make.study_context`), set beside the paper's setting.
    Raises ValueError when `data` holds no cell."""
    all_cells, dropped = prepare(data.cells, data.experiment)
    cells = all_cells[all_cells["baseline"] == ""].reset_index(drop=True)  # the paper's 64 configurations
    if cells.empty:
        raise ValueError(empty_message(data.experiment or "?") + " (only baseline cells)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    page = Page(out, multi_arch=cells["arch"].nunique() > 1)
    notes_in = list(data.notes) + ([f"{dropped} duplicate row(s) of the same cell were left out"] if dropped else [])
    write_csv(out / "cells.csv", cells.drop(columns=["start_time"], errors="ignore"))

    ceilings = list(ceilings or [])
    ceiling_md = _ceiling(ceilings, out)  # the ceiling first: can the features see the cue at all?
    train_pi = train_counts[1] / sum(train_counts) if train_counts else None
    at_pi, test_pi, pi_notes = at_prevalences(all_cells, data, out, prevalences, train_pi)
    notes_in += pi_notes
    cells = prev.widen(cells, at_pi, WIDE_METRICS)
    cal = calibration_table(cells, at_pi, train_pi)
    eff, verdicts, methods, setting = _effects(
        cells, data, out, n_boot, seed, prevalences, test_pi, train_pi, cal, context
    )
    prevalence_section(page, cells, data, at_pi, eff, prevalences, test_pi)
    _ranking_vs_threshold(page, cells)
    imb = _imbalance_baselines(page, all_cells)
    riv = rivals.rivals_table(at_pi)
    rivals.rivals_section(page, riv, prevalences)
    needs_line = rivals.needs_section(page, needs, needs_figure)
    extra = [x for x in (rivals.best_rival_line(riv, prevalences), needs_line) if x]
    _search(page, search)
    sens_lines = sensitivity_section(page, sensitivity)
    _selection(page, cells, k, n_boot, seed)
    t1 = _table1(page, cells, 0.5 if any(math.isclose(p, 0.5) for p in prevalences) else None)
    _effects_table(page, cells, eff, methods)
    by_setting_section(page, setting)
    _configs(page, cells)
    _tables_2_3(page, cells, k)
    _table4_fig4(page, data, cells, seed)
    _fig3(page, data, cells)
    cal_all = calibration_section(page, data, cells, cal, train_pi)

    for lines in verdicts.values():  # before the multiplicity sentence, which closes a verdict
        at = len(lines) - 1 if lines and lines[-1].startswith("Multiplicity") else len(lines)
        lines[at:at] = sens_lines
    summary = headline_summary(cells, t1, eff, verdicts, ceilings, cal_all, page.multi_arch, k)
    summary["rivals"] = json_safe(riv.to_dict("records"))  # every rival at every π (rivals.csv)
    summary["strongest_rival_and_data_needs"] = extra  # the verdict's lines on them
    _write_summary(out, summary, imb, search, description(verdicts, extra))
    faults.point("report.write")
    write_headline(summary, prevalences, out / "headline.json")  # what `dvc metrics show` prints
    write_plot_data(cells, at_pi, out / "plots")  # what `dvc plots show/diff` draws
    header = _header(data.experiment, ceiling_md, verdicts, imb, cells, summary, notes_in, extra)
    write_text(out / "report.md", "\n".join(header + page.md).rstrip() + "\n")
    write_html(out)  # report.html: report.md with its figures inside, for MLflow's artifact viewer
    return summary


# --------------------------------------------------------------------------- sections, in report order


def _ceiling(ceilings: list[dict], out: Path) -> str:
    """ceiling.png; the header's Markdown on the separability ceiling."""
    if ceilings:
        figures.fig_ceiling(ceilings, out / "ceiling.png", LOW)
        return "\n\n".join(ceiling_sentence(c) for c in ceilings) + "\n\n![](ceiling.png)"
    figures.placeholder(out / "ceiling.png", "no ceiling measured: run `finalbn ceiling`")
    return (
        "> Note: no separability ceiling was measured (`finalbn ceiling`): nothing says whether the "
        "features can see the cue at all."
    )


def _effects(
    cells: pd.DataFrame,
    data: CellData,
    out: Path,
    n_boot: int,
    seed: int,
    prevalences,
    test_pi,
    train_pi,
    cal,
    context=None,
):
    """effects.csv, by_setting.csv and effects.png; (effects, verdict lines per scope, factorial
    method per scope, BN by setting)."""
    eff, verdicts, methods, setting = study_effects(
        cells,
        data.prediction,
        n_boot=n_boot,
        seed=seed,
        prevalences=prevalences,
        test_pi=test_pi,
        train_pi=train_pi,
        calibration=cal,
        context=context,
    )
    write_csv(out / "effects.csv", eff)
    write_csv(out / "by_setting.csv", setting)
    if len(eff):
        figures.fig_effects(eff, out / "effects.png")
    else:
        figures.placeholder(out / "effects.png", "not enough cells for any effect")
    return eff, verdicts, methods, setting


def _ranking_vs_threshold(page: Page, cells: pd.DataFrame) -> None:
    base = baselines_table(cells)
    write_csv(page.out / "baselines.csv", base)
    shown = base[
        [
            "dataset",
            "arch",
            "config",
            "replicates",
            "f1_1",
            "f1_1_std",
            "f1_1_sel",
            "f1_1_prior_corrected",
            "f1_1_validation_threshold",
            "auroc",
            "auroc_std",
            "ap",
            "balanced_accuracy",
            "val_auroc",
        ]
    ].copy()
    single = base["replicates"] == 1
    shown["replicates"] = [
        f"{n}, exploratory (one replicate)" if one else str(n) for n, one in zip(base["replicates"], single)
    ]
    caveat = (
        " A row over one replicate is exploratory (one replicate): its SD is 0 by construction, not a measured spread."
        if single.any()
        else ""
    )
    page.section(
        "Ranking vs threshold: the headline configurations",
        (
            page.table(shown) + "\n\nTest metrics, mean and SD over replicates. Minority F1: at the "
            "last epoch (argmax); selected epoch: at the epoch selected on validation AUROC (secondary); "
            "prior-corrected: the same model after adding log(n_healthy/n_diseased) of the training "
            "counts to the minority logit — valid only for a model whose outputs carry the training prior "
            "(plain cross-entropy, no WL, no final BN or SELU), empty for the others, whose outputs a "
            "final BN or class weights have already moved off that prior; at the validation cut: "
            "the cut chosen on the cell's own validation predictions (7 positives) for the test set's "
            "prevalence, valid for every model; AUROC and AP do not depend on any threshold." + caveat
        )
        if len(base)
        else "",
        [] if len(base) else ["no run of configs 63, 47, 31 or 15"],
    )


def _imbalance_baselines(page: Page, all_cells: pd.DataFrame) -> pd.DataFrame:
    """The imbalance baselines against the final BN: imbalance.csv, imbalance.png, the section."""
    imb = imbalance.imbalance_table(all_cells)
    write_csv(page.out / "imbalance.csv", imb)
    title = "The imbalance baselines against the final BN"
    if not len(imb):
        figures.placeholder(page.out / "imbalance.png", "no baseline cells: grid.baselines.methods is empty")
        page.section(title, "", ["no baseline cells (grid.baselines.methods, run on the headline replicates)"])
        return imb
    groups_ = [
        (r, all_cells[(all_cells["baseline"] == "") & (all_cells["config_id"] == cid)])
        for r, cid in (("none (63)", NONE_ID), ("BN only (31)", BN_ID))
    ]
    groups_ += [(m, g) for m, g in all_cells[all_cells["baseline"] != ""].groupby("baseline", sort=False)]
    figures.fig_methods(
        groups_,
        page.out / "imbalance.png",
        "the imbalance baselines (blue) against the final BN (red), test set, last epoch; "
        "dots: replicates, lines join a replicate",
    )
    page.section(
        title,
        "\n".join(f"- {line}" for line in imbalance.summary_lines(imb))
        + "\n\n"
        + page.table(imbalance.shown(imb))
        + "\n\nEach method on its base configuration (the paper's "
        "`none`, 63, unless `grid.baselines.config` says otherwise), over the headline replicates: focal "
        "loss (Lin et al. 2017, γ = `train.focal_gamma`), logit-adjusted loss (Menon et al. 2021), "
        "class-balanced weights from the effective number of samples (Cui et al. 2019, β = "
        "`train.cb_beta`), post-hoc temperature scaling fitted on validation (it changes no argmax: its "
        "F1 is its base's, its ECE is not). `F1 prior-corrected` adds the training log-prior to the "
        "minority logit, only for a model whose outputs still carry that prior (plain cross-entropy, no "
        "WL, no final BN): the focal, logit-adjusted and class-balanced losses have moved it already "
        "(n/a). `F1 at the validation cut`: the cut chosen on the cell's own validation predictions for "
        "the test set's prevalence, valid for every model. Test metrics at the last epoch, mean ± std over replicates; Δ: paired "
        "per-replicate differences (same split, same seed), mean with a 95 % t interval (a single replicate: "
        "exploratory (one replicate), no interval, no p). Holm: one family `baselines` per (dataset, arch), "
        "every paired comparison of this table (ΔF1 and ΔAUROC vs BN only, ΔF1 vs its base, for none and "
        'every method; t test p, Holm-adjusted; imbalance.csv\'s `*_p` and `*_p_holm`): a method "beats" '
        'or "falls short of" BN only only where the Holm-adjusted p of its ΔF1 is below 0.05, else it '
        "is not distinguishable. A method that changes no decision (`moves_decisions` false: temperature "
        "scaling, or any method whose test minority F1 equals its base's on every replicate, so its argmax "
        "is its base's) is no rival to a final BN that moves decisions: it is listed apart, with its ECE "
        "against its base's.\n\n"
        "![](imbalance.png)",
    )
    return imb


def _search(page: Page, search: dict | None) -> None:
    """The search beyond the grid: search.csv, search.png, the section."""
    title = "Beyond the grid: the Optuna search"
    if not search:
        write_csv(page.out / "search.csv", pd.DataFrame(columns=["configuration"]))
        figures.placeholder(page.out / "search.png", "no search: run `finalbn search`")
        page.section(title, "", ["no results/search.json: run `finalbn search`"])
        return
    st, sgroups, slines = search_section(search)
    write_csv(page.out / "search.csv", st)
    if sgroups:
        figures.fig_methods(
            sgroups,
            page.out / "search.png",
            "the Optuna search's best trial (chosen on validation) against the grid, test set; "
            "dots: replicates, lines join a replicate",
        )
    else:
        figures.placeholder(page.out / "search.png", "the search has no comparison on test")
    plots = ", ".join(f"`{p}`" for p in search.get("plots", []))
    page.section(
        title,
        "\n".join(f"- {line}" for line in slines)
        + (("\n\n" + markdown_table(search_shown(st))) if len(st) else "")
        + ("\n\n![](search.png)" if sgroups else "")
        + (f"\n\nOptuna's plots of the study: {plots}." if plots else ""),
    )


def _table1(page: Page, cells: pd.DataFrame, pi: float | None = None) -> pd.DataFrame:
    t1 = table1(cells, pi)
    write_csv(page.out / "table1.csv", t1)
    where = (
        f"the test set reweighted to π = {pi:g} (the paper's balanced test set)"
        if pi is not None
        else "the test set as drawn"
    )
    page.section(
        f"Table I: test F1 without final BN, with WL (no BN), with final BN (no WL) — last epoch, argmax cut, {where}",
        page.table(t1) if not t1.empty else "",
        [] if not t1.empty else ["no run of config 63, 47 or 31"],
    )
    return t1


def _effects_table(page: Page, cells: pd.DataFrame, eff: pd.DataFrame, methods: dict[str, str]) -> None:
    title = "Effects on the test set"
    if not len(eff):
        page.section(title, "", ["not enough cells for any effect"])
        return
    shown_eff = eff[
        [
            "scope",
            "label",
            "metric",
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
        ]
    ]
    if cells.groupby(["dataset", "arch"]).ngroups == 1:
        shown_eff = shown_eff.drop(columns=["scope"])
    families = (
        "Multiplicity, one Holm family per set of rows (`family`): `verdict` — every contrast with a p "
        "value that the verdict states; `other contrasts` — the rest of the paired contrasts here; "
        "`factorial` — the factorial's rows when it is replicated (with one replicate it is exploratory: "
        "estimates only). `ci_low`/`ci_high`: the primary interval, a 95 % t interval over replicates "
        "(OLS cluster-robust for a replicated factorial); `boot_low`/`boot_high`: a secondary hierarchical "
        "bootstrap (replicates, then test images within each), which counts the image noise twice, since "
        "the replicate spread already holds it."
    )
    page.section(
        title,
        markdown_table(shown_eff)
        + "\n\n"
        + "\n".join(f"- {k}, the factorial: {v}." for k, v in methods.items())
        + "\n\n"
        + families
        + "\n\n![](effects.png)",
    )


def _configs(page: Page, cells: pd.DataFrame) -> None:
    figures.fig_configs(cells, page.out / "configs.png")
    page.section("Every configuration: test AUROC and minority F1, replicate spread", "![](configs.png)")


RANKING_NOTE = (
    "Ranked on the mean validation AUROC over replicates 0-{last} (ties: the lower mean class-balanced "
    "validation loss, then fewer switches, then the lower id), and only against configurations seen on "
    "the same replicates (`ranked_over`): a configuration screened on one replicate is never ranked "
    "against a replicated mean. Test values ride along and decide nothing."
)


def _tables_2_3(page: Page, cells: pd.DataFrame, k: int) -> None:
    t2 = table2(cells, k=k)
    write_csv(page.out / "table2.csv", t2)
    note = RANKING_NOTE.format(last=k - 1)
    page.section(
        "Table II: top 3 configurations per dataset, ranked on validation AUROC (test values beside)",
        (page.table(t2) + "\n\n" + note) if not t2.empty else "",
        [] if not t2.empty else ["no configuration has a validation AUROC"],
    )
    t3, t3_notes = table3(cells, k=k)
    write_csv(page.out / "table3.csv", t3)
    page.section(
        "Table III: top and bottom 3 configurations by validation AUROC averaged over datasets "
        "(columns per dataset: test minority F1)",
        (markdown_table(t3) + "\n\n" + note + "\n\n" + versus_paper_table3(cells)) if not t3.empty else "",
        t3_notes + ([] if not t3.empty else ["no configuration present in every dataset"]),
    )


PAPER_TABLE3_TOP = (29, 28, 31)  # BN+UF, BN+UF+WD, BN: the paper's Table III, top three


def versus_paper_table3(cells: pd.DataFrame) -> str:
    """Table III beside the paper's: where its top three stand here, and what UF means in each."""
    uf_on = cells[cells["uf"]]["test_f1_1"].groupby(cells["config_id"]).mean().mean()
    uf_off = cells[~cells["uf"]]["test_f1_1"].groupby(cells["config_id"]).mean().mean()
    means = cells.groupby("config_id")["test_f1_1"].mean()
    theirs = ", ".join(f"{c} ({means[c]:.3f})" for c in PAPER_TABLE3_TOP if c in means)
    return (
        "Against the paper: its Table III (ResNet34 and VGG19 on PlantVillage) has 29 (BN+UF), 28 (BN+UF+WD) "
        f"and 31 (BN) on top; here their mean test minority F1 is {theirs}, and UF-on configurations average "
        f"{uf_on:.3f} against {uf_off:.3f} with UF off (a mean of configuration means). What UF means differs: "
        "the default trains the body's BN weights and biases at the head's learning rate (`train.body_lr_ratio: "
        "1.0`) and keeps the frozen body's BN layers in eval mode, on their pre-trained statistics "
        "(`model.frozen_bn: eval`); fastai v1, the paper's library, trains them at a tenth of it (`slice(lr)`), "
        "lets frozen BN layers follow train() (batch statistics) and decays BN weights (`train.wd_on_bn`). "
        "`profiles/paper.yaml` has the paper's semantics; the sensitivity section's `frozen_bn` factor sets "
        '31 − 63 under both, and docs/study-and-statistics.md ("UF semantics") gives the measured UF-on configurations under each.'
    )


def _selection(page: Page, cells: pd.DataFrame, k: int, n_boot: int, seed: int) -> None:
    """Choosing a configuration over replicates: selection.csv and the section."""
    cand, lines = selection_table(cells, k, n_boot=n_boot, seed=seed)
    write_csv(page.out / "selection.csv", cand)
    page.section(
        f"Choosing a configuration over {k} replicate{'s' if k != 1 else ''}",
        "\n".join(f"- {line}" for line in lines)
        + (("\n\n" + page.table(cand)) if len(cand) else "")
        + f"\n\nCandidates: the configurations seen on every one of replicates 0-{k - 1} "
        "(`selection.replicates`), each with its mean validation AUROC and 95 % t interval over those "
        "replicates; `wins`: the share of bootstrap resamples of those same replicates in which it would be "
        "chosen — within-sample, so optimistic; `held_out_val_auroc` and `held_out_rank`: its mean validation "
        f"AUROC and rank over the replicates beyond {k - 1} that every candidate run there shares (the "
        "honest check of the choice: they chose nothing). One replicate's validation split holds 7 "
        "positives (an AUROC noise of about 0.08); the mean over five is about 0.035.",
    )


def _table4_fig4(page: Page, data: CellData, cells: pd.DataFrame, seed: int) -> None:
    pred_pairs, pred_notes = prediction_pairs(data, cells)
    t4 = table4(pred_pairs, seed=seed)
    write_csv(page.out / "table4.csv", t4)
    flips = flip_counts(pred_pairs)
    flip_text = "; ".join(
        f"{r['class']}: {r['flagged_only_with_final_bn']} of {r['images']} flagged only with final BN, "
        f"{r['flagged_only_without']} only without"
        for r in flips.to_dict("records")
    )
    n_found = int((t4["flips"] == "found").sum()) if len(t4) else 0
    page.section(
        "Table IV: P(class 1) of 5 minority test images without / with final BN (last epoch)",
        (
            page.table(t4) + f"\n\nFive minority images drawn at random (seed `report.seed`, from the "
            "minority test images sorted by path) before any score is looked at, in the first replicate with "
            f"both runs; the same images (joined on path) with final BN. {n_found} of {len(t4)} flip from "
            f"missed to found (`flips`). Over every test image of that replicate: {flip_text}."
        )
        if not t4.empty
        else "",
        pred_notes if not t4.empty else pred_notes + ["Table IV needs predictions of configs 63 and 31"],
    )
    title = "Fig. 4: per-image test softmax outputs without / with final BN"
    if pred_pairs:
        figures.fig4(pred_pairs, page.out / "fig4_softmax.png", p1_column)
        page.section(title, "![](fig4_softmax.png)")
    else:
        figures.placeholder(page.out / "fig4_softmax.png", "not enough cells: no predictions of configs 63 and 31")
        page.section(title, "", ["needs test predictions of configs 63 and 31 for the same replicate"])


def _fig3(page: Page, data: CellData, cells: pd.DataFrame) -> None:
    curves = loss_curve_table(data, cells)
    write_csv(page.out / "fig3_loss_curves.csv", curves)
    title = "Fig. 3: train / validation loss, mean ± std over replicates"
    if not curves.empty:
        figures.fig3(curves, page.out / "fig3_loss_curves.png")
        page.section(
            title,
            "![](fig3_loss_curves.png)",
            ["one run per curve: the ±std band is 0"] if curves["runs"].max() <= 1 else [],
        )
    else:
        figures.placeholder(page.out / "fig3_loss_curves.png", "no loss history of configs 63, 47, 31")
        page.section(title, "", ["no per-epoch loss history of configs 63, 47 or 31"])


# --------------------------------------------------------------------------- summary.json and the header


def _write_summary(out: Path, summary: dict, imb: pd.DataFrame, search: dict | None, note: str) -> None:
    """summary.json: the headline numbers, the imbalance baselines, the search's comparison and
    `note`, the report run's Description in MLflow (`html.description`, set by `tracking.log_report`)."""
    summary["imbalance_baselines"] = json_safe(imb.to_dict("records"))
    summary["description"] = note
    if search and search.get("comparison"):
        summary["search"] = json_safe(
            {k: search["comparison"].get(k) for k in ("best_trial", "best_trial_mean")}
            | {
                arm: {k: search["comparison"][arm].get(k) for k in ("config_id", "mean", "best_trial_minus_test_f1_1")}
                for arm in ("bn_only_31", "grid_best")
                if arm in search["comparison"]
            }
        )
    write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")


def _header(
    experiment: str | Sequence[str],
    ceiling_md: str,
    verdicts: dict[str, list[str]],
    imb: pd.DataFrame,
    cells: pd.DataFrame,
    summary: dict,
    notes_in: list[str],
    extra: Sequence[str] = (),
) -> list[str]:
    """report.md's opening lines: ceiling, verdict (with `extra`: the strongest rival, the data-needs
    answer) and method, then the input's notes."""
    # one experiment, or several (the grid's and the sensitivity stage's): their names, not a list's repr
    names = ", ".join(map(str, experiment)) if isinstance(experiment, (list, tuple)) else str(experiment or "")
    label = (
        f" — experiment{'s' if len(experiment) > 1 and not isinstance(experiment, str) else ''} {names}"
        if names
        else ""
    )
    header = [f"# Final BN report{label}", "", "## Can the features see the cue?", "", ceiling_md, "", "## Verdict", ""]
    for scope, lines in verdicts.items():
        if len(verdicts) > 1:
            header.append(f"**{scope}**")
            header.append("")
        header.extend(f"- {line}" for line in lines)
        header.append("")
    if len(imb):
        compact = imbalance.compact_line(imb)
        if compact:
            header += [
                f"**Against the imbalance baselines** (each on its base configuration; test minority F1, paired "
                f"over replicates; the section below gives each its interval): {compact}.",
                "",
            ]
    for line in extra:
        header += [line, ""]
    header += _method_lines(cells, summary)
    header.extend(f"> Note: {n}" for n in notes_in)
    if notes_in:
        header.append("")
    return header


def _method_lines(cells: pd.DataFrame, summary: dict) -> list[str]:
    """The section "How the numbers are computed"."""
    reps = cells.groupby("config_id")["replicate"].nunique()
    return [
        "## How the numbers are computed",
        "",
        f"- {len(cells)} finished cell runs: datasets {', '.join(summary['datasets'])}; archs "
        f"{', '.join(summary['archs'])}; {summary['configs']} of 64 configurations; replicates per configuration "
        f"{int(reps.min())}–{int(reps.max())}. A replicate re-draws the split (which 10 minority training images, "
        "which validation and test images) and re-seeds training.",
        "- Two epoch protocols, side by side: the last epoch (the paper's Table I protocol; columns `test_*`) and "
        "the epoch selected on validation AUROC (ties to the lower class-balanced validation loss; `sel`). Every "
        '"best configuration" is ranked on mean validation AUROC; test labels decide nothing.',
        "- Prevalence: `test_*` columns are on the test set as drawn (its own mix of classes); every cell's "
        "precision, F1, accuracy, AP and calibration are also given at each prevalence of `report.prevalences` by "
        "reweighting its test images, at the argmax cut and with each model at the cut chosen on its own "
        'validation predictions for that π (section "The answer at the prevalence the user will meet"; TPR, FPR, '
        "AUROC and balanced accuracy do not depend on it).",
        "- Contrasts (31 − 63 and the others): one paired difference per replicate (same split and seed), mean with "
        "a t interval over replicates (the primary interval); a hierarchical bootstrap over test images is "
        "secondary (effects.csv). The factorial: OLS cluster-robust by replicate when every configuration has two "
        "or more replicates, else exploratory estimates without interval or p value. One Holm family per section, "
        "named in effects.csv's `family`; intervals are unadjusted 95 %.",
        "- Configuration ids: index of (BN, WL, DA, MX, UF, WD) in itertools.product([True, False], repeat=6): "
        "31 = BN only, 47 = WL only, 15 = BN+WL, 63 = none.",
        "",
    ]

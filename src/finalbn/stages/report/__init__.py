"""The `report` stage: tracked cell runs in; the ceiling, an honest verdict, the paper's tables
and figures out.

    finalbn report --out report   # reads results/grid.csv, results/ceiling, search.json, sensitivity/
    summary = run(cfg, ReportPaths(Path("report"), Path("results/grid.csv")), MlflowTracker())  # the core
    summary = build_report(collect("finalbn"), Path("report"), ceilings=[...])

report.md opens with the separability ceiling (can the frozen body see the cue at all?), then the
verdict (`verdict.verdict_lines`: the paper's 31-vs-63 contrast over replicates, the same contrast at
each field prevalence of `report.prevalences` and at both epoch protocols, BN with WL on and per
(UF, WL) setting, the factorial, ranking vs threshold, WD, calibration at both priors, power, what
the intervals describe, the sensitivity stage, the multiplicity families), then the sections. Primary
numbers are the last epoch's and the replicate-level t intervals; every "best configuration" is
ranked on validation. A partial grid does not crash the report: a piece that cannot be computed is
a note in report.md, its CSV has its header only and its PNG says why, so every output path exists
(DVC outs). The store is read and written only through the tracker handed to `run`
(`finalbn.stages.tracker`).

The files (`FILES`, all in the output folder): report.md, summary.json (headline numbers),
cells.csv, prevalence.csv, selection.csv, table1–4.csv, baselines.csv, effects.csv, by_setting.csv,
calibration.csv, imbalance.csv, search.csv, fig3_loss_curves.csv and the PNGs prevalence,
sensitivity, by_setting, fig3_loss_curves, fig4_softmax, reliability, reliability_prior, effects,
configs, ceiling, imbalance, search.

The package: `make` (the core `run` and `finalbn report`: inputs in, the run recorded), `build` (the page, section by
section), `answer` (the sections at the user's prevalence, per setting, at the training prior, the
sensitivity), `summary` (summary.json), `cells` (collecting runs), `tables`, `prevalence` (the test
set reweighted to π), `effects` (the study's effects), `pairs` (paired contrasts, the Holm families),
`factorial`, `verdict` (wording; the generic statistics are `finalbn.stats.inference`), `baselines` (the
imbalance baselines), `search` (the Optuna section), `figures`, `markdown` (formatting, the page).
"""

from __future__ import annotations

from finalbn.stages.report import effects, tables
from finalbn.stages.report.build import FILES, build_report
from finalbn.stages.report.cells import CellData, collect
from finalbn.stages.report.make import ReportPaths, grid_keys, main, read_search, run

__all__ = [
    "FILES",
    "CellData",
    "ReportPaths",
    "build_report",
    "collect",
    "effects",
    "grid_keys",
    "main",
    "read_search",
    "run",
    "tables",
]

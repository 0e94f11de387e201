"""The `report` stage: tracked cell runs in; the ceiling, an honest verdict, the paper's tables
and figures out.

    finalbn report --grid-csv results/grid.csv --ceiling results/ceiling --search results/search.json --out report
    summary = make_report(cfg, Path("report"), grid_csv=Path("results/grid.csv"))
    summary = build_report(collect("finalbn"), Path("report"), ceilings=[...])

report.md opens with the separability ceiling (can the frozen body see the cue at all?), then the
verdict (`effects.verdict_lines`: the paper's 31-vs-63 contrast over replicates, BN with WL on,
the factorial main effect, ranking vs threshold, WD), then the tables. Primary numbers are the
last epoch's; the validation-selected epoch is a labelled secondary column; every "best
configuration" is ranked on validation. A partial grid does not crash the report: a piece that
cannot be computed is a note in report.md, its CSV has its header only and its PNG says why, so
every output path exists (DVC outs). MLflow is read and written only through `finalbn.tracking`.

The files (`FILES`, all in the output folder): report.md, summary.json (headline numbers),
cells.csv, table1–4.csv, baselines.csv, effects.csv, calibration.csv, imbalance.csv, search.csv,
fig3_loss_curves.csv and the PNGs fig3_loss_curves, fig4_softmax, reliability, effects, configs,
ceiling, imbalance, search.

The package: `make` (`finalbn report`: inputs in, MLflow logging), `build` (one function per
section of report.md), `summary` (summary.json), `cells` (collecting runs), `tables`, `effects`
(statistics and verdict wording; the generic pieces are `finalbn.stats`), `baselines` (the
imbalance baselines), `search` (the Optuna section), `figures`, `markdown` (formatting).
"""
from __future__ import annotations

from finalbn.stages.report import effects, tables
from finalbn.stages.report.build import FILES, build_report
from finalbn.stages.report.cells import CellData, collect
from finalbn.stages.report.make import grid_keys, main, make_report, read_search

__all__ = ["FILES", "CellData", "build_report", "collect", "effects", "grid_keys", "main", "make_report",
           "read_search", "tables"]

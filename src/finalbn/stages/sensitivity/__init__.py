"""The `sensitivity` stage: does the headline contrast survive the choices a reviewer asks about next?

    finalbn sensitivity --splits data/splits --out results/sensitivity

Final BN alone vs nothing (configs 31 and 63) on replicates 0..sensitivity.replicates-1, one
setting changed at a time (`FACTORS`, levels from params' `sensitivity` section):

* `imbalance`: the training split's minority share (1 %, 5 %, 10 % of 1000 healthy images: its own
  splits, drawn as `prepare` draws them, under <out>/splits/<level>);
* `batch_size`: 16, 64, 256 (at 64 most batches hold 0 or 1 diseased image);
* `final_bn_momentum`: how fast the final BN's running statistics move (0.01 leaves ~20 % of their
  weight on the starting values after 160 steps);
* `frozen_bn`: the frozen body's BN layers in eval mode (pre-trained statistics, the default) or in
  train mode (batch statistics: fastai's behaviour, the paper's);
* `single_logit`: one sigmoid logit with BN over it, against two softmax logits;
* `final_bn_at_inference`: 31 trained with its final BN and run without it (`train.posthoc:
  remove_final_bn`: the last Linear's logits) against 63 — does the gain survive removing the layer at
  inference, as Kocaman, Shir & Bäck (ISVC 2021) report? Its cells are the grid's baseline
  `final_bn_removed` when the grid ran it (found by key), else trained here; its 63 is the reference's;
* `bias_shift`: 31 against 63 plus a minority-logit bias learned on validation (`analysis.fit_logit_bias`,
  no training: the simplest rival of a final BN, which also moves that logit), fitted for each
  prevalence π of `report.prevalences` and judged at that π only.

A level equal to params.yaml's own setting is the reference: its cells are the grid's headline cells,
found by key, not retrained. Every level runs through the grid's core (`grid.run` on the level's
config, `sensitivity.workers` levels at a time in worker processes): cells keyed and resumable,
nothing trained twice. A level's parent and cell runs are named by its setting (`BN (config 31) ·
batch_size=16`; its cells `none r2 · batch_size=16`) and tagged `sensitivity.factor` and
`sensitivity.level` (`level_setting`); their keys are the grid's. The core is
`run(cfg, SensitivityPaths(splits, out), tracker)`. Outputs: <out>/sensitivity.csv (31 − 63 per factor, level and
prevalence, with a t interval over replicates, the difference detectable with 80 % power, Holm's
adjustment over the `sensitivity` family and a `collapsed` mark),
<out>/cells.csv (every cell used), <out>/sensitivity.json, and one figure per factor (<out>/<factor>.png).
"""

from __future__ import annotations

import argparse
import dataclasses
import io as _io
import sys
from pathlib import Path

import pandas as pd

from finalbn import tracking
from finalbn.cluster import workers
from finalbn.config import Config
from finalbn.config.overrides import with_overrides
from finalbn.data.splits import prepare_dataset
from finalbn.infra import io
from finalbn.infra.errors import DataError
from finalbn.infra.io import write_csv
from finalbn.plots.sensitivity import fig_factor
from finalbn.stages import grid
from finalbn.stages.cost import Progress, projection_line
from finalbn.stages.sensitivity.analysis import (
    BN_ID,
    COLUMNS,
    NONE_ID,
    SHIFT_INVARIANT,
    contrasts,
    fit_logit_bias,
    shifted_metrics,
)
from finalbn.stages.tracker import Tracker
from finalbn.tracking.adapter import MLFLOW


class LevelFailed(Exception):
    """A level's cells did not all finish (the message names the level)."""


FACTORS = (
    "imbalance",
    "batch_size",
    "final_bn_momentum",
    "frozen_bn",
    "single_logit",
    "final_bn_at_inference",
    "bias_shift",
)
REMOVED = ("grid.configs=[31]", "train.posthoc=remove_final_bn")  # 31 run without its final BN; 63 unchanged
COMMON = ["grid.configs=[31,63]", "grid.headline.configs=[]", "grid.baselines.methods=[]"]
# on a level's parent and cell runs: the factor and the level it sets (MLflow: tags.`sensitivity.factor` = 'batch_size')
FACTOR_TAG, LEVEL_TAG = "sensitivity.factor", "sensitivity.level"
REFERENCE = "reference (params.yaml)"  # the name of the grid the reference levels share


@dataclasses.dataclass(frozen=True)
class Level:
    factor: str
    level: str
    overrides: tuple[str, ...]  # params overrides on top of the run's own
    reference: bool
    splits: Path | None = None  # its own splits (the imbalance levels), else the run's
    split_train: tuple[int, int] | None = None


def minority_count(share: float, majority: int) -> int:
    """Minority images for a minority share of the training split with `majority` healthy images."""
    return max(1, round(share / (1 - share) * majority))


def levels(cfg: Config, out: Path) -> list[Level]:
    """Every (factor, level) of params' `sensitivity` section, the reference levels marked."""
    s, out_levels = cfg.sensitivity, []
    n0, n1 = cfg.split.train
    shares = sorted(set(s.values("imbalance")) | {n1 / (n0 + n1)}) if s.values("imbalance") else []
    seen = set()
    for share in shares:
        m = minority_count(share, n0)
        if m in seen:
            continue
        seen.add(m)
        ref = m == n1
        out_levels.append(
            Level(
                "imbalance",
                f"{m / (n0 + m):.1%} ({n0}/{m})",
                () if ref else (f"split.train=[{n0},{m}]",),
                ref,
                None if ref else out / "splits" / f"minority-{m}",
                (n0, m),
            )
        )
    for factor, values, current, key in (
        ("batch_size", s.values("batch_size"), cfg.train.batch_size, "train.batch_size"),
        ("final_bn_momentum", s.values("final_bn_momentum"), cfg.model.final_bn_momentum, "model.final_bn_momentum"),
        ("frozen_bn", s.values("frozen_bn"), cfg.model.frozen_bn, "model.frozen_bn"),
    ):
        if set(values) - {current}:  # a factor with no level but the reference compares nothing
            for v in sorted(set(values) | {current}, key=lambda x: (isinstance(x, str), x)):
                ref = v == current
                out_levels.append(
                    Level(factor, f"{v:g}" if not isinstance(v, str) else v, () if ref else (f"{key}={v}",), ref)
                )
    if s.single_logit:
        out_levels.append(Level("single_logit", "two softmax logits", (), not cfg.model.single_logit))
        out_levels.append(
            Level("single_logit", "one sigmoid logit", ("model.single_logit=true",), cfg.model.single_logit)
        )
    if s.inference_removal and cfg.train.posthoc == "none":
        out_levels.append(Level("final_bn_at_inference", "kept", (), True))
        out_levels.append(Level("final_bn_at_inference", "trained, removed at inference", REMOVED, False))
    return out_levels


def level_config(cfg: Config, lv: Level, replicates: int, side_by_side: int = 1) -> Config:
    """The config of a level's grid: this run's, with the two configurations, `replicates` and the
    level's overrides; levels trained `side_by_side` share the cores (`train.threads`, unless set)."""
    threads = (
        [f"train.threads={workers.threads_per_worker(side_by_side)}"]
        if side_by_side > 1 and not cfg.train.threads
        else []
    )
    return with_overrides(cfg, [*COMMON, f"grid.replicates={replicates}", *lv.overrides, *threads])


def level_splits(lcfg: Config, lv: Level, splits: Path) -> Path:
    """The splits a level trains on: the run's, or (an imbalance level) its own, drawn first as
    `prepare` draws them. Raises DataError naming the level when they cannot be."""
    where = lv.splits or splits
    if lv.splits is not None and not all(
        (where / d.name / str(r) / "split.json").is_file()
        for d in lcfg.datasets
        for r in range(lcfg.grid.max_replicates)
    ):
        for ds in lcfg.datasets:
            try:
                prepare_dataset(
                    ds, lcfg.split, where, progress=sys.stderr.isatty(), replicates=lcfg.grid.max_replicates
                )
            except DataError as exc:
                raise DataError(f"sensitivity {lv.factor} = {lv.level}: {exc}") from None
    return where


def level_setting(same: list[Level]) -> grid.Setting:
    """What the runs of one level grid are named and tagged by (`grid.Setting`): its level,
    `batch_size=16` (tags `sensitivity.factor` batch_size, `sensitivity.level` 16); the grid the
    reference levels share (params.yaml's own settings), `reference (params.yaml)`. `same`: the
    levels that grid serves (one, or the reference levels)."""
    if all(lv.reference for lv in same):
        return grid.Setting(REFERENCE, ((FACTOR_TAG, "reference"), (LEVEL_TAG, "params.yaml")))
    label = " / ".join(f"{lv.factor}={lv.level}" for lv in same)
    factors = ", ".join(dict.fromkeys(lv.factor for lv in same))
    return grid.Setting(label, ((FACTOR_TAG, factors), (LEVEL_TAG, ", ".join(lv.level for lv in same))))


def train_level(
    lcfg: Config, paths: grid.GridPaths, setting: grid.Setting | None = None, tracker: Tracker = MLFLOW
) -> int:
    """One level's cells through the grid's core (`grid.run`, stage `sensitivity`, one process):
    keyed and resumable, the reference level's cells found among the grid's; its parents and cells
    named and tagged by `setting` (`level_setting`). Its exit code."""
    return grid.run(
        lcfg, paths, tracker, stage="sensitivity", workers=1, log=lambda m: print(m, flush=True), setting=setting
    ).code


def run_levels(
    cfg: Config, plan: list[Level], splits: Path, out: Path, tracker: Tracker = MLFLOW, log=print
) -> list[pd.DataFrame]:
    """Every level's cells, through the grid's core (`train_level`), `sensitivity.workers` levels
    at a time in worker processes when the tracker is shared (the cells of 31 and 63 are one
    family of shared features, so a level is one process), else one after another here; levels
    with the same overrides (the reference levels) share one grid. Returns each level's grid.csv
    rows tagged with the level. Raises LevelFailed naming the levels whose cells did not all finish."""
    n = cfg.sensitivity.workers if tracker.shared else 1
    todo: dict[tuple, tuple[Config, grid.GridPaths]] = {}
    for lv in plan:
        key = (lv.overrides, lv.splits)
        if key not in todo:
            lcfg = level_config(cfg, lv, cfg.sensitivity.replicates, n)
            folder = out / "levels" / f"{len(todo):02d}-{lv.factor}"
            todo[key] = (lcfg, grid.GridPaths(level_splits(lcfg, lv, splits), folder))
    calls = list(todo.values())
    settings = [level_setting([lv for lv in plan if (lv.overrides, lv.splits) == key]) for key in todo]
    bar = _projection(calls, n, tracker, log)
    for start in range(0, len(calls), n):
        batch = calls[start : start + n]
        names = [
            ", ".join(f"{lv.factor} = {lv.level}" for lv in plan if todo[(lv.overrides, lv.splits)][1] == p)
            for _, p in batch
        ]
        log(f"sensitivity: {'; '.join(names)} ({bar.left()})")
        labelled = [(lcfg, paths, settings[start + i]) for i, (lcfg, paths) in enumerate(batch)]
        if n > 1:
            codes = workers.map_processes(train_level, labelled, n)
        else:
            codes = [train_level(lcfg, paths, setting, tracker) for lcfg, paths, setting in labelled]
        for i in range(start, start + len(batch)):
            bar.done(i)
        if any(codes):
            raise LevelFailed(
                f"{'; '.join(names)}: the grid exited {max(codes)} (a cell failed or an input is "
                "missing; rerun to retry what is missing)"
            )
    frames = []
    for lv in plan:
        folder = todo[(lv.overrides, lv.splits)][1].results
        frames.append(
            pd.read_csv(folder / "grid.csv").assign(factor=lv.factor, level=lv.level, reference=lv.reference, rival="")
        )
    return _with_reference_none(plan, frames)


def _with_reference_none(plan: list[Level], frames: list[pd.DataFrame]) -> list[pd.DataFrame]:
    """A level that trains 31 alone (`REMOVED`: 63 has no final BN to remove) gets the reference
    level's 63 cells, the same cells it would train."""
    ref = next((f for f, lv in zip(frames, plan) if lv.reference and not lv.splits), None)
    out = []
    for f, lv in zip(frames, plan):
        if lv.overrides == REMOVED and ref is not None:
            none = ref[ref["config_id"] == NONE_ID].assign(factor=lv.factor, level=lv.level, reference=False)
            f = pd.concat([f[f["config_id"] == BN_ID], none], ignore_index=True)
        out.append(f)
    return out


def _projection(calls: list[tuple[Config, grid.GridPaths]], n: int, tracker: Tracker, log) -> Progress:
    """Say the levels' projected time (each level's grid priced as `grid.priced` prices it, one
    process each, `n` levels at a time: a batch lasts as its longest level) and return their
    progress (a batch's levels share its time)."""
    levels_priced = [grid.priced(lcfg, paths.splits, tracker, 1) for lcfg, paths in calls]
    what = f"{sum(p.todo for p in levels_priced)} cells to train in {len(calls)} level grid(s), {n} at a time"
    if any(p.seconds is None for p in levels_priced):
        unpriced = next(p.unpriced for p in levels_priced if p.seconds is None)
        log(projection_line("sensitivity", None, what, unpriced=unpriced))
        return Progress("sensitivity", [1.0] * len(calls), bar=False)
    priced_by = calls[0][0].cost if calls else None
    startup = priced_by.level_startup if priced_by is not None else 0.0  # a level grid's process and set-up
    seconds = [float(p.seconds or 0.0) + (startup if p.todo else 0.0) for p in levels_priced]
    shares = []
    for start in range(0, len(seconds), n):
        batch = seconds[start : start + n]
        shares += [max(batch) / len(batch)] * len(batch)
    source = next((p.source for p in levels_priced if p.source), "")  # a level all in the store priced nothing
    log(projection_line("sensitivity", sum(shares), what, source))
    return Progress("sensitivity", shares, bar=False)


BIAS_LEVEL, BIAS_RIVAL = "learned bias on 63, fitted at π", "63 + learned bias"


def bias_shift_rows(reference: pd.DataFrame, prevalences, tracker: Tracker = MLFLOW) -> pd.DataFrame:
    """The reference level's 31 cells, and its 63 cells with a minority-logit bias fitted on each
    cell's own validation predictions for each prevalence π (`fit_logit_bias`) and applied to its
    test predictions: one row per (cell, π), `fitted_prevalence` = π, judged at that π only
    (`contrasts`). A shifted row's argmax metrics (and Brier) are recomputed from the shifted
    predictions, test and validation (`shifted_metrics`); AUROC and AP, which a shift does not move,
    are kept; every other metric (ECE, the prior-corrected and validation-threshold F1, the
    selected epoch's) is left empty rather than copied from the unshifted cell."""
    rows = [
        reference[reference["config_id"] == BN_ID].assign(
            factor="bias_shift", level=BIAS_LEVEL, reference=False, rival=""
        )
    ]
    kept = {f"{split}{m}" for split in ("test_", "val_") for m in SHIFT_INVARIANT}
    shifted = []
    for r in reference[reference["config_id"] == NONE_ID].to_dict("records"):
        val = tracker.artifact_text(r["run_id"], "predictions/val_predictions.csv")
        test = tracker.artifact_text(r["run_id"], "predictions/test_predictions.csv")
        if not val or not test:
            continue
        v, t = pd.read_csv(_io.StringIO(val)), pd.read_csv(_io.StringIO(test))
        blank = {k: float("nan") for k in r if k.startswith(("test_", "val_")) and k not in kept}
        for pi in prevalences:
            b = fit_logit_bias(v["label"], v["p1_last"], pi)
            val_f1 = shifted_metrics(v["label"], v["p1_last"], b, "val_")["val_f1_1"]
            shifted.append(
                {
                    **r,
                    **blank,
                    **shifted_metrics(t["label"], t["p1_last"], b),
                    "val_f1_1": val_f1,
                    "factor": "bias_shift",
                    "level": BIAS_LEVEL,
                    "reference": False,
                    "rival": BIAS_RIVAL,
                    "bias": b,
                    "fitted_prevalence": float(pi),
                }
            )
    return pd.concat(rows + [pd.DataFrame(shifted)], ignore_index=True)


@dataclasses.dataclass(frozen=True)
class SensitivityPaths:
    """The run's prepared splits and the stage's folder (sensitivity.csv, cells.csv, the figures,
    levels/<nn>-<factor>/grid.csv and the imbalance levels' own splits)."""

    splits: Path
    out: Path


@dataclasses.dataclass(frozen=True)
class SensitivitySummary:
    """What the stage found: sensitivity.json's content (replicates, prevalences, factors, rows),
    and the contrasts table (one row per factor, level and prevalence; empty when no factor ran)."""

    results: dict
    table: pd.DataFrame


def run(cfg: Config, paths: SensitivityPaths, tracker: Tracker = MLFLOW, log=print) -> SensitivitySummary:
    """The sensitivity stage's core: every level's cells (`run_levels`), the bias-shift rival, then
    sensitivity.csv, cells.csv, one figure per factor and sensitivity.json under `paths.out`.
    Raises LevelFailed naming the levels whose cells did not all finish; DataError when an
    imbalance level's splits cannot be drawn."""
    out, s = paths.out, cfg.sensitivity
    out.mkdir(parents=True, exist_ok=True)
    plan = levels(cfg, out)
    log(
        f"sensitivity: {len(plan)} levels of {len({lv.factor for lv in plan})} factors, configs 31 and 63 on "
        f"{s.replicates} replicates each (reference levels are the grid's cells)"
    )
    if s.bias_shift and not any(lv.reference for lv in plan):  # the rival needs the run's own cells
        plan.append(Level("reference", "params.yaml", (), True))
    if not plan:
        log("sensitivity: no factor in params' `sensitivity` section and no bias shift: nothing to run")
        write_csv(out / "sensitivity.csv", pd.DataFrame(columns=COLUMNS))
        results = {"replicates": s.replicates, "factors": [], "rows": []}
        io.write_json(out / "sensitivity.json", results)
        return SensitivitySummary(results, pd.DataFrame(columns=COLUMNS))
    frames = run_levels(cfg, plan, paths.splits, out, tracker, log)
    parts = [f for f, lv in zip(frames, plan) if lv.factor != "reference"]  # the reference alone is no factor
    pis = sorted(set(cfg.report.prevalences), reverse=True)
    if s.bias_shift:
        parts.append(bias_shift_rows(next(f for f, lv in zip(frames, plan) if lv.reference), pis, tracker))
    cells = pd.concat(parts, ignore_index=True)
    write_csv(out / "cells.csv", cells)
    table = contrasts(cells, pis)
    write_csv(out / "sensitivity.csv", table)
    for factor in dict.fromkeys(table["factor"]):
        fig_factor(table[table["factor"] == factor], factor, out / f"{factor}.png")
    results = {
        "replicates": s.replicates,
        "prevalences": pis,
        "factors": sorted(set(table["factor"])),
        "contrast": "final BN alone vs nothing (31 − 63), test minority F1, last epoch",
        "rows": table.astype(object).where(table.notna(), None).to_dict("records"),
    }
    io.write_json(out / "sensitivity.json", results)
    return SensitivitySummary(results, table)


def main(cfg: Config, args: argparse.Namespace) -> int:
    """`finalbn sensitivity`: the core (`run`) on the store, and a line per contrast."""
    tracking.detach_project_run()
    out = Path(args.out)
    try:
        summary = run(cfg, SensitivityPaths(Path(args.splits), out), MLFLOW, log=lambda m: print(m, flush=True))
    except LevelFailed as exc:
        print(f"finalbn sensitivity: failed: {exc}", file=sys.stderr)
        return 1
    for r in summary.table.to_dict("records"):
        print(
            f"  {r['factor']} = {r['level']}: 31 − {r['rival']} {r['estimate']:+.3f} "
            f"[{r['ci_low']:+.3f}, {r['ci_high']:+.3f}] at π = {r['prevalence']:g} over {r['n']} replicates: "
            f"{r['direction']}"
            + (f" (Holm p {r['p_holm']:.3g})" if r["family"] else "")
            + (" — collapsed" if r["collapsed"] else "")
        )
    if len(summary.table):
        print(f"sensitivity -> {out}/sensitivity.csv and {len(set(summary.table['factor']))} figures")
    return 0

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
* `bias_shift`: 31 against 63 plus a minority-logit bias learned on validation (`analysis.fit_logit_bias`,
  no training: the simplest rival of a final BN, which also moves that logit), fitted for each
  prevalence π of `report.prevalences` and judged at that π only.

A level equal to params.yaml's own setting is the reference: its cells are the grid's headline cells,
found by key, not retrained. Every level runs through the grid's own command (`finalbn grid` with
the level's overrides, `sensitivity.workers` levels at a time): cells keyed and resumable, nothing
trained twice. Outputs: <out>/sensitivity.csv (31 − 63 per factor, level and
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
from finalbn.config import Config, load_config
from finalbn.data.splits import prepare_dataset
from finalbn.infra import io
from finalbn.infra.errors import DataError
from finalbn.infra.io import write_csv
from finalbn.plots.sensitivity import fig_factor
from finalbn.stages.sensitivity.analysis import (
    BN_ID,
    COLUMNS,
    NONE_ID,
    SHIFT_INVARIANT,
    contrasts,
    fit_logit_bias,
    shifted_metrics,
)


class LevelFailed(Exception):
    """A level's cells did not all finish (the message names the level)."""


FACTORS = ("imbalance", "batch_size", "final_bn_momentum", "frozen_bn", "single_logit", "bias_shift")
COMMON = ["grid.configs=[31,63]", "grid.headline.configs=[]", "grid.baselines.methods=[]"]


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
    shares = sorted(set(s.imbalance) | {n1 / (n0 + n1)}) if s.imbalance else []
    seen = set()
    for share in shares:
        m = minority_count(share, n0)
        if m in seen:
            continue
        seen.add(m)
        ref = m == n1
        out_levels.append(Level("imbalance", f"{m / (n0 + m):.1%} ({n0}/{m})", () if ref else
                                (f"split.train=[{n0},{m}]",), ref, None if ref else out / "splits" / f"minority-{m}",
                                (n0, m)))
    for factor, values, current, key in (("batch_size", s.batch_size, cfg.train.batch_size, "train.batch_size"),
                                         ("final_bn_momentum", s.final_bn_momentum, cfg.model.final_bn_momentum,
                                          "model.final_bn_momentum"),
                                         ("frozen_bn", s.frozen_bn, cfg.model.frozen_bn, "model.frozen_bn")):
        if values:
            for v in sorted(set(values) | {current}, key=lambda x: (isinstance(x, str), x)):
                ref = v == current
                out_levels.append(Level(factor, f"{v:g}" if not isinstance(v, str) else v,
                                        () if ref else (f"{key}={v}",), ref))
    if s.single_logit:
        out_levels.append(Level("single_logit", "two softmax logits", (), not cfg.model.single_logit))
        out_levels.append(Level("single_logit", "one sigmoid logit", ("model.single_logit=true",),
                                cfg.model.single_logit))
    return out_levels


def _base_overrides(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    """(params files, overrides) of this run, as `finalbn.cli.forwarded` passed them."""
    params, overrides, fwd = [], [], list(getattr(args, "forward", []))
    for flag, value in zip(fwd[::2], fwd[1::2]):
        if flag == "--params":
            params.append(value)
        elif flag == "--set":
            overrides.append(value)
    return params or ["params.yaml"], overrides


def level_config(args: argparse.Namespace, lv: Level, replicates: int) -> tuple[list[str], list[str], Config]:
    params, base = _base_overrides(args)
    overrides = base + COMMON + [f"grid.replicates={replicates}", *lv.overrides]
    return params, overrides, load_config(params, overrides)


def level_command(args: argparse.Namespace, cfg: Config, lv: Level, splits: Path, folder: Path) -> list[str]:
    """The `finalbn grid` arguments that train (or find) the level's cells into `folder`; an
    imbalance level's splits are drawn first. Raises DataError naming the level when they cannot be."""
    params, overrides, lcfg = level_config(args, lv, cfg.sensitivity.replicates)
    where = lv.splits or splits
    if lv.splits is not None and not all((where / d.name / str(r) / "split.json").is_file()
                                         for d in lcfg.datasets for r in range(lcfg.grid.max_replicates)):
        for ds in lcfg.datasets:
            try:
                prepare_dataset(ds, lcfg.split, where, progress=sys.stderr.isatty(),
                                replicates=lcfg.grid.max_replicates)
            except DataError as exc:
                raise DataError(f"sensitivity {lv.factor} = {lv.level}: {exc}") from None
    if not lcfg.train.threads:  # levels run side by side: each its share of the cores, not all of them
        overrides = [*overrides, f"train.threads={workers.threads_per_worker(cfg.sensitivity.workers)}"]
    argv = [x for p in params for x in ("--params", p)] + [x for o in overrides for x in ("--set", o)]
    return ["grid", *argv, "--splits", str(where), "--results", str(folder), "--workers", "1", "--stage", "sensitivity"]


def run_levels(args: argparse.Namespace, cfg: Config, plan: list[Level], splits: Path, out: Path,
               log=print) -> list[pd.DataFrame]:
    """Every level's cells, through the grid's own command (stages never import each other: keyed,
    resumable cells), `sensitivity.workers` levels at a time (the cells of 31 and 63 are one family
    of shared features, so a level is one process); levels with the same overrides (the reference
    levels) share one run. Returns each level's grid.csv rows tagged with the level. Raises
    LevelFailed naming the levels whose cells did not all finish."""
    commands: dict[tuple, tuple[list[str], Path]] = {}
    for lv in plan:
        key = (lv.overrides, lv.splits)
        if key not in commands:
            folder = out / "levels" / f"{len(commands):02d}-{lv.factor}"
            commands[key] = (level_command(args, cfg, lv, splits, folder), folder)
    todo = list(commands.values())
    n = cfg.sensitivity.workers
    for start in range(0, len(todo), n):
        batch = todo[start:start + n]
        names = [", ".join(f"{lv.factor} = {lv.level}" for lv in plan if commands[(lv.overrides, lv.splits)][1] == f)
                 for _, f in batch]
        log(f"sensitivity: {'; '.join(names)}")
        code = workers.run_commands(lambda i: batch[i][0], len(batch))  # noqa: B023 (called at once)
        if code:
            raise LevelFailed(f"{'; '.join(names)}: `finalbn grid` exited {code} (a cell failed or an input is "
                              "missing; rerun to retry what is missing)")
    frames = []
    for lv in plan:
        folder = commands[(lv.overrides, lv.splits)][1]
        frames.append(pd.read_csv(folder / "grid.csv").assign(factor=lv.factor, level=lv.level,
                                                              reference=lv.reference, rival=""))
    return frames


BIAS_LEVEL, BIAS_RIVAL = "learned bias on 63, fitted at π", "63 + learned bias"


def bias_shift_rows(reference: pd.DataFrame, prevalences) -> pd.DataFrame:
    """The reference level's 31 cells, and its 63 cells with a minority-logit bias fitted on each
    cell's own validation predictions for each prevalence π (`fit_logit_bias`) and applied to its
    test predictions: one row per (cell, π), `fitted_prevalence` = π, judged at that π only
    (`contrasts`). A shifted row's argmax metrics (and Brier) are recomputed from the shifted
    predictions, test and validation (`shifted_metrics`); AUROC and AP, which a shift does not move,
    are kept; every other metric (ECE, the prior-corrected and validation-threshold F1, the
    selected epoch's) is left empty rather than copied from the unshifted cell."""
    rows = [reference[reference["config_id"] == BN_ID].assign(factor="bias_shift", level=BIAS_LEVEL,
                                                               reference=False, rival="")]
    kept = {f"{split}{m}" for split in ("test_", "val_") for m in SHIFT_INVARIANT}
    shifted = []
    for r in reference[reference["config_id"] == NONE_ID].to_dict("records"):
        val = tracking.artifact_text(r["run_id"], "predictions/val_predictions.csv")
        test = tracking.artifact_text(r["run_id"], "predictions/test_predictions.csv")
        if not val or not test:
            continue
        v, t = pd.read_csv(_io.StringIO(val)), pd.read_csv(_io.StringIO(test))
        blank = {k: float("nan") for k in r if k.startswith(("test_", "val_")) and k not in kept}
        for pi in prevalences:
            b = fit_logit_bias(v["label"], v["p1_last"], pi)
            val_f1 = shifted_metrics(v["label"], v["p1_last"], b, "val_")["val_f1_1"]
            shifted.append({**r, **blank, **shifted_metrics(t["label"], t["p1_last"], b), "val_f1_1": val_f1,
                            "factor": "bias_shift", "level": BIAS_LEVEL, "reference": False, "rival": BIAS_RIVAL,
                            "bias": b, "fitted_prevalence": float(pi)})
    return pd.concat(rows + [pd.DataFrame(shifted)], ignore_index=True)


def main(cfg: Config, args: argparse.Namespace) -> int:
    """`finalbn sensitivity`: every level's cells, then sensitivity.csv, the figures and the summary."""
    tracking.detach_project_run()
    out, splits = Path(args.out), Path(args.splits)
    out.mkdir(parents=True, exist_ok=True)
    s = cfg.sensitivity
    plan = levels(cfg, out)
    print(f"sensitivity: {len(plan)} levels of {len({lv.factor for lv in plan})} factors, configs 31 and 63 on "
          f"{s.replicates} replicates each (reference levels are the grid's cells)", flush=True)
    if s.bias_shift and not any(lv.reference for lv in plan):  # the rival needs the run's own cells
        plan.append(Level("reference", "params.yaml", (), True))
    if not plan:
        print("sensitivity: no factor in params' `sensitivity` section and no bias shift: nothing to run")
        write_csv(out / "sensitivity.csv", pd.DataFrame(columns=COLUMNS))
        io.write_json(out / "sensitivity.json", {"replicates": s.replicates, "factors": [], "rows": []})
        return 0
    try:
        frames = run_levels(args, cfg, plan, splits, out)
    except LevelFailed as exc:
        print(f"finalbn sensitivity: failed: {exc}", file=sys.stderr)
        return 1
    parts = [f for f, lv in zip(frames, plan) if lv.factor != "reference"]  # the reference alone is no factor
    pis = sorted(set(cfg.report.prevalences), reverse=True)
    if s.bias_shift:
        parts.append(bias_shift_rows(next(f for f, lv in zip(frames, plan) if lv.reference), pis))
    cells = pd.concat(parts, ignore_index=True)
    write_csv(out / "cells.csv", cells)
    table = contrasts(cells, pis)
    write_csv(out / "sensitivity.csv", table)
    for factor in dict.fromkeys(table["factor"]):
        fig_factor(table[table["factor"] == factor], factor, out / f"{factor}.png")
    summary = {"replicates": s.replicates, "prevalences": pis, "factors": sorted(set(table["factor"])),
               "contrast": "final BN alone vs nothing (31 − 63), test minority F1, last epoch",
               "rows": table.astype(object).where(table.notna(), None).to_dict("records")}
    io.write_json(out / "sensitivity.json", summary)
    for r in table.to_dict("records"):
        print(f"  {r['factor']} = {r['level']}: 31 − {r['rival']} {r['estimate']:+.3f} "
              f"[{r['ci_low']:+.3f}, {r['ci_high']:+.3f}] at π = {r['prevalence']:g} over {r['n']} replicates: "
              f"{r['direction']}" + (f" (Holm p {r['p_holm']:.3g})" if r["family"] else "")
              + (" — collapsed" if r["collapsed"] else ""))
    print(f"sensitivity -> {out}/sensitivity.csv and {len(set(table['factor']))} figures")
    return 0

"""The `needs` stage: how many defect images must a user label to reach the minority F1 they need?

    finalbn needs --splits data/splits --out results/needs

The majority is held at `split.train[0]` healthy training images while the minority count n runs
over `needs.counts` (1, 2, 5, 10, 20, 40 by default; each count's splits drawn as `prepare` draws
them, under <out>/splits/minority-<n>; the count equal to `split.train[1]` is the run's own
splits, its cells the grid's, found by key). At each count the final BN alone (31), nothing (63)
and `needs.rival` on 63 train on replicates 0..needs.replicates-1 through the grid's core (keyed and
resumable, in the `needs` experiment; a post-hoc rival reuses its base's trained head). Each cell
is scored at `needs.prevalence` the way the field decides there: minority F1 at the cut its own
validation predictions choose for that prevalence (`finalbn_field.decision.at_prevalence`), and
AUROC. Then (`finalbn.stats.learning`) an inverse power-law learning curve per method (Figueroa et
al. 2012), the images needed for `needs.target_f1` with a bootstrap interval over replicates, the
count beyond which the final BN's gain over nothing has an interval covering 0, and one sentence.

Outputs: <out>/needs.csv (one row per method, count and replicate), <out>/curve.csv (the fitted
curves), <out>/needs.json (the answer, its numbers and the sentence), <out>/needs.png; the same
figure and answer are logged to an MLflow run in the `needs` experiment.
"""

from __future__ import annotations

import argparse
import dataclasses
import io as _io
import json
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from sklearn.metrics import roc_auc_score

from finalbn import tracking
from finalbn.cluster import workers
from finalbn.config import Config
from finalbn.config.overrides import with_overrides
from finalbn.data.splits import prepare_dataset
from finalbn.infra import io
from finalbn.infra.errors import DataError
from finalbn.infra.io import write_csv
from finalbn.plots.needs import fig_needs
from finalbn.stages import grid
from finalbn.stages.cost import projection_line
from finalbn.stages.tracker import Tracker
from finalbn.stats import learning
from finalbn.tracking import records
from finalbn.tracking.adapter import MLFLOW
from finalbn_field import decision

BN_ID, NONE_ID = 31, 63
METHODS = {BN_ID: "final BN (31)", NONE_ID: "none (63)"}


class CountFailed(Exception):
    """A count's cells did not all finish (the message names the count)."""


@dataclasses.dataclass(frozen=True)
class Count:
    n: int
    reference: bool  # the run's own splits: the grid's cells
    splits: Path


def counts(cfg: Config, splits: Path, out: Path) -> list[Count]:
    """Each minority count of `needs.counts`, the run's own (`split.train[1]`) marked."""
    own = cfg.split.train[1]
    return [
        Count(n, n == own, splits if n == own else out / "splits" / f"minority-{n}")
        for n in sorted(set(cfg.needs.counts))
    ]


def count_config(cfg: Config, n: int, side_by_side: int = 1) -> Config:
    """The grid of one count: 31 and 63 and the rival on 63, `needs.replicates` replicates each."""
    r = cfg.needs.replicates
    threads = (
        [f"train.threads={workers.threads_per_worker(side_by_side)}"]
        if side_by_side > 1 and not cfg.train.threads
        else []
    )
    return with_overrides(
        cfg,
        [
            f"split.train=[{cfg.split.train[0]},{n}]",
            "grid.configs=[31,63]",
            f"grid.replicates={r}",
            "grid.headline.configs=[31,63]",
            f"grid.headline.replicates={r}",
            f"grid.baselines.methods=[{cfg.needs.rival}]",
            "grid.baselines.config=63",
            *threads,
        ],
    )


def count_splits(ccfg: Config, c: Count) -> Path:
    """The count's splits, drawn first as `prepare` draws them. Raises DataError naming the count
    when the source holds too few minority images for it."""
    have = all(
        (c.splits / d.name / str(r) / "split.json").is_file()
        for d in ccfg.datasets
        for r in range(ccfg.needs.replicates)
    )
    if not c.reference and not have:
        for ds in ccfg.datasets:
            try:
                prepare_dataset(
                    ds, ccfg.split, c.splits, progress=sys.stderr.isatty(), replicates=ccfg.needs.replicates
                )
            except DataError as exc:
                raise DataError(f"needs: {c.n} minority images: {exc}") from None
    return c.splits


def train_count(ccfg: Config, paths: grid.GridPaths, tracker: Tracker = MLFLOW) -> int:
    """One count's cells through the grid's core (stage `needs`, one process); its exit code."""
    return grid.run(ccfg, paths, tracker, stage="needs", workers=1, log=lambda m: print(m, flush=True)).code


def train_counts(calls: list[tuple[Config, grid.GridPaths]], tracker: Tracker = MLFLOW) -> list[int]:
    """Several counts one after another in one process (one start-up for all): their exit codes."""
    return [train_count(ccfg, paths, tracker) for ccfg, paths in calls]


def deal(seconds: list[float], n: int) -> list[list[int]]:
    """The counts' indices dealt to `n` processes by their projected seconds, the costliest first to
    the least loaded (every process computes the same deal); empty groups left out."""
    loads: list[float] = [0.0] * n
    groups: list[list[int]] = [[] for _ in range(n)]
    for i in sorted(range(len(seconds)), key=lambda i: (-seconds[i], i)):
        k = min(range(n), key=lambda j: (loads[j], j))
        groups[k].append(i)
        loads[k] += seconds[i]
    return [sorted(g) for g in groups if g]


def run_counts(cfg: Config, plan: list[Count], out: Path, tracker: Tracker = MLFLOW, log=print) -> pd.DataFrame:
    """Every count's cells, dealt by price to `needs.workers` worker processes (each runs its counts one
    after another) when the tracker is shared; their grid.csv rows with the count `n`. Raises
    CountFailed naming the counts that did not finish."""
    n_proc = cfg.needs.workers if tracker.shared else 1
    calls = []
    for c in plan:
        ccfg = count_config(cfg, c.n, n_proc)
        calls.append((ccfg, grid.GridPaths(count_splits(ccfg, c), out / "counts" / f"minority-{c.n}")))
    priced = [grid.priced(ccfg, paths.splits, tracker, 1) for ccfg, paths in calls]
    groups = deal([float(p.seconds or 0.0) for p in priced], n_proc)
    startup = cfg.cost.level_startup if cfg.cost is not None else 0.0
    secs = (
        None
        if any(p.seconds is None for p in priced)
        else max(sum(float(priced[i].seconds or 0.0) for i in g) + startup for g in groups)
    )
    todo = sum(p.todo for p in priced)
    log(
        projection_line(
            "needs", secs, f"{todo} cells to train over {len(plan)} minority counts, {len(groups)} process(es)"
        )
    )
    batches = [[calls[i] for i in g] for g in groups]
    if len(batches) > 1:
        results = workers.map_processes(train_counts, [(b,) for b in batches], len(batches))
    else:
        results = [train_counts(b, tracker) for b in batches]
    failed = [plan[i].n for g, codes in zip(groups, results) for i, code in zip(g, codes) if code]
    if failed:
        raise CountFailed(
            f"{', '.join(map(str, failed))} minority images: a cell failed or an input is missing (rerun to retry)"
        )
    frames = [
        pd.read_csv(paths.results / "grid.csv").assign(n=c.n, reference=c.reference)
        for c, (_, paths) in zip(plan, calls)
    ]
    return pd.concat(frames, ignore_index=True)


def _predictions(tracker: Tracker, run_id: str, name: str) -> pd.DataFrame | None:
    text = tracker.artifact_text(run_id, f"predictions/{name}.csv")
    return pd.read_csv(_io.StringIO(text)) if text else None


def scored(cells: pd.DataFrame, prevalence: float, rival: str, tracker: Tracker = MLFLOW) -> pd.DataFrame:
    """One row per cell: method, n, replicate, `f1` (minority F1 at `prevalence`, at the cut its own
    validation predictions choose for it), `auroc` (test), and its run id. Cells without predictions
    are left out."""
    rows = []
    for r in cells.to_dict("records"):
        base = "" if pd.isna(r.get("baseline")) else str(r.get("baseline") or "")
        if base not in ("", rival) or (base == "" and int(r["config_id"]) not in METHODS):
            continue
        val, test = (
            _predictions(tracker, r["run_id"], "val_predictions"),
            _predictions(tracker, r["run_id"], "test_predictions"),
        )
        if val is None or test is None:
            continue
        cut = decision.at_prevalence(decision.operating_curve(val["label"], val["p1_last"]), prevalence)["threshold"]
        y, p = test["label"].to_numpy(int), test["p1_last"].to_numpy(float)
        flagged = p >= cut
        tpr, fpr = float(flagged[y == 1].mean()), float(flagged[y == 0].mean())
        method = f"{rival} (on 63)" if base else METHODS[int(r["config_id"])]
        rows.append(
            {
                "method": method,
                "n": int(r["n"]),
                "replicate": int(r["replicate"]),
                "f1": float(decision.f1_at(tpr, fpr, prevalence)),
                "tpr": tpr,
                "fpr": fpr,
                "auroc": float(roc_auc_score(y, p)),
                "run_id": r["run_id"],
            }
        )
    return pd.DataFrame(rows, columns=["method", "n", "replicate", "f1", "tpr", "fpr", "auroc", "run_id"])


def answer(table: pd.DataFrame, cfg: Config) -> dict:
    """The learning curves, the images needed per method, where the BN stops mattering, the sentence."""
    nd = cfg.needs
    out: dict = {"target_f1": nd.target_f1, "prevalence": nd.prevalence, "curves": {}, "needed": {}}
    for method in dict.fromkeys(table["method"]):
        try:
            need = learning.n_needed(table, method, nd.target_f1, n_boot=nd.bootstrap, seed=nd.seed)
        except (ValueError, RuntimeError) as exc:
            out["needed"][method] = {"error": str(exc)}
            continue
        curve = need.pop("curve")
        out["curves"][method] = {**curve.params, "asymptote": curve.asymptote}
        out["needed"][method] = need
    matters = learning.bn_matters_until(table, a=METHODS[BN_ID], b=METHODS[NONE_ID], metric="f1")
    out["bn_matters"] = {k: v for k, v in matters.items() if k != "rows"}
    out["bn_matters_rows"] = matters["rows"].to_dict("records")
    need_bn = out["needed"].get(METHODS[BN_ID], {})
    out["sentence"] = (
        learning.sentence(nd.target_f1, nd.prevalence, need_bn, matters, "the final BN")
        if "error" not in need_bn and need_bn
        else f"The final BN's learning curve could not be fitted: {need_bn.get('error', 'no cells')}."
    )
    return out


def record(tracker: Tracker, cfg: Config, result: dict, figure: Figure) -> str:
    """One run in the `needs` experiment: the answer as needs.json, its numbers as metrics, the figure."""
    tracker.setup(cfg, "needs")
    with tracker.cell_run("data needs", {records.NEEDS: "true"}) as run:
        run.log_params({"target_f1": cfg.needs.target_f1, "prevalence": cfg.needs.prevalence, "rival": cfg.needs.rival})
        need = result["needed"].get(METHODS[BN_ID], {})
        metrics = {
            f"n_needed_{k}": float(need[k]) for k in ("n", "ci_low", "ci_high") if np.isfinite(need.get(k, np.nan))
        }
        run.log_metrics(metrics)
        run.log_files({"needs.json": json.dumps(io.json_safe(result), indent=2)})
        run.log_figure(figure, "needs.png")
        return run.run_id


@dataclasses.dataclass(frozen=True)
class NeedsPaths:
    splits: Path
    out: Path


def run(cfg: Config, paths: NeedsPaths, tracker: Tracker = MLFLOW, log=print) -> dict:
    """The stage's core: every count's cells, scored, fitted, written and recorded; needs.json's content.
    Raises CountFailed or DataError naming the count."""
    out = paths.out
    out.mkdir(parents=True, exist_ok=True)
    plan = counts(cfg, paths.splits, out)
    log(
        f"needs: minority counts {', '.join(str(c.n) for c in plan)} with {cfg.split.train[0]} healthy; final BN, "
        f"none and {cfg.needs.rival} on {cfg.needs.replicates} replicates each"
    )
    cells = run_counts(cfg, plan, out, tracker, log)
    table = scored(cells, cfg.needs.prevalence, cfg.needs.rival, tracker)
    write_csv(out / "needs.csv", table)
    result = answer(table, cfg)
    grid_n = np.geomspace(1, max(cfg.needs.counts) * 4, 60)
    curve_rows = [
        {"method": m, "n": float(n), "f1": float((1 - c["a"]) - c["b"] * n ** (-c["c"]))}
        for m, c in result["curves"].items()
        for n in grid_n
    ]
    write_csv(out / "curve.csv", pd.DataFrame(curve_rows, columns=["method", "n", "f1"]))
    fig = fig_needs(table, pd.DataFrame(curve_rows), result, out / "needs.png")
    result["mlflow_run_id"] = record(tracker, cfg, result, fig)
    plt.close(fig)
    io.write_json(out / "needs.json", io.json_safe(result))
    log(result["sentence"])
    return result


def main(cfg: Config, args: argparse.Namespace) -> int:
    """`finalbn needs`: the core (`run`) on the store."""
    tracking.detach_project_run()
    try:
        run(cfg, NeedsPaths(Path(args.splits), Path(args.out)), MLFLOW, log=lambda m: print(m, flush=True))
    except CountFailed as exc:
        print(f"finalbn needs: failed: {exc}", file=sys.stderr)
        return 1
    print(f"needs -> {args.out}/needs.json")
    return 0

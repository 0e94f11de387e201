"""The factorial grid: 2^6 configurations × replicates × datasets × archs, resumable and shardable.

    finalbn grid                    # every cell, in this process
    finalbn grid --workers 2        # two local shard processes sharing the tracking store
    finalbn grid --shard 3/8        # one deterministic eighth (one GPU, a Kubernetes Indexed Job, a Slurm array)

Cells: every configuration of `grid.configs` on replicates 0..grid.replicates-1, plus the
headline configurations (the paper's contrasts 31, 63, 47, 15) on replicates
0..grid.headline.replicates-1, plus the imbalance baselines (`grid.baselines`: focal loss,
logit-adjusted loss, class-balanced weights, temperature scaling), each on its base configuration
(63 by default) on the headline replicates. A replicate is one split draw and one training seed.

Each cell is one MLflow run, nested under a parent run per (dataset, arch, configuration) that
carries the mean and std of its replicates. A cell's key hashes everything that changes its
result (dataset and the replicate's manifest hash, arch, configuration, seed, the weights file,
the model and training params, and the source of the modules that compute a cell), so a rerun
skips cells with a FINISHED run for their key, a code change re-runs them, and a cell left
RUNNING by a killed process is marked KILLED and redone.

Shards split the grid into *units* that never straddle two shards: with UF off a whole *family*
— (dataset, arch, UF, DA, MX) — whose cells see the same backbone inputs (cells differing only in
the head-side toggles BN, WL, WD, or in a baseline's loss, at one replicate, DA and MX feed the
frozen backbone the same images); with UF on (nothing to share) one configuration. Either way a
parent run and all of its replicates live in one shard (workers never race to create a parent).
Units are dealt to shards by their estimated cost, largest first (a UF-on cell costs ~12 UF-off
ones), so that shards end together. Within a shard, cells run in `share_order` — family,
replicate, configuration — so a share group runs back to back on the frozen body's features
computed once (`finalbn.features`).

"Best configuration" in grid.json is ranked on validation (mean validation AUROC at the last
epoch); test values are only reported beside it.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from finalbn.cells import cell_seed, weights_path
from finalbn.config import (
    BASELINE_METHODS,
    TOGGLES,
    Config,
    ablation_from_id,
    config_id,
    config_name,
    flatten,
    parse_configs,
    to_dict,
)
from finalbn.splits import sha256_file, split_dir

# train.* keys that do not change what a cell computes (where and how fast it runs); the seed
# enters the key as the cell's own seed (train.seed + replicate)
_NOT_RESULT = {"train.seed", "train.device", "train.num_workers", "train.threads", "train.log_model",
               "train.share_features"}
# The modules whose code computes a cell's numbers: their source is part of every cell key.
RESULT_MODULES = ("cells", "data", "engine", "features", "images", "metrics", "models", "seeds", "tracking")
METRIC_COLUMNS = ("precision_0", "recall_0", "f1_0", "precision_1", "recall_1", "f1_1", "accuracy",
                  "balanced_accuracy", "auroc", "ap", "f1_1_pc", "balanced_accuracy_pc", "ece", "brier")


@dataclass(frozen=True)
class Cell:
    dataset: str
    arch: str
    config_id: int
    replicate: int
    baseline: str = ""  # an imbalance baseline (BASELINE_METHODS) on this configuration; "" = the paper's cell

    @property
    def family(self) -> tuple:
        ab = ablation_from_id(self.config_id)
        return (self.dataset, self.arch, ab.uf, ab.da, ab.mx)

    @property
    def label(self) -> str:
        """The configuration's name, with its baseline: `none + focal`."""
        name = config_name(ablation_from_id(self.config_id))
        return f"{name} + {self.baseline}" if self.baseline else name


def all_cells(cfg: Config) -> list[Cell]:
    """Every configuration on `grid.replicates` replicates, the headline ones on more, and the
    baselines on the headline replicates (none without headline configurations)."""
    g = cfg.grid
    wanted = {(cid, r, "") for cid in parse_configs(g.configs) for r in range(g.replicates)}
    if g.headline.configs:
        wanted |= {(cid, r, "") for cid in parse_configs(g.headline.configs) for r in range(g.headline.replicates)}
        base = parse_configs([g.baselines.config])[0]
        wanted |= {(base, r, m) for m in g.baselines.methods for r in range(g.headline.replicates)}
    return [Cell(d.name, arch, cid, r, m) for d in cfg.datasets for arch in g.archs for cid, r, m in sorted(wanted)]


UF_ON_COST = 12.0  # a UF-on cell's time in UF-off (shared-features) cells, as measured on CPU (48 s vs 4 s)


def _unit(cell: Cell) -> tuple:
    """What one shard must own whole: a family with UF off (its cells share features), one
    configuration (with its replicates and parent) with UF on."""
    return cell.family if not cell.family[2] else (*cell.family, cell.config_id, cell.baseline)


def shard_cells(cells: Sequence[Cell], index: int, count: int) -> list[Cell]:
    """The cells of shard `index` of `count`: whole units, each to the least loaded shard, the
    costliest first (ties by the unit's sorted order: every process computes the same deal)."""
    units: dict[tuple, float] = {}
    for c in cells:
        units[_unit(c)] = units.get(_unit(c), 0.0) + (UF_ON_COST if c.family[2] else 1.0)
    load, owner = [0.0] * count, {}
    for u in sorted(units, key=lambda u: (-units[u], repr(u))):
        i = min(range(count), key=lambda k: (load[k], k))
        owner[u] = i
        load[i] += units[u]
    return [c for c in cells if owner[_unit(c)] == index]


def cell_config(cfg: Config, cell: Cell) -> Config:
    train = dataclasses.replace(cfg.train, **BASELINE_METHODS[cell.baseline]) if cell.baseline else cfg.train
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, arch=cell.arch),
                               ablation=ablation_from_id(cell.config_id), train=train)


def code_version() -> str:
    """Hash of the source of RESULT_MODULES: a change there changes every cell key."""
    h = hashlib.sha256()
    here = Path(__file__).resolve().parent
    for name in RESULT_MODULES:
        h.update(name.encode())
        h.update(_file_hash(str(here / f"{name}.py"), (here / f"{name}.py").stat().st_mtime_ns).encode())
    return h.hexdigest()[:16]


def cell_key(cfg: Config, cell: Cell, splits_dir: Path, with_replicate: bool = True) -> str:
    """Hash of everything that changes a cell's result (without the replicate: its parent's key)."""
    return result_key(cell_config(cfg, cell), cell.dataset, cell.replicate if with_replicate else None, splits_dir)


def result_key(cfg: Config, dataset: str, replicate: int | None, splits_dir: Path) -> str:
    """Hash of everything that changes the result of training `cfg` on one replicate (None: the
    key shared by all replicates): the split's manifest hash, the switches, the model and training
    params, the seed, the weights file and the code of RESULT_MODULES. The grid's cells and the
    search's runs use the same key, so a configuration computed once is found by either."""
    rep = replicate if replicate is not None else 0
    split = json.loads((split_dir(splits_dir, dataset, rep) / "split.json").read_text())
    w = weights_path(cfg)
    flat = flatten(to_dict(cfg))
    payload = {
        "dataset": dataset, "manifest": split["manifest_sha256"], "image_size": cfg.dataset(dataset).image_size,
        "arch": cfg.model.arch, "config": config_id(cfg.ablation),
        "replicate": replicate, "seed": cell_seed(cfg, replicate) if replicate is not None else None,
        "weights": _file_hash(w, Path(w).stat().st_mtime_ns) if Path(w).is_file() else w,
        "params": {k: v for k, v in flat.items() if k.split(".")[0] in ("model", "train") and k not in _NOT_RESULT},
        "code": code_version(),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:32]


@functools.lru_cache(maxsize=8)
def _file_hash(path: str, mtime_ns: int) -> str:
    return sha256_file(path)


def share_order(cells: Sequence[Cell]) -> list[Cell]:
    """Cells in the order that lets UF-off cells share the frozen body's features: by family
    (dataset, arch, UF, DA, MX), then replicate, then configuration — the cells of one share group
    run one after another, while their features are in memory."""
    return sorted(cells, key=lambda c: (c.family, c.replicate, c.config_id, c.baseline))


def run_shard(cfg: Config, splits_dir: Path, index: int = 0, count: int = 1,
              log: Callable[[str], None] = print) -> dict:
    """Run this shard's unfinished cells; returns {"ran", "skipped", "failed": [...], "seconds": {...}}."""
    from finalbn.engine import TrainingDiverged
    from finalbn import tracking

    tracking.setup(cfg)
    cells = share_order(shard_cells(all_cells(cfg), index, count))
    existing = tracking.cell_runs_by_key(cfg.tracking.experiment)
    stats: dict = {"ran": 0, "skipped": 0, "failed": [], "seconds": {"uf_off": 0.0, "uf_on": 0.0},
                   "cells": {"uf_off": 0, "uf_on": 0}, "log": []}
    parents: dict[tuple, str | None] = {}  # (dataset, arch, config) -> parent run id, once created
    touched: set[tuple] = set()
    for done, cell in enumerate(cells, start=1):
        pid = (cell.dataset, cell.arch, cell.config_id, cell.baseline)
        key = cell_key(cfg, cell, splits_dir)
        runs = existing.get(key, [])
        if any(r.info.status == "FINISHED" for r in runs):
            stats["skipped"] += 1
            continue
        for r in runs:
            if r.info.status == "RUNNING":  # its process died: this shard alone owns the cell
                tracking.mark_killed(r.info.run_id)
        pkey = cell_key(cfg, cell, splits_dir, with_replicate=False)
        if parents.get(pid) is None:
            parents[pid] = tracking.grid_parent(cfg, cell.dataset, cell.arch, cell.config_id, pkey, cell.baseline)
        ccfg = cell_config(cfg, cell)
        name = f"{cell.dataset} {cell.arch} {cell.label} r{cell.replicate}"
        t0 = time.perf_counter()
        tags = {"cell_key": key, "parent_key": pkey, **({"baseline": cell.baseline} if cell.baseline else {})}
        try:
            _, result = tracking.track_cell(ccfg, cell.dataset, splits_dir, run_name=name, parent_run_id=parents[pid],
                                            extra_tags=tags, replicate=cell.replicate)
        except TrainingDiverged as exc:
            stats["failed"].append({"cell": name, "error": str(exc)})
            log(f"[shard {index}/{count}] cell {done}/{len(cells)} {name}: FAILED: {exc}")
            continue
        seconds = time.perf_counter() - t0
        kind = "uf_on" if ccfg.ablation.uf else "uf_off"
        stats["seconds"][kind] += seconds
        stats["cells"][kind] += 1
        stats["ran"] += 1
        stats["log"].append({"cell": name, "seconds": seconds, "features": result.info["features"],
                             "body_images": result.info["body_images"]})
        touched.add(pid)
        m = result.test_last
        log(f"[shard {index}/{count}] cell {done}/{len(cells)} {name} (config {cell.config_id}): test minority F1 "
            f"{m['f1_1']:.3f}, AUROC {m['auroc']:.3f} (last epoch; selected epoch {result.fit.selected_epoch}), "
            f"{seconds:.1f} s, {result.info['features']} features")
    # parents: mean/std over their replicates, after all of this shard's cells ran (a parent's
    # cells all live in one shard); also those a killed run left open
    closed: set[tuple] = set()
    for cell in cells:
        pid = (cell.dataset, cell.arch, cell.config_id, cell.baseline)
        if pid in closed:
            continue
        closed.add(pid)
        pkey = cell_key(cfg, cell, splits_dir, with_replicate=False)
        if pid in touched or not tracking.parent_finished(cfg, pkey):
            tracking.finish_parent(cfg, cell.dataset, cell.arch, cell.config_id, pkey, parents.get(pid), cell.baseline)
    return stats


def worker_env(index: int, environ: Mapping[str, str], gpus: int | None = None) -> dict[str, str]:
    """The environment of local worker `index`: with several GPUs, one GPU per worker, round-robin
    (`CUDA_VISIBLE_DEVICES`); with one GPU all workers share it (several cells at once fill it)."""
    env = dict(environ)
    if gpus is None:
        import torch

        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if gpus > 1 and "CUDA_VISIBLE_DEVICES" not in environ:
        env["CUDA_VISIBLE_DEVICES"] = str(index % gpus)
    return env


def run_workers(cfg: Config, argv_base: Sequence[str], workers: int) -> int:
    """Start `workers` local `finalbn grid --shard i/N` processes; returns the worst exit code."""
    from finalbn import tracking

    tracking.setup(cfg)  # create the store and experiment once, before any worker touches it
    threads = cfg.train.threads or max(1, (os.cpu_count() or 1) // workers)
    procs = [subprocess.Popen([sys.executable, "-m", "finalbn", "grid", *argv_base, "--shard", f"{i}/{workers}",
                               "--set", f"train.threads={threads}"], env=worker_env(i, os.environ))
             for i in range(workers)]
    try:
        codes = [p.wait() for p in procs]
    except KeyboardInterrupt:
        for p in procs:
            p.send_signal(signal.SIGINT)
        for p in procs:
            p.wait()
        raise
    return max(codes)


def write_results(cfg: Config, splits_dir: Path, out_dir: Path) -> dict:
    """results/grid.csv (one row per cell of this grid) and grid.json, from the tracking store."""
    import pandas as pd

    from finalbn import tracking

    tracking.setup(cfg)
    existing = tracking.cell_runs_by_key(cfg.tracking.experiment)
    rows, missing = [], []
    for cell in all_cells(cfg):
        key = cell_key(cfg, cell, splits_dir)
        finished = [r for r in existing.get(key, []) if r.info.status == "FINISHED"]
        ab = ablation_from_id(cell.config_id)
        if not finished:
            missing.append(f"{cell.dataset} {cell.arch} {cell.label} r{cell.replicate}")
            continue
        run = max(finished, key=lambda r: r.info.end_time or 0)
        m = run.data.metrics
        rows.append({"dataset": cell.dataset, "arch": cell.arch, "config_id": cell.config_id,
                     "config_name": config_name(ab), "baseline": cell.baseline, "replicate": cell.replicate,
                     **{t.upper(): int(getattr(ab, t)) for t in TOGGLES},
                     **{f"test_{k}": m.get(f"test_{k}") for k in METRIC_COLUMNS},
                     **{f"val_{k}": m.get(f"val_last_{k}") for k in ("auroc", "ap", "f1_1", "f1_1_pc")},
                     **{f"test_sel_{k}": m.get(f"test_sel_{k}") for k in ("f1_1", "auroc")},
                     "selected_epoch": int(m.get("selected_epoch", 0)), "run_id": run.info.run_id, "cell_key": key})
    out_dir.mkdir(parents=True, exist_ok=True)
    df = pd.DataFrame(rows)
    df.to_csv(out_dir / "grid.csv", index=False, float_format="%.6f")
    summary = {"cells": len(rows) + len(missing), "finished": len(rows), "missing": missing}
    if rows:
        f1 = paper_cells(df).groupby("BN")["test_f1_1"].mean()
        ranked = rank_configs(df)
        best, worst = ranked.iloc[0], ranked.iloc[-1]
        summary.update({
            "minority_f1_mean": {"bn_on": _num(f1.get(1)), "bn_off": _num(f1.get(0))},
            "best_config": _config_summary(best), "worst_config": _config_summary(worst),
            "ranked_on": "mean validation AUROC at the last epoch (test values reported only)",
        })
    (out_dir / "grid.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def paper_cells(df):
    """The rows of grid.csv that are the paper's configurations (not an imbalance baseline)."""
    return df[df["baseline"].fillna("").astype(str) == ""] if "baseline" in df else df


def rank_configs(df):
    """The paper's configurations by mean validation AUROC (last epoch), ties to validation F1
    then id; test columns ride along and never decide the order. Baseline rows are not ranked."""
    g = paper_cells(df).groupby(["config_id", "config_name"])
    agg = g[["val_auroc", "val_f1_1", "test_f1_1", "test_auroc"]].mean()
    agg["replicates"] = g.size()
    agg = agg.reset_index()
    agg["neg_id"] = -agg["config_id"]
    agg = agg.sort_values(["val_auroc", "val_f1_1", "neg_id"], ascending=False, na_position="last")
    return agg.drop(columns="neg_id").reset_index(drop=True)


def _config_summary(r) -> dict:
    return {"id": int(r["config_id"]), "name": r["config_name"], "val_auroc": _num(r["val_auroc"]),
            "val_minority_f1": _num(r["val_f1_1"]), "test_minority_f1": _num(r["test_f1_1"]),
            "test_auroc": _num(r["test_auroc"]), "replicates": int(r["replicates"])}


def _num(x) -> float | None:
    return None if x is None or not np.isfinite(x) else round(float(x), 6)

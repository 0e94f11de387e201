"""The study's report: tracked cell runs in, the paper's tables and figures plus effect sizes out.

    data = collect("finalbn")                      # FINISHED cell runs of the experiment
    summary = build_report(data, Path("reports"))  # report.md, CSVs, PNGs, summary.json
    run_id = log_report(Path("reports"), "finalbn")

Which numbers: every table uses the test metrics at the *best* epoch (`test_best_*`), the epoch
chosen on the validation set (highest validation minority F1, ties to the lower validation loss)
— the paper reports the best epoch in Table II. A number "per configuration" is the mean over
seeds of one (dataset, arch, configuration). Configuration ids follow `finalbn.cells`: the index
of the six switches BN WL DA MX UF WD in `itertools.product([True, False], repeat=6)`, so
31 = BN only, 47 = WL only, 63 = none.

Beyond the paper, `effects.csv` gives the main effect of each switch on minority F1 from *paired*
cells (same dataset, arch, seed and the other five switches; only that switch differs), with a
bootstrap 95 % CI of the mean paired difference and a two-sided Wilcoxon signed-rank p-value,
and the BN x X interactions. The verdict line is read off the BN main effect: it helps when the
CI lies above 0, hurts when it lies below 0, and otherwise there is no evidence either way.

A partial grid (some configurations, one seed, no artifacts) does not crash the report: a piece
that cannot be computed is replaced by a note in report.md, its CSV is written with its header
only and its PNG as a placeholder that says why, so every output path always exists (DVC outs).
"""
from __future__ import annotations

import json
import math
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from finalbn import plots  # noqa: F401  (selects the Agg backend before pyplot is imported)

import matplotlib.pyplot as plt  # noqa: E402

from finalbn.config import TOGGLES, AblationConfig, ablation_from_id, config_id, config_name  # noqa: E402
METRICS = ("accuracy", "precision_0", "recall_0", "f1_0", "support_0", "precision_1", "recall_1", "f1_1",
           "support_1", "f1_macro", "ece", "brier", "nll", "minority_f1")
HISTORY_KEYS = ("train_loss", "val_loss", "val_accuracy", "val_minority_f1", "lr")
NONE_ID, WL_ID, BN_ID = 63, 47, 31  # nothing, WL only, BN only
F1_1, F1_0 = "test_best_f1_1", "test_best_f1_0"  # minority (diseased) and majority (healthy) F1
ZERO_TOL = 1e-12  # |paired difference| below this is float noise of logged metrics, i.e. zero
FILES = ("report.md", "summary.json", "cells.csv", "table1.csv", "table2.csv", "table3.csv", "table4.csv",
         "fig3_loss_curves.csv", "fig3_loss_curves.png", "fig4_softmax.png", "calibration.csv",
         "reliability.png", "effects.csv", "effects.png")

__all__ = ["CellData", "FILES", "build_report", "collect", "config_id_of", "effect_stats", "log_report",
           "paired_differences", "interaction_differences", "table1", "table2", "table3", "table4", "verdict"]

def config_id_of(toggles: dict[str, bool]) -> int:
    """The paper's id of a switch combination (see `finalbn.config.config_id`)."""
    return config_id(AblationConfig(**{t: bool(toggles[t]) for t in TOGGLES}))


def toggles_of(cid: int) -> dict[str, bool]:
    ab = ablation_from_id(int(cid))
    return {t: getattr(ab, t) for t in TOGGLES}


def config_name_of(toggles: dict[str, bool]) -> str:
    return config_name(AblationConfig(**{t: bool(toggles[t]) for t in TOGGLES}))


def _empty_message(experiment: str) -> str:
    return f"no finished cell runs in experiment {experiment}: run `finalbn grid` first"


# --------------------------------------------------------------------------- data


class _MlflowLoader:
    """Fetches a run's per-epoch history and artifacts on demand (one run at a time)."""

    def __init__(self, client: Any):
        self.client = client

    def history(self, run_id: str) -> pd.DataFrame | None:
        by_epoch: dict[int, dict[str, float]] = {}
        for key in HISTORY_KEYS:
            # sorted by timestamp so that a value logged twice for one epoch keeps the later one
            for m in sorted(self.client.get_metric_history(run_id, key), key=lambda m: m.timestamp):
                by_epoch.setdefault(int(m.step), {})[key] = float(m.value)
        if by_epoch:
            df = pd.DataFrame([{"epoch": e, **v} for e, v in sorted(by_epoch.items())])
            return df
        text = self._text(run_id, "history.csv")  # runs whose metric history was not kept
        if text is None or not text.strip():
            return None
        import io

        return pd.read_csv(io.StringIO(text))

    def predictions(self, run_id: str) -> pd.DataFrame | None:
        text = self._text(run_id, "predictions/test_predictions.csv")
        if text is None or not text.strip():
            return None
        import io

        return pd.read_csv(io.StringIO(text))

    def reliability(self, run_id: str) -> dict | None:
        text = self._text(run_id, "reliability.json")
        return None if text is None else json.loads(text)

    def _text(self, run_id: str, path: str) -> str | None:
        with tempfile.TemporaryDirectory() as tmp:
            try:
                local = self.client.download_artifacts(run_id, path, tmp)
            except Exception:  # a missing artifact raises MlflowException or OSError depending on the store
                return None
            p = Path(local)
            return p.read_text(encoding="utf-8") if p.is_file() else None


@dataclass
class CellData:
    """Cell runs of one experiment: one row per run in `cells`, and per-run extras.

    `histories`, `predictions` and `reliability` (run_id -> DataFrame / DataFrame / the
    reliability.json dict) may be filled by hand; after `collect` they fill lazily through
    `history()`, `prediction()` and `reliability_bins()`, so only the runs a report needs
    (configs 31, 47, 63) are ever downloaded.
    """

    cells: pd.DataFrame
    histories: dict[str, pd.DataFrame] = field(default_factory=dict)
    predictions: dict[str, pd.DataFrame] = field(default_factory=dict)
    reliability: dict[str, dict] = field(default_factory=dict)
    experiment: str = ""
    notes: list[str] = field(default_factory=list)
    loader: _MlflowLoader | None = field(default=None, repr=False)
    _missing: set[tuple[str, str]] = field(default_factory=set, repr=False)

    def _get(self, kind: str, store: dict, run_id: str):
        if run_id not in store and self.loader is not None and (kind, run_id) not in self._missing:
            value = getattr(self.loader, kind)(run_id)
            if value is None:
                self._missing.add((kind, run_id))  # do not ask the store again
            else:
                store[run_id] = value
        return store.get(run_id)

    def history(self, run_id: str) -> pd.DataFrame | None:
        return self._get("history", self.histories, run_id)

    def prediction(self, run_id: str) -> pd.DataFrame | None:
        return self._get("predictions", self.predictions, run_id)

    def reliability_bins(self, run_id: str) -> dict | None:
        return self._get("reliability", self.reliability, run_id)


def _default_uri() -> str:
    from finalbn.tracking import tracking_uri  # imported here: finalbn.tracking pulls in torch

    return tracking_uri()


def _parse_bool(value: Any) -> bool | None:
    s = str(value).strip().lower()
    return True if s in ("true", "1", "yes") else False if s in ("false", "0", "no") else None


def _parse_int(value: Any) -> int | None:
    try:
        return int(float(value))
    except (TypeError, ValueError):
        return None


def _run_row(run: Any) -> dict | None:
    """One cells row from an MLflow run, or None when its configuration cannot be told."""
    tags, metrics = run.data.tags, run.data.metrics
    flags = {t: _parse_bool(tags.get(t.upper())) for t in TOGGLES}
    if all(v is not None for v in flags.values()):
        toggles = flags  # the switches are the truth; the id is derived from them
    else:
        cid = _parse_int(tags.get("config_id"))
        if cid is None or not 0 <= cid < 64:
            return None
        toggles = toggles_of(cid)
    best = metrics.get("best_epoch")
    best = _parse_int(tags.get("best_epoch")) if best is None else int(best)
    row = {"run_id": run.info.run_id, "dataset": tags.get("dataset", "?"), "arch": tags.get("arch", "?"),
           "seed": _parse_int(tags.get("seed")) or 0, "config_id": config_id_of(toggles),
           "config_name": config_name_of(toggles), **toggles, "best_epoch": best,
           "start_time": run.info.start_time or 0}
    for k in METRICS:
        row[f"test_best_{k}"] = float(metrics.get(f"test_best_{k}", math.nan))
        row[f"test_{k}"] = float(metrics.get(f"test_{k}", math.nan))
    return row


def _filter_string(filter_tags: dict[str, str] | None) -> str:
    parts = ["tags.`finalbn.cell` = 'true'", "attributes.status = 'FINISHED'"]
    for k, v in (filter_tags or {}).items():
        if "`" in k or "'" in str(v):
            raise ValueError(f"filter tag {k}={v!r}: backticks in keys and quotes in values are not supported")
        parts.append(f"tags.`{k}` = '{v}'")
    return " and ".join(parts)


def collect(experiment: str, tracking_uri: str | None = None,
            filter_tags: dict[str, str] | None = None) -> CellData:
    """FINISHED runs tagged `finalbn.cell=true` (and every `filter_tags` tag) of `experiment`.

    `tracking_uri` defaults to `finalbn.tracking.tracking_uri()`. Raises ValueError when there is
    no such run. Histories and artifacts are not fetched here but on first use (see CellData).
    """
    from mlflow import MlflowClient
    from mlflow.entities import ViewType

    uri = tracking_uri or _default_uri()
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise ValueError(_empty_message(experiment) + f" (no such experiment in {uri})")
    flt, runs, token = _filter_string(filter_tags), [], None
    while True:
        page = client.search_runs([exp.experiment_id], flt, run_view_type=ViewType.ACTIVE_ONLY,
                                  max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            break
    # the filter already says so; checked again so a store with looser filtering cannot leak runs in
    runs = [r for r in runs if r.info.status == "FINISHED" and r.data.tags.get("finalbn.cell") == "true"
            and all(r.data.tags.get(k) == str(v) for k, v in (filter_tags or {}).items())]
    rows = [row for row in map(_run_row, runs) if row is not None]
    notes = []
    if len(rows) < len(runs):
        notes.append(f"{len(runs) - len(rows)} cell run(s) without BN..WD / config_id tags were left out")
    if not rows:
        raise ValueError(_empty_message(experiment))
    data = CellData(cells=pd.DataFrame(rows), experiment=experiment, notes=notes, loader=_MlflowLoader(client))
    data.cells, dropped = _prepare(data.cells, experiment)
    if dropped:
        data.notes.append(f"{dropped} older duplicate run(s) of the same cell were left out (latest kept)")
    return data


def _prepare(cells: pd.DataFrame, experiment: str = "") -> tuple[pd.DataFrame, int]:
    """Typed, complete columns and one row per cell (the latest run when a cell ran twice)."""
    if cells is None or len(cells) == 0:
        raise ValueError(_empty_message(experiment or "?"))
    df = cells.copy()
    missing = [c for c in ("run_id", "dataset", "seed") if c not in df]
    if "config_id" not in df and not all(t in df for t in TOGGLES):
        missing.append("config_id (or the six toggles)")
    if missing:
        raise ValueError(f"cells lacks columns {missing}")
    if "arch" not in df:
        df["arch"] = "?"
    if not all(t in df for t in TOGGLES):
        flags = [toggles_of(c) for c in df["config_id"].astype(int)]
        for t in TOGGLES:
            df[t] = [f[t] for f in flags]
    for t in TOGGLES:
        df[t] = df[t].astype(bool)
    df["config_id"] = [config_id_of(r) for r in df[list(TOGGLES)].to_dict("records")]
    df["config_name"] = [config_name_of(r) for r in df[list(TOGGLES)].to_dict("records")]
    df["seed"] = df["seed"].astype(int)
    for col in ("dataset", "arch", "run_id"):
        df[col] = df[col].astype(str)
    epochs = pd.to_numeric(df["best_epoch"], errors="coerce") if "best_epoch" in df else pd.Series(math.nan, df.index)
    df["best_epoch"] = epochs.round().astype("Int64")
    for k in METRICS:
        for col in (f"test_best_{k}", f"test_{k}"):
            df[col] = pd.to_numeric(df[col], errors="coerce").astype(float) if col in df else math.nan
    if "start_time" in df:
        df = df.sort_values("start_time", kind="stable")
    before = len(df)
    df = df.drop_duplicates(["dataset", "arch", "seed", "config_id"], keep="last")
    df = df.sort_values(["dataset", "arch", "config_id", "seed"], kind="stable").reset_index(drop=True)
    return df, before - len(df)


# --------------------------------------------------------------------------- tables


def _pairs(cells: pd.DataFrame) -> list[tuple[str, str]]:
    return sorted(set(zip(cells["dataset"], cells["arch"])))


def table1(cells: pd.DataFrame) -> pd.DataFrame:
    """Paper Table I: mean F1 per class for none (63), WL only (47), BN only (31); BN - WL."""
    cols = ["dataset", "arch", "class", "without_final_bn", "with_wl_no_bn", "with_final_bn_no_wl",
            "bn_improvement", "seeds_63_47_31"]
    sub = cells[cells["config_id"].isin([NONE_ID, WL_ID, BN_ID])]
    means = sub.groupby(["dataset", "arch", "config_id"])[[F1_1, F1_0]].mean()
    sizes = sub.groupby(["dataset", "arch", "config_id"]).size()
    rows = []
    for ds, arch in _pairs(sub):
        def get(cid, col):
            return float(means.loc[(ds, arch, cid), col]) if (ds, arch, cid) in means.index else math.nan

        n = "/".join(str(int(sizes.get((ds, arch, c), 0))) for c in (NONE_ID, WL_ID, BN_ID))
        for label, col in (("unhealthy (1)", F1_1), ("healthy (0)", F1_0)):
            rows.append({"dataset": ds, "arch": arch, "class": label, "without_final_bn": get(NONE_ID, col),
                         "with_wl_no_bn": get(WL_ID, col), "with_final_bn_no_wl": get(BN_ID, col),
                         # as the paper's "BN total improvement": BN only minus WL only
                         "bn_improvement": get(BN_ID, col) - get(WL_ID, col), "seeds_63_47_31": n})
    return pd.DataFrame(rows, columns=cols)


def _config_means(sub: pd.DataFrame) -> pd.DataFrame:
    cols = [f"test_best_{k}" for k in ("precision_1", "recall_1", "f1_1", "precision_0", "recall_0", "f1_0")]
    g = sub.assign(best_epoch=sub["best_epoch"].astype(float)).groupby("config_id")
    out = g[cols + ["best_epoch"]].mean()
    out["seeds"] = g.size()
    return out


def table2(cells: pd.DataFrame, top: int = 3) -> pd.DataFrame:
    """Paper Table II: per dataset (and arch), the `top` configurations by mean minority F1."""
    cols = ["dataset", "arch", "class", "rank", "config_id", "config_name", "precision", "recall", "f1",
            "epoch", "seeds", *[t.upper() for t in TOGGLES]]
    rows = []
    for (ds, arch), sub in cells.groupby(["dataset", "arch"], sort=True):
        agg = _config_means(sub).reset_index()
        agg = agg[agg[F1_1].notna()].sort_values([F1_1, "config_id"], ascending=[False, True]).head(top)
        for cls, label in ((1, "unhealthy (1)"), (0, "healthy (0)")):
            for rank, r in enumerate(agg.itertuples(index=False), start=1):
                rd = r._asdict()
                flags = toggles_of(rd["config_id"])
                rows.append({"dataset": ds, "arch": arch, "class": label, "rank": rank,
                             "config_id": int(rd["config_id"]), "config_name": config_name_of(flags),
                             "precision": rd[f"test_best_precision_{cls}"], "recall": rd[f"test_best_recall_{cls}"],
                             "f1": rd[f"test_best_f1_{cls}"], "epoch": rd["best_epoch"], "seeds": int(rd["seeds"]),
                             **{t.upper(): flags[t] for t in TOGGLES}})
    return pd.DataFrame(rows, columns=cols)


def table3(cells: pd.DataFrame, k: int = 3) -> tuple[pd.DataFrame, list[str]]:
    """Paper Table III: per arch, the top and bottom `k` configurations by minority F1 averaged
    over datasets. Only configurations present in every dataset are ranked (an average over
    fewer datasets would not compare). Returns (table, notes)."""
    notes, frames = [], []
    for arch, sub in cells.groupby("arch", sort=True):
        datasets = sorted(sub["dataset"].unique())
        piv = sub.groupby(["config_id", "dataset"])[F1_1].mean().unstack("dataset").reindex(columns=datasets)
        complete = piv.dropna()
        if len(complete) < len(piv):
            notes.append(f"{arch}: {len(piv) - len(complete)} configuration(s) lack a minority F1 for some dataset "
                         "and are not ranked")
        if complete.empty:
            continue
        complete = complete.assign(average=complete.mean(axis=1)).reset_index()
        complete = complete.sort_values(["average", "config_id"], ascending=[False, True]).reset_index(drop=True)
        complete["rank"] = np.arange(1, len(complete) + 1)
        n_top = min(k, len(complete))
        n_bottom = min(k, len(complete) - n_top)  # a grid of < 2k configs: no config listed twice
        picked = pd.concat([complete.head(n_top).assign(group="top"),
                            complete.tail(n_bottom).assign(group="bottom") if n_bottom else None])
        for t in TOGGLES:
            picked[t.upper()] = [toggles_of(c)[t] for c in picked["config_id"]]
        picked["config_name"] = [config_name_of(toggles_of(c)) for c in picked["config_id"]]
        picked.insert(0, "arch", arch)
        frames.append(picked)
    if not frames:
        return pd.DataFrame(columns=["arch", "group", "rank", "config_id", "config_name", "average"]), notes
    out = pd.concat(frames, ignore_index=True)
    datasets = [c for c in out.columns if c not in {"arch", "config_id", "average", "rank", "group", "config_name",
                                                      *[t.upper() for t in TOGGLES]}]
    order = ["arch", "group", "rank", "config_id", "config_name", *datasets, "average", *[t.upper() for t in TOGGLES]]
    return out[order], notes


def _p1(df: pd.DataFrame) -> pd.Series:
    return df["p1_best"] if "p1_best" in df else df["p1_last"]


def _prediction_pairs(data: CellData, cells: pd.DataFrame) -> tuple[dict, list[str]]:
    """Per (dataset, arch): (seed, predictions without BN (63), with BN (31)) for the first seed
    that has both; notes for pairs that have none."""
    out, notes = {}, []
    for ds, arch in _pairs(cells):
        sub = cells[(cells["dataset"] == ds) & (cells["arch"] == arch)]
        ids = {cid: dict(zip(g["seed"], g["run_id"])) for cid, g in sub.groupby("config_id")}
        seeds = sorted(set(ids.get(NONE_ID, {})) & set(ids.get(BN_ID, {})))
        for s in seeds:
            p0, p1 = data.prediction(ids[NONE_ID][s]), data.prediction(ids[BN_ID][s])
            if p0 is not None and p1 is not None:
                out[(ds, arch)] = (s, p0, p1)
                break
        else:
            notes.append(f"{ds}/{arch}: no seed with test predictions for both config 63 and 31")
    return out, notes


def table4(pairs: dict, n: int = 5) -> pd.DataFrame:
    """Paper Table IV: P(class 1) of the `n` minority test images with the lowest P without final
    BN (config 63), next to the same images (joined on path) with final BN (31), first seed."""
    cols = ["dataset", "arch", "seed", "path", "label", "p1_without_final_bn", "p1_with_final_bn"]
    rows = []
    for (ds, arch), (seed, p63, p31) in sorted(pairs.items()):
        a = pd.DataFrame({"path": p63["path"].astype(str), "label": p63["label"].astype(int), "p0": _p1(p63)})
        b = pd.DataFrame({"path": p31["path"].astype(str), "label_b": p31["label"].astype(int), "p1": _p1(p31)})
        j = a.merge(b, on="path", how="inner")
        j = j[(j["label"] == 1) & (j["label_b"] == 1)].sort_values(["p0", "path"]).head(n)
        for r in j.itertuples(index=False):
            rows.append({"dataset": ds, "arch": arch, "seed": seed, "path": r.path, "label": 1,
                         "p1_without_final_bn": float(r.p0), "p1_with_final_bn": float(r.p1)})
    return pd.DataFrame(rows, columns=cols)


def loss_curve_table(data: CellData, cells: pd.DataFrame) -> pd.DataFrame:
    """Fig. 3 data: train/val loss per epoch, mean and std (ddof 1; 0 for one run) over seeds,
    for configs 63, 47 and 31 of every (dataset, arch)."""
    cols = ["dataset", "arch", "config_id", "config", "epoch", "train_loss_mean", "train_loss_std",
            "val_loss_mean", "val_loss_std", "runs"]
    frames = []
    for r in cells[cells["config_id"].isin([NONE_ID, WL_ID, BN_ID])].itertuples(index=False):
        h = data.history(r.run_id)
        if h is None or "epoch" not in h or h.empty:
            continue
        h = h.reindex(columns=["epoch", "train_loss", "val_loss"])
        frames.append(h.assign(dataset=r.dataset, arch=r.arch, config_id=r.config_id))
    if not frames:
        return pd.DataFrame(columns=cols)
    allh = pd.concat(frames, ignore_index=True)
    allh["epoch"] = allh["epoch"].astype(int)
    g = allh.groupby(["dataset", "arch", "config_id", "epoch"])
    out = g.agg(train_loss_mean=("train_loss", "mean"), train_loss_std=("train_loss", "std"),
                val_loss_mean=("val_loss", "mean"), val_loss_std=("val_loss", "std"),
                runs=("epoch", "size")).reset_index()
    out[["train_loss_std", "val_loss_std"]] = out[["train_loss_std", "val_loss_std"]].fillna(0.0)
    out["config"] = out["config_id"].map({NONE_ID: "without final BN", WL_ID: "with WL (no BN)",
                                          BN_ID: "with final BN (no WL)"})
    return out[cols]


# --------------------------------------------------------------------------- calibration


def calibration_table(cells: pd.DataFrame) -> pd.DataFrame:
    """ECE and Brier (best epoch) with and without final BN: over all cells, and 31 vs 63;
    pooled over datasets ("all") and per dataset."""
    rows = []
    scopes = [("all", cells)] + [(ds, g) for ds, g in cells.groupby("dataset", sort=True)]
    for scope, sub in scopes:
        for comparison, parts in (("all configs, BN on vs off", ((True, sub[sub["bn"]]), (False, sub[~sub["bn"]]))),
                                  ("config 31 vs 63", ((True, sub[sub["config_id"] == BN_ID]),
                                                       (False, sub[sub["config_id"] == NONE_ID])))):
            for bn, part in parts:
                rows.append({"dataset": scope, "comparison": comparison, "final_bn": bn, "cells": len(part),
                             "ece_mean": part["test_best_ece"].mean(), "ece_std": part["test_best_ece"].std(),
                             "brier_mean": part["test_best_brier"].mean(),
                             "brier_std": part["test_best_brier"].std()})
    return pd.DataFrame(rows)


def merge_bins(bin_sets: list[dict]) -> dict | None:
    """Reliability bins of several runs as one: counts add, accuracy and confidence count-weighted.
    All sets must share bin edges (None when the list is empty)."""
    if not bin_sets:
        return None
    first = bin_sets[0]
    n = len(first["lower"])
    count, acc, conf = np.zeros(n), np.zeros(n), np.zeros(n)
    for b in bin_sets:
        c = np.asarray(b["count"], dtype=float)
        count += c
        acc += c * np.asarray([0.0 if v is None else v for v in b["accuracy"]], dtype=float)
        conf += c * np.asarray([0.0 if v is None else v for v in b["confidence"]], dtype=float)
    return {"lower": list(first["lower"]), "upper": list(first["upper"]), "count": [int(c) for c in count],
            "accuracy": [float(a / c) if c else None for a, c in zip(acc, count)],
            "confidence": [float(f / c) if c else None for f, c in zip(conf, count)]}


def bins_ece(bins: dict) -> float:
    total = sum(bins["count"])
    if not total:
        return math.nan
    return float(sum(c / total * abs(a - f) for c, a, f in zip(bins["count"], bins["accuracy"], bins["confidence"])
                     if c))


def _pooled_bins(data: CellData, cells: pd.DataFrame, cid: int) -> tuple[dict | None, int, list[str]]:
    sets, notes = [], []
    for run_id in cells.loc[cells["config_id"] == cid, "run_id"]:
        rel = data.reliability_bins(run_id)
        b = (rel or {}).get("best")
        if not b:
            continue
        if sets and (list(b["lower"]) != list(sets[0]["lower"]) or list(b["upper"]) != list(sets[0]["upper"])):
            notes.append(f"run {run_id} (config {cid}) has other reliability bin edges and is left out")
            continue
        sets.append(b)
    return merge_bins(sets), len(sets), notes


# --------------------------------------------------------------------------- effects


def paired_differences(cells: pd.DataFrame, toggle: str, metric: str = F1_1) -> np.ndarray:
    """metric(toggle on) - metric(toggle off) for every pair of cells equal in everything else
    (dataset, arch, seed and the other five switches); cells without a partner are skipped."""
    keys = ["dataset", "arch", "seed", *[t for t in TOGGLES if t != toggle]]
    sub = cells.dropna(subset=[metric])
    if sub.empty:
        return np.array([])
    piv = sub.pivot_table(index=keys, columns=toggle, values=metric, aggfunc="mean")
    if True not in piv.columns or False not in piv.columns:
        return np.array([])
    return (piv[True] - piv[False]).dropna().to_numpy(dtype=float)


def interaction_differences(cells: pd.DataFrame, other: str, metric: str = F1_1) -> np.ndarray:
    """(BN effect with `other` on) - (BN effect with `other` off), per dataset, arch, seed and the
    remaining four switches; only complete 2x2 blocks count."""
    keys = ["dataset", "arch", "seed", *[t for t in TOGGLES if t not in ("bn", other)]]
    sub = cells.dropna(subset=[metric])
    if sub.empty:
        return np.array([])
    piv = sub.pivot_table(index=keys, columns=["bn", other], values=metric, aggfunc="mean")
    need = [(True, True), (False, True), (True, False), (False, False)]
    if not all(c in piv.columns for c in need):
        return np.array([])
    d = (piv[(True, True)] - piv[(False, True)]) - (piv[(True, False)] - piv[(False, False)])
    return d.dropna().to_numpy(dtype=float)


def effect_stats(d: np.ndarray, n_boot: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Mean paired difference, bootstrap 95 % CI (BCa, percentile when BCa degenerates), and the
    two-sided Wilcoxon signed-rank p (1.0 when every difference is 0)."""
    d = np.asarray(d, dtype=float)
    d = d[np.isfinite(d)]
    d = np.where(np.abs(d) < ZERO_TOL, 0.0, d)
    n = int(d.size)
    out: dict[str, Any] = {"n": n, "mean": math.nan, "ci_low": math.nan, "ci_high": math.nan, "p": math.nan,
                           "note": ""}
    if n == 0:
        out["note"] = "not enough cells"
        return out
    out["mean"] = float(d.mean())
    if n < 2:
        out["note"] = "one pair: no CI"
    elif np.ptp(d) <= ZERO_TOL:
        # every resample has the same mean: the CI collapses to it (bootstrap would return NaN)
        out["ci_low"] = out["ci_high"] = out["mean"]
        out["note"] = "all differences equal"
    else:
        out["ci_low"], out["ci_high"] = _bootstrap_ci(d, n_boot, seed)
    if not np.any(d):
        out["p"] = 1.0
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # small-sample and ties warnings: the p-value is still defined
            try:
                out["p"] = float(stats.wilcoxon(d, alternative="two-sided").pvalue)
            except ValueError:
                pass
    return out


def _bootstrap_ci(d: np.ndarray, n_boot: int, seed: int) -> tuple[float, float]:
    def mean(x, axis=-1):
        return np.mean(x, axis=axis)

    for method in ("BCa", "percentile"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # DegenerateDataWarning: handled by the percentile fallback
            try:
                res = stats.bootstrap((d,), mean, n_resamples=n_boot, vectorized=True, confidence_level=0.95,
                                      method=method, rng=np.random.default_rng(seed))
            except ValueError:
                continue
        lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
        if math.isfinite(lo) and math.isfinite(hi):
            return lo, hi
    return math.nan, math.nan


def effects_table(cells: pd.DataFrame, n_boot: int, seed: int) -> pd.DataFrame:
    """Every main effect and BN x X interaction on minority F1 (pooled), the BN effect per
    (dataset, arch), and the BN effect on ECE and Brier."""
    multi_arch = cells["arch"].nunique() > 1
    rows = []

    def add(effect, kind, metric, scope, d):
        rows.append({"effect": effect, "kind": kind, "metric": metric, "scope": scope,
                     **effect_stats(d, n_boot, seed)})

    for t in TOGGLES:
        add(t.upper(), "main", "minority_f1", "all", paired_differences(cells, t))
    for x in TOGGLES[1:]:
        add(f"BNx{x.upper()}", "interaction", "minority_f1", "all", interaction_differences(cells, x))
    for (ds, arch), sub in cells.groupby(["dataset", "arch"], sort=True):
        add("BN", "main", "minority_f1", f"{ds}/{arch}" if multi_arch else ds, paired_differences(sub, "bn"))
    for m in ("ece", "brier"):
        add("BN", "main", m, "all", paired_differences(cells, "bn", f"test_best_{m}"))
    cols = ["effect", "kind", "metric", "scope", "n", "mean", "ci_low", "ci_high", "p", "note"]
    return pd.DataFrame(rows, columns=cols)


def _fmt_p(p: float) -> str:
    return f"{p:.2g}"


def verdict(bn: dict[str, Any]) -> str:
    """One line on the BN main effect (keys n, mean, ci_low, ci_high, p); CI excluding 0 decides."""
    n, mean, lo, hi, p = bn["n"], bn["mean"], bn["ci_low"], bn["ci_high"], bn["p"]
    if not n or not math.isfinite(mean):
        return ("Final BN: not enough cells to estimate its effect on minority F1 "
                "(no pair of cells differing only in BN).")
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return (f"Final BN changes minority F1 by {mean:+.2f} over {n} pair(s): not enough cells for a confidence "
                f"interval, no evidence either way.")
    verb = "raises" if mean > 0 else "lowers" if mean < 0 else "changes"
    head = (f"Final BN {verb} minority F1 by {mean:+.2f} [95% CI {lo:+.2f}, {hi:+.2f}] "
            f"(Wilcoxon p = {_fmt_p(p)}, {n} pairs)")
    if lo > 0:
        return head + ": it helps here."
    if hi < 0:
        return head + ": it hurts here."
    return head + ": no evidence that it helps here."


# --------------------------------------------------------------------------- figures


def _placeholder(path: Path, message: str) -> None:
    fig, ax = plt.subplots(figsize=(6, 2))
    ax.axis("off")
    ax.text(0.5, 0.5, message, ha="center", va="center", wrap=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _fig3(curves: pd.DataFrame, path: Path) -> None:
    pairs = sorted(set(zip(curves["dataset"], curves["arch"])))
    fig, axes = plt.subplots(len(pairs), 3, figsize=(13, 3.3 * len(pairs)), squeeze=False, sharey="row",
                             layout="constrained")
    titles = {NONE_ID: "without final BN (63)", WL_ID: "with WL, no BN (47)", BN_ID: "with final BN (31)"}
    for i, (ds, arch) in enumerate(pairs):
        for j, cid in enumerate((NONE_ID, WL_ID, BN_ID)):
            ax = axes[i][j]
            c = curves[(curves["dataset"] == ds) & (curves["arch"] == arch) & (curves["config_id"] == cid)]
            ax.set_title(f"{ds} {arch}: {titles[cid]}", fontsize="small")
            ax.grid(alpha=0.3)
            if c.empty:
                ax.text(0.5, 0.5, "no runs", ha="center", va="center", transform=ax.transAxes)
                continue
            for key, color in (("train_loss", "tab:blue"), ("val_loss", "tab:orange")):
                m, s = c[f"{key}_mean"].to_numpy(float), c[f"{key}_std"].to_numpy(float)
                ax.plot(c["epoch"], m, marker="o", ms=3, color=color, label=key.replace("_", " "))
                ax.fill_between(c["epoch"], m - s, m + s, color=color, alpha=0.2)
            ax.set_xlabel("epoch")
            if j == 0:
                ax.set_ylabel("loss (mean ± std over seeds)")
            ax.legend(fontsize="small")
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _softmax_panel(ax, labels: np.ndarray, p1: np.ndarray, title: str) -> None:
    # the style of plots.softmax_scatter (paper Fig. 4), drawn into a given axis
    order = np.argsort(labels, kind="stable")
    x = np.arange(labels.size)
    ax.scatter(x, 1 - p1[order], s=8, color="tab:blue", label="P(class 0, healthy)")
    ax.scatter(x, p1[order], s=8, color="tab:red", label="P(class 1, diseased)")
    ax.plot(x, labels[order], color="black", drawstyle="steps-mid", linewidth=1.5, label="ground truth")
    ax.axhline(0.5, color="gray", linestyle="--", linewidth=1)
    ax.set_ylim(-0.05, 1.05)
    ax.set_xlabel("test image (ordered by ground truth)")
    ax.set_ylabel("softmax output")
    ax.set_title(title, fontsize="small")


def _fig4(pairs: dict, path: Path) -> None:
    keys = sorted(pairs)
    fig, axes = plt.subplots(len(keys), 2, figsize=(12, 3.5 * len(keys)), squeeze=False, layout="constrained")
    for i, key in enumerate(keys):
        seed, p63, p31 = pairs[key]
        for j, (df, name) in enumerate(((p63, "without final BN (63)"), (p31, "with final BN (31)"))):
            _softmax_panel(axes[i][j], df["label"].to_numpy(int), _p1(df).to_numpy(float),
                           f"{key[0]} {key[1]} seed {seed}: {name}")
    axes[0][0].legend(loc="center left", fontsize="x-small")
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _reliability_panel(ax, bins: dict, title: str) -> None:
    # the style of plots.reliability_diagram, drawn into a given axis
    lower = np.asarray(bins["lower"], dtype=float)
    width = np.asarray(bins["upper"], dtype=float) - lower
    full = [i for i, c in enumerate(bins["count"]) if c and bins["accuracy"][i] is not None]
    acc = np.array([bins["accuracy"][i] for i in full], dtype=float)
    conf = np.array([bins["confidence"][i] for i in full], dtype=float)
    ax.bar(lower[full], acc, width=width[full], align="edge", color="tab:blue", edgecolor="black", label="accuracy")
    ax.bar(lower[full], conf - acc, bottom=acc, width=width[full], align="edge", color="tab:red", alpha=0.3,
           edgecolor="tab:red", hatch="//", label="gap")
    ax.plot([0, 1], [0, 1], color="gray", linestyle="--", label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.legend(loc="upper left", fontsize="small")
    ax.set_title(title, fontsize="small")


def _fig_reliability(b63: dict | None, n63: int, b31: dict | None, n31: int, path: Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(10, 5), layout="constrained")
    for ax, b, n, name in ((axes[0], b63, n63, "without final BN (63)"), (axes[1], b31, n31, "with final BN (31)")):
        if b is None:
            ax.axis("off")
            ax.text(0.5, 0.5, f"{name}: no reliability.json", ha="center", va="center")
        else:
            _reliability_panel(ax, b, f"{name}, {n} runs pooled, ECE {bins_ece(b):.3f}")
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _fig_effects(eff: pd.DataFrame, path: Path) -> None:
    rows = eff[(eff["scope"] == "all") & (eff["metric"] == "minority_f1")].reset_index(drop=True)
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(rows) + 1.5), layout="constrained")
    y = np.arange(len(rows))[::-1]
    for yi, r in zip(y, rows.itertuples(index=False)):
        color = "tab:red" if r.kind == "main" else "tab:purple"
        if math.isfinite(r.mean):
            lo = r.ci_low if math.isfinite(r.ci_low) else r.mean
            hi = r.ci_high if math.isfinite(r.ci_high) else r.mean
            ax.errorbar(r.mean, yi, xerr=[[r.mean - lo], [hi - r.mean]], fmt="o", color=color, capsize=3)
            label = f"n={r.n}, p={_fmt_p(r.p)}" if math.isfinite(r.p) else f"n={r.n}"
        else:
            label = "not enough cells"
        ax.annotate(label, (1.01, yi), xycoords=("axes fraction", "data"), va="center", fontsize="x-small")
    ax.axvline(0, color="gray", linestyle="--")
    ax.set_yticks(y, labels=list(rows["effect"]))
    ax.set_xlabel("paired difference in minority F1 (mean, 95% bootstrap CI)")
    ax.set_title("main effects and BN x X interactions")
    ax.grid(axis="x", alpha=0.3)
    fig.savefig(path, dpi=90)
    plt.close(fig)


# --------------------------------------------------------------------------- output


def _cell_text(v: Any, floatfmt: str) -> str:
    if isinstance(v, (bool, np.bool_)):
        return "✓" if v else ""
    if v is None or (isinstance(v, (float, np.floating)) and not math.isfinite(v)) or v is pd.NA:
        return "—"
    if isinstance(v, (float, np.floating)):
        return format(float(v), floatfmt)
    return str(v).replace("|", "\\|").replace("\n", " ")


# p-values span many orders of magnitude; mean epochs need one decimal
MD_FORMATS = {"p": ".2g", "epoch": ".1f"}


def markdown_table(df: pd.DataFrame, floatfmt: str = ".4f", formats: dict[str, str] | None = None) -> str:
    """A GitHub Markdown table (pandas' to_markdown needs `tabulate`, not a dependency here).
    `formats` maps a column to its float format (default MD_FORMATS, else `floatfmt`)."""
    fmts = {**MD_FORMATS, **(formats or {})}
    col_fmt = [fmts.get(str(c), floatfmt) for c in df.columns]
    head = "| " + " | ".join(str(c) for c in df.columns) + " |"
    sep = "|" + "|".join("---" for _ in df.columns) + "|"
    body = ["| " + " | ".join(_cell_text(v, f) for v, f in zip(row, col_fmt)) + " |"
            for row in df.itertuples(index=False, name=None)]
    return "\n".join([head, sep, *body])


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if obj is None or obj is pd.NA:
        return None
    return obj


def _group_key(ds: str, arch: str, multi_arch: bool) -> str:
    return f"{ds}/{arch}" if multi_arch else ds


def build_report(data: CellData, out_dir: Path, n_boot: int = 2000, seed: int = 0) -> dict:
    """Write report.md, the CSVs and PNGs of FILES into `out_dir`; return (and write as
    summary.json) the headline numbers. Raises ValueError when `data` holds no cell."""
    cells, dropped = _prepare(data.cells, data.experiment)
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

    cells.drop(columns=["start_time"], errors="ignore").to_csv(out / "cells.csv", index=False)

    # -- Table I
    t1 = table1(cells)
    t1.to_csv(out / "table1.csv", index=False)
    section("Table I: F1 without final BN, with WL (no BN), with final BN (no WL)",
            markdown_table(t1.drop(columns=[] if multi_arch else ["arch"])) if not t1.empty else "",
            [] if not t1.empty else ["not enough cells: no run of config 63, 47 or 31"])
    if not t1.empty and t1[["without_final_bn", "with_wl_no_bn", "with_final_bn_no_wl"]].isna().any().any():
        md.extend(["> Note: a dash means that configuration has no finished run for that dataset.", ""])

    # -- Table II
    t2 = table2(cells)
    t2.to_csv(out / "table2.csv", index=False)
    section("Table II: top 3 configurations per dataset (by mean minority F1)",
            markdown_table(t2.drop(columns=[] if multi_arch else ["arch"])) if not t2.empty else "",
            [] if not t2.empty else ["not enough cells: no minority F1 recorded"])

    # -- Table III
    t3, t3_notes = table3(cells)
    t3.to_csv(out / "table3.csv", index=False)
    section("Table III: top and bottom 3 configurations by minority F1 averaged over datasets",
            markdown_table(t3) if not t3.empty else "",
            t3_notes + ([] if not t3.empty else ["not enough cells: no configuration present in every dataset"]))

    # -- Table IV and Fig. 4
    pred_pairs, pred_notes = _prediction_pairs(data, cells)
    t4 = table4(pred_pairs)
    t4.to_csv(out / "table4.csv", index=False)
    section("Table IV: P(class 1) of 5 minority test images without / with final BN",
            (markdown_table(t4.drop(columns=[] if multi_arch else ["arch"])) +
             "\n\nThe five minority images with the lowest P(class 1) without final BN, first seed with both "
             "runs, best-epoch predictions; the same images (joined on path) with final BN.") if not t4.empty else "",
            pred_notes if not t4.empty
            else pred_notes + ["not enough cells: Table IV needs predictions of configs 63 and 31"])
    if pred_pairs:
        _fig4(pred_pairs, out / "fig4_softmax.png")
        section("Fig. 4: per-image test softmax outputs without / with final BN", "![](fig4_softmax.png)")
    else:
        _placeholder(out / "fig4_softmax.png", "not enough cells: no predictions of configs 63 and 31")
        section("Fig. 4: per-image test softmax outputs without / with final BN", "",
                ["not enough cells: needs test predictions of configs 63 and 31 for the same seed"])

    # -- Fig. 3
    curves = loss_curve_table(data, cells)
    curves.to_csv(out / "fig3_loss_curves.csv", index=False)
    if not curves.empty:
        _fig3(curves, out / "fig3_loss_curves.png")
        single = curves["runs"].max() <= 1
        section("Fig. 3: train / validation loss, mean ± std over seeds", "![](fig3_loss_curves.png)",
                ["one run per curve: the ±std band is 0"] if single else [])
    else:
        _placeholder(out / "fig3_loss_curves.png", "not enough cells: no loss history of configs 63, 47, 31")
        section("Fig. 3: train / validation loss, mean ± std over seeds", "",
                ["not enough cells: no per-epoch loss history of configs 63, 47 or 31"])

    # -- calibration
    cal = calibration_table(cells)
    cal.to_csv(out / "calibration.csv", index=False)
    b63, n63, rel_notes63 = _pooled_bins(data, cells, NONE_ID)
    b31, n31, rel_notes31 = _pooled_bins(data, cells, BN_ID)
    cal_all = cal[cal["dataset"] == "all"]
    body = markdown_table(cal_all.drop(columns=["dataset"]))
    if b63 is not None or b31 is not None:
        _fig_reliability(b63, n63, b31, n31, out / "reliability.png")
        body += ("\n\nReliability diagrams (best epoch), bins of every run of the configuration pooled over "
                 "datasets and seeds (counts add, accuracy and confidence count-weighted):\n\n![](reliability.png)")
        rel_notes = rel_notes63 + rel_notes31
    else:
        _placeholder(out / "reliability.png", "not enough cells: no reliability.json of configs 63 and 31")
        rel_notes = rel_notes63 + rel_notes31 + ["no reliability.json of configs 63 or 31: no reliability diagram"]
    section("Calibration: ECE and Brier with and without final BN", body, rel_notes)

    # -- effects and verdict
    eff = effects_table(cells, n_boot, seed)
    eff.to_csv(out / "effects.csv", index=False)
    _fig_effects(eff, out / "effects.png")
    bn = eff[(eff["effect"] == "BN") & (eff["scope"] == "all") & (eff["metric"] == "minority_f1")].iloc[0].to_dict()
    line = verdict(bn)
    short = eff[eff["metric"] == "minority_f1"] if eff["scope"].nunique() > 1 else eff
    eff_notes = (["not enough cells for some effects (no complete pairs): their numbers are blank"]
                 if (eff["n"] == 0).any() else [])
    section("Beyond the paper: effect of each switch on minority F1 (paired cells)",
            markdown_table(short) + "\n\nBN effect on ECE and Brier (negative = better calibrated):\n\n" +
            markdown_table(eff[eff["metric"] != "minority_f1"]) + "\n\n![](effects.png)", eff_notes)

    # -- summary.json
    table1_summary = {}
    for r in t1[t1["class"] == "unhealthy (1)"].itertuples(index=False):
        table1_summary[_group_key(r.dataset, r.arch, multi_arch)] = {
            "without_bn_f1_1": r.without_final_bn, "wl_f1_1": r.with_wl_no_bn, "bn_f1_1": r.with_final_bn_no_wl,
            "bn_improvement_f1_1": r.bn_improvement}

    def cal_value(metric: str, comparison: str, bn_on: bool) -> float:
        row = cal_all[(cal_all["comparison"] == comparison) & (cal_all["final_bn"] == bn_on)]
        return float(row[f"{metric}_mean"].iloc[0])

    summary = {
        "verdict": line,
        "bn_main_effect": {k: bn[k] for k in ("mean", "ci_low", "ci_high", "p", "n")},
        "main_effects": {r.effect: r.mean for r in eff[(eff["kind"] == "main") & (eff["scope"] == "all")
                                                       & (eff["metric"] == "minority_f1")].itertuples()},
        "interactions": {r.effect: r.mean for r in eff[eff["kind"] == "interaction"].itertuples()},
        "table1": table1_summary,
        "ece": {"bn": cal_value("ece", "all configs, BN on vs off", True),
                "no_bn": cal_value("ece", "all configs, BN on vs off", False),
                "config31": cal_value("ece", "config 31 vs 63", True),
                "config63": cal_value("ece", "config 31 vs 63", False)},
        "brier": {"bn": cal_value("brier", "all configs, BN on vs off", True),
                  "no_bn": cal_value("brier", "all configs, BN on vs off", False),
                  "config31": cal_value("brier", "config 31 vs 63", True),
                  "config63": cal_value("brier", "config 31 vs 63", False)},
        "cells": int(len(cells)),
        "datasets": sorted(cells["dataset"].unique().tolist()),
        "archs": sorted(cells["arch"].unique().tolist()),
        "seeds": int(cells["seed"].nunique()),
        "configs": int(cells["config_id"].nunique()),
    }
    summary = _json_safe(summary)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")

    # -- report.md: header and method first, then the sections gathered above
    header = [
        f"# Final BN report{f' — experiment {data.experiment}' if data.experiment else ''}", "",
        f"**Verdict:** {line}", "",
        "## How the numbers are computed", "",
        f"- {len(cells)} finished cell runs: datasets {', '.join(summary['datasets'])}; archs "
        f"{', '.join(summary['archs'])}; {summary['configs']} of 64 configurations; {summary['seeds']} seed(s).",
        "- Test metrics at the best epoch (`test_best_*`), the epoch chosen on the validation set (highest "
        "validation minority F1, ties to the lower validation loss), as the paper's Table II.",
        "- Per configuration: mean over seeds; ± is the standard deviation over seeds (0 for one seed).",
        "- Configuration ids: index of (BN, WL, DA, MX, UF, WD) in itertools.product([True, False], repeat=6): "
        "31 = BN only, 47 = WL only, 63 = none.",
        f"- Effects: paired differences between cells that differ only in that switch (same dataset, arch, seed "
        f"and other switches; incomplete pairs skipped; pairs pooled over datasets, archs and seeds), mean with "
        f"a 95% bootstrap CI ({n_boot} resamples, BCa, percentile when BCa degenerates, seed {seed}) and a "
        "two-sided Wilcoxon signed-rank p. Interactions BN x X: (BN effect with X on) - (BN effect with X off). "
        "The verdict says it helps / hurts when the CI of the BN effect excludes 0.",
        "",
    ]
    header.extend(f"> Note: {n}" for n in notes_in)
    if notes_in:
        header.append("")
    (out / "report.md").write_text("\n".join(header + md).rstrip() + "\n", encoding="utf-8")
    return summary


def log_report(out_dir: Path, experiment: str, tracking_uri: str | None = None) -> str:
    """Log every file of `out_dir` as artifacts of a new run named "report" (tag finalbn.report=true,
    never finalbn.cell, so `collect` ignores it) in `experiment`; the headline numbers of
    summary.json become its metrics. Returns the run id."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric
    from mlflow.utils.time import get_current_time_millis

    out = Path(out_dir)
    if not out.is_dir():
        raise FileNotFoundError(f"{out} does not exist: run build_report first")
    client = MlflowClient(tracking_uri=tracking_uri or _default_uri())
    exp = client.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp is not None else client.create_experiment(experiment)
    run_id = client.create_run(exp_id, run_name="report", tags={"finalbn.report": "true"}).info.run_id
    try:
        client.log_artifacts(run_id, str(out))
        summary_path = out / "summary.json"
        if summary_path.is_file():
            s = json.loads(summary_path.read_text(encoding="utf-8"))
            flat = {f"bn_effect_{k}": v for k, v in (s.get("bn_main_effect") or {}).items()}
            flat.update({f"ece_{k}": v for k, v in (s.get("ece") or {}).items()})
            flat.update({f"brier_{k}": v for k, v in (s.get("brier") or {}).items()})
            flat["cells"] = s.get("cells")
            now = get_current_time_millis()
            metrics = [Metric(k, float(v), now, 0) for k, v in flat.items() if isinstance(v, (int, float))]
            if metrics:
                client.log_batch(run_id, metrics=metrics)
            if s.get("verdict"):
                client.set_tag(run_id, "verdict", str(s["verdict"])[:5000])
        client.set_terminated(run_id, "FINISHED")
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    return run_id


def make_report(cfg: Any, splits_dir: Path, out_dir: Path) -> dict:
    """`finalbn report`: the current grid's FINISHED cells (by cell key) -> out_dir, logged to MLflow."""
    from finalbn import grid, tracking

    tracking.setup(cfg)
    experiment = cfg.tracking.experiment
    wanted = {grid.cell_key(cfg, c, splits_dir) for c in grid.all_cells(cfg)}
    data = collect(experiment, tracking.tracking_uri())
    keys = {r.info.run_id: r.data.tags.get("cell_key") for rs in tracking.cell_runs_by_key(experiment).values() for r in rs}
    # Only this grid's cells: the store may also hold cells of earlier params or other studies.
    data.cells = data.cells[data.cells["run_id"].map(keys).isin(wanted)].reset_index(drop=True)
    if data.cells.empty:
        raise ValueError(_empty_message(experiment) + " for the current params")
    summary = build_report(data, out_dir, n_boot=cfg.report.bootstrap, seed=cfg.report.seed)
    log_report(out_dir, experiment, tracking.tracking_uri())
    return summary

"""The report's input: one row per finished cell run, plus per-run extras fetched on demand.

    data = collect("finalbn")          # FINISHED cell runs of the experiment, via finalbn.tracking
    data.cells                         # run_id, dataset, arch, replicate, config_id, baseline, toggles, metrics
    data.history(run_id)               # per-epoch metrics (DataFrame), fetched once

Metric columns: `test_<m>` is the last epoch (the primary protocol, as the paper's Table I),
`test_sel_<m>` the epoch selected on validation AUROC, `val_<m>` validation at the last epoch.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import pandas as pd

from finalbn.config import TOGGLES, AblationConfig, ablation_from_id, config_id, config_name
from finalbn.stages.tracker import Tracker
from finalbn.tracking import RunRecord
from finalbn.tracking.adapter import MLFLOW
from finalbn.tracking.records import ARCH, BASELINE, CELL_KEY, CONFIG_ID, DATASET, REPLICATE, toggle_tag

TEST_METRICS = (
    "accuracy",
    "balanced_accuracy",
    "precision_0",
    "recall_0",
    "f1_0",
    "precision_1",
    "recall_1",
    "f1_1",
    "f1_1_pc",
    "recall_1_pc",
    "balanced_accuracy_pc",
    "f1_1_vt",
    "auroc",
    "ap",
    "ece",
    "brier",
    "nll",
)
SEL_METRICS = ("f1_1", "f1_0", "auroc", "ap", "ece")
VAL_METRICS = ("auroc", "ap", "f1_1", "balanced_loss")
HISTORY_KEYS = ("train_loss", "val_loss", "val_balanced_loss", "val_auroc", "val_minority_f1", "lr")


def toggles_of(cid: int) -> dict[str, bool]:
    ab = ablation_from_id(int(cid))
    return {t: getattr(ab, t) for t in TOGGLES}


def config_id_of(toggles: dict[str, bool]) -> int:
    return config_id(AblationConfig(**{t: bool(toggles[t]) for t in TOGGLES}))


def config_name_of(toggles: dict[str, bool]) -> str:
    return config_name(AblationConfig(**{t: bool(toggles[t]) for t in TOGGLES}))


def empty_message(experiment: str | Sequence[str]) -> str:
    return f"no finished cell runs in experiment {experiment}: run `finalbn grid` first"


class _TrackingLoader:
    """Fetches a run's per-epoch history and artifacts through the tracker, on demand."""

    def __init__(self, tracker: Tracker) -> None:
        self.tracker = tracker

    def history(self, run_id: str) -> pd.DataFrame | None:
        by_epoch = self.tracker.metric_history(run_id, HISTORY_KEYS)
        if by_epoch:
            return pd.DataFrame([{"epoch": e, **v} for e, v in sorted(by_epoch.items())])
        text = self.tracker.artifact_text(run_id, "history.csv")  # runs whose metric history was not kept
        return pd.read_csv(io.StringIO(text)) if text and text.strip() else None

    def predictions(self, run_id: str) -> pd.DataFrame | None:
        text = self.tracker.artifact_text(run_id, "predictions/test_predictions.csv")
        return pd.read_csv(io.StringIO(text)) if text and text.strip() else None

    def val_predictions(self, run_id: str) -> pd.DataFrame | None:
        text = self.tracker.artifact_text(run_id, "predictions/val_predictions.csv")
        return pd.read_csv(io.StringIO(text)) if text and text.strip() else None

    def reliability(self, run_id: str) -> dict | None:
        text = self.tracker.artifact_text(run_id, "reliability.json")
        return None if text is None else json.loads(text)


@dataclass
class CellData:
    """Cell runs of one experiment: one row per run in `cells`, and per-run extras.

    `histories`, `predictions`, `val_predictions` and `reliability` (run_id -> DataFrame /
    DataFrame / DataFrame / the reliability.json dict) may be filled by hand (tests); after `collect` they fill lazily, so only
    the runs a report needs are ever downloaded.
    """

    cells: pd.DataFrame
    histories: dict[str, pd.DataFrame] = field(default_factory=dict)
    predictions: dict[str, pd.DataFrame] = field(default_factory=dict)
    reliability: dict[str, dict] = field(default_factory=dict)
    val_predictions: dict[str, pd.DataFrame] = field(default_factory=dict)
    experiment: str | Sequence[str] = ""  # one experiment, or several
    notes: list[str] = field(default_factory=list)
    loader: Any = field(default=None, repr=False)
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

    def val_prediction(self, run_id: str) -> pd.DataFrame | None:
        """The run's validation predictions (path, label, p1_last), which choose its cut at each π."""
        return self._get("val_predictions", self.val_predictions, run_id)

    def reliability_bins(self, run_id: str) -> dict | None:
        return self._get("reliability", self.reliability, run_id)


def _parse_bool(value: Any) -> bool | None:
    s = str(value).strip().lower()
    return True if s in ("true", "1", "yes") else False if s in ("false", "0", "no") else None


def _parse_int(value: Any) -> int | None:
    try:
        return int(float(value))
    except (TypeError, ValueError):
        return None


def run_row(run: RunRecord) -> dict | None:
    """One cells row from a tracked cell run, or None when its configuration cannot be told."""
    tags, metrics = run.tags, run.metrics
    flags = {t: _parse_bool(tags.get(toggle_tag(t))) for t in TOGGLES}
    if all(v is not None for v in flags.values()):
        toggles = cast("dict[str, bool]", flags)  # the switches are the truth (none None); the id is derived from them
    else:
        cid = _parse_int(tags.get(CONFIG_ID))
        if cid is None or not 0 <= cid < 64:
            return None
        toggles = toggles_of(cid)
    row = {
        "run_id": run.run_id,
        "dataset": tags.get(DATASET, "?"),
        "arch": tags.get(ARCH, "?"),
        "replicate": _parse_int(tags.get(REPLICATE)) or 0,
        "config_id": config_id_of(toggles),
        "config_name": config_name_of(toggles),
        **toggles,
        "selected_epoch": metrics.get("selected_epoch"),
        "cell_key": tags.get(CELL_KEY, ""),
        "baseline": tags.get(BASELINE, ""),
        "start_time": run.start_time or 0,
    }
    for k in TEST_METRICS:
        row[f"test_{k}"] = float(metrics.get(f"test_{k}", math.nan))
    for k in SEL_METRICS:
        row[f"test_sel_{k}"] = float(metrics.get(f"test_sel_{k}", math.nan))
    for k in VAL_METRICS:
        row[f"val_{k}"] = float(metrics.get(f"val_last_{k}", math.nan))
    return row


def collect(experiment: str | Sequence[str], keys: set[str] | None = None, tracker: Tracker = MLFLOW) -> CellData:
    """FINISHED cell runs of `experiment` (one or several; only those whose cell_key is in `keys`,
    when given) in `tracker`'s store. Raises ValueError when there is none. Histories and artifacts
    are fetched on first use."""
    runs = tracker.finished_cells(experiment)
    if keys is not None:
        runs = [r for r in runs if r.tags.get(CELL_KEY) in keys]
    rows = [row for row in map(run_row, runs) if row is not None]
    notes = []
    if len(rows) < len(runs):
        notes.append(f"{len(runs) - len(rows)} cell run(s) without BN..WD / config_id tags were left out")
    if not rows:
        raise ValueError(empty_message(experiment) + (" for the current params" if keys is not None else ""))
    data = CellData(cells=pd.DataFrame(rows), experiment=experiment, notes=notes, loader=_TrackingLoader(tracker))
    data.cells, dropped = prepare(data.cells, experiment)
    if dropped:
        data.notes.append(f"{dropped} older duplicate run(s) of the same cell were left out (latest kept)")
    return data


def prepare(cells: pd.DataFrame, experiment: str | Sequence[str] = "") -> tuple[pd.DataFrame, int]:
    """Typed, complete columns and one row per cell (the latest run when a cell ran twice)."""
    if cells is None or len(cells) == 0:
        raise ValueError(empty_message(experiment or "?"))
    df = cells.copy()
    missing = [c for c in ("run_id", "dataset", "replicate") if c not in df]
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
    df["replicate"] = df["replicate"].astype(int)
    df["baseline"] = df["baseline"].fillna("").astype(str) if "baseline" in df else ""
    for col in ("dataset", "arch", "run_id"):
        df[col] = df[col].astype(str)
    epochs = (
        pd.to_numeric(df["selected_epoch"], errors="coerce")
        if "selected_epoch" in df
        else pd.Series(math.nan, df.index)
    )
    df["selected_epoch"] = epochs.astype(float)
    cols = (
        [f"test_{k}" for k in TEST_METRICS] + [f"test_sel_{k}" for k in SEL_METRICS] + [f"val_{k}" for k in VAL_METRICS]
    )
    for col in cols:
        df[col] = pd.to_numeric(df[col], errors="coerce").astype(float) if col in df else math.nan
    if "start_time" in df:
        df = df.sort_values("start_time", kind="stable")
    before = len(df)
    df = df.drop_duplicates(["dataset", "arch", "replicate", "config_id", "baseline"], keep="last")
    df = df.sort_values(["dataset", "arch", "baseline", "config_id", "replicate"], kind="stable").reset_index(drop=True)
    return df, before - len(df)


def groups(cells: pd.DataFrame) -> list[tuple[str, str]]:
    """The (dataset, arch) pairs of the study, sorted."""
    return sorted(set(zip(cells["dataset"], cells["arch"])))

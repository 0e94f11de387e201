"""Which configuration to ship, and its network: chosen on validation over replicates, rebuilt
when the run kept no weights.

    choice = choose(tracking.finished_cell_runs(["finalbn/grid", "finalbn/search"]), k=5)   # the best final-BN configuration
    src = rebuild(choice.run, Path("data/splits"))                    # Source: config, model, metrics

By default the configuration with a final BN before the softmax that `finalbn.stats.selection` ranks
first over replicates 0..k-1 (`selection.replicates`): grid cells and search runs alike, grouped
by their configuration key (the cell key without the replicate), only those FINISHED on all k
replicates, on the mean validation AUROC at the last epoch, ties to the lower mean class-balanced
validation loss, then fewer switches; test metrics never decide. Its model is the one trained on
the lowest of those replicates (replicate 0: stated, not chosen on its own score). The grid keeps
no weights (`train.log_model: false`), so that run's cell is trained again — the same
configuration (its logged config.yaml), replicate and seed, which reproduce it — as a tracked run
tagged `export_source`, its state_dict saved on that run, so the next export loads it instead.
The same configuration's runs on replicates >= k (`Choice.held_out`: neither trained the shipped
model nor chose the configuration) give their test predictions (`held_out_test`) to measure how
optimistic the cuts' validation estimates are.
"""

from __future__ import annotations

import io
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import numpy as np
import pandas as pd
import torch
import yaml
from torch import nn

from finalbn import tracking
from finalbn.config import TOGGLES, Config, ConfigError, cell_seed, final_layer_for, validate
from finalbn.stages.cellrun import VAL_PREDICTIONS, CellHooks, CellRun, track_cell
from finalbn.stages.tracker import Run
from finalbn.stats import selection
from finalbn.stats.inference import clipped, t_interval
from finalbn.tracking import RunRecord, latest
from finalbn.tracking import records as tags
from finalbn.tracking.adapter import MLFLOW
from finalbn.train.cell import CellResult, build_model

WEIGHTS_DIR, WEIGHTS = "export", "export/state_dict.pt"
TEST_PREDICTIONS = "predictions/test_predictions.csv"  # path, label, p1_last: each cell run's test split


class ExportError(RuntimeError):
    """The export cannot go on: no candidate, an unknown run, parity past the tolerance."""


def is_final_bn(run: RunRecord) -> bool:
    """A run whose network ends in BatchNorm1d before the softmax (its BN tag and final variant)."""
    return final_layer_for(run.params.get("model.final_variant", "bn"), run.flag(tags.toggle_tag("bn"))) == "bn"


def ships_as_trained(run: RunRecord) -> bool:
    """Whether the run's numbers are its trained network's own: no post-hoc step after training
    (`train.posthoc`: vector scaling, the final BN removed, ...) and a classifier (not PatchCore).
    The rivals' runs measure a change the exported network would not carry: never candidates."""
    return run.params.get("train.posthoc", "none") == "none" and run.params.get("train.detector", "classifier") == (
        "classifier"
    )


def _switches_on(run: RunRecord) -> int:
    """How many of the six switches `run`'s configuration has on (from its tags)."""
    return sum(bool(run.flag(tags.toggle_tag(t))) for t in TOGGLES)


@dataclass
class Choice:
    """The configuration chosen (its key and ranking row), its runs on the replicates it was
    judged on, and the run whose model ships."""

    run: RunRecord  # the run whose model ships (the lowest judged replicate)
    runs: dict[int, RunRecord]  # replicate -> run, the replicates behind the choice
    key: str
    how: str  # how it was chosen, in a sentence
    row: dict = field(default_factory=dict)  # its `selection.rank` row (means, interval)
    candidates: int = 0
    held_out: dict[int, RunRecord] = field(default_factory=dict)  # replicate -> run, same key, replicates >= k


def candidate_rows(runs: list[RunRecord]) -> tuple[pd.DataFrame, dict[tuple[str, int], RunRecord]]:
    """`selection` rows of the final-BN cell runs (one per configuration key and replicate, the
    latest run), and the run behind each row."""
    by: dict[tuple[str, int], list[RunRecord]] = {}
    for r in runs:
        key = r.tags.get(tags.CONFIG_KEY)
        if key and is_final_bn(r) and ships_as_trained(r) and "val_last_auroc" in r.metrics:
            by.setdefault((key, int(r.tags.get(tags.REPLICATE, 0))), []).append(r)
    chosen = {k: latest(v) for k, v in by.items()}
    rows = [
        {
            "key": k,
            "replicate": rep,
            "val_auroc": run.metrics.get("val_last_auroc", math.nan),
            selection.TIE_BREAK: run.metrics.get("val_last_balanced_loss", math.nan),
            "switches": _switches_on(run),
            "test_f1_1": run.metrics.get("test_f1_1", math.nan),
            "test_auroc": run.metrics.get("test_auroc", math.nan),
        }
        for (k, rep), run in chosen.items()
    ]
    cols = ["key", "replicate", "val_auroc", selection.TIE_BREAK, "switches", "test_f1_1", "test_auroc"]
    return pd.DataFrame(rows, columns=cols), chosen


def choose(runs: list[RunRecord], k: int, run_id: str | None = None) -> Choice:
    """`run_id`'s run (its configuration's runs on replicates 0..k-1 when it has them), or the best
    final-BN configuration over replicates 0..k-1 (module docstring). Raises ExportError."""
    rows, by = candidate_rows(runs)
    if run_id:
        found = [r for r in runs if r.run_id == run_id]
        if not found:
            raise ExportError(f"run {run_id} is not a FINISHED cell run of the experiment")
        run = found[0]
        key = run.tags.get(tags.CONFIG_KEY, "")
        rep = int(run.tags.get(tags.REPLICATE, 0))
        mine = {r: by[(key, r)] for r in range(k) if (key, r) in by}
        if len(mine) < k or rep not in mine or mine[rep].run_id != run.run_id:
            mine = {rep: run}  # the run alone: its own validation predictions set the thresholds
        return Choice(
            run,
            mine,
            key,
            f"given by --run-id {run_id}",
            _summary_row(rows, key, k),
            held_out=_held_out(by, key, k, mine),
        )
    if rows.empty:
        raise ExportError("no FINISHED cell run with a final BN and a validation AUROC: run `finalbn grid` first")
    ranked = selection.rank(rows, k)
    eligible = ranked[ranked["eligible"]]
    if eligible.empty:
        most = int(ranked["replicates"].max())
        raise ExportError(
            f"no final-BN configuration has FINISHED runs on all {k} replicates 0..{k - 1} "
            f"(selection.replicates; the most any has is {most}): run the grid with the headline "
            f"configurations on >= {k} replicates, or set selection.replicates={most}"
        )
    best = eligible.iloc[0]
    key = best["key"]
    mine = {rep: by[(key, rep)] for rep in range(k)}
    how = (
        f"the best of {len(eligible)} final-BN configuration(s) on the mean validation AUROC over replicates "
        f"0..{k - 1}"
        + (
            f" ({len(ranked) - len(eligible)} seen on fewer replicates were not candidates)"
            if len(ranked) > len(eligible)
            else ""
        )
    )
    return Choice(mine[min(mine)], mine, key, how, best.to_dict(), len(eligible), _held_out(by, key, k, mine))


def _held_out(by: dict[tuple[str, int], RunRecord], key: str, k: int, mine: dict[int, RunRecord]) -> dict:
    """The configuration's runs on replicates >= k not behind the choice (replicate -> run)."""
    return {rep: run for (kk, rep), run in sorted(by.items()) if kk == key and rep >= k and rep not in mine}


def _summary_row(rows: pd.DataFrame, key: str, k: int) -> dict:
    sub = rows[rows["key"] == key]
    ranked = selection.rank(sub, k) if len(sub) else sub
    return ranked.iloc[0].to_dict() if len(ranked) else {}


def selection_card(choice: Choice, positives: int) -> dict:
    """model.json's `selection`: the configuration, the replicates and validation positives behind
    the choice, the validation mean with its 95 % interval, and the test minority F1 and AUROC over
    the same replicates with intervals (reported, never used to choose)."""
    reps = sorted(choice.runs)

    def mean_ci(values: list[float], bounds: tuple[float, float] = (0.0, 1.0)) -> dict:
        """Mean and 95 % t interval, clipped to the metric's range (an AUROC interval never past 1)."""
        r = clipped(t_interval(np.asarray(values, dtype=float) - 0.0), *bounds)
        return {"mean": _num(r["estimate"]), "ci95": [_num(r["ci_low"]), _num(r["ci_high"])], "n": r["n"]}

    runs = [choice.runs[r] for r in reps]
    return {
        "how": choice.how,
        "config_key": choice.key,
        "config_name": choice.run.tags.get(tags.CONFIG_NAME),
        "source": source_of(choice.run),
        "config_id": int(choice.run.tags.get(tags.CONFIG_ID, -1)),
        "candidates": choice.candidates,
        "replicates": reps,
        "model_replicate": int(choice.run.tags.get(tags.REPLICATE, 0)),
        "run_ids": {str(r): choice.runs[r].run_id for r in reps},
        "val_positives": positives,
        "validation_auroc": mean_ci([r.metrics.get("val_last_auroc", math.nan) for r in runs]),
        "validation_balanced_loss": mean_ci(
            [r.metrics.get("val_last_balanced_loss", math.nan) for r in runs], (0.0, math.inf)
        ),
        "test_minority_f1": mean_ci([r.metrics.get("test_f1_1", math.nan) for r in runs]),
        "test_auroc": mean_ci([r.metrics.get("test_auroc", math.nan) for r in runs]),
        "test_note": "test metrics over the same replicates: reported, never used to choose",
    }


def source_of(run: RunRecord) -> str:
    """Where a configuration comes from: a search trial (its own continuous params) or the grid."""
    if run.tags.get(tags.TRIAL_NUMBER):
        return f"search trial {run.tags[tags.TRIAL_NUMBER]} ({run.tags.get(tags.STUDY_NAME, '?')})"
    return "search comparison" if run.flag(tags.SEARCH_COMPARE) else "grid"


def pooled_validation(choice: Choice) -> tuple[np.ndarray, np.ndarray]:
    """The validation labels and P(diseased) of every run behind the choice, pooled (each run's
    own validation split: 7 positives each). Raises ExportError when a run lacks them."""
    labels, scores = [], []
    for rep in sorted(choice.runs):
        run = choice.runs[rep]
        text = tracking.artifact_text(run.run_id, VAL_PREDICTIONS)
        if text is None:
            raise ExportError(
                f"run {run.run_id} (replicate {rep}) has no {VAL_PREDICTIONS}: it was trained by an "
                "older finalbn; rerun `finalbn grid` (its cells train again under the new code)"
            )
        df = pd.read_csv(io.StringIO(text))
        labels.append(df["label"].to_numpy(dtype=int))
        scores.append(df["p1_last"].to_numpy(dtype=float))
    return np.concatenate(labels), np.concatenate(scores)


def held_out_test(choice: Choice) -> tuple[dict[int, pd.DataFrame], list[int]]:
    """The test predictions (path, label, p1_last = P(diseased) at the last epoch) of the chosen
    configuration's held-out runs (`Choice.held_out`), by replicate; and the held-out replicates
    whose run logged none (skipped: trained by an older finalbn)."""
    tables, missing = {}, []
    for rep in sorted(choice.held_out):
        text = tracking.artifact_text(choice.held_out[rep].run_id, TEST_PREDICTIONS)
        if text is None:
            missing.append(rep)
            continue
        tables[rep] = pd.read_csv(io.StringIO(text))
    return tables, missing


def _num(x) -> float | None:
    return None if x is None or (isinstance(x, float) and not math.isfinite(x)) else round(float(x), 6)


def run_config(run: RunRecord) -> Config:
    """The configuration the run trained with, from its config.yaml artifact."""
    text = tracking.artifact_text(run.run_id, "config.yaml")
    if text is None:
        raise ExportError(f"run {run.run_id} has no config.yaml artifact: cannot rebuild its model")
    try:
        return validate(yaml.safe_load(text))
    except ConfigError as exc:
        raise ExportError(f"run {run.run_id}'s config.yaml no longer validates: {exc}") from None


@dataclass
class Source:
    run_id: str  # the chosen run
    model_run_id: str  # the run that holds the weights exported (the retrained one)
    cfg: Config
    dataset: str
    replicate: int
    model: nn.Module
    val: dict[str, float]  # the exported model's validation metrics (last epoch)
    source_val: dict[str, float]  # the chosen run's, as logged
    manifest_sha256: str
    retrained: bool


def rebuild(run: RunRecord, splits: Path, log=print) -> Source:
    """The run's model: loaded when an earlier export saved it, otherwise its cell trained again
    (same configuration, replicate and seed), its state_dict saved on that run."""
    cfg = run_config(run)
    source_val = run.with_prefix("val_last_")
    # a cell run always carries its dataset's tag
    dataset, replicate = cast(str, run.tags.get(tags.DATASET)), int(run.tags.get(tags.REPLICATE, 0))
    # an earlier export's retraining of this run: its weights (state_dict) are an artifact
    earlier = [
        r
        for r in tracking.runs_by_tag(tracking.experiment_name(cfg, "export"), tags.EXPORT_SOURCE).get(run.run_id, [])
        if r.finished and r.tags.get(tags.EXPORT_WEIGHTS)
    ]
    for holder in sorted(earlier, key=lambda r: -(r.end_time or 0)):
        model = _load_weights(cfg, holder, log)
        if model is None:
            continue
        log(f"export: run {run.run_id} kept no weights; using its retrained model from run {holder.run_id}")
        return Source(
            run.run_id,
            holder.run_id,
            cfg,
            dataset,
            replicate,
            model,
            holder.with_prefix("val_last_"),
            source_val,
            run.tags.get(tags.MANIFEST, ""),
            retrained=True,
        )
    log(
        f"export: run {run.run_id} ({run.name}) kept no weights: training its cell again "
        f"(replicate {replicate}, seed {run.tags.get(tags.SEED)}), its weights saved on that run"
    )
    where = CellRun(
        "export",
        f"{run.name} retrained (run {run.run_id[:8]})",
        None,
        {tags.EXPORT_SOURCE: run.run_id, tags.EXPORT: "true"},
    )
    run_id, res = track_cell(
        cfg, dataset, splits, where, MLFLOW, replicate=replicate, hooks=CellHooks(on_end=_save_weights)
    )
    return Source(
        run.run_id,
        run_id,
        cfg,
        dataset,
        replicate,
        res.model.eval().cpu(),
        dict(res.val_last),
        source_val,
        res.manifest_sha256,
        retrained=True,
    )


def _save_weights(run: Run, result: CellResult) -> None:
    """track_cell's on_end: the trained network's state_dict as an artifact of its (open) run."""
    active = cast(tracking.ActiveRun, run)  # `rebuild` tracks on MLFLOW, whose runs are ActiveRuns
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "state_dict.pt"
        torch.save(result.model.state_dict(), path)
        active.log_artifact(str(path), WEIGHTS_DIR)
    run.set_tags({tags.EXPORT_WEIGHTS: WEIGHTS})


def _load_weights(cfg: Config, holder: RunRecord, log) -> nn.Module | None:
    """The network of `cfg` with the weights an earlier export saved on `holder`, or None."""
    try:
        with tempfile.TemporaryDirectory() as tmp:
            local = tracking.download(holder.run_id, WEIGHTS, tmp)
            state = torch.load(local, map_location="cpu", weights_only=True)
        model = build_model(cfg, seed=cell_seed(cfg, int(holder.tags.get(tags.REPLICATE, 0))))
        model.load_state_dict(state, strict=True)
    except Exception as exc:  # a missing or foreign artifact: train the cell again
        log(f"export: the weights saved on run {holder.run_id} cannot be loaded ({type(exc).__name__}: {exc})")
        return None
    return model.eval().cpu()

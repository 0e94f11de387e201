"""Which run to ship, and its network: chosen on validation, rebuilt when the run kept no weights.

    run = choose_run(tracking.finished_cell_runs("finalbn"))      # the best final-BN run
    src = rebuild(run, Path("data/splits"))                         # Source: config, model, metrics

By default the FINISHED cell run (grid cells and search runs) with a final BN before the
softmax that ranks first on validation — AUROC at the last epoch, ties to validation AP, then
minority F1, then the earlier run; test metrics never decide. The grid keeps no weights
(`train.log_model: false`), so the run's cell is trained again — the same configuration (its
logged config.yaml), replicate and seed, which reproduce it — as a tracked run tagged
`export_source`, its state_dict saved on that run, so the next export loads it instead.
"""
from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import torch
import yaml
from torch import nn

from finalbn import tracking
from finalbn.cell import CellResult, build_model
from finalbn.config import Config, ConfigError, cell_seed, has_final_bn, validate
from finalbn.tracked import track_cell
from finalbn.tracking import RunRecord
from finalbn.tracking import records as tags

RANK = ("val_last_auroc", "val_last_ap", "val_last_f1_1")
WEIGHTS_DIR, WEIGHTS = "export", "export/state_dict.pt"


class ExportError(RuntimeError):
    """The export cannot go on: no candidate, an unknown run, parity past the tolerance."""


def is_final_bn(run: RunRecord) -> bool:
    """A run whose network ends in BatchNorm1d before the softmax (its BN tag and final variant)."""
    model = SimpleNamespace(final_variant=run.params.get("model.final_variant", "bn"))
    return has_final_bn(model, SimpleNamespace(bn=run.flag(tags.toggle_tag("bn"))))


def rank_key(run: RunRecord) -> tuple:
    vals = tuple(run.metrics.get(k, -math.inf) for k in RANK)
    return (*(v if v == v else -math.inf for v in vals), -(run.start_time or 0))


def choose_run(runs: list[RunRecord], run_id: str | None = None) -> RunRecord:
    """`run_id`'s run, or the best final-BN run on validation (`rank_key`)."""
    if run_id:
        found = [r for r in runs if r.run_id == run_id]
        if not found:
            raise ExportError(f"run {run_id} is not a FINISHED cell run of the experiment")
        return found[0]
    bn = [r for r in runs if is_final_bn(r) and "val_last_auroc" in r.metrics]
    if not bn:
        raise ExportError("no FINISHED cell run with a final BN and a validation AUROC: run `finalbn grid` first")
    return max(bn, key=rank_key)


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
    dataset, replicate = run.tags.get(tags.DATASET), int(run.tags.get(tags.REPLICATE, 0))
    # an earlier export's retraining of this run: its weights (state_dict) are an artifact
    earlier = [r for r in tracking.runs_by_tag(cfg.tracking.experiment, tags.EXPORT_SOURCE).get(run.run_id, [])
               if r.finished and r.tags.get(tags.EXPORT_WEIGHTS)]
    for holder in sorted(earlier, key=lambda r: -(r.end_time or 0)):
        model = _load_weights(cfg, holder, log)
        if model is None:
            continue
        log(f"export: run {run.run_id} kept no weights; using its retrained model from run {holder.run_id}")
        return Source(run.run_id, holder.run_id, cfg, dataset, replicate, model, holder.with_prefix("val_last_"),
                      source_val, run.tags.get(tags.MANIFEST, ""), retrained=True)
    log(f"export: run {run.run_id} ({run.name}) kept no weights: training its cell again "
        f"(replicate {replicate}, seed {run.tags.get(tags.SEED)}), its weights saved on that run")
    run_id, res = track_cell(cfg, dataset, splits, run_name=f"export {run.run_id[:8]} {run.name}",
                             replicate=replicate, extra_tags={tags.EXPORT_SOURCE: run.run_id, tags.EXPORT: "true"},
                             on_end=_save_weights)
    return Source(run.run_id, run_id, cfg, dataset, replicate, res.model.eval().cpu(),
                  dict(res.val_last), source_val, res.manifest_sha256, retrained=True)


def _save_weights(run: tracking.ActiveRun, result: CellResult) -> None:
    """track_cell's on_end: the trained network's state_dict as an artifact of its (open) run."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "state_dict.pt"
        torch.save(result.model.state_dict(), path)
        run.log_artifact(str(path), WEIGHTS_DIR)
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

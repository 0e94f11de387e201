"""MLflow tracking of training cells — the only module that imports MLflow.

    run_id, result = track_cell(cfg, "synthetic-apple", splits_dir=Path("data/splits"))

One run per cell in experiment `tracking.experiment`, in MLflow's default store
(`sqlite:///mlflow.db` in the working folder) unless MLFLOW_TRACKING_URI says otherwise. Logged:
every config value (flattened), the six toggles as tags, dataset and manifest hash, per-epoch
metrics by step, test metrics at the last and the best (validation-chosen) epoch, and artifacts:
loss curves, the softmax scatter (paper Fig. 4), reliability diagrams, confusion matrix,
per-image test predictions, history and config.yaml. A run that raises ends FAILED; Ctrl-C ends
it KILLED; it never stays RUNNING.
"""
from __future__ import annotations

import contextlib
import csv
import io
import os
from pathlib import Path
from typing import Any, Iterator

import matplotlib.pyplot as plt
import mlflow
import yaml
from mlflow.entities import RunStatus

from finalbn import plots
from finalbn.cells import TOGGLES, CellResult, run_cell
from finalbn.config import Config, flatten, to_dict

DEFAULT_URI = "sqlite:///mlflow.db"


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI


def setup(cfg: Config) -> str:
    """Point MLflow at the store and the experiment; returns the experiment id."""
    mlflow.set_tracking_uri(tracking_uri())
    return mlflow.set_experiment(cfg.tracking.experiment).experiment_id


class EpochLogger:
    """engine callback: per-epoch metrics with `step` = epoch."""

    def __init__(self, run_id: str):
        self.client, self.run_id = mlflow.MlflowClient(), run_id

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        self.client.log_batch(self.run_id, metrics=[
            mlflow.entities.Metric(k, float(v), int(mlflow.utils.time.get_current_time_millis()), epoch)
            for k, v in metrics.items() if k != "epoch"])


@contextlib.contextmanager
def cell_run(run_name: str, tags: dict[str, str], nested: bool = False, parent_run_id: str | None = None) -> Iterator[Any]:
    """A run that always ends: FINISHED, FAILED on an exception, KILLED on Ctrl-C / SystemExit."""
    if parent_run_id:
        tags = {**tags, "mlflow.parentRunId": parent_run_id}
    run = mlflow.start_run(run_name=run_name, tags=tags, nested=nested)
    try:
        yield run
    except (KeyboardInterrupt, SystemExit):
        mlflow.end_run(RunStatus.to_string(RunStatus.KILLED))
        raise
    except BaseException:
        mlflow.end_run(RunStatus.to_string(RunStatus.FAILED))
        raise
    else:
        mlflow.end_run(RunStatus.to_string(RunStatus.FINISHED))


def cell_tags(cfg: Config, dataset: str) -> dict[str, str]:
    from finalbn.cells import config_id, config_name

    ab = cfg.ablation
    return {**{t.upper(): str(getattr(ab, t)).lower() for t in TOGGLES},
            "config_id": str(config_id(ab)), "config_name": config_name(ab), "dataset": dataset,
            "arch": cfg.model.arch, "seed": str(cfg.train.seed)}


def track_cell(cfg: Config, dataset: str, splits_dir: Path, callbacks=(), progress: bool = False,
               run_name: str | None = None, extra_tags: dict[str, str] | None = None,
               parent_run_id: str | None = None) -> tuple[str, CellResult]:
    setup(cfg)
    tags = {**cell_tags(cfg, dataset), **(extra_tags or {})}
    name = run_name or f"{dataset} {tags['config_name']} seed{cfg.train.seed}"
    with cell_run(name, tags, parent_run_id=parent_run_id) as run:
        run_id = run.info.run_id
        params = {k: ("" if v is None else str(v))[:6000] for k, v in flatten(to_dict(cfg)).items()}
        mlflow.log_params(params)
        result = run_cell(cfg, dataset, splits_dir, callbacks=[EpochLogger(run_id), *callbacks], progress=progress)
        log_result(cfg, result)
    return run_id, result


def log_result(cfg: Config, r: CellResult) -> None:
    """Test metrics, tags that only exist after training, and every artifact of one cell."""
    mlflow.set_tags({"manifest_sha256": r.manifest_sha256, "bn_policy": r.bn_policy, "device": r.device,
                     "best_epoch": str(r.fit.best_epoch)})
    mlflow.log_metrics({f"test_{k}": v for k, v in r.test_last.items()})
    mlflow.log_metrics({f"test_best_{k}": v for k, v in r.test_best.items()})
    mlflow.log_metrics({"best_epoch": r.fit.best_epoch, "train_seconds": r.fit.train_seconds,
                        "train_images_per_second": r.fit.train_images / max(r.fit.train_seconds, 1e-9)})
    if r.class_weights:
        mlflow.log_params({f"class_weight_{i}": round(w, 6) for i, w in enumerate(r.class_weights)})
    labels, best, last = r.info["labels"], r.info["probs_best"], r.info["probs_last"]
    title = f"{r.dataset} {r.config_name} (config {r.config_id})"
    figures = {
        "loss_curves.png": plots.loss_curves(r.fit.history, title),
        "softmax_scatter.png": plots.softmax_scatter(labels, best, f"{title}, best epoch {r.fit.best_epoch}"),
        "reliability_best.png": plots.reliability_diagram(r.reliability_best, f"best epoch, ECE {r.test_best['ece']:.3f}"),
        "reliability_last.png": plots.reliability_diagram(r.reliability_last, f"last epoch, ECE {r.test_last['ece']:.3f}"),
        "confusion_matrix.png": plots.confusion_matrix_plot(r.confusion_best),
    }
    for name, fig in figures.items():
        mlflow.log_figure(fig, f"plots/{name}")
        plt.close(fig)
    mlflow.log_text(_csv(r.predictions), "predictions/test_predictions.csv")
    mlflow.log_text(_csv(r.fit.history), "history.csv")
    mlflow.log_text(yaml.safe_dump(to_dict(cfg), sort_keys=False), "config.yaml")
    mlflow.log_dict({"last": r.reliability_last, "best": r.reliability_best}, "reliability.json")
    if cfg.train.log_model:
        _log_model(r.info["model"], cfg.dataset(r.dataset).image_size)


def _log_model(model, size: int) -> None:
    import mlflow.pytorch
    import numpy as np
    import torch
    from mlflow.models import infer_signature

    model.eval().cpu()
    # Batch 2: torch.export (MLflow 3's pt2 format) would specialise the batch axis to a batch of 1.
    example = np.zeros((2, 3, size, size), dtype=np.float32)
    with torch.no_grad():
        out = model(torch.from_numpy(example)).numpy()
    info = mlflow.pytorch.log_model(model, name="model", signature=infer_signature(example, out), input_example=example)
    mlflow.set_tag("model_uri", info.model_uri)


def _csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    if rows:
        w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    return buf.getvalue()

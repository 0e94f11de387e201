"""MLflow tracking of training cells — the only module that imports MLflow.

    run_id, result = track_cell(cfg, "synthetic-apple", splits_dir=Path("data/splits"))

One run per cell in experiment `tracking.experiment`, in MLflow's default store
(`sqlite:///mlflow.db` in the working folder) unless MLFLOW_TRACKING_URI says otherwise. Logged:
every config value (flattened), the six toggles, replicate and BN policy as tags, dataset and
manifest hash, per-epoch metrics by step (validation AUROC/AP/F1/balanced loss, the final BN's
running mean/var, gamma, beta), validation and test metrics at the last epoch (`val_*`, `test_*`:
the primary numbers) and test metrics at the validation-selected epoch (`test_sel_*`), per-disease
test recall, and artifacts: loss curves, the softmax scatter (paper Fig. 4), reliability diagrams,
confusion matrix, per-image test predictions, history and config.yaml. A run that raises ends
FAILED; Ctrl-C ends it KILLED; it never stays RUNNING.

The report and the ceiling stage read and write MLflow through this module too
(`finished_cell_runs`, `metric_history`, `artifact_text`, `log_report`, `log_ceiling`).
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import matplotlib.pyplot as plt
import mlflow
import yaml
from mlflow.entities import RunStatus

from finalbn import plots
from finalbn.cells import CellResult, cell_seed, run_cell
from finalbn.config import TOGGLES, Config, ablation_from_id, config_id, config_name, flatten, to_dict

DEFAULT_URI = "sqlite:///mlflow.db"


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI


def setup(cfg: Config) -> str:
    """Point MLflow at the store and the experiment; returns the experiment id.

    With a sqlite store, a file lock makes concurrent first calls (grid shards) take turns:
    two processes creating the tables or the experiment at once would fail."""
    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    project_run = os.environ.get("MLFLOW_RUN_ID")
    if project_run:  # inside `mlflow run`: the project's run is the cell's run, in its experiment
        exp_id = mlflow.MlflowClient().get_run(project_run).info.experiment_id
        mlflow.set_experiment(experiment_id=exp_id)
        return exp_id
    if uri.startswith("sqlite:///"):
        from filelock import FileLock

        with FileLock(uri[len("sqlite:///"):] + ".lock"):
            return mlflow.set_experiment(cfg.tracking.experiment).experiment_id
    return mlflow.set_experiment(cfg.tracking.experiment).experiment_id


def cell_runs_by_key(experiment: str) -> dict[str, list]:
    """Every cell run of the experiment that has a grid key, grouped by key."""
    runs = mlflow.search_runs(experiment_names=[experiment], filter_string="tags.cell_key != ''",
                              output_format="list", max_results=100_000)
    out: dict[str, list] = {}
    for r in runs:
        out.setdefault(r.data.tags["cell_key"], []).append(r)
    return out


def runs_by_tag(cfg: Config, tag: str) -> dict[str, list]:
    """Runs of the experiment that carry `tag`, grouped by its value."""
    setup(cfg)
    runs = mlflow.search_runs(experiment_names=[cfg.tracking.experiment], filter_string=f"tags.{tag} != ''",
                              output_format="list", max_results=100_000)
    out: dict[str, list] = {}
    for r in runs:
        out.setdefault(r.data.tags[tag], []).append(r)
    return out


def mark_killed(run_id: str) -> None:
    mlflow.MlflowClient().set_terminated(run_id, RunStatus.to_string(RunStatus.KILLED))


def _find_parent(experiment: str, parent_key: str):
    found = mlflow.search_runs(experiment_names=[experiment], output_format="list",
                               filter_string=f"tags.parent_key = '{parent_key}' and tags.`finalbn.parent` = 'true'")
    return found[0] if found else None


def parent_finished(cfg: Config, parent_key: str) -> bool:
    run = _find_parent(cfg.tracking.experiment, parent_key)
    return run is not None and run.info.status == "FINISHED"


def grid_parent(cfg: Config, dataset: str, arch: str, config_id: int, parent_key: str, baseline: str = "") -> str:
    """The parent run of one (dataset, arch, configuration[, baseline]): found by key, or created."""
    found = _find_parent(cfg.tracking.experiment, parent_key)
    if found:
        return found.info.run_id
    exp = mlflow.get_experiment_by_name(cfg.tracking.experiment)
    ab = ablation_from_id(config_id)
    label = f"{config_name(ab)} + {baseline}" if baseline else config_name(ab)
    tags = {**{t.upper(): str(getattr(ab, t)).lower() for t in TOGGLES}, "config_id": str(config_id),
            "config_name": config_name(ab), "dataset": dataset, "arch": arch, "parent_key": parent_key,
            "finalbn.parent": "true", "mlflow.runName": f"{dataset} {arch} {label} (config {config_id})",
            **({"baseline": baseline} if baseline else {})}
    return mlflow.MlflowClient().create_run(exp.experiment_id, tags=tags).info.run_id


def finish_parent(cfg: Config, dataset: str, arch: str, config_id: int, parent_key: str, parent_id: str | None,
                  baseline: str = "") -> None:
    """Mean and std over replicates of the FINISHED children's metrics on the parent, which then
    ends FINISHED."""
    import numpy as np

    client = mlflow.MlflowClient()
    parent_id = parent_id or grid_parent(cfg, dataset, arch, config_id, parent_key, baseline)
    children = mlflow.search_runs(experiment_names=[cfg.tracking.experiment], output_format="list",
                                  filter_string=f"tags.parent_key = '{parent_key}' and attributes.status = 'FINISHED'")
    children = [c for c in children if c.data.tags.get("finalbn.cell") == "true"]
    if children:
        keys = sorted({k for c in children for k in c.data.metrics if k.startswith(("test_", "val_", "selected_epoch"))})
        metrics = {}
        for k in keys:
            vals = np.array([c.data.metrics[k] for c in children if k in c.data.metrics])
            metrics[f"mean_{k}"], metrics[f"std_{k}"] = float(vals.mean()), float(vals.std())
        client.log_batch(parent_id, metrics=[mlflow.entities.Metric(k, v, int(time.time() * 1000), 0)
                                             for k, v in metrics.items()])
        client.set_tag(parent_id, "replicates_finished", str(len(children)))
    client.set_terminated(parent_id, RunStatus.to_string(RunStatus.FINISHED))


class EpochLogger:
    """engine callback: per-epoch metrics with `step` = epoch."""

    def __init__(self, run_id: str):
        self.client, self.run_id = mlflow.MlflowClient(), run_id

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        self.client.log_batch(self.run_id, metrics=[
            mlflow.entities.Metric(k, float(v), int(time.time() * 1000), epoch)
            for k, v in metrics.items() if k != "epoch"])


@contextlib.contextmanager
def cell_run(run_name: str, tags: dict[str, str], nested: bool = False, parent_run_id: str | None = None,
             killed_on: tuple[type[BaseException], ...] = (), state_tag: str | None = None) -> Iterator[Any]:
    """A run that always ends: FINISHED, FAILED on an exception, KILLED on Ctrl-C / SystemExit or
    on an exception of `killed_on` (a pruned search trial: stopped on purpose, not broken). With
    `state_tag`, the tag of that name says complete / pruned / failed / killed."""
    if parent_run_id:
        tags = {**tags, "mlflow.parentRunId": parent_run_id}
    run = mlflow.start_run(run_name=run_name, tags=tags, nested=nested)
    mlflow.set_tags(tags)  # start_run drops them when it resumes `mlflow run`'s own run

    def end(status: RunStatus, state: str, reason: str = "") -> None:
        if state_tag:
            mlflow.set_tag(state_tag, state)
            if reason:
                mlflow.set_tag(f"{state_tag}_reason", reason[:5000])
        mlflow.end_run(RunStatus.to_string(status))

    try:
        yield run
    except (KeyboardInterrupt, SystemExit):
        end(RunStatus.KILLED, "killed")
        raise
    except killed_on as exc:
        end(RunStatus.KILLED, "pruned", str(exc))
        raise
    except BaseException as exc:
        end(RunStatus.FAILED, "failed", f"{type(exc).__name__}: {exc}")
        raise
    else:
        end(RunStatus.FINISHED, "complete")


def cell_tags(cfg: Config, dataset: str, replicate: int = 0) -> dict[str, str]:
    ab = cfg.ablation
    return {**{t.upper(): str(getattr(ab, t)).lower() for t in TOGGLES},
            "config_id": str(config_id(ab)), "config_name": config_name(ab), "dataset": dataset,
            "arch": cfg.model.arch, "replicate": str(replicate), "seed": str(cell_seed(cfg, replicate)),
            "finalbn.cell": "true"}


def track_cell(cfg: Config, dataset: str, splits_dir: Path, callbacks=(), progress: bool = False,
               run_name: str | None = None, extra_tags: dict[str, str] | None = None,
               parent_run_id: str | None = None, replicate: int = 0,
               killed_on: tuple[type[BaseException], ...] = (), state_tag: str | None = None,
               on_start=None, on_end=None) -> tuple[str, CellResult]:
    """One cell as one run (see the module docstring); `on_start(run_id)` is called once the run
    exists (a search trial records its run id), `on_end(result)` while it is still active (the
    export saves its weights there)."""
    setup(cfg)
    tags = {**cell_tags(cfg, dataset, replicate), **(extra_tags or {})}
    name = run_name or f"{dataset} {tags['config_name']} r{replicate}"
    with cell_run(name, tags, parent_run_id=parent_run_id, killed_on=killed_on, state_tag=state_tag) as run:
        run_id = run.info.run_id
        if on_start is not None:
            on_start(run_id)
        # `mlflow run -P a.b=v` has already logged a.b with the user's spelling; MLflow refuses
        # to change a logged param, so those keys keep theirs.
        logged = mlflow.get_run(run_id).data.params
        params = {k: _param_text(v) for k, v in flatten(to_dict(cfg)).items() if k not in logged}
        mlflow.log_params(params)
        result = run_cell(cfg, dataset, splits_dir, callbacks=[EpochLogger(run_id), *callbacks], progress=progress,
                          replicate=replicate)
        log_result(cfg, result)
        if on_end is not None:
            on_end(result)
    return run_id, result


def log_result(cfg: Config, r: CellResult) -> None:
    """Test metrics, tags that only exist after training, and every artifact of one cell."""
    mlflow.set_tags({"manifest_sha256": r.manifest_sha256, "bn_policy": r.bn_policy, "device": r.device,
                     "features": r.info.get("features", "unshared"),
                     "selected_epoch": str(r.fit.selected_epoch)})
    finite = lambda d: {_metric_name(k): v for k, v in d.items() if v == v}  # noqa: E731 - NaN (one class) is not logged
    mlflow.log_metrics(finite({f"test_{k}": v for k, v in r.test_last.items()}))
    mlflow.log_metrics(finite({f"test_sel_{k}": v for k, v in r.test_sel.items()}))
    mlflow.log_metrics(finite({f"val_last_{k}": v for k, v in r.val_last.items()}))
    sel = r.fit.history[r.fit.selected_epoch - 1]
    mlflow.log_metrics(finite({f"val_sel_{k[4:]}": v for k, v in sel.items() if k.startswith("val_")}))
    if r.info.get("temperature") is not None:
        mlflow.log_metric("temperature", r.info["temperature"])
    mlflow.log_metrics({"selected_epoch": r.fit.selected_epoch, "train_seconds": r.fit.train_seconds,
                        "train_images_per_second": r.fit.train_images / max(r.fit.train_seconds, 1e-9)})
    if r.class_weights:
        mlflow.log_params({f"class_weight_{i}": round(w, 6) for i, w in enumerate(r.class_weights)})
    labels, last = r.info["labels"], r.info["probs_last"]
    title = f"{r.dataset} r{r.replicate} {r.config_name} (config {r.config_id})"
    figures = {
        "loss_curves.png": plots.loss_curves(r.fit.history, title),
        "softmax_scatter.png": plots.softmax_scatter(labels, last, f"{title}, last epoch"),
        "reliability_last.png": plots.reliability_diagram(r.reliability_last, f"last epoch, ECE {r.test_last['ece']:.3f}"),
        "reliability_selected.png": plots.reliability_diagram(
            r.reliability_sel, f"selected epoch {r.fit.selected_epoch}, ECE {r.test_sel['ece']:.3f}"),
        "confusion_matrix.png": plots.confusion_matrix_plot(r.confusion_last),
    }
    for name, fig in figures.items():
        mlflow.log_figure(fig, f"plots/{name}")
        plt.close(fig)
    mlflow.log_text(_csv(r.predictions), "predictions/test_predictions.csv")
    mlflow.log_text(_csv(r.fit.history), "history.csv")
    mlflow.log_text(yaml.safe_dump(to_dict(cfg), sort_keys=False), "config.yaml")
    mlflow.log_dict({"last": r.reliability_last, "selected": r.reliability_sel}, "reliability.json")
    if cfg.train.log_model:
        _log_model(r.info["model"], cfg.dataset(r.dataset).image_size)


def _metric_name(name: str) -> str:
    # MLflow allows letters, digits, _ - . / and space; a user's folder name may hold anything
    return re.sub(r"[^A-Za-z0-9_\-./ ]", "_", name)


# ---------------------------------------------------------------- reading runs (report, ceiling)


def finished_cell_runs(experiment: str) -> list:
    """Every FINISHED run tagged finalbn.cell=true of `experiment` (active ones only)."""
    client = mlflow.MlflowClient(tracking_uri=tracking_uri())
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    flt, runs, token = "tags.`finalbn.cell` = 'true' and attributes.status = 'FINISHED'", [], None
    while True:
        page = client.search_runs([exp.experiment_id], flt, max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            break
    # the filter already says so; checked again so a store with looser filtering cannot leak runs in
    return [r for r in runs if r.info.status == "FINISHED" and r.data.tags.get("finalbn.cell") == "true"]


def metric_history(run_id: str, keys) -> dict[int, dict[str, float]]:
    """{epoch: {key: value}} of the per-epoch metrics `keys` of one run (a later value wins)."""
    client = mlflow.MlflowClient(tracking_uri=tracking_uri())
    by_epoch: dict[int, dict[str, float]] = {}
    for key in keys:
        for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.timestamp):
            by_epoch.setdefault(int(m.step), {})[key] = float(m.value)
    return by_epoch


def artifact_text(run_id: str, path: str) -> str | None:
    """The text of one artifact of a run, or None when it is missing."""
    client = mlflow.MlflowClient(tracking_uri=tracking_uri())
    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = client.download_artifacts(run_id, path, tmp)
        except Exception:  # a missing artifact raises MlflowException or OSError depending on the store
            return None
        p = Path(local)
        return p.read_text(encoding="utf-8") if p.is_file() else None


def log_report(out_dir: Path, experiment: str) -> str:
    """Log every file of `out_dir` as artifacts of a new run named "report" (tag finalbn.report=true,
    never finalbn.cell) in `experiment`; the headline numbers of summary.json become its metrics
    and the verdict a tag. Returns the run id."""
    from mlflow.entities import Metric

    out = Path(out_dir)
    if not out.is_dir():
        raise FileNotFoundError(f"{out} does not exist: build the report first")
    client = mlflow.MlflowClient(tracking_uri=tracking_uri())
    exp = client.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp is not None else client.create_experiment(experiment)
    run_id = client.create_run(exp_id, run_name="report", tags={"finalbn.report": "true"}).info.run_id
    try:
        client.log_artifacts(run_id, str(out))
        summary_path = out / "summary.json"
        if summary_path.is_file():
            s = json.loads(summary_path.read_text(encoding="utf-8"))
            now = int(time.time() * 1000)
            flat = {_metric_name(k): v for k, v in (s.get("metrics") or {}).items()}
            metrics = [Metric(k, float(v), now, 0) for k, v in flat.items()
                       if isinstance(v, (int, float)) and v == v]
            if metrics:
                client.log_batch(run_id, metrics=metrics)
            for i, line in enumerate(s.get("verdict") or []):
                client.set_tag(run_id, f"verdict_{i}", str(line)[:5000])
        client.set_terminated(run_id, "FINISHED")
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    return run_id


def study_parent(cfg: Config, study: str, existing: str | None = None) -> str:
    """The parent run of a search study: `existing` when it is still there, else a new one
    (tag finalbn.study=<name>; trials are its children)."""
    setup(cfg)
    client = mlflow.MlflowClient()
    if existing:
        try:
            run = client.get_run(existing)
            if run.info.lifecycle_stage == "active":
                return existing
        except Exception:  # deleted or from another store: start a new parent
            pass
    exp = mlflow.get_experiment_by_name(cfg.tracking.experiment)
    tags = {"finalbn.study": study, "mlflow.runName": f"search {study}"}
    run_id = client.create_run(exp.experiment_id, tags=tags).info.run_id
    client.log_param(run_id, "search", json.dumps(to_dict(cfg.search), default=str)[:6000])
    return run_id


def finish_study_parent(run_id: str, metrics: dict[str, float], summary: dict, figures=()) -> None:
    client = mlflow.MlflowClient()
    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[mlflow.entities.Metric(k, float(v), now, 0) for k, v in metrics.items()
                                      if v is not None and v == v])
    client.log_dict(run_id, summary, "search.json")
    for path in figures:
        client.log_artifact(run_id, str(path), "plots")
    client.set_terminated(run_id, RunStatus.to_string(RunStatus.FINISHED))


def log_ceiling(cfg: Config, result: dict) -> str:
    """One run per (dataset, arch) ceiling measurement, tagged finalbn.ceiling=true."""
    setup(cfg)
    tags = {"finalbn.ceiling": "true", "dataset": result["dataset"], "arch": result["arch"]}
    with cell_run(f"ceiling {result['dataset']} {result['arch']}", tags) as run:
        mlflow.log_params({k: _param_text(result[k]) for k in ("weights", "image_size", "images", "n", "feature_dim",
                                                              "folds")})
        mlflow.log_metrics({"ceiling_auroc": result["auroc"], "ceiling_auroc_std": result["auroc_std"]})
        mlflow.log_dict(result, "ceiling.json")
        return run.info.run_id


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


def _param_text(v: Any) -> str:
    """Params as the YAML spelling: true/false, null, numbers and lists as written."""
    text = "null" if v is None else str(v).lower() if isinstance(v, bool) else str(v)
    return text[:6000]


def _csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    if rows:
        w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    return buf.getvalue()

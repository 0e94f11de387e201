"""One cell as one tracked run: where the training cell and the tracking adapter meet.

    run_id, result = track_cell(cfg, "synthetic-apple", Path("data/splits"), CellRun("grid"), MlflowTracker(),
                                replicate=0)

The grid's cells, the search's trials and comparison runs, the export's retraining and
`finalbn train` all come through here: the tracker's `cell_run` (`finalbn.stages.tracker`: the
MLflow adapter, or the in-memory one of tests and `finalbn bench`) wraps `cell.run_cell`, whose
epochs reach the store through the run's epoch logger (the training loop knows nothing of MLflow). Logged:
the config values the cell used (`cell_params`, flattened: its dataset, split, model, training and
switches; not other stages' keys) and, beside them, its replicate, the seed it trained with and the six
switches (`run_params`: `replicate`, `seed.effective`, `switch.bn`, ...); the six toggles, replicate and
BN policy as tags; the split manifest as the run's MLflow dataset input (its hash as the digest), per-epoch metrics by step (validation AUROC/AP/F1/balanced loss, the final BN's
running mean/var, gamma, beta), validation and test metrics at the last epoch (`val_last_*`,
`test_*`: the primary numbers) and test metrics at the validation-selected epoch (`test_sel_*`),
per-disease test recall, and artifacts: loss curves, the softmax scatter (paper Fig. 4),
reliability diagrams, confusion matrix, per-image test and validation predictions, history and
config.yaml.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from finalbn.config import TOGGLES, Config, cell_seed, config_id, config_name, flatten, to_dict
from finalbn.data.splits import split_dir
from finalbn.infra import faults, interrupt
from finalbn.plots import cellplots
from finalbn.stages.tracker import Run, Tracker
from finalbn.tracking import records as tags_
from finalbn.train.cell import CellResult, run_cell
from finalbn.train.keys import result_key

__all__ = [
    "NO_HOOKS",
    "VAL_PREDICTIONS",
    "CellHooks",
    "CellRun",
    "cell_figures",
    "cell_params",
    "cell_tags",
    "draws_figures",
    "log_result",
    "run_params",
    "track_cell",
]

VAL_PREDICTIONS = "predictions/val_predictions.csv"  # path, label, p1_last: pooled by the export's decision rules


def cell_tags(cfg: Config, dataset: str, replicate: int = 0) -> dict[str, str]:
    """The tags that describe a cell: its six switches, config id and name, dataset, arch,
    replicate and seed."""
    ab = cfg.ablation
    return {
        **{tags_.toggle_tag(t): str(getattr(ab, t)).lower() for t in TOGGLES},
        tags_.CONFIG_ID: str(config_id(ab)),
        tags_.CONFIG_NAME: config_name(ab),
        tags_.DATASET: dataset,
        tags_.ARCH: cfg.model.arch,
        tags_.REPLICATE: str(replicate),
        tags_.SEED: str(cell_seed(cfg, replicate)),
        tags_.CELL: "true",
    }


def cell_params(cfg: Config, dataset: str) -> dict[str, object]:
    """The config values one cell uses, flattened (`model.arch`, `train.lr`, `dataset.root`, ...):
    its own dataset (not the others), the split, the model, the training and the six switches;
    a setting its switches leave unused is left out (augmentation without DA, the mixup alpha
    without MX, weight decay without WD, a loss's own knob under another loss)."""
    ab, t = cfg.ablation, to_dict(cfg.train)
    drop = {"augment"} if not ab.da else set()
    drop |= {"mixup_alpha"} if not ab.mx else set()
    drop |= {"weight_decay", "wd_on_bn"} if not ab.wd else set()
    drop |= {"focal_gamma"} if cfg.train.loss != "focal" else set()
    drop |= {"cb_beta"} if cfg.train.loss != "class_balanced" else set()
    used = {
        "dataset": to_dict(cfg.dataset(dataset)),
        "split": to_dict(cfg.split),
        "model": to_dict(cfg.model),
        "train": {k: v for k, v in t.items() if k not in drop},
        "ablation": to_dict(ab),
    }
    if cfg.model.weights == "synthetic":
        used["pretrain"] = {"out_dir": cfg.pretrain.out_dir}
    return flatten(used)


def run_params(cfg: Config, replicate: int) -> dict[str, object]:
    """The params that say which run of its configuration a cell is, beside `cell_params`: its
    replicate, the seed it trained with (`cell_seed`: `train.seed` is the base of every replicate's)
    and the six switches as `switch.<name>`, named like a grid parent's, so MLflow compares both."""
    return {
        tags_.REPLICATE_PARAM: replicate,
        tags_.SEED_EFFECTIVE: cell_seed(cfg, replicate),
        **{tags_.switch_param(t): getattr(cfg.ablation, t) for t in TOGGLES},
    }


@dataclass(frozen=True)
class CellRun:
    """Where a cell's run goes: `stage`'s experiment, its name (default "<config name> r<replicate>"),
    its parent run, and tags beyond the cell's own (`cell_tags`)."""

    stage: str
    name: str | None = None
    parent_run_id: str | None = None
    tags: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class CellHooks:
    """What a caller adds to a tracked cell: epoch `callbacks`; `on_start(run_id)` once the run
    exists (a search trial records its run id); `on_end(run, result)` while it is still open (the
    export saves its weights there); the exceptions that end it KILLED rather than FAILED (a pruned
    trial) and the tag that says how it ended (`state_tag`: complete / pruned / failed / killed);
    the fault point its first epoch ends at (`fault`, default `<stage>.cell`, `finalbn.infra.faults`)."""

    callbacks: Sequence[Any] = ()
    on_start: Callable[[str], None] | None = None
    on_end: Callable[[Run, CellResult], None] | None = None
    killed_on: tuple[type[BaseException], ...] = ()
    state_tag: str | None = None
    fault: str = ""


NO_HOOKS = CellHooks()


def track_cell(
    cfg: Config,
    dataset: str,
    splits_dir: Path,
    where: CellRun,
    tracker: Tracker,
    *,
    replicate: int = 0,
    hooks: CellHooks = NO_HOOKS,
    progress: bool = False,
) -> tuple[str, CellResult]:
    """One cell (`dataset`, `replicate`) as one run `where` says, in `tracker`'s store (see the
    module docstring), with the caller's `hooks`. Returns (run id, result). Raises what `run_cell`
    raises; the run then ends FAILED (KILLED on Ctrl-C or an exception of `hooks.killed_on`)."""
    tracker.setup(cfg, where.stage)
    tags = {
        **cell_tags(cfg, dataset, replicate),
        tags_.CONFIG_KEY: result_key(cfg, dataset, None, splits_dir),
        **where.tags,
    }
    name = where.name or f"{tags[tags_.CONFIG_NAME]} r{replicate}"
    with tracker.cell_run(
        name, tags, parent_run_id=where.parent_run_id, killed_on=hooks.killed_on, state_tag=hooks.state_tag
    ) as run:
        if hooks.on_start is not None:
            hooks.on_start(run.run_id)
        # `mlflow run -P a.b=v` has already logged a.b with the user's spelling, and a resumed run
        # has its params; MLflow refuses to change a logged param, so those keys keep theirs.
        logged = run.logged_params()
        params = {**cell_params(cfg, dataset), **run_params(cfg, replicate)}
        run.log_params({k: v for k, v in params.items() if k not in logged})
        epochs = run.epoch_logger()
        try:
            point = _Point(hooks.fault or f"{where.stage}.cell")
            result = run_cell(
                cfg,
                dataset,
                splits_dir,
                callbacks=[epochs, *hooks.callbacks, point],
                progress=progress,
                replicate=replicate,
            )
        finally:  # a failed or interrupted cell keeps the epochs it trained
            epochs.flush()
        log_result(run, cfg, result, figures=draws_figures(cfg, where.stage))
        manifest = split_dir(splits_dir, cfg.dataset(dataset).name, replicate) / "manifest.csv"
        run.log_dataset(manifest, f"{dataset} r{replicate}", result.manifest_sha256)
        if hooks.on_end is not None:
            hooks.on_end(run, result)
    return run.run_id, result


class _Point:
    """An epoch callback at the fault point `<stage>.cell` (`finalbn.infra.faults`), where a Ctrl-C that
    Python swallowed is also delivered (`finalbn.infra.interrupt`)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        interrupt.deliver()  # a Ctrl-C Python swallowed stops the cell here
        faults.point(self.name)


def draws_figures(cfg: Config, stage: str) -> bool:
    """Whether a cell run of `stage` draws its figures as it finishes (`tracking.cell_figures`)."""
    return cfg.tracking.cell_figures == "all" or (cfg.tracking.cell_figures == "train" and stage == "train")


def log_result(run: Run, cfg: Config, r: CellResult, figures: bool = True) -> None:
    """Test metrics, tags that only exist after training, and every artifact of one cell: one call
    each for the metrics, the tags and the files (a grid logs thousands of cells)."""
    run.set_tags(
        {
            tags_.MANIFEST: r.manifest_sha256,
            tags_.BN_POLICY: r.bn_policy,
            tags_.DEVICE: r.device,
            tags_.FEATURES: r.features,
            tags_.SELECTED_EPOCH: str(r.fit.selected_epoch),
            tags_.NOTE: describe(cfg, r),
        }
    )  # the run page's Description
    run.log_metrics(r.metrics())
    if r.class_weights:
        run.log_params({f"class_weight_{i}": round(w, 6) for i, w in enumerate(r.class_weights)})
    if figures:
        for name, fig in cell_figures(
            r.fit.history,
            r.labels,
            r.probs_last,
            r.reliability_last,
            r.reliability_sel,
            r.confusion_last,
            r.fit.selected_epoch,
            _title(r),
            r.test_last["ece"],
            r.test_sel["ece"],
        ).items():
            run.log_figure(fig, f"plots/{name}")
    run.log_files(
        {
            "predictions/test_predictions.csv": _csv(r.predictions),
            VAL_PREDICTIONS: _csv(r.val_predictions),
            "history.csv": _csv(r.fit.history),
            "config.yaml": yaml.safe_dump(to_dict(cfg), sort_keys=False),
            "reliability.json": json.dumps({"last": r.reliability_last, "selected": r.reliability_sel}, indent=2),
        }
    )
    if cfg.train.log_model:
        _log_model(run, r.model, cfg.dataset(r.dataset).image_size)


def describe(cfg: Config, r: CellResult) -> str:
    """A cell run's description: which switches, which data, what it scored."""
    on = [t.upper() for t in TOGGLES if getattr(cfg.ablation, t)]
    off = [t.upper() for t in TOGGLES if not getattr(cfg.ablation, t)]
    t = r.test_last
    return (
        f"Configuration {r.config_id} ({r.config_name}): {', '.join(on) or 'no switch'} on"
        f"{'; ' + ', '.join(off) + ' off' if off else ''}. Replicate {r.replicate} of {r.dataset} "
        f"(split manifest {r.manifest_sha256[:12]}), {cfg.model.arch}, {r.fit.selected_epoch} of "
        f"{len(r.fit.history)} epochs selected on validation. Test, last epoch: minority F1 {t['f1_1']:.3f}, "
        f"AUROC {t['auroc']:.3f}, ECE {t['ece']:.3f}."
    )


def _title(r: CellResult) -> str:
    return f"{r.dataset} r{r.replicate} {r.config_name} (config {r.config_id})"


def cell_figures(
    history: list[dict],
    labels: np.ndarray,
    probs_last: np.ndarray,
    reliability_last: dict,
    reliability_sel: dict,
    confusion: list[list[int]],
    selected_epoch: int,
    title: str,
    ece_last: float,
    ece_sel: float,
) -> dict:
    """A cell's five figures by file name, from what its run logs (`finalbn figures` draws them
    again from the run's artifacts): loss curves, softmax scatter (paper Fig. 4), reliability at
    the last and the selected epoch, confusion matrix. `probs_last`: (N, 2) softmax."""
    return {
        "loss_curves.png": cellplots.loss_curves(history, title),
        "softmax_scatter.png": cellplots.softmax_scatter(labels, probs_last, f"{title}, last epoch"),
        "reliability_last.png": cellplots.reliability_diagram(reliability_last, f"last epoch, ECE {ece_last:.3f}"),
        "reliability_selected.png": cellplots.reliability_diagram(
            reliability_sel, f"selected epoch {selected_epoch}, ECE {ece_sel:.3f}"
        ),
        "confusion_matrix.png": cellplots.confusion_matrix_plot(confusion),
    }


def _log_model(run: Run, model: torch.nn.Module, size: int) -> None:
    model.eval().cpu()
    # Batch 2: torch.export (MLflow 3's pt2 format) would specialise the batch axis to a batch of 1.
    example = np.zeros((2, 3, size, size), dtype=np.float32)
    with torch.no_grad():
        out = model(torch.from_numpy(example)).numpy()
    run.log_torch_model(model, example, out)


def _csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    if rows:
        w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    return buf.getvalue()

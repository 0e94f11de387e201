"""The `ceiling` stage: can the frozen body see the cue at all? Measured before the grid.

    finalbn ceiling --dataset synthetic-apple --out results/ceiling/synthetic-apple.json
    result = measure_ceiling(cfg, "synthetic-apple", Path("data/splits"))
    result["auroc"]        # cross-validated AUROC of a balanced linear probe on the body's features

If healthy and diseased images are not separable in the frozen body's pooled features, no head
(with or without a final BN) can rescue the minority class, and the grid measures mostly noise.
The probe is scikit-learn's logistic regression (balanced class weights, standardised features)
on the body's concat-pooled features (max ‖ avg, exactly the head's pool) of a balanced image
set, scored by stratified k-fold cross-validated AUROC; one per (dataset, arch), each logged as
an MLflow run. The report opens with them (`separability`: the file and its wording).

The images: spare images of the dataset that no split of replicate 0 uses (the synthetic source
renders more than the split needs), balanced by subsampling; where the source has too few spares,
the test split of replicate 0 — for reporting only: nothing here feeds training or any choice.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from tqdm import tqdm

from finalbn import tracking
from finalbn.config import Config
from finalbn.data.sources import collect
from finalbn.data.splits import DataError, read_manifest, split_dir
from finalbn.data.tensors import decode_images, decode_settings, eval_transform
from finalbn.infra import faults
from finalbn.models import AdaptiveConcatPool2d, create_model, get_spec
from finalbn.stages.tracker import Tracker
from finalbn.stats.separability import LOW, ceiling_sentence, write_ceiling
from finalbn.tracking import records
from finalbn.tracking.adapter import MLFLOW
from finalbn.train.cell import preflight, weights_path
from finalbn_field.images import escape_name

MIN_PER_CLASS = 20  # fewer spare images per class than this: use the test split instead


@torch.no_grad()
def pooled_features(
    body: torch.nn.Module,
    images: torch.Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    batch_size: int = 128,
    progress: bool = False,
) -> np.ndarray:
    """(N, 2C) max ‖ avg pooled body features of uint8 images (N, 3, H, W), body in eval mode."""
    body.eval()
    tf = eval_transform(tuple(mean), tuple(std))
    pool = AdaptiveConcatPool2d()
    out = []
    for i in tqdm(range(0, len(images), batch_size), desc="features", unit="batch", disable=not progress):
        fmap = body(tf(images[i : i + batch_size]))  # (B, C, h, w)
        out.append(pool(fmap).flatten(1).numpy())
    return np.concatenate(out).astype(np.float64)


def probe_auroc(features: np.ndarray, labels: np.ndarray, folds: int = 5, seed: int = 0) -> dict:
    """Stratified k-fold CV AUROC of a balanced, standardised logistic-regression probe.
    Raises DataError with fewer than 2 images of a class."""
    labels = np.asarray(labels)
    counts = np.bincount(labels, minlength=2)
    folds = int(min(folds, counts.min()))
    if folds < 2:
        raise DataError(f"the separability probe needs at least 2 images of each class (got {counts.tolist()})")
    probe = make_pipeline(StandardScaler(), LogisticRegression(class_weight="balanced", C=1.0, max_iter=2000))
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    scores = cross_val_score(probe, features, labels, cv=cv, scoring="roc_auc")
    return {
        "auroc": float(scores.mean()),
        "auroc_std": float(scores.std(ddof=1)) if len(scores) > 1 else 0.0,
        "folds": folds,
        "fold_auroc": [float(s) for s in scores],
    }


def probe_images(
    cfg: Config, dataset: str, splits_dir: Path, per_class: int, seed: int = 0
) -> tuple[list[str], np.ndarray, str]:
    """(paths, labels, where they come from): a balanced set of spare images, else the test split."""
    ds = cfg.dataset(dataset)
    manifest = splits_dir / ds.name / "0" / "manifest.csv"
    if not manifest.is_file():
        raise FileNotFoundError(f"{manifest} does not exist: run `finalbn prepare` (or `dvc repro`) first")
    rows = read_manifest(manifest)
    used = {r["path"] for r in rows}
    usable = collect(ds, progress=False).usable
    names = {label: [escape_name(p.as_posix()) for _, p in usable[label]] for label in (0, 1)}
    spare = {label: sorted(p for p in names[label] if p not in used) for label in (0, 1)}
    n = min(per_class, len(spare[0]), len(spare[1]))
    rng = np.random.default_rng(seed)
    if n >= MIN_PER_CLASS:
        paths = [p for label in (0, 1) for p in sorted(rng.choice(spare[label], n, replace=False))]
        return paths, np.repeat([0, 1], n), f"{n} + {n} spare images outside the split"
    test = [r for r in rows if r["split"] == "test"]
    by = {label: [r["path"] for r in test if r["label"] == label] for label in (0, 1)}
    n = min(per_class, len(by[0]), len(by[1]))
    paths = [p for label in (0, 1) for p in sorted(rng.choice(by[label], n, replace=False))]
    return paths, np.repeat([0, 1], n), f"{n} + {n} test images (too few spare images; for reporting only)"


def measure_ceiling(
    cfg: Config, dataset: str, splits_dir: Path, arch: str | None = None, progress: bool = False
) -> dict:
    """The probe's CV AUROC for one (dataset, arch) with the configured weights."""
    arch = arch or cfg.model.arch
    c = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, arch=arch))
    ds = cfg.dataset(dataset)
    paths, labels, source = probe_images(cfg, dataset, splits_dir, cfg.ceiling.per_class, cfg.ceiling.seed)
    spec = get_spec(arch)
    model = create_model(arch, weights=weights_path(c))
    # decoded as the split's images are: the intensity prepare recorded (e.g. auto:12, the data set's depth)
    intensity, max_pixels = decode_settings(split_dir(splits_dir, dataset, 0) / "manifest.csv")
    images = decode_images(paths, ds.image_size, progress, intensity, max_pixels)
    feats = pooled_features(model.body, images, spec.mean, spec.std, progress=progress)
    result = probe_auroc(feats, labels, cfg.ceiling.folds, cfg.ceiling.seed)
    result.update(
        {
            "dataset": ds.name,
            "arch": arch,
            "weights": model.weights,
            "image_size": ds.image_size,
            "images": source,
            "n": int(len(labels)),
            "feature_dim": int(feats.shape[1]),
            "low": bool(result["auroc"] < LOW),
        }
    )
    return result


@dataclasses.dataclass(frozen=True)
class CeilingPaths:
    """The prepared splits the probe's images come from, and the JSON file it writes."""

    splits: Path
    out: Path


@dataclasses.dataclass(frozen=True)
class CeilingSummary:
    """One measurement per (dataset, arch): `measure_ceiling`'s dict plus its run id."""

    results: list[dict]


CEILING_PARAMS = ("weights", "image_size", "images", "n", "feature_dim", "folds")


def record(tracker: Tracker, cfg: Config, result: dict) -> str:
    """One run per (dataset, arch) measurement in the ceiling's experiment, tagged finalbn.ceiling=true:
    its sizes as params, the CV AUROC (mean, std) as metrics, the result as ceiling.json."""
    tracker.setup(cfg, "ceiling")
    tags = {records.CEILING: "true", records.DATASET: result["dataset"], records.ARCH: result["arch"]}
    with tracker.cell_run(f"ceiling {result['dataset']} {result['arch']}", tags) as run:
        run.log_params({k: result[k] for k in CEILING_PARAMS})
        faults.point("ceiling.run")
        run.log_metrics({"ceiling_auroc": result["auroc"], "ceiling_auroc_std": result["auroc_std"]})
        run.log_files({"ceiling.json": json.dumps(result, indent=2)})
        return run.run_id


def run(
    cfg: Config, paths: CeilingPaths, tracker: Tracker = MLFLOW, datasets: Sequence[str] = (), log=print
) -> CeilingSummary:
    """The ceiling's core: the probe for every (dataset, arch) (`datasets`: those only), each
    recorded as a run, then the JSON file. Raises DataError or WeightsError, before any work, when
    a split or an arch's weights are missing."""
    names = list(datasets) or [d.name for d in cfg.datasets]
    pairs = [(cfg.dataset(n).name, arch) for n in names for arch in cfg.grid.archs]
    for name, arch in pairs:  # every split and weights file exists before any work
        preflight(dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, arch=arch)), name, paths.splits)
    results = []
    for name, arch in pairs:
        result = measure_ceiling(cfg, name, paths.splits, arch, progress=sys.stderr.isatty())
        result["mlflow_run_id"] = record(tracker, cfg, result)
        results.append(result)
        log(ceiling_sentence(result))
    write_ceiling(results, paths.out)
    return CeilingSummary(results)


def main(cfg: Config, args: argparse.Namespace) -> int:
    """`finalbn ceiling`: the core (`run`) on the store; one run per measurement, then the JSON file."""
    tracking.detach_project_run()  # under `mlflow run -e ceiling`: one run per measurement
    run(cfg, CeilingPaths(Path(args.splits), Path(args.out)), MLFLOW, datasets=args.dataset or ())
    print(f"ceiling -> {args.out}")
    return 0

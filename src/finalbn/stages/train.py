"""`finalbn train` (MLproject entries `main` and `train`): one cell as one tracked run.

    finalbn train --dataset synthetic-apple --replicate 1 --set ablation.bn=false
    mlflow run . --env-manager local -e train -P ablation.wl=true

Under `mlflow run` the cell logs into the project's own run (in the experiment `mlflow run` chose:
"Default" unless `--experiment-name`); otherwise into experiment `<tracking.experiment>/train`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from finalbn import tracking
from finalbn.config import Config
from finalbn.infra.errors import UsageError
from finalbn.stages.cellrun import CellRun, track_cell
from finalbn.stages.tracker import Tracker
from finalbn.tracking.adapter import MLFLOW
from finalbn.train.cell import CellResult, preflight


def run(
    cfg: Config,
    splits: Path,
    tracker: Tracker = MLFLOW,
    *,
    dataset: str = "",
    replicate: int = 0,
    progress: bool = False,
) -> tuple[str, CellResult]:
    """The core of `finalbn train`: one cell of `dataset` (default the first) on `replicate`, as one
    run of the train experiment; (run id, result). Raises UsageError for a negative replicate,
    DataError or WeightsError when its split or weights are missing."""
    dataset = cfg.dataset(dataset).name if dataset else cfg.datasets[0].name
    if replicate < 0:
        raise UsageError(f"--replicate must be >= 0 (got {replicate})")
    preflight(cfg, dataset, splits, replicates=replicate + 1)
    return track_cell(cfg, dataset, splits, CellRun("train"), tracker, replicate=replicate, progress=progress)


def main(cfg: Config, args: argparse.Namespace) -> int:
    run_id, r = run(
        cfg,
        Path(args.splits),
        MLFLOW,
        dataset=args.dataset or "",
        replicate=args.replicate,
        progress=sys.stderr.isatty(),
    )
    fitr = r.fit
    print(
        f"train {r.dataset} {r.config_name} (config {r.config_id}) replicate {r.replicate}: "
        f"{fitr.train_images / fitr.train_seconds:.0f} train img/s, {fitr.train_seconds:.0f} s, bn_policy {r.bn_policy}, "
        f"{r.features} features"
    )
    for label, m in (("last epoch", r.test_last), (f"selected epoch {fitr.selected_epoch}", r.test_sel)):
        print(
            f"  test, {label:17s}: minority P {m['precision_1']:.3f} R {m['recall_1']:.3f} F1 {m['f1_1']:.3f} "
            + (f"(prior-corrected {m['f1_1_pc']:.3f}) " if "f1_1_pc" in m else "")
            + f"| AUROC {m['auroc']:.3f} AP {m['ap']:.3f} | "
            f"majority F1 {m['f1_0']:.3f} | ECE {m['ece']:.3f} Brier {m['brier']:.3f}"
        )
    print(f"  mlflow run {run_id} in {tracking.tracking_uri()} (experiment {tracking.run_experiment(run_id)})")
    return 0

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
from finalbn.stages.tracked import track_cell
from finalbn.train.cell import preflight


def main(cfg: Config, args: argparse.Namespace) -> int:
    dataset = cfg.dataset(args.dataset).name if args.dataset else cfg.datasets[0].name
    if args.replicate < 0:
        raise UsageError(f"--replicate must be >= 0 (got {args.replicate})")
    preflight(cfg, dataset, Path(args.splits), replicates=args.replicate + 1)
    run_id, r = track_cell(cfg, dataset, Path(args.splits), stage="train", progress=sys.stderr.isatty(),
                           replicate=args.replicate)
    fitr = r.fit
    print(f"train {dataset} {r.config_name} (config {r.config_id}) replicate {r.replicate}: "
          f"{fitr.train_images / fitr.train_seconds:.0f} train img/s, {fitr.train_seconds:.0f} s, bn_policy {r.bn_policy}, "
          f"{r.features} features")
    for label, m in (("last epoch", r.test_last), (f"selected epoch {fitr.selected_epoch}", r.test_sel)):
        print(f"  test, {label:17s}: minority P {m['precision_1']:.3f} R {m['recall_1']:.3f} F1 {m['f1_1']:.3f} "
              + (f"(prior-corrected {m['f1_1_pc']:.3f}) " if "f1_1_pc" in m else "")
              + f"| AUROC {m['auroc']:.3f} AP {m['ap']:.3f} | "
              f"majority F1 {m['f1_0']:.3f} | ECE {m['ece']:.3f} Brier {m['brier']:.3f}")
    print(f"  mlflow run {run_id} in {tracking.tracking_uri()} (experiment {tracking.run_experiment(run_id)})")
    return 0

"""The long version of the random-kill test: the DVC pipeline on tiny synthetic data, each stage
killed at many instants drawn over its run, resumed at once each time, to the outputs of an
uninterrupted run (tests/test_pipeline.py runs the short version: the grid and the search, one draw each, a new seed each run).

    python benchmarks/random_kills.py --draws 10 [--seed 1234] [--stages grid search] [--workers 2]

Builds the project in a temporary folder as tests/test_pipeline.py does, runs `dvc repro` once
uninterrupted with params.yaml's worker counts (the reference, and each stage's span), then, on a
copy without its MLflow store, for each stage: `--draws` times, each from the state before the
stage (a copy put back: the draws are independent), `dvc repro --single-item <stage>` started and
killed (SIGKILL to its process group, or Ctrl-C twice) at an instant drawn uniformly over the
stage's span plus DVC's start-up, every output checked whole after the kill; then the stage
resumed to its end, the store settled (no RUNNING run or trial, no temporary left, one FINISHED
run per cell) and its outputs compared with the reference's (`tests/faulting.py` random_kills).
Prints a line per draw (where it landed), then the draws made, how many met a running stage, and
the time taken. A failure prints the seed and draw that reproduce it (`--seed`) and exits 1.
Needs the project's venv (`make install`).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def main() -> int:
    import faulting
    from test_pipeline import _copy_without_store, _project, _repro

    every = [stage for stage, _ in faulting.OUTPUTS[1:]]
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--draws", type=int, default=10, help="kills per stage (default 10)")
    ap.add_argument("--seed", type=int, default=None, help="the seed a failure names (default: a new one)")
    ap.add_argument("--stages", nargs="+", default=every, choices=every, help="the stages to kill (default all)")
    ap.add_argument("--workers", type=int, default=2, help="grid and search processes (default 2, as params.yaml)")
    args = ap.parse_args()
    seed = faulting.kill_seed() if args.seed is None else args.seed
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="finalbn-kills-") as tmp:
        (Path(tmp) / "reference").mkdir()
        repo = _project(Path(tmp) / "reference", git=True)
        _repro(repo)
        spans = faulting.spans(repo)
        print("reference run; stage spans (s): " + ", ".join(f"{s} {spans[s]:.1f}" for s in args.stages), flush=True)
        copy = _copy_without_store(repo, Path(tmp) / "killed", workers=args.workers)  # (copytree makes the folder)
        try:
            log = faulting.random_kills(copy, repo, {s: spans[s] for s in args.stages}, args.draws, seed, _repro)
            faulting.assert_same_outputs(copy, repo)
        except AssertionError as exc:
            print(f"FAILED (seed {seed}; rerun with --seed {seed} --draws {args.draws}): {exc}", flush=True)
            return 1
    print("\n".join(log))
    landed = sum(" killed" in line for line in log)
    print(
        f"{len(log)} draws over {len(args.stages)} stage(s), seed {seed}: {landed} killed a running stage, "
        f"{len(log) - landed} came after it had finished; every output whole after each, every resume settled, "
        f"the outputs equal the uninterrupted run's; {time.monotonic() - t0:.0f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The `store` stage: does the MLflow store hold the runs the tracking stages' outputs cite?

    finalbn store --out results/store    # one fingerprint per tracking stage (`tracking.fingerprint`)
    finalbn grid --fingerprint results/store/grid.json   # a stage marks its own as it ends (`mark`)

DVC decides from files; the store is outside them. `finalbn store` rewrites each tracking stage's
fingerprint from the store MLFLOW_TRACKING_URI names (default sqlite:///mlflow.db), and `make run`
runs it before `dvc repro` (run it yourself before a bare `dvc repro`). Each of those stages has its
fingerprint as a dependency, so:

- the store holds every run and alias a stage's outputs cite: the fingerprint is the one the stage
  wrote as it ended, and DVC skips the stage;
- runs are gone (`rm mlflow.db`, an older backup, runs deleted in the UI), or the URI is another
  store: the fingerprint changes and the stage runs again. The grid trains only the cells the store
  lacks (cells are found by key), the search starts its study again when the study's trials cite
  missing runs, the export registers its model again, and the report reads and cites the store
  it was run with. Runs are trained, not copied from another store: a run holds its weights and
  figures, which only the store that made it has.

In dvc.yaml this command is also the `store` stage, whose one output is the folder's README.md:
it runs once (and when its code or the datasets change), making the fingerprints not there yet, and
every tracking stage depends on that README, so it runs first. It is not `always_changed`: DVC
would then list it in every `dvc status`, which could never say the pipeline is up to date. Each
fingerprint belongs to no stage's outputs (its stage writes it as it ends, and DVC records it as
that stage's dependency then), so after a full run `dvc status` is clean.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from finalbn import tracking
from finalbn.config import Config
from finalbn.infra import io

STAGES = ("grid", "search", "sensitivity", "needs", "report", "export")  # besides one ceiling per dataset

# what each tracking command's outputs are (from its arguments): the files its fingerprint's runs are read from
OUTPUTS = {
    "ceiling": lambda a: [a.out],
    "grid": lambda a: [Path(a.results) / "grid.csv", Path(a.results) / "grid.json"],
    "search": lambda a: [a.out],
    "sensitivity": lambda a: [a.out],
    "needs": lambda a: [a.out],
    "report": lambda a: [a.out],
    "export": lambda a: [a.out],
}


README = """# The tracking store's fingerprints

One JSON file per tracking stage of dvc.yaml: the MLflow store's URI, the run ids its outputs cite,
the registered aliases it set, and which of them the store lacks. Each is a dependency of its stage,
written by that stage as it ends; `finalbn store` (which `make run` runs before `dvc repro`) rewrites
them from the store it finds, so a stage whose runs are gone runs again. src/finalbn/stages/store.py
says more. Made by `finalbn store`; do not edit.
"""


def fingerprints(cfg: Config, out: Path) -> dict[str, Path]:
    """dvc.yaml's tracking stage -> its fingerprint file under `out`."""
    paths = {f"ceiling@{ds.name}": out / "ceiling" / f"{ds.name}.json" for ds in cfg.datasets}
    paths.update({s: out / f"{s}.json" for s in STAGES})
    return paths


def mark(command: str, args: argparse.Namespace) -> dict:
    """After `finalbn <command> --fingerprint PATH` succeeded: PATH says which runs its outputs cite
    (and the runs and aliases it made that they cannot cite, `tracking.fingerprint.note_*`)."""
    fp = tracking.fingerprint
    runs, models = fp.noted()
    return fp.mark(args.fingerprint, fp.cited(OUTPUTS[command](args)) | runs, models)


def _why(stage: str, old: dict, new: dict) -> str | None:
    """Why `stage` runs again, or None when the store holds what its outputs cite."""
    if old.get("runs") and old.get("store") != new["store"]:
        return f"{stage}: its outputs cite runs of another store ({old.get('store')}): it runs again here"
    parts = []
    lost, cited = len(new["missing_runs"]), len(new["runs"])
    if lost:
        parts.append(
            f"all {cited} run(s) its outputs cite"
            if lost == cited
            else f"{lost} of the {cited} run(s) its outputs cite"
        )
    if new["missing_models"]:
        parts.append(f"the alias {', '.join(new['missing_models'])} of its model")
    return f"{stage}: the store lacks {' and '.join(parts)}: it runs again" if parts else None


def main(cfg: Config, args: argparse.Namespace) -> int:
    """`finalbn store`: every tracking stage's fingerprint, from the store found now."""
    out = Path(args.out)
    where = tracking.fingerprint.store_identity()
    # a server out of reach: a few seconds, not MLflow's default minutes of retries in silence
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    notes, held = [], 0
    for stage, path in fingerprints(cfg, out).items():
        old = tracking.fingerprint.read(path)
        try:
            new = tracking.fingerprint.refresh(path)
        except Exception as exc:  # a server out of reach, a database refused: one line, not a traceback
            first = str(exc).splitlines()[0] if str(exc) else ""
            print(
                f"finalbn store: the tracking store {where} cannot be read: {type(exc).__name__}: {first}",
                file=sys.stderr,
            )
            return 1
        why = _why(stage, old, new)
        if why:
            notes.append(why)
        else:
            held += len(new["runs"])
    if notes:
        said = f"{len(notes)} stage(s) to run again ({held} run(s) of the others found)"
    else:
        said = f"it holds the {held} run(s) the stages' outputs cite" if held else "no stage's outputs cite a run yet"
    readme = out / "README.md"
    if not readme.is_file() or readme.read_text(encoding="utf-8") != README:
        io.write_text(readme, README)
    print(f"store {where}: {said} -> {out}")
    for line in notes:
        print(f"  {line}")
    return 0

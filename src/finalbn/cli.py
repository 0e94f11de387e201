"""The `finalbn` command: argparse and a table from command to stage. Only this module reads argv.

    finalbn prepare --params params.yaml --set split.seed=3
    finalbn prepare --split.seed 3            # the form `mlflow run . -P split.seed=3` appends

Config and data errors print one line and exit with status 2 before any work starts. Ctrl-C
(exit 130) closes what is open — runs KILLED, a trial FAIL, no half-written file — and says in one
line what was kept; a second Ctrl-C meanwhile does not cut that short (kill -9 does: the next run
of the same command cleans up after it). The same command then goes on from there. Storage that
refused a write, or a tracking server that did not answer through MLflow's retries, is one line too
(exit 1): what was kept, and to run the same command again.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
import threading
import time
from collections.abc import Callable

from finalbn.config import Config, ConfigError, load_config
from finalbn.infra import interrupt
from finalbn.infra.errors import (
    DataError,
    StoreError,
    TrainingDiverged,
    UsageError,
    WeightsError,
    server_unreachable,
    storage_full,
)

EXIT_USAGE = 2


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--params",
        action="append",
        metavar="FILE",
        help="params file (default params.yaml); repeat to overlay files in order",
    )
    common.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        dest="overrides",
        help="override one key, e.g. --set split.seed=3 (also: --split.seed 3)",
    )
    parser = argparse.ArgumentParser(prog="finalbn", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("synthesize", parents=[common], help="write the built-in synthetic leaf collection")
    p = sub.add_parser("prepare", parents=[common], help="validate images and draw the imbalanced splits")
    p.add_argument("--dataset", action="append", help="only this dataset (repeatable); default: all")
    p.add_argument("--out", default="data/splits", help="output folder (default data/splits)")
    p = sub.add_parser("pretrain", parents=[common], help="train the synthetic backbone (model.weights=synthetic)")
    p = sub.add_parser(
        "store",
        parents=[common],
        help="does the MLflow store hold what each stage's outputs cite? (a fingerprint per stage)",
    )
    p.add_argument("--out", default="results/store", help="folder of the fingerprints (default results/store)")
    p = sub.add_parser(
        "ceiling",
        parents=[common, _fingerprinted()],
        help="can the frozen body see the cue? CV AUROC of a balanced linear probe",
    )
    p.add_argument("--splits", default="data/splits", help="where prepare wrote the splits (default data/splits)")
    p.add_argument("--dataset", action="append", help="only this dataset (repeatable); default: all")
    p.add_argument("--out", default="results/ceiling/all.json", help="output file (default results/ceiling/all.json)")
    p = sub.add_parser(
        "train", parents=[common], help="train one cell (dataset, replicate, six toggles) as an MLflow run"
    )
    p.add_argument("--dataset", help="dataset name (default: the first in params)")
    p.add_argument("--replicate", type=int, default=0, help="which split draw and seed (default 0)")
    p.add_argument("--splits", default="data/splits", help="where prepare wrote the splits (default data/splits)")
    p = sub.add_parser(
        "grid", parents=[common, _fingerprinted()], help="run the factorial grid of cells (resumable, shardable)"
    )
    p.add_argument("--shard", metavar="I/N", help="run only shard I of N (0-based), e.g. 0/4; writes no results")
    p.add_argument("--workers", type=int, help="local shard processes (default grid.workers)")
    p.add_argument(
        "--executor",
        choices=("local", "ray"),
        help="local shard processes, or Ray tasks on $RAY_ADDRESS / a local Ray (default grid.executor)",
    )
    p.add_argument("--splits", default="data/splits", help="where prepare wrote the splits (default data/splits)")
    p.add_argument("--results", default="results", help="where grid.csv/grid.json go (default results)")
    p.add_argument(
        "--stage", choices=("grid", "sensitivity", "needs"), default="grid", help=argparse.SUPPRESS
    )  # whose experiment the runs go to: the sensitivity stage's levels
    p.add_argument(
        "--no-share",
        action="store_true",
        help="run the frozen body inside every UF-off cell (train.share_features=false): same numbers, slower",
    )
    _later_stages(sub, common)
    return parser


def _fingerprinted() -> argparse.ArgumentParser:
    """The option of the commands that track: the stage's store fingerprint (dvc.yaml's `store` stage)."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument(
        "--fingerprint",
        metavar="FILE",
        help="once done, write which runs and models of the tracking "
        "store the outputs cite to FILE (dvc.yaml: results/store/<stage>.json)",
    )
    return p


def _later_stages(sub, common: argparse.ArgumentParser) -> None:
    """search, export, bench, report: the stages after the grid, and the benchmark."""
    p = sub.add_parser(
        "search", parents=[common, _fingerprinted()], help="an Optuna study beyond the grid, scored on validation"
    )
    p.add_argument("--workers", type=int, help="processes on the study (default search.workers)")
    p.add_argument(
        "--executor",
        choices=("local", "ray"),
        help="local processes, or search.workers Ray tasks (default search.executor)",
    )
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # one of --workers' processes
    p.add_argument("--splits", default="data/splits", help="where prepare wrote the splits (default data/splits)")
    p.add_argument("--out", default="results/search.json", help="summary file (default results/search.json)")
    p.add_argument(
        "--grid-csv",
        default="results/grid.csv",
        help="the grid's results, for the comparison with its configurations (default results/grid.csv)",
    )
    p = sub.add_parser(
        "sensitivity",
        parents=[common, _fingerprinted()],
        help="the headline contrast (31 vs 63) under other imbalance, batch size, BN momentum, output",
    )
    p.add_argument("--splits", default="data/splits", help="where prepare wrote the splits (default data/splits)")
    p.add_argument("--out", default="results/sensitivity", help="output folder (default results/sensitivity)")
    p = sub.add_parser(
        "needs",
        parents=[common, _fingerprinted()],
        help="how many defect images to label: minority F1 against their number, a learning curve, one sentence",
    )
    p.add_argument("--splits", default="data/splits", help="where prepare wrote the splits (default data/splits)")
    p.add_argument("--out", default="results/needs", help="output folder (default results/needs)")
    p = sub.add_parser(
        "export",
        parents=[common, _fingerprinted()],
        help="the best final-BN run (on validation) to ONNX, checked against torch, registered",
    )
    p.add_argument("--run-id", help="export this run instead of the best final-BN run on validation")
    p.add_argument("--splits", default="data/splits", help="where prepare wrote the splits (default data/splits)")
    p.add_argument("--out", default="models", help="output folder (default models)")
    p.add_argument("--no-register", action="store_true", help="do not log the ONNX model to MLflow nor register it")
    p.add_argument(
        "--quantize",
        action="store_true",
        help="also a static INT8 model (models/model.int8.onnx), kept only if accurate and faster",
    )
    p = sub.add_parser(
        "bench", parents=[common], help="measure throughput, each speed lever and the grid, shared vs not"
    )
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="where to measure (default auto)")
    p.add_argument(
        "--archs",
        nargs="+",
        help="default: efficientnet_lite0 resnet18 on CPU; efficientnet_lite0 resnet34 vgg19_bn on CUDA",
    )
    p.add_argument("--sizes", nargs="+", type=int, help="image sizes (default: the dataset's on CPU, 224 on CUDA)")
    p.add_argument("--seconds", type=float, default=1.5, help="timing window per measurement (default 1.5)")
    p.add_argument("--batch", type=int, default=64, help="images per training/inference step measured (default 64)")
    p.add_argument("--no-grid", action="store_true", help="skip the grid's shared vs unshared comparison")
    p.add_argument(
        "--cells",
        action="store_true",
        help="instead: real cells of each kind through the grid's cell code, and the grid's and the "
        "paper's study projected from them (archs default: params' on CPU, lite0 resnet34 vgg19_bn on CUDA)",
    )
    p.add_argument(
        "--grid-configs",
        nargs="+",
        type=int,
        metavar="ID",
        help="UF-off configs timed shared (the first two also unshared); default: the 16 with MX off",
    )
    p.add_argument("--splits", default="data/splits", help="where prepare wrote the splits (default data/splits)")
    p.add_argument("--out", default="results/bench.json", help="output file (default results/bench.json)")
    p = sub.add_parser(
        "variant",
        parents=[common],
        help="a profile as `dvc exp run` arguments (`make exp PROFILE=profiles/paper.yaml`)",
    )
    p.add_argument("profile", help="a params file laid over params.yaml, e.g. profiles/paper.yaml")
    p = sub.add_parser("plan", parents=[common], help="the pipeline's projected time on this machine, per stage")
    p.add_argument("--all", action="store_true", help="every stage, as on a fresh clone (default: what dvc repro runs)")
    p = sub.add_parser("figures", parents=[common], help="draw cell runs' figures from what they logged")
    p.add_argument("--run-id", nargs="+", required=True, metavar="ID", help="the cell runs to draw")
    p = sub.add_parser(
        "report", parents=[common, _fingerprinted()], help="the paper's tables and figures, from the tracking store"
    )
    p.add_argument(
        "--grid-csv",
        default="results/grid.csv",
        help="the grid's results: which cells the report reads (default results/grid.csv)",
    )
    p.add_argument("--out", default="report", help="output folder (default report)")
    p.add_argument(
        "--ceiling",
        default="results/ceiling",
        help="folder of the ceiling stage's JSON files, shown first (default results/ceiling)",
    )
    p.add_argument(
        "--search",
        default="results/search.json",
        help="`finalbn search`'s summary, for its section (default results/search.json)",
    )
    p.add_argument(
        "--sensitivity",
        default="results/sensitivity/sensitivity.csv",
        help="`finalbn sensitivity`'s table, for its section (default results/sensitivity/sensitivity.csv)",
    )
    p.add_argument(
        "--needs",
        default="results/needs/needs.json",
        help="`finalbn needs`' answer, for its section (default results/needs/needs.json)",
    )


def split_overrides(extra: list[str]) -> list[str]:
    """`--a.b value` / `--a.b=value` (as `mlflow run -P` appends them) -> ['a.b=value']."""
    out, i = [], 0
    while i < len(extra):
        arg = extra[i]
        if not arg.startswith("--") or len(arg) == 2:
            raise UsageError(f"unexpected argument {arg!r} (overrides look like --set a.b=value or --a.b value)")
        key, sep, value = arg[2:].partition("=")
        if not sep:
            if i + 1 >= len(extra):
                raise UsageError(f"override --{key} has no value")
            value, i = extra[i + 1], i + 1
        out.append(f"{key}={value}")
        i += 1
    return out


# command -> the module whose `main(cfg, args) -> exit status` runs it: the stages of dvc.yaml,
# one cell (`train`) and the benchmark. Imported by name, only the one asked for: a process
# (each grid shard, search worker, DVC stage) pays for its own stage's imports, not for all ten.
COMMANDS: dict[str, str] = {
    "synthesize": "finalbn.stages.synthesize",
    "store": "finalbn.stages.store",
    "prepare": "finalbn.stages.prepare",
    "pretrain": "finalbn.stages.pretrain",
    "ceiling": "finalbn.stages.ceiling",
    "train": "finalbn.stages.train",
    "grid": "finalbn.stages.grid",
    "search": "finalbn.stages.search",
    "sensitivity": "finalbn.stages.sensitivity",
    "needs": "finalbn.stages.needs",
    "report": "finalbn.stages.report",
    "export": "finalbn.stages.export",
    "bench": "finalbn.bench.study",
    "plan": "finalbn.bench.plan",
    "variant": "finalbn.config.variants",
    "figures": "finalbn.stages.redraw",
}


def stage_main(command: str) -> Callable[[Config, argparse.Namespace], int]:
    """The `main` of the module that runs `command` (a key of COMMANDS)."""
    return importlib.import_module(COMMANDS[command]).main


def forwarded(args: argparse.Namespace, overrides: list[str]) -> list[str]:
    """The arguments a stage's worker processes get: the same params files, overrides and splits."""
    out = [x for p in (args.params or ["params.yaml"]) for x in ("--params", p)]
    out += [x for o in overrides for x in ("--set", o)]
    return out + (["--splits", args.splits] if getattr(args, "splits", None) else [])


CHILD = "FINALBN_CHILD"  # set in the worker processes of a stage (`workers.run_commands`): their parent speaks


_signalled = {"sigint": False}


def _interrupted(signum, frame) -> None:
    """The first Ctrl-C: KeyboardInterrupt, as Python's own handler; later ones, while the runs
    close and until the process exits, are ignored."""
    _signalled["sigint"] = True
    interrupt.received()  # raised below; if Python swallows it (a __del__, a weakref callback), delivered later
    # SIG_IGN, not a Python function: Python puts its own handlers back to the default as it shuts
    # down, and a second Ctrl-C landing then would kill the process by the signal (exit -2, not 130)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise KeyboardInterrupt


def _kept(command: str, cfg: Config | None, started_ms: int) -> str:
    """The one line Ctrl-C prints: what the interrupted command kept."""
    head = f"finalbn {command}: interrupted"
    tracking = sys.modules.get("finalbn.tracking")  # only a command that tracked has runs to speak of
    if tracking is None or cfg is None:
        return f"{head}; files already written are whole (each is replaced in one step); run it again to start over"
    try:
        n = tracking.after_interrupt(cfg, started_ms)
    except Exception as exc:  # the store itself is out of reach: say so, keep the exit status
        return f"{head}; the tracking store could not be read ({type(exc).__name__}); run it again to resume"
    return (
        f"{head}; kept {n['FINISHED']} finished run(s) of this command, closed {n['KILLED']} KILLED "
        f"({n['FAILED']} failed); files already written are whole. The same command resumes: what finished "
        f"is found by its key, not trained again"
    )


def main(argv: list[str] | None = None) -> int:
    main_thread = threading.current_thread() is threading.main_thread()  # only there can handlers change
    before = signal.getsignal(signal.SIGINT)
    hook = sys.unraisablehook
    if main_thread and before is signal.default_int_handler:  # not where SIGINT was ignored (nohup, a background job)
        signal.signal(signal.SIGINT, _interrupted)
        sys.unraisablehook = interrupt.quiet(hook)  # a Ctrl-C raised in a __del__: no traceback, delivered later
    try:
        return _main(argv)
    finally:  # called in-process (tests): the caller's handler back, unless a Ctrl-C ends the process
        if main_thread and not _signalled["sigint"]:
            signal.signal(signal.SIGINT, before)
            sys.unraisablehook = hook


def _main(argv: list[str] | None) -> int:
    started_ms, cfg = int(time.time() * 1000), None
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    try:
        overrides = list(args.overrides) + split_overrides(extra)
        if getattr(args, "no_share", False):
            overrides.append("train.share_features=false")
        args.forward = forwarded(args, overrides)
        cfg = load_config(args.params or ["params.yaml"], overrides)
        code = stage_main(args.command)(cfg, args)
        if interrupt.pending():  # a Ctrl-C that Python swallowed and no epoch delivered (`interrupt`)
            raise KeyboardInterrupt
        if code == 0 and getattr(args, "fingerprint", None):  # DVC's dependency on the store (`stages.store`)
            importlib.import_module("finalbn.stages.store").mark(args.command, args)
        return code
    except (ConfigError, UsageError, DataError, WeightsError, StoreError, FileNotFoundError) as exc:
        print(f"finalbn {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except TrainingDiverged as exc:  # the input was fine; the run failed (and is recorded FAILED)
        print(f"finalbn {args.command}: failed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # runs and trials were closed on the way out (KILLED / FAIL)
        line = _kept(args.command, cfg, started_ms)  # each process closes what it left open
        if not os.environ.get(CHILD):
            print(line, file=sys.stderr, flush=True)
        return 130
    except Exception as exc:  # a full disk, a quota, a read-only folder, a tracking server out of reach: one line
        if interrupt.pending():  # a Ctrl-C that surfaced as another error (an import it cut: "initialization failed")
            line = _kept(args.command, cfg, started_ms)
            if not os.environ.get(CHILD):
                print(line, file=sys.stderr, flush=True)
            return 130
        full, unreachable = storage_full(exc), server_unreachable(exc)
        if full is None and unreachable is None:
            raise
        line = (
            _full_line(args.command, full)
            if full is not None
            else f"finalbn {args.command}: error: {unreachable}; finished runs are kept in the store; start it "
            "again and run the same command"
        )
        print(line, file=sys.stderr, flush=True)
        return 1


def _full_line(command: str, full: tuple[str, str | None]) -> str:
    """The one line for storage that refused a write, and what was kept."""
    what, path = full
    if path is None:  # SQLite's message has no file name: the tracking store is the one such writer
        mlflow = sys.modules.get("mlflow")
        path = f"the tracking store {mlflow.get_tracking_uri()}" if mlflow is not None else "an output"
    kept = (
        "the earlier splits are kept as they were (a dataset's replicates are replaced all at once)"
        if command == "prepare"
        else "files already written are whole (each is replaced in one step) and finished runs stay in the store"
    )
    return f"finalbn {command}: error: {what} writing {path}; {kept}; free space and run the same command again"


if __name__ == "__main__":
    sys.exit(main())

"""The `finalbn` command. Only this module reads argv, the environment and default paths.

    finalbn prepare --params params.yaml --set split.seed=3
    finalbn prepare --split.seed 3            # the form `mlflow run . -P split.seed=3` appends

Config and data errors print one line and exit with status 2 before any work starts.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from pathlib import Path
from typing import Callable

from finalbn.config import Config, ConfigError, load_config

EXIT_USAGE = 2


class UsageError(ValueError):
    """A problem with what the user asked for; printed as one line, exit 2."""


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--params", action="append", metavar="FILE",
                        help="params file (default params.yaml); repeat to overlay files in order")
    common.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                        help="override one key, e.g. --set split.seed=3 (also: --split.seed 3)")
    parser = argparse.ArgumentParser(prog="finalbn", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("synthesize", parents=[common], help="write the built-in synthetic leaf collection")
    p = sub.add_parser("prepare", parents=[common], help="validate images and draw the imbalanced splits")
    p.add_argument("--dataset", action="append", help="only this dataset (repeatable); default: all")
    p.add_argument("--out", default="data/splits", help="output folder (default data/splits)")
    p = sub.add_parser("pretrain", parents=[common], help="train the synthetic backbone (model.weights=synthetic)")
    p = sub.add_parser("ceiling", parents=[common],
                       help="can the frozen body see the cue? CV AUROC of a balanced linear probe")
    p.add_argument("--splits", default="data/splits", help="where prepare wrote the splits (default data/splits)")
    p.add_argument("--dataset", action="append", help="only this dataset (repeatable); default: all")
    p.add_argument("--out", default="results/ceiling/all.json", help="output file (default results/ceiling/all.json)")
    p = sub.add_parser("train", parents=[common], help="train one cell (dataset, replicate, six toggles) as an MLflow run")
    p.add_argument("--dataset", help="dataset name (default: the first in params)")
    p.add_argument("--replicate", type=int, default=0, help="which split draw and seed (default 0)")
    p.add_argument("--splits", default="data/splits", help="where prepare wrote the splits (default data/splits)")
    p = sub.add_parser("grid", parents=[common], help="run the factorial grid of cells (resumable, shardable)")
    p.add_argument("--shard", metavar="I/N", help="run only shard I of N (0-based), e.g. 0/4; writes no results")
    p.add_argument("--workers", type=int, help="local shard processes (default grid.workers)")
    p.add_argument("--splits", default="data/splits", help="where prepare wrote the splits (default data/splits)")
    p.add_argument("--results", default="results", help="where grid.csv/grid.json go (default results)")
    p.add_argument("--no-share", action="store_true",
                   help="run the frozen body inside every UF-off cell (train.share_features=false): same numbers, slower")
    p = sub.add_parser("search", parents=[common], help="an Optuna study beyond the grid, scored on validation")
    p.add_argument("--workers", type=int, help="processes on the study (default search.workers)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # one of --workers' processes
    p.add_argument("--splits", default="data/splits", help="where prepare wrote the splits (default data/splits)")
    p.add_argument("--out", default="results/search.json", help="summary file (default results/search.json)")
    p.add_argument("--grid-csv", default="results/grid.csv",
                   help="the grid's results, for the comparison with its configurations (default results/grid.csv)")
    p = sub.add_parser("export", parents=[common],
                       help="the best final-BN run (on validation) to ONNX, checked against torch, registered")
    p.add_argument("--run-id", help="export this run instead of the best final-BN run on validation")
    p.add_argument("--splits", default="data/splits", help="where prepare wrote the splits (default data/splits)")
    p.add_argument("--out", default="models", help="output folder (default models)")
    p.add_argument("--no-register", action="store_true", help="do not log the ONNX model to MLflow nor register it")
    p.add_argument("--quantize", action="store_true",
                   help="also a static INT8 model (models/model.int8.onnx), kept only if accurate and faster")
    p = sub.add_parser("bench", parents=[common], help="measure throughput, each speed lever and the grid, shared vs not")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="where to measure (default auto)")
    p.add_argument("--archs", nargs="+", help="default: efficientnet_lite0 resnet18 on CPU; efficientnet_lite0 "
                                              "resnet34 vgg19_bn on CUDA")
    p.add_argument("--sizes", nargs="+", type=int, help="image sizes (default: the dataset's on CPU, 224 on CUDA)")
    p.add_argument("--seconds", type=float, default=1.5, help="timing window per measurement (default 1.5)")
    p.add_argument("--no-grid", action="store_true", help="skip the grid's shared vs unshared comparison")
    p.add_argument("--splits", default="data/splits", help="where prepare wrote the splits (default data/splits)")
    p.add_argument("--out", default="results/bench.json", help="output file (default results/bench.json)")
    p = sub.add_parser("report", parents=[common], help="the paper's tables and figures, from the tracking store")
    p.add_argument("--splits", default="data/splits", help="where prepare wrote the splits (default data/splits)")
    p.add_argument("--out", default="report", help="output folder (default report)")
    p.add_argument("--ceiling", default="results/ceiling",
                   help="folder of the ceiling stage's JSON files, shown first (default results/ceiling)")
    p.add_argument("--search", default="results/search.json",
                   help="`finalbn search`'s summary, for its section (default results/search.json)")
    return parser


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


def _cmd_synthesize(cfg: Config, args: argparse.Namespace) -> int:
    from finalbn.synthetic import generate

    s = cfg.synthetic
    stats = generate(Path(s.root), seed=s.seed, image_size=s.image_size, crops=s.crops, healthy=s.healthy, severity=s.severity,
                     per_disease=s.per_disease, workers=s.workers, progress=sys.stderr.isatty())
    print(f"synthesize: {stats['images']} images in {stats['seconds']:.1f} s "
          f"({stats['images_per_second']:.0f} img/s) -> {s.root}")
    return 0


def _cmd_prepare(cfg: Config, args: argparse.Namespace) -> int:
    from finalbn.splits import prepare_dataset

    names = args.dataset or [d.name for d in cfg.datasets]
    datasets = [cfg.dataset(n) for n in names]  # unknown names fail before any work
    n = cfg.grid.max_replicates
    for ds in datasets:
        summaries = prepare_dataset(ds, cfg.split, Path(args.out), progress=sys.stderr.isatty(), replicates=n)
        summary = summaries[0]
        c = summary["counts"]
        print(f"prepare {ds.name}: {n} replicate split(s) of train {c['train']['majority']}/{c['train']['minority']}, "
              f"val {c['val']['majority']}/{c['val']['minority']}, test {c['test']['majority']}/{c['test']['minority']} "
              f"({summary['classes'][0]}/{summary['classes'][1]}); {len(summary['rejected'])} files rejected; "
              f"-> {Path(args.out) / ds.name}/<replicate>/manifest.csv")
    return 0


def _cmd_ceiling(cfg: Config, args: argparse.Namespace) -> int:
    from finalbn.cells import preflight
    from finalbn.ceiling import ceiling_sentence, measure_ceiling, write_ceiling
    from finalbn.tracking import log_ceiling

    os.environ.pop("MLFLOW_RUN_ID", None)  # under `mlflow run -e ceiling`: one run per measurement
    _quiet_mlflow()
    splits = Path(args.splits)
    names = args.dataset or [d.name for d in cfg.datasets]
    pairs = [(cfg.dataset(n).name, arch) for n in names for arch in cfg.grid.archs]
    for name, arch in pairs:  # every split and weights file exists before any work
        preflight(dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, arch=arch)), name, splits)
    results = []
    for name, arch in pairs:
        result = measure_ceiling(cfg, name, splits, arch, progress=sys.stderr.isatty())
        result["mlflow_run_id"] = log_ceiling(cfg, result)
        results.append(result)
        print(ceiling_sentence(result))
    write_ceiling(results, Path(args.out))
    print(f"ceiling -> {args.out}")
    return 0


def _cmd_pretrain(cfg: Config, args: argparse.Namespace) -> int:
    from finalbn.pretrain import pretrain

    s = pretrain(cfg, progress=sys.stderr.isatty())
    print(f"pretrain {s['arch']}: {len(s['classes'])} synthetic classes x {s['images_per_class']} images, "
          f"val accuracy {s['val_accuracy']:.3f} (chance {s['chance_accuracy']:.3f}) at epoch {s['best_epoch']}, "
          f"{s['train_seconds']:.0f} s -> {cfg.pretrain.out_dir}/{s['arch']}.pt")
    return 0


def _cmd_train(cfg: Config, args: argparse.Namespace) -> int:
    from finalbn.cells import preflight
    from finalbn.tracking import track_cell, tracking_uri

    _quiet_mlflow()
    dataset = cfg.dataset(args.dataset).name if args.dataset else cfg.datasets[0].name
    if args.replicate < 0:
        raise UsageError(f"--replicate must be >= 0 (got {args.replicate})")
    preflight(cfg, dataset, Path(args.splits), replicates=args.replicate + 1)
    run_id, r = track_cell(cfg, dataset, Path(args.splits), progress=sys.stderr.isatty(), replicate=args.replicate)
    fitr = r.fit
    print(f"train {dataset} {r.config_name} (config {r.config_id}) replicate {r.replicate}: "
          f"{fitr.train_images / fitr.train_seconds:.0f} train img/s, {fitr.train_seconds:.0f} s, bn_policy {r.bn_policy}, "
          f"{r.info['features']} features")
    for label, m in (("last epoch", r.test_last), (f"selected epoch {fitr.selected_epoch}", r.test_sel)):
        print(f"  test, {label:17s}: minority P {m['precision_1']:.3f} R {m['recall_1']:.3f} F1 {m['f1_1']:.3f} "
              f"(prior-corrected {m['f1_1_pc']:.3f}) | AUROC {m['auroc']:.3f} AP {m['ap']:.3f} | "
              f"majority F1 {m['f1_0']:.3f} | ECE {m['ece']:.3f} Brier {m['brier']:.3f}")
    print(f"  mlflow run {run_id} in {tracking_uri()} (experiment {cfg.tracking.experiment})")
    return 0


def _quiet_mlflow() -> None:
    """MLflow's INFO lines (creating tables, a new experiment) drown the lines that matter.
    Set after `import mlflow`, which configures its own logger level."""
    import mlflow  # noqa: F401

    logging.getLogger("mlflow").setLevel(logging.WARNING)


def _parse_shard(text: str) -> tuple[int, int]:
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise UsageError(f"--shard {text!r} is not I/N (e.g. 0/4)") from None
    if not (n >= 1 and 0 <= i < n):
        raise UsageError(f"--shard {text}: need 0 <= I < N")
    return i, n


def _grid_preflight(cfg: Config, splits: Path) -> None:
    from finalbn.cells import preflight

    for ds in cfg.datasets:
        for arch in cfg.grid.archs:
            preflight(dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, arch=arch)), ds.name, splits,
                      replicates=cfg.grid.max_replicates)


def _warm_decode_cache(cfg: Config, splits: Path) -> None:
    """Decode every replicate's split once, into the on-disk cache the shard workers read."""
    from finalbn.data import load_splits
    from finalbn.splits import split_dir

    for ds in cfg.datasets:
        for r in range(cfg.grid.max_replicates):
            load_splits(split_dir(splits, ds.name, r) / "manifest.csv", ds.image_size, progress=sys.stderr.isatty())


def _cmd_grid(cfg: Config, args: argparse.Namespace) -> int:
    from finalbn import grid

    # Under `mlflow run -e grid` the project's run id is in the environment; each cell must get
    # its own run rather than resume that one.
    os.environ.pop("MLFLOW_RUN_ID", None)
    _quiet_mlflow()
    splits = Path(args.splits)
    _grid_preflight(cfg, splits)
    cells = grid.all_cells(cfg)
    if args.shard:
        i, n = _parse_shard(args.shard)
        stats = grid.run_shard(cfg, splits, i, n, log=lambda m: print(m, flush=True))
        print(f"grid shard {i}/{n}: {stats['ran']} cells run, {stats['skipped']} already finished, "
              f"{len(stats['failed'])} failed", flush=True)
        return 1 if stats["failed"] else 0
    _warm_decode_cache(cfg, splits)
    workers = args.workers or cfg.grid.workers
    print(f"grid: {len(cells)} cells ({len(cfg.datasets)} datasets x {len(cfg.grid.archs)} archs x "
          f"{len(grid.parse_configs(cfg.grid.configs))} configs x {cfg.grid.replicates} replicate(s), headline "
          f"configs on {cfg.grid.headline.replicates}, {sum(1 for c in cells if c.baseline)} baseline cells), "
          f"{workers} worker(s)", flush=True)
    if workers > 1:
        base = [x for p in (args.params or ["params.yaml"]) for x in ("--params", p)]
        base += [x for o in args.all_overrides for x in ("--set", o)] + ["--splits", args.splits]
        code = grid.run_workers(cfg, base, workers)
    else:
        stats = grid.run_shard(cfg, splits, 0, 1, log=lambda m: print(m, flush=True))
        code = 1 if stats["failed"] else 0
    summary = grid.write_results(cfg, splits, Path(args.results))
    print(f"grid: {summary['finished']}/{summary['cells']} cells finished -> {args.results}/grid.csv")
    if "best_config" in summary:
        f1, b = summary["minority_f1_mean"], summary["best_config"]
        print(f"  mean test minority F1: final BN on {f1['bn_on']}, off {f1['bn_off']}; best config on validation "
              f"{b['id']} ({b['name']}): val AUROC {b['val_auroc']}, test minority F1 {b['test_minority_f1']}")
    if summary["missing"]:
        print(f"  {len(summary['missing'])} cells have no finished run (rerun `finalbn grid` to retry): "
              f"{', '.join(summary['missing'][:5])}{' ...' if len(summary['missing']) > 5 else ''}", file=sys.stderr)
        return code or 1
    return code


def _cmd_search(cfg: Config, args: argparse.Namespace) -> int:
    import time

    from finalbn import search
    from finalbn.cells import preflight

    os.environ.pop("MLFLOW_RUN_ID", None)  # under `mlflow run -e search`: the study has its own runs
    _quiet_mlflow()
    splits = Path(args.splits)
    if args.worker:  # spawned by --workers: the parent checked everything and made the study's run
        search.optimize(cfg, splits, os.environ["FINALBN_STUDY_RUN"], int(os.environ.get("FINALBN_WORKER", "0")))
        return 0
    workers = args.workers or cfg.search.workers
    if workers < 1:
        raise UsageError(f"--workers must be >= 1 (got {workers})")
    search.check(cfg)
    preflight(cfg, cfg.datasets[0].name, splits, replicates=max(cfg.search.replicate + 1, cfg.search.replicates))
    study, parent, stale = search.start(cfg)
    if stale:
        print(f"search: trials {stale} were left RUNNING by a stopped worker: marked FAIL", flush=True)
    before = len(study.trials)
    print(f"search {cfg.search.study}: {cfg.search.n_trials} trials on {cfg.search.objective} "
          f"({before} in the study already), {workers} worker(s), storage {cfg.search.storage}", flush=True)
    t0 = time.perf_counter()
    if workers > 1:
        base = [x for p in (args.params or ["params.yaml"]) for x in ("--params", p)]
        base += [x for o in args.all_overrides for x in ("--set", o)] + ["--splits", args.splits]
        code = search.run_workers(base, workers, parent)
    else:
        search.optimize(cfg, splits, parent)
        code = 0
    seconds = time.perf_counter() - t0
    study = search.open_study(cfg)
    comparison = None
    if not search.multi_objective(cfg) and any(t.state.name == "COMPLETE" for t in study.trials):
        print(f"search: the best trial on validation, the grid's best and BN only on {cfg.search.replicates} "
              "replicates, tested", flush=True)
        comparison = search.compare(cfg, study, splits, parent, Path(args.grid_csv), log=lambda m: print(m, flush=True),
                                    workers=workers)
    out = search.finish(study, cfg, parent, seconds, plot_dir=Path(args.out).parent, comparison=comparison)
    search.write_summary(out, Path(args.out))
    states = ", ".join(f"{n} {k}" for k, n in out["states"].items() if n)
    print(f"search: {out['trials']} trials ({states}) -> {args.out}")
    if "best" in out:
        b = out["best"]
        print(f"  best on validation: trial {b['number']} ({b['config_name']}), {cfg.search.objective} {b['value']:.4f}; "
              f"mlflow run {b['mlflow_run_id']}")
    for label in ("bn_only_31", "grid_best"):
        c = (out.get("comparison") or {}).get(label)
        if c:
            d = c["best_trial_minus_test_f1_1"]
            ci = (f"[95% CI {d['ci_low']:+.3f}, {d['ci_high']:+.3f}]" if d.get("ci_low") is not None
                  else f"({d.get('note') or 'no interval'})")
            mine = [r["test_f1_1"] for r in out["comparison"]["runs"] if r["replicate"] in {x["replicate"] for x in c["rows"]}]
            print(f"  best trial vs {c['config_name']} (config {c['config_id']}): test minority F1 "
                  f"{sum(mine) / max(len(mine), 1):.3f} vs {c['mean']['test_f1_1']:.3f}, difference "
                  f"{d['estimate']:+.3f} {ci} over {c['replicates']} replicate(s)")
    return code


def _cmd_bench(cfg: Config, args: argparse.Namespace) -> int:
    import json

    from finalbn import bench
    from finalbn.engine import resolve_device

    os.environ.pop("MLFLOW_RUN_ID", None)
    _quiet_mlflow()
    device = resolve_device(args.device)
    if args.seconds <= 0:
        raise UsageError(f"--seconds must be > 0 (got {args.seconds})")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)  # an unwritable output fails before any work
    cuda = device.type == "cuda"
    archs = args.archs or (["efficientnet_lite0", "resnet34", "vgg19_bn"] if cuda else ["efficientnet_lite0", "resnet18"])
    sizes = args.sizes or ([224] if cuda else [cfg.datasets[0].image_size])
    if any(s < 32 for s in sizes):
        raise UsageError(f"--sizes must be >= 32 (got {sizes})")
    from finalbn.models import get_spec

    for a in archs:
        try:
            get_spec(a)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    if cfg.train.threads:
        torch_threads(cfg.train.threads)
    print(f"bench on {device} ({os.cpu_count()} CPUs): {', '.join(archs)} at {', '.join(map(str, sizes))} px", flush=True)
    result = bench.run(cfg, Path(args.splits), device, archs, sizes, with_grid=not args.no_grid,
                       seconds=args.seconds, log=lambda m: print(m, flush=True))
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, out)
    print(f"bench -> {out}")
    return 0


def torch_threads(n: int) -> None:
    import torch

    torch.set_num_threads(n)


def _cmd_report(cfg: Config, args: argparse.Namespace) -> int:
    from finalbn import report

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one bar per downloaded file
    _quiet_mlflow()
    summary = report.make_report(cfg, Path(args.splits), Path(args.out), ceiling=Path(args.ceiling),
                                 search=Path(args.search))
    print(f"report: {summary['cells']} cells -> {args.out}/report.md")
    for line in summary["verdict"]:
        print(f"  {line}")
    return 0


def _cmd_export(cfg: Config, args: argparse.Namespace) -> int:
    from finalbn import export

    os.environ.pop("MLFLOW_RUN_ID", None)  # under `mlflow run -e export`: the export trains its own run
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one bar per downloaded file
    _quiet_mlflow()
    try:
        export.export(cfg, Path(args.splits), Path(args.out), run_id=args.run_id,
                      log=lambda m: print(m, flush=True), register=not args.no_register, int8=args.quantize)
    except export.ExportError as exc:
        print(f"finalbn export: failed: {exc}", file=sys.stderr)
        return 1
    print(f"export: {args.out}/model.onnx, {args.out}/model.json, {args.out}/parity.json")
    return 0


COMMANDS: dict[str, Callable[[Config, argparse.Namespace], int]] = {
    "export": _cmd_export,
    "synthesize": _cmd_synthesize,
    "prepare": _cmd_prepare,
    "pretrain": _cmd_pretrain,
    "ceiling": _cmd_ceiling,
    "train": _cmd_train,
    "grid": _cmd_grid,
    "report": _cmd_report,
    "bench": _cmd_bench,
    "search": _cmd_search,
}


def main(argv: list[str] | None = None) -> int:
    from finalbn.engine import TrainingDiverged
    from finalbn.models import WeightsError
    from finalbn.splits import DataError

    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    try:
        overrides = list(args.overrides) + split_overrides(extra)
        if getattr(args, "no_share", False):
            overrides.append("train.share_features=false")
        args.all_overrides = overrides
        cfg = load_config(args.params or ["params.yaml"], overrides)
        return COMMANDS[args.command](cfg, args)
    except (ConfigError, UsageError, DataError, WeightsError, FileNotFoundError) as exc:
        print(f"finalbn {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except TrainingDiverged as exc:  # the input was fine; the run failed (and is recorded FAILED)
        print(f"finalbn {args.command}: failed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # runs and trials were closed on the way out (KILLED / FAIL)
        print(f"finalbn {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

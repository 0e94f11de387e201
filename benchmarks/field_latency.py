"""onnxruntime vs torch: latency per image of the exported model, FP32 and INT8, in one run.

    .venv/bin/python benchmarks/field_latency.py                 # models/model.onnx, after `finalbn export`
    .venv/bin/python benchmarks/field_latency.py --threads 1
    .venv/bin/python benchmarks/field_latency.py --compare-fold  # the final BN folded or not, onnxruntime
    .venv/bin/python benchmarks/field_latency.py --compare-fold --raw   # also without torch's ONNX optimiser

The torch model is the exported run's own network (its saved weights); the inputs are the
validation images of its split, repeated to fill the batches. INT8 is models/model.int8.onnx when
the export kept one, otherwise a static QDQ model made here from the training images (reported
even when the export would drop it). Prints each time and the ratios measured in this run;
writes results/field_bench.json. A benchmark, not a test: the machines are shared and noisy.

`--compare-fold` exports one network twice, with its final BN folded into the last Linear (what
`finalbn export` ships) and kept, as shipped (torch's ONNX optimiser on; with `--raw` also with it
off: two more exports, ~20 s each), times the files in the same run, interleaved, prints the
unfolded/folded ratios and writes results/fold_bench.json (about a minute in all). The network is the exported run's (models/model.json) when there is one,
else the params' arch with an untrained body and a final-BN head (the same graph: latency only),
fed random inputs.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import torch

from finalbn import tracking
from finalbn.config import load_config
from finalbn.data.splits import split_dir
from finalbn.data.tensors import load_splits
from finalbn.models import HeadSpec, create_model, get_spec
from finalbn.stages import export
from finalbn.stages.export import int8 as int8q
from finalbn.stages.export import select
from finalbn.stages.export.onnx import INPUT, OUTPUTS, session


def torch_ms(model: torch.nn.Module, x: np.ndarray, batch: int, repeats: int) -> float:
    xt = torch.from_numpy(x)
    with torch.inference_mode():
        model(xt[:batch])
        times = []
        for _ in range(repeats):
            t0, n = time.perf_counter(), 0
            for i in range(0, len(x) - batch + 1, batch):
                model(xt[i : i + batch])
                n += batch
            times.append((time.perf_counter() - t0) / n * 1000)
    return float(np.median(times))


def exported_network(card: dict, cfg) -> torch.nn.Module | None:
    """The exported run's network (its saved weights), or None when the run kept none."""
    tracking.setup(cfg)
    holder = tracking.get_run(card["model_run_id"])
    if holder is None:
        return None
    return select._load_weights(select.run_config(holder), holder, lambda m: print(m, file=sys.stderr))


def interleaved_ms(paths: dict[str, Path], x: np.ndarray, batch: int, repeats: int, threads: int) -> dict[str, float]:
    """Median ms per image of each ONNX file at `batch`, the files' passes interleaved (file a, b,
    c, ..., then again) so that the machine's drift falls on all of them alike."""
    sessions = {k: session(p, threads=threads) for k, p in paths.items()}
    for s in sessions.values():
        s.run(list(OUTPUTS), {INPUT: x[:batch]})  # warm-up
    times: dict[str, list[float]] = {k: [] for k in paths}
    for _ in range(repeats):
        for k, s in sessions.items():
            t0, n = time.perf_counter(), 0
            for i in range(0, len(x) - batch + 1, batch):
                s.run(list(OUTPUTS), {INPUT: x[i : i + batch]})
                n += batch
            times[k].append((time.perf_counter() - t0) / n * 1000)
    return {k: float(np.median(v)) for k, v in times.items()}


def compare_fold(args, cfg) -> int:
    """`--compare-fold`: the four files (folded or kept, shipped or raw) timed in one run."""
    models = Path(args.models)
    card = json.loads((models / "model.json").read_text()) if (models / "model.json").is_file() else None
    net = exported_network(card, cfg) if card else None
    size = card["image_size"] if card else cfg.datasets[0].image_size
    arch = card["arch"] if card else cfg.model.arch
    source = "the exported run's network" if net is not None else f"an untrained {arch} with a final-BN head"
    if net is None:
        net = create_model(arch, weights="none", head=HeadSpec.of(cfg.model, "bn")).eval()
    x = np.random.default_rng(0).normal(size=(args.images, 3, size, size)).astype(np.float32)
    out: dict = {"network": source, "arch": arch, "image_size": size, "threads": args.threads, "images": len(x)}
    with tempfile.TemporaryDirectory() as tmp:
        paths = {}
        for fold, optimize in ((False, True), (True, True), (False, False), (True, False))[: 4 if args.raw else 2]:
            name = f"{'folded' if fold else 'unfolded'}_{'shipped' if optimize else 'raw'}"
            paths[name] = Path(tmp) / f"{name}.onnx"
            export.export_onnx(net, size, paths[name], fold=fold, optimize=optimize)
            proto = onnx.load(str(paths[name]))
            out[name] = {
                "nodes": len(proto.graph.node),
                "bn_after_last_matmul": len(export.bn_after_last_matmul(proto)),
                "operators": [n.op_type for n in proto.graph.node],
            }
        for bs in (1, 32):
            ms = interleaved_ms(paths, x, bs, args.repeats, args.threads)
            out[f"batch{bs}"] = {"ms_per_image": ms}
            for kind in ("shipped", "raw")[: 2 if args.raw else 1]:
                ratio = ms[f"unfolded_{kind}"] / ms[f"folded_{kind}"]
                out[f"batch{bs}"][f"unfolded/folded_{kind}"] = ratio
                print(
                    f"batch {bs:>2}, {kind:>7} graph: unfolded {ms[f'unfolded_{kind}']:.4f} ms/image, folded "
                    f"{ms[f'folded_{kind}']:.4f} ms/image, unfolded/folded {ratio:.3f}"
                )
    same = out["unfolded_shipped"]["operators"] == out["folded_shipped"]["operators"]
    print(
        f"{source}, {size} px, {args.threads} threads; BN nodes after the last Gemm/MatMul: "
        + ", ".join(f"{k} {out[k]['bn_after_last_matmul']} (of {out[k]['nodes']} nodes)" for k in paths)
        + f"; the shipped graphs have {'the same' if same else 'different'} operators"
    )
    dest = Path(args.out if args.out != "results/field_bench.json" else "results/fold_bench.json")
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(out, indent=2) + "\n")
    print(f"-> {dest}")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="models")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--splits", default="data/splits")
    ap.add_argument("--threads", type=int, default=2, help="torch and onnxruntime threads (default 2)")
    ap.add_argument("--images", type=int, default=256, help="images per timed pass (default 256)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--compare-fold", action="store_true", help="time the final BN folded vs kept (module doc)")
    ap.add_argument("--raw", action="store_true", help="--compare-fold: the raw graphs too (ONNX optimiser off)")
    ap.add_argument("--out", default="results/field_bench.json")
    args = ap.parse_args()
    models = Path(args.models)
    cfg = load_config([args.params])
    torch.set_num_threads(args.threads)
    if args.compare_fold:
        return compare_fold(args, cfg)
    card = json.loads((models / "model.json").read_text())
    net = exported_network(card, cfg)
    if net is None:
        print("no weights saved on the exported run: run `finalbn export` first", file=sys.stderr)
        return 2
    spec = get_spec(card["arch"])
    tensors = load_splits(
        split_dir(Path(args.splits), card["dataset"], card["replicate"]) / "manifest.csv", card["image_size"]
    )
    x_val = export.preprocess(tensors["val"].images, spec.mean, spec.std)
    x = np.concatenate([x_val] * (args.images // len(x_val) + 1))[: args.images]

    int8 = models / "model.int8.onnx"
    made_here = not int8.is_file()
    with tempfile.TemporaryDirectory() as tmp:
        if made_here:
            x_train = export.preprocess(tensors["train"].images, spec.mean, spec.std)
            q = int8q.quantize(
                models / "model.onnx", Path(tmp) / "model.int8.onnx", x_train, x_val, tensors["val"].labels.numpy()
            )
            int8 = Path(tmp) / "model.int8.onnx"
        else:
            q = card.get("int8", {})
        out: dict = {
            "threads": args.threads,
            "images": len(x),
            "arch": card["arch"],
            "image_size": card["image_size"],
            "int8_made_here": made_here,
            "int8_val_auroc": q.get("int8_val_auroc"),
            "fp32_val_auroc": q.get("fp32_val_auroc"),
            "ms_per_image": {},
            "ratios": {},
        }
        for bs in (1, 32):
            t = torch_ms(net, x, bs, args.repeats)
            f = int8q.latency_ms(models / "model.onnx", x, bs, args.repeats, threads=args.threads)
            i8 = int8q.latency_ms(int8, x, bs, args.repeats, threads=args.threads)
            out["ms_per_image"][f"batch{bs}"] = {"torch_fp32": t, "ort_fp32": f, "ort_int8": i8}
            out["ratios"][f"batch{bs}"] = {
                "ort_fp32/torch_fp32": f / t,
                "ort_int8/torch_fp32": i8 / t,
                "ort_int8/ort_fp32": i8 / f,
            }
            print(
                f"batch {bs:>2}: torch {t:.3f} ms/image, onnxruntime FP32 {f:.3f} ({f / t:.2f}x torch), "
                f"INT8 {i8:.3f} ({i8 / t:.2f}x torch, {i8 / f:.2f}x FP32)"
            )
    print(f"validation AUROC FP32 {out['fp32_val_auroc']}, INT8 {out['int8_val_auroc']}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""onnxruntime vs torch: latency per image of the exported model, FP32 and INT8, in one run.

    .venv/bin/python benchmarks/field_latency.py                 # models/model.onnx, after `finalbn export`
    .venv/bin/python benchmarks/field_latency.py --threads 1

The torch model is the exported run's own network (its saved weights); the inputs are the
validation images of its split, repeated to fill the batches. INT8 is models/model.int8.onnx when
the export kept one, otherwise a static QDQ model made here from the training images (reported
even when the export would drop it). Prints each time and the ratios measured in this run;
writes results/field_bench.json. A benchmark, not a test: the machines are shared and noisy.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from finalbn import tracking
from finalbn.config import load_config
from finalbn.data.splits import split_dir
from finalbn.data.tensors import load_splits
from finalbn.models import get_spec
from finalbn.stages import export
from finalbn.stages.export import select


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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="models")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--splits", default="data/splits")
    ap.add_argument("--threads", type=int, default=2, help="torch and onnxruntime threads (default 2)")
    ap.add_argument("--images", type=int, default=256, help="images per timed pass (default 256)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default="results/field_bench.json")
    args = ap.parse_args()
    models = Path(args.models)
    card = json.loads((models / "model.json").read_text())
    cfg = load_config([args.params])
    tracking.setup(cfg)
    holder = tracking.get_run(card["model_run_id"])
    net = (
        None
        if holder is None
        else select._load_weights(select.run_config(holder), holder, lambda m: print(m, file=sys.stderr))
    )
    if net is None:
        print("no weights saved on the exported run: run `finalbn export` first", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
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
            q = int8.quantize(
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
            f = int8.latency_ms(models / "model.onnx", x, bs, args.repeats, threads=args.threads)
            i8 = int8.latency_ms(int8, x, bs, args.repeats, threads=args.threads)
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

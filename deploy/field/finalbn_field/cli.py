"""finalbn-field predict: a finalbn model on images, with onnxruntime alone.

    finalbn-field predict --model models/model.onnx leaf1.jpg leaf2.png --out preds.csv
    finalbn-field predict --model models/model.onnx --images field/ --out preds.csv --prevalence 0.02

With --prevalence the cut is chosen for that share of diseased images on the model's own
validation curve (stored in model.json: `finalbn_field.decision`), and the summary line says
what it promises: the share of healthy images it flags (with a 95 % upper bound) and of
diseased images it finds.

One CSV row per image: path, P(healthy), P(diseased), label, label name, status (ok | error) and
the error; rows are written as they are computed, so an interruption keeps every finished row.
The content decides what is an image, whatever its suffix (HEIC included); a path whose name is
not valid UTF-8 is written escaped (`finalbn_field.images.escape_name`: `\\xNN` per such byte).
A folder's system files (hidden, @eaDir, __MACOSX, Thumbs.db, desktop.ini) are skipped and
counted. A file that cannot be used (corrupt, truncated, empty, not an image, a decompression
bomb) gets status `error` and its reason; the others are still predicted; the exit code is 1 when
any file failed. The model, its model.json and the output path are checked before any image is
read (exit 2, one line).
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import os
import sys
import time
from pathlib import Path

import numpy as np

from finalbn_field.images import BadImage, escape_name, is_system, load_rgb
from finalbn_field.predict import FieldError, FieldModel, preprocess

EXIT_USAGE = 2
COLUMNS = ["path", "p_healthy", "p_diseased", "label", "label_name", "status", "error"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="finalbn-field", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("predict", help="predict images with an exported model; one CSV row per image")
    p.add_argument("--model", required=True, help="models/model.onnx (model.json beside it), or a folder: models/, or an MLflow model "
                   "downloaded with `mlflow artifacts download -u models:/finalbn@champion`")
    p.add_argument("images", nargs="*", help="image files")
    p.add_argument("--images", dest="folder", help="a folder of images (searched recursively)")
    p.add_argument("--out", default="-", help="CSV file (default: standard output)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--threshold", type=float, help="label diseased when P(diseased) >= this")
    g.add_argument("--prevalence", type=float,
                   help="the diseased fraction expected in the field: the cut with the best F1 there, from the "
                        "model's validation curve (model.json), and what it promises")
    p.add_argument("--miss-cost", type=float,
                   help="with --prevalence: a missed diseased image costs this many false alarms; the cut then "
                        "minimises the expected cost instead of maximising F1")
    p.add_argument("--batch-size", type=int, default=32, help="images per onnxruntime call (default 32)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="cpu, or cuda (fails if onnxruntime cannot use CUDA; never silently on CPU)")
    p.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads (default: its own)")
    return parser


def _inputs(args: argparse.Namespace) -> tuple[list[Path], int]:
    """The images to predict (files as given, then the folder's), and how many system files the
    folder walk skipped."""
    paths, skipped = [Path(p) for p in args.images], 0
    if args.folder:
        folder = Path(args.folder)
        if not folder.is_dir():
            raise FieldError(f"--images {folder}: not a folder")
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                if is_system(p, folder):
                    skipped += 1
                else:
                    paths.append(p)
    if not paths:
        raise FieldError("no images: give files, or --images DIR" + (f" ({skipped} system files skipped)" if skipped else ""))
    return paths, skipped


def _check_out(out: str) -> None:
    """Fail before any work when the CSV cannot be written."""
    if out == "-":
        return
    path = Path(out)
    if path.is_dir():
        raise FieldError(f"--out {path} is a folder, not a file")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise FieldError(f"--out {path}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise FieldError(f"--out {path}: not writable")


class Progress:
    """A one-line progress bar on stderr for long folders (a terminal only)."""

    def __init__(self, total: int) -> None:
        self.total, self.done, self.t0 = total, 0, time.perf_counter()
        self.on = total >= 50 and sys.stderr.isatty()

    def update(self, n: int) -> None:
        self.done += n
        if self.on:
            frac = self.done / self.total
            rate = self.done / max(time.perf_counter() - self.t0, 1e-9)
            bar = "#" * int(30 * frac)
            sys.stderr.write(f"\rpredict |{bar:<30}| {self.done}/{self.total} {rate:.0f} img/s")
            sys.stderr.flush()

    def close(self) -> None:
        if self.on:
            sys.stderr.write("\n")


def predict(args: argparse.Namespace) -> int:
    if args.batch_size < 1:
        raise FieldError(f"--batch-size must be >= 1 (got {args.batch_size})")
    if args.threshold is not None and not 0 < args.threshold < 1:
        raise FieldError(f"--threshold must lie in (0, 1) (got {args.threshold})")
    if args.prevalence is not None and not 0 < args.prevalence < 1:
        raise FieldError(f"--prevalence must lie in (0, 1) (got {args.prevalence})")
    if args.miss_cost is not None and (args.prevalence is None or not args.miss_cost > 0):
        raise FieldError("--miss-cost needs --prevalence and a cost > 0 (a miss's cost in false alarms)"
                         if args.prevalence is None else f"--miss-cost must be > 0 (got {args.miss_cost})")
    _check_out(args.out)
    paths, skipped = _inputs(args)
    model = FieldModel.open(args.model, device=args.device, threads=args.threads)
    cut, how = model.threshold(args.threshold, args.prevalence, args.miss_cost)
    names = model.card["classes"]
    with _open_out(args.out) as fh:
        rows = _predict_rows(model, paths, cut, names, args.batch_size, fh)
    failed = sum(r["status"] == "error" for r in rows)
    diseased = sum(r["label"] == 1 for r in rows)
    where = "stdout" if args.out == "-" else args.out
    skip = f", {skipped} system files skipped (hidden, @eaDir, __MACOSX, Thumbs.db, ...)" if skipped else ""
    print(f"finalbn-field: {len(rows)} images, {len(rows) - failed} predicted ({diseased} {names[1]}), "
          f"{failed} failed{skip}; decision: {how}; providers {','.join(model.providers)} -> {where}", file=sys.stderr)
    return 1 if failed else 0


def _predict_rows(model: FieldModel, paths: list[Path], cut: float | None, names: list[str], batch_size: int,
                  fh) -> list[dict]:
    """One row per path, in order, each written to `fh` (and flushed) as soon as it and every row
    before it are done: an interruption keeps every finished row."""
    rows: list[dict] = []
    pending: list[tuple[int, np.ndarray]] = []
    bar = Progress(len(paths))
    writer = csv.DictWriter(fh, fieldnames=COLUMNS)
    writer.writeheader()
    written = 0

    def emit() -> None:
        nonlocal written
        done = pending[0][0] if pending else len(rows)
        writer.writerows(rows[written:done])
        fh.flush()
        written = max(written, done)

    def flush() -> None:
        if not pending:
            return
        probs = model.probabilities(np.stack([x for _, x in pending]))
        for (i, _), p in zip(pending, probs):
            label = int(p[1] >= cut) if cut is not None else int(p.argmax())
            rows[i].update(p_healthy=f"{p[0]:.6f}", p_diseased=f"{p[1]:.6f}", label=label, label_name=names[label],
                           status="ok")
        bar.update(len(pending))
        pending.clear()
        emit()

    for path in paths:
        rows.append({"path": escape_name(path), "p_healthy": "", "p_diseased": "", "label": "", "label_name": "",
                     "status": "error", "error": ""})
        try:
            with load_rgb(path) as img:
                x = preprocess(img, model.card)
        except BadImage as exc:
            rows[-1]["error"] = str(exc)
            bar.update(1)
            if not pending:
                emit()
            continue
        pending.append((len(rows) - 1, x))
        if len(pending) >= batch_size:
            flush()
    flush()
    emit()
    bar.close()
    return rows


@contextlib.contextmanager
def _open_out(out: str):
    """The CSV to write rows into as they come: stdout for "-", else the file (checked writable
    before any work; opened only once the model has loaded)."""
    if out == "-":
        yield sys.stdout
        return
    with open(out, "w", newline="", encoding="utf-8") as fh:
        yield fh


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return predict(args)
    except FieldError as exc:
        print(f"finalbn-field {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"finalbn-field {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

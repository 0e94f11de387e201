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
counted. Images decode as training decoded them: model.json's `preprocessing.intensity` for
samples of more than 8 bits, a JPEG at reduced scale for the model's size; --max-pixels raises the
pixel limit of the others. A file that cannot be used (corrupt, truncated, empty, not an image, a decompression
bomb) gets status `error` and its reason; the others are still predicted; the exit code is 1 when
any file failed. The model, its model.json and the output path are checked before any image is
read (exit 2, one line); the model file must be the one model.json pins (its sha256) unless
--allow-model-mismatch, and then the summary line says so. Rows are written a batch at a time and
flushed; when the disk is full (or a quota, a file-size limit, a read-only file system stops the
write) the CSV is cut back to its last whole row and the command exits 1 with one line saying
what was kept.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import errno
import io
import os
import sys
import time
from pathlib import Path

import numpy as np

from finalbn_field.images import MAX_PIXELS, BadImage, escape_name, is_system
from finalbn_field.predict import FieldError, FieldModel, preprocess

EXIT_USAGE = 2
COLUMNS = ["path", "p_healthy", "p_diseased", "label", "label_name", "status", "error"]
# a write that fails for want of room: (what happened, what to do); the CSV is cut back to its last whole row
NO_ROOM = {
    errno.ENOSPC: ("no space left on device", "free space and run again"),
    errno.EDQUOT: ("disk quota exceeded", "free space within your quota and run again"),
    errno.EFBIG: (
        "file too large for this file system/limit",
        "write --out to another file system (or raise the file-size limit) and run again",
    ),
    errno.EROFS: ("read-only file system", "write --out elsewhere and run again"),
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="finalbn-field", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("predict", help="predict images with an exported model; one CSV row per image")
    p.add_argument(
        "--model",
        required=True,
        help="models/model.onnx (model.json beside it), or a folder: models/, or an MLflow model "
        "downloaded with `mlflow artifacts download -u models:/finalbn@champion`",
    )
    p.add_argument("images", nargs="*", help="image files")
    p.add_argument("--images", dest="folder", help="a folder of images (searched recursively)")
    p.add_argument("--out", default="-", help="CSV file (default: standard output)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--threshold", type=float, help="label diseased when P(diseased) >= this")
    g.add_argument(
        "--prevalence",
        type=float,
        help="the diseased fraction expected in the field: the cut with the best F1 there, from the "
        "model's validation curve (model.json), and what it promises",
    )
    p.add_argument(
        "--miss-cost",
        type=float,
        help="with --prevalence: a missed diseased image costs this many false alarms; the cut then "
        "minimises the expected cost instead of maximising F1",
    )
    p.add_argument("--batch-size", type=int, default=32, help="images per onnxruntime call (default 32)")
    p.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default="cpu",
        help="cpu, or cuda (fails if onnxruntime cannot use CUDA; never silently on CPU)",
    )
    p.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads (default: its own)")
    p.add_argument(
        "--max-pixels",
        type=int,
        default=MAX_PIXELS,
        help=f"refuse images over this many pixels as they decode (a JPEG at reduced scale for the "
        f"model's size); default {MAX_PIXELS}, Pillow's",
    )
    p.add_argument(
        "--allow-model-mismatch",
        action="store_true",
        help="run a model file that is not the one model.json pins (its sha256), or a card that pins "
        "none, with this card's preprocessing and decision thresholds anyway (the summary says so)",
    )
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
        raise FieldError(
            "no images: give files, or --images DIR" + (f" ({skipped} system files skipped)" if skipped else "")
        )
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


class OutputFull(Exception):
    """The CSV could not be written for want of room (NO_ROOM): one line, exit 1."""


class RowWriter:
    """The CSV, a batch of rows at a time: each batch is rendered as text, written and flushed, and
    the file's length after it (`fh.tell()`) is the end of the last whole row. When a write fails
    for want of room (NO_ROOM) the file is closed and cut back there, and OutputFull says what
    was kept; on standard output (`path` None) nothing can be cut back: the line says so."""

    def __init__(self, fh, path: str | None = None) -> None:
        self.fh, self.path = fh, path
        self.header = False  # the header is in the file, whole
        self.rows = 0  # whole rows after it
        self.end = 0  # the file's length after the last whole row (a file only)
        self._buf = io.StringIO()
        self._csv = csv.DictWriter(self._buf, fieldnames=COLUMNS)

    def write(self, rows: list[dict]) -> None:
        """The header (first call) and `rows`, as one write and a flush."""
        self._buf.seek(0)
        self._buf.truncate()
        if not self.header:
            self._csv.writeheader()
        self._csv.writerows(rows)
        text = self._buf.getvalue()
        if not text:
            return
        try:
            self.fh.write(text)
            self.fh.flush()
            end = self.fh.tell() if self.path is not None else 0
        except OSError as exc:
            if exc.errno not in NO_ROOM:
                raise
            raise self._full(exc) from None
        self.header, self.rows, self.end = True, self.rows + len(rows), end

    def close(self) -> None:
        if self.path is None:
            return
        try:
            self.fh.close()
        except OSError as exc:  # a network file system may report the want of room only here
            if exc.errno not in NO_ROOM:
                raise
            raise self._full(exc) from None

    def kept(self) -> str:
        n = self.rows
        if not self.header:
            return "nothing (not even the header)"
        if not n:
            return "the header only"
        return f"the header and {n} whole row{'s' if n > 1 else ''} (image{'s 1-' if n > 1 else ' '}{n})"

    def _full(self, exc: OSError) -> OutputFull:
        """Close and cut the file back to its last whole row; the one line to print."""
        assert exc.errno is not None  # the callers checked it is in NO_ROOM
        what, todo = NO_ROOM[exc.errno]
        if self.path is None:  # what the buffer still holds goes nowhere: flushing it at exit would fail again
            with contextlib.suppress(OSError, ValueError, AttributeError, io.UnsupportedOperation):
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, self.fh.fileno())
                os.close(devnull)
            return OutputFull(
                f"{what} writing standard output after {self.kept()}: whatever reads it may hold a "
                f"torn last row; {todo}"
            )
        with contextlib.suppress(OSError):
            self.fh.close()  # its buffer's rest fails again, or lands partly: cut back below either way
        try:
            os.truncate(self.path, self.end)
        except OSError as cut:
            return OutputFull(
                f"{what} writing {self.path}: could not cut it back to its last whole row "
                f"({os.strerror(cut.errno) if cut.errno else cut}): it may end in a torn row after "
                f"{self.kept()}; {todo}"
            )
        return OutputFull(f"{what} writing {self.path}: kept {self.kept()}; {todo}")


def predict(args: argparse.Namespace) -> int:
    if args.batch_size < 1:
        raise FieldError(f"--batch-size must be >= 1 (got {args.batch_size})")
    if args.max_pixels < 1:
        raise FieldError(f"--max-pixels must be >= 1 (got {args.max_pixels})")
    if args.threshold is not None and not 0 < args.threshold < 1:
        raise FieldError(f"--threshold must lie in (0, 1) (got {args.threshold})")
    if args.prevalence is not None and not 0 < args.prevalence < 1:
        raise FieldError(f"--prevalence must lie in (0, 1) (got {args.prevalence})")
    if args.miss_cost is not None and (args.prevalence is None or not args.miss_cost > 0):
        raise FieldError(
            "--miss-cost needs --prevalence and a cost > 0 (a miss's cost in false alarms)"
            if args.prevalence is None
            else f"--miss-cost must be > 0 (got {args.miss_cost})"
        )
    _check_out(args.out)
    paths, skipped = _inputs(args)
    model = FieldModel.open(
        args.model, device=args.device, threads=args.threads, allow_mismatch=args.allow_model_mismatch
    )
    model.max_pixels = args.max_pixels  # images decode with the card's intensity and size (FieldModel.load_image)
    cut, how = model.threshold(args.threshold, args.prevalence, args.miss_cost)
    names = model.card["classes"]
    with _open_out(args.out) as out:
        rows = _predict_rows(model, paths, cut, names, args.batch_size, out)
    failed = sum(r["status"] == "error" for r in rows)
    diseased = sum(r["label"] == 1 for r in rows)
    where = "stdout" if args.out == "-" else args.out
    skip = f", {skipped} system files skipped (hidden, @eaDir, __MACOSX, Thumbs.db, ...)" if skipped else ""
    unverified = f"; {model.unverified}" if model.unverified else ""
    print(
        f"finalbn-field: {len(rows)} images, {len(rows) - failed} predicted ({diseased} {names[1]}), "
        f"{failed} failed{skip}{unverified}; decision: {how}; providers {','.join(model.providers)} -> {where}",
        file=sys.stderr,
    )
    return 1 if failed else 0


def _predict_rows(
    model: FieldModel, paths: list[Path], cut: float | None, names: list[str], batch_size: int, out: RowWriter
) -> list[dict]:
    """One row per path, in order, each written to `out` (and flushed) as soon as it and every row
    before it are done: an interruption keeps every finished row. Raises OutputFull (the CSV cut
    back to its last whole row) when the disk is full."""
    rows: list[dict] = []
    pending: list[tuple[int, np.ndarray]] = []
    bar = Progress(len(paths))
    out.write([])  # the header
    written = 0

    def emit() -> None:
        nonlocal written
        done = pending[0][0] if pending else len(rows)
        out.write(rows[written:done])
        written = max(written, done)

    def flush() -> None:
        if not pending:
            return
        probs = model.probabilities(np.stack([x for _, x in pending]))
        for (i, _), p in zip(pending, probs):
            label = int(p[1] >= cut) if cut is not None else int(p.argmax())
            rows[i].update(
                p_healthy=f"{p[0]:.6f}", p_diseased=f"{p[1]:.6f}", label=label, label_name=names[label], status="ok"
            )
        bar.update(len(pending))
        pending.clear()
        emit()

    for path in paths:
        rows.append(
            {
                "path": escape_name(path),
                "p_healthy": "",
                "p_diseased": "",
                "label": "",
                "label_name": "",
                "status": "error",
                "error": "",
            }
        )
        try:
            with model.load_image(path) as img:
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
    """The RowWriter to write rows into as they come: stdout for "-", else the file (checked
    writable before any work; opened only once the model has loaded)."""
    if out == "-":
        yield RowWriter(sys.stdout)
        return
    try:
        fh = open(out, "w", newline="", encoding="utf-8")
    except OSError as exc:
        if exc.errno not in NO_ROOM:
            raise
        what, todo = NO_ROOM[exc.errno]
        raise OutputFull(f"{what} creating {out}: nothing written; {todo}") from None
    writer = RowWriter(fh, out)
    try:
        yield writer
    finally:
        if not fh.closed:
            writer.close()


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return predict(args)
    except FieldError as exc:
        print(f"finalbn-field {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OutputFull as exc:  # the CSV already cut back to its last whole row
        print(f"finalbn-field {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"finalbn-field {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

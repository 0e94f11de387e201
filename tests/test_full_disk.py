"""A full disk (ENOSPC), a quota (EDQUOT), a read-only folder (EROFS) or a file-size limit (EFBIG),
wherever it strikes: one line naming the path and what was kept, exit 1, no traceback, nothing
already written torn. The end-to-end cases run the real command under a real file-size limit
(RLIMIT_FSIZE with SIGXFSZ ignored: the kernel then answers a write past the limit with EFBIG)."""

from __future__ import annotations

import errno
import os
import resource
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
from PIL import Image

from conftest import TINY_SPLIT, make_plantvillage
from finalbn.infra import io
from finalbn.infra.errors import STORAGE_ERRNOS, storage_full

ROOT = Path(__file__).resolve().parents[1]


def _env(**extra: str) -> dict[str, str]:
    """The environment of a process under a file-size limit: no byte-code written. A write past the
    limit is cut short without an error, and Python's byte-code writer does not check its count: it
    would leave truncated .pyc files in the venv that every later process fails to import."""
    return {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", **extra}


def _limited(limit: int):
    """preexec_fn: writes past `limit` bytes fail with EFBIG instead of killing the process (run it
    with `_env()`)."""

    def setup() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return setup


@pytest.mark.parametrize("code", sorted(STORAGE_ERRNOS))
def test_storage_full_knows_each_errno_and_its_file(code):
    exc = OSError(code, os.strerror(code), "results/grid.csv")
    assert storage_full(exc) == (STORAGE_ERRNOS[code], "results/grid.csv")


def test_storage_full_reads_the_chain_and_the_note_of_an_atomic_write(tmp_path):
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")  # a write(): no file name
        except OSError as inner:
            inner.add_note(f"writing {tmp_path / 'x.json'}")
            raise RuntimeError("saving failed") from inner
    except RuntimeError as outer:
        assert storage_full(outer) == ("no space left on device", str(tmp_path / "x.json"))
    # SQLite (under SQLAlchemy and MLflow) says it in words, with no errno
    try:
        try:
            raise sqlite3.OperationalError("database or disk is full")
        except sqlite3.OperationalError as inner:
            raise ValueError("(sqlite3.OperationalError) database or disk is full [SQL: INSERT ...]") from inner
    except ValueError as outer:
        assert storage_full(outer) == ("no space left on device", None)
    # SQLite under a file-size limit or a quota: its write fails, and it says "disk I/O error"
    assert storage_full(ValueError("(sqlite3.OperationalError) disk I/O error"))[0].startswith("disk I/O error (a full")
    assert storage_full(OSError(errno.ENOENT, "No such file", "x")) is None
    assert storage_full(ValueError("a bad value")) is None


def test_a_failed_atomic_write_keeps_the_old_file_whole_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "grid.csv"
    io.write_text(target, "a,b\n1,2\n")
    code = (
        "import sys; from finalbn.infra import io\n"
        "try:\n    io.write_text(sys.argv[1], 'x,y\\n' * 50_000)\n"
        "except OSError as exc:\n    print(exc.errno, exc.__notes__[-1]); sys.exit(3)\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", code, str(target)],
        capture_output=True,
        text=True,
        preexec_fn=_limited(4096),
        timeout=120,
        env=_env(),
    )
    assert r.returncode == 3, r.stderr
    assert r.stdout.split()[0] == str(errno.EFBIG) and r.stdout.strip().endswith(f"writing {target}")
    assert target.read_text() == "a,b\n1,2\n"  # the old file, whole
    assert [p.name for p in tmp_path.iterdir()] == ["grid.csv"]  # no temporary left beside it


def _png(path: Path, shade: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (shade, 90, 30)).save(path)


@pytest.mark.slow
def test_prepare_on_a_full_disk_says_one_line_and_keeps_the_earlier_splits(tmp_path):
    root = tmp_path / "my data"
    for i in range(12):
        _png(root / "ok" / f"h{i:02d}.png", i)
    for i in range(6):
        _png(root / "bad" / f"d{i:02d}.png", 200 + i)
    params = tmp_path / "params.yaml"
    params.write_text((ROOT / "params.yaml").read_text())
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text(
        f"datasets:\n  leaves:\n    source: folders\n    root: {root}\n    majority: [ok]\n"
        "    minority: [bad]\n    image_size: 16\nsplit: {seed: 0, train: [4, 2], val: [2, 1], "
        "test: [2, 2], disjoint_test: false}\n"
    )
    cmd = [
        str(ROOT / ".venv" / "bin" / "finalbn"),
        "prepare",
        "--params",
        str(params),
        "--params",
        str(overlay),
        "--dataset",
        "leaves",
        "--out",
        str(tmp_path / "splits"),
    ]
    ok = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert ok.returncode == 0, ok.stderr
    before = {p.relative_to(tmp_path): p.read_bytes() for p in (tmp_path / "splits").rglob("*") if p.is_file()}
    assert len([p for p in before if p.name == "manifest.csv"]) > 1

    # another seed, on a disk that takes files of at most 1 kB: the first manifest already fails
    again = subprocess.run(
        cmd + ["--set", "split.seed=5"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
        preexec_fn=_limited(1024),
        env=_env(),
    )
    assert again.returncode == 1, again.stderr
    lines = [ln for ln in again.stderr.splitlines() if ln.strip()]
    assert "Traceback" not in again.stderr and len(lines) == 1, again.stderr
    assert lines[0].startswith("finalbn prepare: error: file too large") and "manifest.csv" in lines[0]
    assert "earlier splits are kept" in lines[0]
    after = {p.relative_to(tmp_path): p.read_bytes() for p in (tmp_path / "splits").rglob("*") if p.is_file()}
    assert after == before  # every replicate as it was: no half-drawn set, no temporary left


def test_a_writer_that_hides_the_errno_still_reads_as_a_full_disk(tmp_path):
    """torch.save past a file-size limit raises RuntimeError('unexpected pos ...'); the atomic write
    turns it into the OSError it is, so the decode cache's 'costs speed, not results' path and the
    command line's one line both see it."""
    code = (
        "import sys, torch; from finalbn.infra import io\n"
        "try:\n    with io.atomic_path(sys.argv[1]) as tmp:\n        torch.save(torch.zeros(100_000), tmp)\n"
        "except OSError as exc:\n    print(exc.errno, exc.filename); sys.exit(3)\n"
    )
    target = tmp_path / "cache.pt"
    r = subprocess.run(
        [sys.executable, "-c", code, str(target)],
        capture_output=True,
        text=True,
        preexec_fn=_limited(4096),
        timeout=120,
        env=_env(),
    )
    assert r.returncode == 3, r.stderr
    assert r.stdout.split() == [str(errno.EFBIG), str(target)]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_grid_on_a_full_disk_under_its_store_says_one_line(tmp_path):
    """The MLflow store (SQLite) cannot grow: SQLite says "disk I/O error", MLflow logs its traceback
    and raises; the command prints one line naming the store and what was kept, exit 1."""
    make_plantvillage(tmp_path / "pv", healthy=12, diseases={"Scab": 4, "Rot": 4}, size=32)
    sets = [
        x
        for o in TINY_SPLIT
        + [
            "datasets.0.root=pv",
            "datasets.0.source=plantvillage",
            "datasets.0.image_size=32",
            "model.weights=none",
            "train.epochs=1",
            "train.batch_size=4",
            "train.threads=1",
            "grid.configs=[31, 63]",
            "grid.replicates=1",
            "grid.headline.configs=[]",
            "grid.workers=1",
            "grid.archs=[resnet18]",
            "grid.baselines.methods=[]",
        ]
        for x in ("--set", o)
    ]
    finalbn = str(ROOT / ".venv" / "bin" / "finalbn")
    env = _env(MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}")
    prep = subprocess.run(
        [finalbn, "prepare", "--params", str(ROOT / "params.yaml"), *sets],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert prep.returncode == 0, prep.stderr
    mlflow.MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"]).search_experiments()  # the store, its tables made
    assert (tmp_path / "mlflow.db").stat().st_size > 64 * 1024
    r = subprocess.run(
        [finalbn, "grid", "--params", str(ROOT / "params.yaml"), *sets],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=_limited(64 * 1024),
    )
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 1 and len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert lines[0].startswith("finalbn grid: error: disk I/O error (a full disk") and "sqlite:///" in lines[0]
    assert "finished runs stay in the store" in lines[0]

"""The collection on disk: `generate` writes many leaves as PNG files in PlantVillage's layout.

    from finalbn.synthetic import generate
    stats = generate("data/raw/synthetic", seed=0, image_size=64, crops=["Apple", "Grape"],
                     healthy=1350, per_disease=60)

The images of one class folder are split into jobs of consecutive indices, rendered in this
process or in a pool of worker processes; each file is determined by (seed, crop, condition,
index), so reruns are byte-identical whatever `workers` is.
"""

from __future__ import annotations

import io
import math
import multiprocessing
import os
import re
import time
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from finalbn.infra.io import TMP_SUFFIX, write_bytes
from finalbn.synthetic.lesions import DISEASES
from finalbn.synthetic.render import _check_crop, _check_severity, render_leaf

HEALTHY = "healthy"

_PNG_NAME = re.compile(r"^(\d{5,})\.png$")
# _write_png's temporary files, left by an interrupted run: `.00000.png.<pid>.<random>.tmp`
# (finalbn.infra.io's name), or `.00000.png.<pid>.tmp` as written before it.
_TMP_NAME = re.compile(r"^\.\d{5,}\.png\.\d+(?:\.[0-9a-f]+)?" + re.escape(TMP_SUFFIX) + "$")


def generate(
    root: str | os.PathLike,
    *,
    seed: int,
    image_size: int,
    crops: Sequence[str],
    healthy: int,
    per_disease: int,
    workers: int = 0,
    progress: bool = True,
    severity: float = 1.0,
    healthy_by_crop: Mapping[str, int] | None = None,
) -> dict:
    """Write the synthetic collection under `root` and return timing and per-class counts.

    Per crop: `healthy` images in <Crop>___healthy and `per_disease` images in each
    <Crop>___<Disease> folder, lesions drawn at `severity` (see `render_leaf`); `healthy_by_crop`
    gives some crops another healthy count (a crop it names that is not in `crops` is an error). Existing class
    folders are overwritten (images past the new count are removed); other folders under `root`
    are left alone. workers=0 uses one process per core, workers=1 renders in this process.
    Worker processes start by forkserver (no inherited threads), so a calling script needs the
    usual `if __name__ == "__main__":`.

    Returns {"images", "seconds", "images_per_second", "workers", "classes": {folder: count}}.
    """
    seed = _check_count("seed", seed, 0)
    image_size = _check_count("image_size", image_size, 16)
    healthy = _check_count("healthy", healthy, 1)
    per_disease = _check_count("per_disease", per_disease, 1)
    workers = _check_count("workers", workers, 0)
    _check_severity(severity)
    _check_crops(crops)
    by_crop = {str(c): _check_count(f"healthy_by_crop.{c}", n, 1) for c, n in (healthy_by_crop or {}).items()}
    if set(by_crop) - set(crops):
        raise ValueError(
            f"healthy_by_crop names crops not generated: {sorted(set(by_crop) - set(crops))} (crops: {list(crops)})"
        )
    counts = {c: by_crop.get(c, healthy) for c in crops}

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    total = sum(counts.values()) + len(crops) * len(DISEASES) * per_disease
    procs = workers or os.cpu_count() or 1
    # Several chunks per process keeps the processes busy to the end; 64 bounds the
    # progress-bar step.
    chunk = max(1, min(64, math.ceil(total / (8 * procs))))
    classes, jobs = _plan(root, seed, image_size, counts, per_disease, severity, chunk)
    procs = min(procs, len(jobs))
    seconds = _run_jobs(jobs, procs, total, progress)
    return {
        "images": total,
        "seconds": seconds,
        "images_per_second": total / seconds if seconds > 0 else float("inf"),
        "workers": procs,
        "classes": classes,
    }


def _check_count(name: str, value: object, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def _check_crops(crops: Sequence[str]) -> None:
    if isinstance(crops, (str, bytes)) or not isinstance(crops, Sequence) or not crops:
        raise ValueError(f"crops must be a non-empty list of names, got {crops!r}")
    for crop in crops:
        _check_crop(crop)
    if len(set(crops)) != len(crops):
        raise ValueError(f"crops must be unique, got {list(crops)}")


def _plan(
    root: Path, seed: int, image_size: int, healthy: Mapping[str, int], per_disease: int, severity: float, chunk: int
) -> tuple[dict[str, int], list[tuple]]:
    """Create and prune the class folders; the per-class counts and the jobs that fill them."""
    classes: dict[str, int] = {}
    jobs = []
    for crop, n_healthy in healthy.items():
        for condition, count in ((HEALTHY, n_healthy), *((d, per_disease) for d in DISEASES)):
            folder = root / f"{crop}___{condition}"
            folder.mkdir(exist_ok=True)
            _prune(folder, count)
            classes[folder.name] = count
            jobs += [
                (str(folder), seed, image_size, crop, condition, i, min(i + chunk, count), float(severity))
                for i in range(0, count, chunk)
            ]
    return classes, jobs


def _run_jobs(jobs: list[tuple], procs: int, total: int, progress: bool) -> float:
    """Run the jobs in this process (procs == 1) or a pool; returns the seconds taken."""
    t0 = time.perf_counter()
    with tqdm(total=total, unit="img", desc="synthetic leaves", disable=None if progress else True) as bar:
        if procs == 1:
            for job in jobs:
                bar.update(_run_job(job))
        else:
            with _pool_context().Pool(procs) as pool:
                for n in pool.imap_unordered(_run_job, jobs):
                    bar.update(n)
    return time.perf_counter() - t0


def _seed_for(seed: int, crop: str, condition: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(crop.encode("utf-8")), zlib.crc32(condition.encode("utf-8")), index])


def _write_png(folder: str, index: int, pixels: np.ndarray) -> None:
    buf = io.BytesIO()
    # Fixed options and no metadata chunks: the bytes depend on the pixels only.
    Image.fromarray(pixels, "RGB").save(buf, format="PNG", compress_level=1)
    write_bytes(os.path.join(folder, f"{index:05d}.png"), buf.getvalue())


def _run_job(job: tuple) -> int:
    """Render and write images [start, stop) of one class folder; returns how many."""
    folder, seed, size, crop, condition, start, stop, severity = job
    disease = None if condition == HEALTHY else condition
    for i in range(start, stop):
        _write_png(folder, i, render_leaf(_seed_for(seed, crop, condition, i), size, crop, disease, severity))
    return stop - start


def _prune(folder: Path, count: int) -> None:
    """Drop images beyond `count` left by an earlier, larger run, and stale temp files."""
    for entry in os.scandir(folder):
        m = _PNG_NAME.match(entry.name)
        if (m and int(m.group(1)) >= count) or _TMP_NAME.match(entry.name):
            if entry.is_file(follow_symlinks=False):
                os.unlink(entry.path)


def _pool_context():
    # forkserver: workers do not inherit the caller's threads (torch, mlflow) as fork would.
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")

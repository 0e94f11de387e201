"""Shared test helpers: tiny image collections made by the tests, in temporary folders."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import mlflow
import numpy as np
import pytest
from PIL import Image

from finalbn.config import load_config
from finalbn.data.splits import prepare_dataset
from finalbn.tracking import store

ROOT = Path(__file__).resolve().parents[1]
PARAMS = ROOT / "params.yaml"


def write_png(path: Path, seed: int, size: int = 16) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    Image.fromarray(arr).save(path)
    return path


def make_plantvillage(
    root: Path, crop: str = "Apple", healthy: int = 12, diseases: dict[str, int] | None = None, size: int = 16
) -> Path:
    """<root>/<crop>___healthy/*.png and <root>/<crop>___<disease>/*.png with random pixels."""
    diseases = {"Black_rot": 4, "Scab": 4} if diseases is None else diseases
    seed = 0
    for cond, n in {"healthy": healthy, **diseases}.items():
        for i in range(n):
            seed += 1
            write_png(root / f"{crop}___{cond}" / f"img{i:03d}.png", seed, size)
    return root


@pytest.fixture
def load():
    """load(overrides) -> Config from the project's params.yaml plus overrides."""
    return lambda overrides=(): load_config([PARAMS], list(overrides))


TINY_SPLIT = ["split.train=[4, 2]", "split.val=[2, 1]", "split.test=[2, 2]", "split.disjoint_test=false"]


@pytest.fixture
def tiny_split():
    """Overrides for a split small enough for a handful of images: train 4/2, val 2/1, test 2/2."""
    return list(TINY_SPLIT)


_EMPTY_STORE: list[Path] = []


def empty_store(path: Path) -> Path:
    """An empty MLflow SQLite store at `path`: a copy of one this test process made once with the
    tracking adapter (`store.created`). MLflow makes a store by running every schema migration, about
    2 s of a core, and most tests start from a new store."""
    if not _EMPTY_STORE:
        template = Path(tempfile.mkdtemp(prefix="finalbn-empty-store-")) / "mlflow.db"
        store.created(f"sqlite:///{template}")
        _EMPTY_STORE.append(template)
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(_EMPTY_STORE[0], path)
    return path


def prepare_tiny(root: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """A prepared tiny PlantVillage-layout dataset in `root` (made the cwd), an empty MLflow store
    there; returns the overrides that make one cell train in a second."""
    monkeypatch.chdir(root)
    if not (root / "mlflow.db").exists():
        empty_store(root / "mlflow.db")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])  # an earlier test may have set another
    images = make_plantvillage(root / "pv", healthy=12, diseases={"Scab": 4, "Rot": 4}, size=32)
    overrides = TINY_SPLIT + [
        f"datasets.0.root={images}",
        "datasets.0.source=plantvillage",
        "datasets.0.image_size=32",
        "model.weights=none",
        "train.epochs=2",
        "train.batch_size=4",
        "train.threads=1",
        f"pretrain.out_dir={root / 'pretrained'}",
    ]
    cfg = load_config([PARAMS], overrides)
    prepare_dataset(
        cfg.datasets[0], cfg.split, root / "data" / "splits", progress=False, replicates=cfg.grid.max_replicates
    )
    return overrides


@pytest.fixture
def prepared(tmp_path, monkeypatch):
    """prepare_tiny in tmp_path: returns (cfg_loader, overrides)."""
    overrides = prepare_tiny(tmp_path, monkeypatch)
    return (lambda extra=(): load_config([PARAMS], overrides + list(extra))), overrides


if os.environ.get("PYTEST_XDIST_WORKER"):
    # one test process per core (`make test` runs pytest -n): the stages it starts get one
    # thread each too, not a core count's worth of OpenMP threads spinning against each other
    os.environ.setdefault("OMP_NUM_THREADS", "1")


# the longest tests, longest first (`make test --durations`: the whole pipeline ~650 s of a 14-min run,
# the scale-out ~150 s, the search's kill ~60 s): the pipeline is the critical path, so it must start at
# once, not when an earlier slow test frees a process (it started minutes late and ended the run)
LONGEST = (
    "test_pipeline.py::test_whole_pipeline",
    "test_scaleout.py::",
    "test_search.py::test_killed_study",
    "test_sensitivity.py::test_the_stage_end_to_end",
)


def _rank(item) -> tuple[int, int]:
    longest = next((i for i, name in enumerate(LONGEST) if name in item.nodeid), len(LONGEST))
    return longest, item.get_closest_marker("slow") is None


def pytest_collection_modifyitems(config, items):
    """The longest tests first, then the other slow ones: handed out one at a time (`--dist load
    --maxschedchunk 1`), the longest start at once on every process and the short ones fill the gaps."""
    items.sort(key=_rank)


@pytest.fixture(autouse=True)
def _decode_cache(tmp_path_factory, monkeypatch):
    """The decoded-image cache of the tests: one folder for the session, never the repo's."""
    monkeypatch.setenv("FINALBN_CACHE", str(tmp_path_factory.getbasetemp() / "finalbn-cache"))


@pytest.fixture(autouse=True)
def _restore_mlflow_env():
    """mlflow.set_experiment exports MLFLOW_EXPERIMENT_ID; keep one test's store out of the next.
    What the tracking adapter sets once per process on import (`store.quiet`: no artifact progress
    bars) is set before the first test, so that the first test to import it does not take it away."""
    store.quiet()
    before = {k: v for k, v in os.environ.items() if k.startswith("MLFLOW_")}
    yield
    for k in [k for k in os.environ if k.startswith("MLFLOW_")]:
        del os.environ[k]
    os.environ.update(before)

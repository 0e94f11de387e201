"""What identifies a result: the key of one configuration trained on one replicate.

    key = result_key(cfg, "synthetic-apple", replicate=3, splits_dir=Path("data/splits"))

The key hashes everything that changes what a cell computes: the dataset and its replicate's
manifest hash and intensity (split.json), image size, arch, the six switches, every model.* and train.* value that changes
a result (and anomaly.* for a PatchCore cell) (`config.NOT_CELL_KEY_PARAMS` lists those that do not: where and how fast it runs, and
train.seed, which enters as the cell's own seed), the cell's seed, the weights file, and the code
that computes a cell's numbers: the sources of every module the training cell (`finalbn.cell`:
data, model, training, metrics, config) imports (`imports.code_digest`), not the tracking layer
that records them nor the figures drawn of them, so that an edit there keeps every cached cell.
The grid's cells, the search's runs and the export all use it, so a configuration computed once is
found by any of them, and a code change re-runs what it can change.
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path

from finalbn.config import NOT_CELL_KEY_PARAMS, Config, cell_seed, config_id, flatten, to_dict
from finalbn.data.splits import sha256_file, split_dir
from finalbn.infra.imports import code_digest
from finalbn.train.cell import weights_path

CELL_MODULE = "finalbn.train.cell"  # a cell as it is computed (recorded by `finalbn.stages.cellrun`, outside the key)


def code_version() -> str:
    """Digest of the source of every module the training cell imports."""
    return code_digest(CELL_MODULE)


def result_key(cfg: Config, dataset: str, replicate: int | None, splits_dir: Path) -> str:
    """Hash of everything that changes the result of training `cfg` on one replicate (None: the
    key shared by all replicates, a grid parent's)."""
    rep = replicate if replicate is not None else 0
    split = json.loads((split_dir(splits_dir, dataset, rep) / "split.json").read_text())
    w = weights_path(cfg)
    flat = flatten(to_dict(cfg))
    payload = {
        "dataset": dataset,
        "manifest": split["manifest_sha256"],
        "image_size": cfg.dataset(dataset).image_size,
        "intensity": split.get("intensity", "auto"),  # how the images' samples map to 8 bits (images.decode)
        "arch": cfg.model.arch,
        "config": config_id(cfg.ablation),
        "replicate": replicate,
        "seed": cell_seed(cfg, replicate) if replicate is not None else None,
        "weights": _file_hash(w, Path(w).stat().st_mtime_ns) if Path(w).is_file() else w,
        "params": {k: v for k, v in flat.items() if k.split(".")[0] in _sections(cfg) and k not in NOT_CELL_KEY_PARAMS},
        "code": code_version(),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:32]


def _sections(cfg: Config) -> tuple[str, ...]:
    """The params sections a cell's numbers depend on: model and train, and the anomaly baseline's
    own section for a PatchCore cell (`train.detector`)."""
    return ("model", "train", "anomaly") if cfg.train.detector == "patchcore" else ("model", "train")


@functools.lru_cache(maxsize=8)
def _file_hash(path: str, mtime_ns: int) -> str:
    return sha256_file(path)

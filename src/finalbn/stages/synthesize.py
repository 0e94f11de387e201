"""The `synthesize` stage: the built-in procedural leaf collection in PlantVillage layout (the
embedded default's source; no dataset can be downloaded on our machines).

    finalbn synthesize            # params: synthetic.*; writes synthetic.root (data/raw/synthetic)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from finalbn.config import Config
from finalbn.synthetic import generate


def main(cfg: Config, args: argparse.Namespace) -> int:
    s = cfg.synthetic
    stats = generate(
        Path(s.root),
        seed=s.seed,
        image_size=s.image_size,
        crops=s.crops,
        healthy=s.healthy,
        severity=s.severity,
        per_disease=s.per_disease,
        healthy_by_crop=s.healthy_by_crop,
        workers=s.workers,
        progress=sys.stderr.isatty(),
    )
    print(
        f"synthesize: {stats['images']} images in {stats['seconds']:.1f} s "
        f"({stats['images_per_second']:.0f} img/s) -> {s.root}"
    )
    return 0

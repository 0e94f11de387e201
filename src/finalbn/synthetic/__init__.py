"""Procedural PlantVillage-like leaf images: the built-in stand-in dataset.

No leaf dataset can be downloaded on our machines, so the embedded default study runs on
images drawn here. `generate` writes them in PlantVillage's folder layout, so the same loader
reads both::

    <root>/<Crop>___healthy/00000.png ...
    <root>/<Crop>___<Disease>/00000.png ...      (one folder per name in DISEASES)

    from finalbn.synthetic import generate
    stats = generate("data/raw/synthetic", seed=0, image_size=64, crops=["Apple", "Grape"],
                     healthy=1350, per_disease=60)

What an image shows: one leaf on noisy soil. The leaf's shape family (ovate, lanceolate,
palmate, compound) and its typical proportions follow from the crop name, so any crop name
works; hue, shade, pose and venation vary per image. Soil carries dark stains, and some healthy
leaves carry a small benign mark, so "a dark spot somewhere" does not give the class away.
A diseased leaf carries a few small lesions of its kind (Leaf_spot: dark spots with a light
halo; Rust: orange-brown rings; Mosaic: pale yellow-green mottled patches; Blight: a browned
necrotic segment of the margin), scarce cues as in the paper's task.

`render_leaf` draws every part of the healthy picture first and the lesions last, so with the
same generator state a diseased image is the healthy image plus lesions. Every file is
determined by (seed, crop, condition, index): reruns are byte-identical whatever `workers` is.

Modules: `leaf` (crop styles, blade layout, drawing helpers), `lesions` (one painter per
disease), `render` (`render_leaf`: one picture), `collection` (`generate`: the PNG files).
"""

from finalbn.synthetic.collection import HEALTHY, generate
from finalbn.synthetic.lesions import DISEASES
from finalbn.synthetic.render import render_leaf

__all__ = ["DISEASES", "HEALTHY", "generate", "render_leaf"]

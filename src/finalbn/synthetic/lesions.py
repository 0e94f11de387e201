"""The lesions of each disease, painted onto a drawn leaf: the only pixels a disease changes.

`render.render_leaf` looks a disease up in `_LESIONS` and paints a few lesions::

    paint, fewest, most = _LESIONS["Rust"]
    paint(rng, leaf, S, cx, cy, scale)           # one lesion centred at (cx, cy)

Leaf_spot: dark spots with a light halo; Rust: orange-brown rings; Mosaic: pale yellow-green
mottled patches; Blight: a browned necrotic segment of the margin.
"""

from __future__ import annotations

import numpy as np

from finalbn.synthetic.leaf import _blend, _blob, _hsv, _paint, _unit, _upsampler, _window

# Each paints one lesion centred at (cx, cy) into the leaf colour layer (3, S, S), which
# shows only where the leaf covers the canvas; sizes are in image units times `scale` (how
# large this leaf is drawn).


def _leaf_spot(rng, leaf, S, cx, cy, scale):
    g = rng.random(10).tolist()
    r = (0.013 + 0.009 * g[0]) * scale
    found = _window(cx, cy, 1.9 * 1.3 * r + 1.0 / S, S)  # halo: 1.9 local radii, <= 1.3 r each
    if found is None:
        return
    win, xs, ys = found
    core, nd = _blob(g[4:], 0.2, xs, ys, cx, cy, r, S)
    halo = _unit((1.9 - nd) * 2.0) * (1.0 - core)
    _blend(leaf, win, 0.55 * halo, _hsv(0.12 + 0.05 * g[1], 0.6, 0.8))
    _blend(leaf, win, 0.9 * core, _hsv(0.04 + 0.04 * g[2], 0.7, 0.12 + 0.1 * g[3]))


def _rust(rng, leaf, S, cx, cy, scale):
    g = rng.random(10).tolist()
    r = (0.016 + 0.009 * g[0]) * scale
    found = _window(cx, cy, 1.3 * r + 1.0 / S, S)  # ring: 1.05 local radii, <= 1.21 r
    if found is None:
        return
    win, xs, ys = found
    fill, nd = _blob(g[4:], 0.15, xs, ys, cx, cy, r, S)
    ring = _unit(1.0 - np.abs(nd - 0.75) * (r * S / max(0.3 * r * S, 0.7)))
    _blend(leaf, win, 0.7 * fill, _hsv(0.1 + 0.03 * g[1], 0.8, 0.85))
    _blend(leaf, win, 0.95 * ring, _hsv(0.05 + 0.03 * g[2], 0.85, 0.5 + 0.15 * g[3]))


def _mosaic(rng, leaf, S, cx, cy, scale):
    g = rng.random(10).tolist()
    mottle_grid = rng.standard_normal((4, 4), dtype=np.float32)
    r = (0.035 + 0.025 * g[0]) * scale
    found = _window(cx, cy, 1.5 * r + 1.0 / S, S)  # local radius <= 1.49 r
    if found is None:
        return
    win, xs, ys = found
    _, nd = _blob(g[4:], 0.35, xs, ys, cx, cy, r, S)
    patch = _unit((1.0 - nd) * 2.5)
    h, w = patch.shape
    mottle = _unit(0.55 + 0.45 * (_upsampler(3, h) @ mottle_grid @ _upsampler(3, w).T))
    _blend(leaf, win, (0.5 + 0.2 * g[1]) * patch * mottle, _hsv(0.17 + 0.03 * g[2], 0.55, 0.88))


def _blight(rng, leaf, S, cx, cy, scale):
    g = rng.random(10).tolist()
    texture_grid = rng.standard_normal((4, 4), dtype=np.float32)
    r = (0.055 + 0.025 * g[0]) * scale
    found = _window(cx, cy, 1.25 * 1.42 * r + 1.0 / S, S)  # halo: 1.25 local radii, <= 1.42 r
    if found is None:
        return
    win, xs, ys = found
    _, nd = _blob(g[4:], 0.3, xs, ys, cx, cy, r, S)
    px = r * S
    halo = _unit(1.0 - (nd - 1.0) * (px / max(0.25 * px, 1.0)))
    necrosis = _unit((1.0 - nd) * px + 0.5)
    front = _unit(1.0 - np.abs(nd - 0.95) * (px / max(0.12 * px, 0.7)))
    h, w = nd.shape
    texture = 1.0 + 0.18 * (_upsampler(3, h) @ texture_grid @ _upsampler(3, w).T)
    tan = _hsv(0.07 + 0.03 * g[1], 0.6, 0.4 + 0.15 * g[2])
    _blend(leaf, win, 0.5 * halo, _hsv(0.15, 0.6, 0.75))
    _blend(leaf, win, 0.95 * necrosis, _paint(tan, texture))
    _blend(leaf, win, 0.8 * front, _hsv(0.06, 0.7, 0.2))


# disease -> (paint one lesion, fewest, most lesions)
_LESIONS = {
    "Leaf_spot": (_leaf_spot, 1, 4),
    "Rust": (_rust, 2, 5),
    "Mosaic": (_mosaic, 2, 3),
    "Blight": (_blight, 1, 1),
}
DISEASES: tuple[str, ...] = tuple(_LESIONS)  # ("Leaf_spot", "Rust", "Mosaic", "Blight")

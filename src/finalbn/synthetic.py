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
"""
from __future__ import annotations

import colorsys
import io
import math
import multiprocessing
import os
import re
import time
import zlib
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image
from tqdm import tqdm

DISEASES: tuple[str, ...] = ("Leaf_spot", "Rust", "Mosaic", "Blight")
HEALTHY = "healthy"

# Up to this output size the leaf is drawn at twice the size and box-filtered down: cheap
# anti-aliasing for thin veins and small lesions (larger images are smooth enough at 1x).
_SUPERSAMPLE_UP_TO = 256

_FAMILIES = ("ovate", "lanceolate", "palmate", "compound")
# PlantVillage crops get their botanical family; any other name gets one from its CRC.
_KNOWN_FAMILY = {
    "apple": "ovate", "blueberry": "ovate", "orange": "ovate", "peach": "lanceolate",
    "cherry": "lanceolate", "pepper": "lanceolate", "corn": "lanceolate", "grape": "palmate",
    "squash": "palmate", "tomato": "compound", "potato": "compound", "raspberry": "compound",
    "soybean": "compound", "strawberry": "compound",
}
_PNG_NAME = re.compile(r"^(\d{5,})\.png$")
_TMP_NAME = re.compile(r"^\.\d{5,}\.png\.\d+\.tmp$")  # _write_png's, left by an interrupted run


class _Style(NamedTuple):
    """Per-crop proportions; every image jitters around them."""

    family: str
    width: float       # blade half-width / blade length at the widest point
    a: float           # width profile u**a * (1-u)**b along the blade (u: 0 base, 1 tip)
    b: float
    serration: float   # tooth depth, fraction of the local half-width
    teeth: int         # teeth along one margin of a blade
    hue: float         # HSV hue of the crop's typical green
    veins: int         # lateral vein pairs per blade
    vein_slope: float  # how far a lateral vein runs tipwards per unit of width
    lobes: int         # palmate: lobes; compound: leaflet pairs
    spread: float      # palmate: angle between neighbouring lobes (radians)


class _Blade(NamedTuple):
    """One blade: a simple leaf, a palmate lobe or a compound leaflet."""

    x: float           # base point, image units (0..1)
    y: float
    angle: float       # direction base -> tip
    length: float
    width: float
    a: float
    b: float
    serration: float
    teeth: int
    bend: float        # sideways offset of the tip, fraction of the length
    veins: int
    vein_slope: float


@lru_cache(maxsize=None)
def _style(crop: str) -> _Style:
    key = zlib.crc32(crop.encode("utf-8"))
    family = _KNOWN_FAMILY.get(crop.lower(), _FAMILIES[key % len(_FAMILIES)])
    u = np.random.default_rng(key).random(12).tolist()  # Python floats keep arrays float32
    hue = 0.24 + 0.08 * u[0]
    serration = 0.0 if u[1] < 0.3 else 0.03 + 0.07 * u[2]
    teeth = 10 + int(12 * u[3])
    if family == "ovate":
        return _Style(family, 0.30 + 0.08 * u[4], 0.55 + 0.25 * u[5], 0.8 + 0.35 * u[6],
                      serration, teeth, hue, 6 + int(3 * u[7]), 1.2 + 0.8 * u[8], 1, 0.0)
    if family == "lanceolate":
        return _Style(family, 0.15 + 0.07 * u[4], 0.7 + 0.35 * u[5], 0.9 + 0.5 * u[6],
                      serration, teeth + 6, hue, 8 + int(4 * u[7]), 1.8 + 1.2 * u[8], 1, 0.0)
    if family == "palmate":  # lobes always toothed, fewer teeth per (shorter) lobe
        return _Style(family, 0.30 + 0.08 * u[4], 0.6 + 0.2 * u[5], 1.0 + 0.4 * u[6],
                      max(serration, 0.05), teeth // 2 + 4, hue, 4 + int(2 * u[7]),
                      1.3 + 0.6 * u[8], 5 if u[9] < 0.75 else 3, math.radians(36 + 14 * u[10]))
    return _Style(family, 0.25 + 0.07 * u[4], 0.6 + 0.3 * u[5], 0.8 + 0.4 * u[6],
                  serration, teeth // 2 + 3, hue, 4 + int(2 * u[7]), 1.2 + 0.6 * u[8],
                  2 + int(u[9] < 0.5), 0.0)


# ---------------------------------------------------------------- drawing helpers
# The canvas is (3, S, S) float32 RGB in [0, 1], channels first so that mixing in an (S, S)
# coverage broadcasts over contiguous rows. Geometry is in image units (0..1), so a picture
# looks the same at any size. Small shapes are drawn on a window (a pair of slices) around
# them. Random numbers are drawn in fixed-size batches (`rng.random(k).tolist()`): fewer calls,
# and a shape off the canvas still consumes its draws, so the draw order never shifts.

_ALL = slice(None)
_LUT = 2048  # samples of a blade's profiles along its length
_PAD = 4     # "outside the blade" samples before the base and after the tip
_settled = False


def _settle_allocator() -> None:
    """Once per process: free one large block so glibc keeps our temporaries.

    glibc malloc hands blocks of more than 128 KiB back to the OS on free and page-faults them
    in again on the next allocation, which cost a third of the render time here. Freeing a large block
    raises its adaptive thresholds above our array sizes (any numpy-heavy program does this
    sooner or later); other allocators ignore it.
    """
    global _settled
    if not _settled:
        np.empty(8 << 20, np.uint8)
        _settled = True


def _unit(x: np.ndarray) -> np.ndarray:
    """Clip a temporary to [0, 1] in place."""
    return np.clip(x, 0.0, 1.0, out=x)


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    """(3, 1, 1) RGB colour."""
    rgb = colorsys.hsv_to_rgb(h % 1.0, min(max(s, 0.0), 1.0), min(max(v, 0.0), 1.0))
    return np.array(rgb, dtype=np.float32).reshape(3, 1, 1)


def _paint(color: np.ndarray, field: np.ndarray) -> np.ndarray:
    """color (3, 1, 1) * field (h, w) as a C-ordered (3, h, w) array (left to itself numpy
    keeps the colour's strides, and later arithmetic on the result is several times slower)."""
    return np.multiply(color, field, out=np.empty((3, *field.shape), np.float32))


@lru_cache(maxsize=512)
def _upsampler(cells: int, n: int) -> np.ndarray:
    """(n, cells+1) Catmull-Rom weights taking cells+1 grid samples to n pixel centres."""
    p = (np.arange(n) + 0.5) * (cells / n)
    k = np.floor(p).astype(int)
    f = p - k
    taps = ((-f ** 3 + 2 * f ** 2 - f) / 2, (3 * f ** 3 - 5 * f ** 2 + 2) / 2,
            (-3 * f ** 3 + 4 * f ** 2 + f) / 2, (f ** 3 - f ** 2) / 2)
    m = np.zeros((n, cells + 1))
    for j, wj in enumerate(taps):
        np.add.at(m, (np.arange(n), np.clip(k + j - 1, 0, cells)), wj)
    return m.astype(np.float32)


def _smooth_noise(rng: np.random.Generator, cells: int, h: int, w: int | None = None) -> np.ndarray:
    """Value noise (h, w): a (cells+1)^2 grid of N(0, 1), interpolated."""
    grid = rng.standard_normal((cells + 1, cells + 1), dtype=np.float32)
    return _upsampler(cells, h) @ grid @ _upsampler(cells, w or h).T


@lru_cache(maxsize=64)
def _centres(S: int) -> np.ndarray:
    """Pixel-centre coordinates of an S-pixel axis in image units (read-only, shared)."""
    c = (np.arange(S, dtype=np.float32) + 0.5) / S
    c.setflags(write=False)
    return c


def _box(x0: float, x1: float, y0: float, y1: float, S: int):
    """Pixels covering [x0, x1] x [y0, y1] (image units), clipped to the canvas: the window
    and its pixel-centre coordinates xs (1, w), ys (h, 1); None when off the canvas."""
    i0, i1 = max(int(x0 * S), 0), min(int(math.ceil(x1 * S)) + 1, S)
    j0, j1 = max(int(y0 * S), 0), min(int(math.ceil(y1 * S)) + 1, S)
    if i0 >= i1 or j0 >= j1:
        return None
    centres = _centres(S)
    return (slice(j0, j1), slice(i0, i1)), centres[None, i0:i1], centres[j0:j1, None]


def _window(cx: float, cy: float, r: float, S: int):
    return _box(cx - r, cx + r, cy - r, cy + r, S)


def _blend(img: np.ndarray, win, alpha: np.ndarray, color: np.ndarray) -> None:
    """Mix `color` ((3, 1, 1) or (3, h, w)) into the window with coverage `alpha` (h, w)."""
    region = img[(_ALL, *win)]
    region -= (region - color) * alpha  # region first: the result keeps its memory order


def _blob(u6, amount, xs, ys, cx, cy, r, S, soft=1.0):
    """Soft irregular disc of mean radius r, outline from six uniforms u6 (two harmonics of
    the radius, relative amplitude up to `amount`); (coverage, distance / local radius)."""
    k1, k2 = 2 + int(2 * u6[0]), 4 + int(3 * u6[1])
    dx, dy = xs - cx, ys - cy
    ang = np.arctan2(dy, dx)
    rr = r * (1.0 + amount * (u6[4] * np.sin(k1 * ang + math.tau * u6[2])
                              + 0.4 * u6[5] * np.sin(k2 * ang + math.tau * u6[3])))
    d = np.sqrt(dx * dx + dy * dy)
    return _unit((rr - d) * (S / soft) + 0.5), d / rr


@lru_cache(maxsize=4096)
def _profiles(a: float, b: float, serration: float, teeth: int) -> tuple[np.ndarray, np.ndarray]:
    """Lookup tables along a blade, (_LUT + 2 * _PAD + 1,) float32 each.

    width: half-width u^a (1-u)^b with peak 1, saw teeth pointing tipwards, negative past
    the base and tip. midrib: relative midrib half-width, tapering to nothing at the tip.
    """
    u = np.linspace(-_PAD / _LUT, 1.0 + _PAD / _LUT, _LUT + 2 * _PAD + 1)
    uc = np.clip(u, 0.0, 1.0)
    width = uc ** a * (1.0 - uc) ** b
    width /= width.max()
    if serration > 0:
        width *= 1.0 - serration * ((uc * teeth) % 1.0)
    width[(u <= 0) | (u >= 1)] = -0.05
    midrib = np.where((u > 0) & (u < 1), (1.0 - 0.6 * uc) * np.clip((1.0 - uc) * 8.0, 0.0, 1.0), 0.0)
    return width.astype(np.float32), midrib.astype(np.float32)


def _draw_blade(bl: _Blade, S: int, alpha, depth, vein, side) -> None:
    """Rasterise one blade into the shared (S, S) leaf layers.

    alpha: coverage; depth: distance inside the margin (image units). The deepest blade at a
    pixel owns its veins and fold side, so overlapping lobes and leaflets hide each other's veins.
    """
    c, s, L, W = math.cos(bl.angle), math.sin(bl.angle), bl.length, bl.width
    hw = L * (W * (1 + bl.serration) + abs(bl.bend)) + 2.0 / S  # half-height of the blade's box
    tx, ty = bl.x + c * L, bl.y + s * L
    found = _box(min(bl.x, tx) - abs(s) * hw, max(bl.x, tx) + abs(s) * hw,
                 min(bl.y, ty) - abs(c) * hw, max(bl.y, ty) + abs(c) * hw, S)
    if found is None:
        return
    win, xs, ys = found
    dx, dy = xs - bl.x, ys - bl.y
    u = dx * (c / L) + dy * (s / L)                      # along the midrib: 0 base .. 1 tip
    vn = dy * (c / (L * W)) - dx * (s / (L * W))         # across, in units of the half-width
    vn -= (bl.bend / W) * u * u                          # midrib curved sideways
    idx = np.clip(u * _LUT + (_PAD + 0.5), 0.0, _LUT + 2 * _PAD).astype(np.intp)
    width_lut, midrib_lut = _profiles(bl.a, bl.b, bl.serration, bl.teeth)
    prof = width_lut[idx]
    av = np.abs(vn)
    d = (prof - av) * (L * W)                            # > 0 inside, image units
    a_b = _unit(d * (S / 1.2) + 0.5)

    px = L * W * S  # half-width units -> canvas pixels
    midrib = _unit(midrib_lut[idx] * max(0.005 * S, 0.7) - av * px + 0.5)
    # Lateral veins: lines of constant u - slope * |v|, `veins` of them along the blade.
    t = u * bl.veins - av * (bl.vein_slope * W * bl.veins)
    lateral = np.abs(t - np.round(t))
    lateral *= -(px / W / bl.veins / math.sqrt(1.0 + bl.vein_slope ** 2) / max(0.0028 * S, 0.6))
    lateral += 1.0
    _unit(lateral)
    lateral *= (t > 0.5) & (t < 0.93 * bl.veins)
    lateral *= _unit(1.1 - av / (prof + 1e-6))  # fading out towards the margin

    own = d > depth[win]
    depth[win] = np.where(own, d, depth[win])
    vein[win] = np.where(own, np.maximum(midrib, 0.65 * lateral), vein[win])
    side[win] = np.where(own, np.sign(vn), side[win])
    np.maximum(alpha[win], a_b, out=alpha[win])


def _draw_stem(x0, y0, x1, y1, hw, S, stem) -> None:
    """Capsule from (x0, y0) to (x1, y1), half-width hw, into the (S, S) stem coverage."""
    pad = hw + 2.0 / S
    found = _box(min(x0, x1) - pad, max(x0, x1) + pad, min(y0, y1) - pad, max(y0, y1) + pad, S)
    if found is None:
        return
    win, xs, ys = found
    ex, ey = x1 - x0, y1 - y0
    t = _unit(((xs - x0) * ex + (ys - y0) * ey) / (ex * ex + ey * ey + 1e-12))
    d = np.hypot(xs - x0 - t * ex, ys - y0 - t * ey)
    np.maximum(stem[win], _unit((hw - d) * S + 0.5), out=stem[win])


def _layout(rng: np.random.Generator, st: _Style):
    """One leaf's blades and stems in image units: pose and per-image jitter of the style."""
    g = rng.random(8).tolist()
    jit = (rng.random(16) * 2.0 - 1.0).tolist()  # in [-1, 1)
    L = 0.6 + 0.32 * g[0]                        # overall extent of the leaf
    theta = 2 * math.pi * g[1]
    cx, cy = 0.4 + 0.2 * g[2], 0.4 + 0.2 * g[3]
    width = st.width * (0.85 + 0.3 * g[4])
    # Shape exponents on a 0.05 grid: few distinct profiles, so _profiles' cache hits.
    a = round(st.a * (0.85 + 0.3 * g[5]) * 20.0) / 20.0
    b = round(st.b * (0.85 + 0.3 * g[6]) * 20.0) / 20.0
    bend = 0.12 * (2.0 * g[7] - 1.0)
    dc, ds = math.cos(theta), math.sin(theta)
    blades: list[_Blade] = []
    stems: list[tuple[float, float, float, float, float]] = []

    def blade(x, y, ang, length, wid, bnd, veins):
        blades.append(_Blade(x, y, ang, length, wid, a, b, st.serration, st.teeth, bnd,
                             veins, st.vein_slope))

    if st.family in ("ovate", "lanceolate"):
        Lb = L * (0.88 if st.family == "ovate" else 1.0)
        bx, by = cx - dc * Lb / 2, cy - ds * Lb / 2
        blade(bx, by, theta, Lb, width, bend, st.veins)
        pl = L * (0.12 + 0.06 * jit[0])
        stems.append((bx - dc * pl, by - ds * pl, bx + dc * 0.02 * L, by + ds * 0.02 * L, 0.008))
    elif st.family == "palmate":
        l0 = L * 0.6
        bx, by = cx - dc * l0 * 0.42, cy - ds * l0 * 0.42
        ks = (0, -1, 1, -2, 2) if st.lobes == 5 else (0, -1, 1)
        for i, k in enumerate(ks):
            ang = theta + k * st.spread * (1.0 + 0.12 * jit[1 + i])
            ln = l0 * (1.0, 0.82, 0.82, 0.58, 0.58)[i] * (1.0 + 0.08 * jit[6 + i])
            back = 0.1 * ln  # lobes start behind the junction so that they fuse into one blade
            blade(bx - math.cos(ang) * back, by - math.sin(ang) * back, ang, ln * 1.1,
                  width, bend * 0.5 + 0.04 * jit[11 + i], st.veins)
        pl = L * (0.2 + 0.05 * jit[0])
        stems.append((bx - dc * pl, by - ds * pl, bx, by, 0.009))
    else:  # compound: a rachis with leaflet pairs and a terminal leaflet
        rl = L * 0.62
        bx, by = cx - dc * L / 2, cy - ds * L / 2
        stems.append((bx, by, bx + dc * rl, by + ds * rl, 0.007))
        blade(bx + dc * (rl - 0.04 * L), by + ds * (rl - 0.04 * L), theta + 0.1 * jit[0],
              L * 0.42, width, bend, st.veins)
        for i in range(st.lobes):
            pos = rl * (0.22 + 0.62 * i / max(st.lobes - 0.5, 1)) + 0.02 * L * jit[1 + i]
            ln = L * (0.26 + 0.05 * i / max(st.lobes - 1, 1)) * (1.0 + 0.1 * jit[4 + i])
            px, py = bx + dc * pos, by + ds * pos
            for sgn, j in ((1, 7 + i), (-1, 10 + i)):
                ang = theta + sgn * (1.2 - 0.12 * i + 0.12 * jit[j])  # near-perpendicular
                blade(px, py, ang, ln * (1.0 + 0.06 * jit[j + 3]), width * 1.05,
                      sgn * 0.05 * jit[13], max(st.veins - 1, 3))
    return blades, stems


# ---------------------------------------------------------------- lesions
# Each paints one lesion centred at (cx, cy) into the leaf colour layer (3, S, S), which
# shows only where the leaf covers the canvas; sizes are in image units times `scale` (how
# large this leaf is drawn).


def _sample(rng: np.random.Generator, candidates: np.ndarray, S: int) -> tuple[float, float]:
    """A random point in a random pixel of `candidates` (flat indices), image units."""
    i = int(candidates[rng.integers(len(candidates))])
    jx, jy = rng.random(2).tolist()
    return (i % S + jx) / S, (i // S + jy) / S


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
_LESIONS = {"Leaf_spot": (_leaf_spot, 1, 4), "Rust": (_rust, 2, 5), "Mosaic": (_mosaic, 2, 3),
            "Blight": (_blight, 1, 1)}


# ---------------------------------------------------------------- one image


def _downsample(a: np.ndarray, ss: int) -> np.ndarray:
    """Sum of each ss x ss block over the last two axes."""
    if ss == 1:
        return a
    out = a[..., ::ss, ::ss].copy()
    for dy in range(ss):
        for dx in range(ss):
            if dx or dy:
                out += a[..., dy::ss, dx::ss]
    return out


def render_leaf(rng: np.random.Generator, size: int, crop: str, disease: str | None,
                severity: float = 1.0) -> np.ndarray:
    """One (size, size, 3) uint8 image of a `crop` leaf, healthy (None) or with `disease`.

    `severity` multiplies the number of lesions and their area (1.0: the scarce early-stage
    cues of the study; the pretrain stage's source task uses late-stage leaves, as ImageNet or
    PlantVillage photos show obvious symptoms).

    Everything but the lesions is drawn first, from the same draws of `rng` whatever the
    disease, so two generators in the same state give a healthy image and the same image
    with lesions added.
    """
    if disease is not None and disease not in _LESIONS:
        raise ValueError(f"unknown disease {disease!r} (have: {', '.join(DISEASES)})")
    if not 0.1 <= severity <= 10:
        raise ValueError(f"severity must be within 0.1..10, got {severity!r}")
    _check_crop(crop)
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 8:
        raise ValueError(f"size must be an integer >= 8, got {size!r}")
    _settle_allocator()
    size = int(size)
    st = _style(crop)
    # The soil is drawn at the output size (it is soft anyway); the leaf at ss x that, on a
    # canvas of S pixels, and box-filtered down before the two are composited.
    ss = 2 if size <= _SUPERSAMPLE_UP_TO else 1
    S = size * ss

    # Soil: brown, brightness noise at three scales plus pixel grain, a warm/cool tint drift.
    g = rng.random(6).tolist()
    soil = _hsv(0.05 + 0.06 * g[0], 0.35 + 0.3 * g[1], 0.28 + 0.22 * g[2])
    tone = 0.5 * _smooth_noise(rng, 3 + int(3 * g[3]), size)
    tone += 0.3 * _smooth_noise(rng, 10 + int(6 * g[4]), size)
    tone += 0.25 * _smooth_noise(rng, max(size // 3, 4), size)
    tone += 0.2 * rng.standard_normal((size, size), dtype=np.float32)
    tone *= 0.2
    tone += 1.0
    bg = _paint(soil, tone)
    bg += _paint(np.array([0.03, 0.015, -0.01], np.float32).reshape(3, 1, 1),
                 _smooth_noise(rng, 4, size))

    # Soil distractors: pale pebbles, and dark stains about lesion-sized or larger, some with
    # a lighter rim like a leaf spot's halo.
    for cx, cy, r, v in rng.random((int(rng.integers(0, 5)), 4)).tolist():
        r = 0.006 + 0.008 * r
        found = _window(cx, cy, r + 1.0 / size, size)
        if found:
            win, xs, ys = found
            disc = _unit((r - np.sqrt((xs - cx) ** 2 + (ys - cy) ** 2)) * size + 0.5)
            _blend(bg, win, 0.7 * disc, _hsv(0.08, 0.15, 0.55 + 0.2 * v))
    for p in rng.random((int(rng.integers(1, 6)), 14)).tolist():
        cx, cy, r = p[0], p[1], 0.015 + 0.045 * p[2]
        found = _window(cx, cy, 1.6 * 1.42 * r + 1.0 / size, size)  # rim: 1.6 local radii
        if found:
            win, xs, ys = found
            stain, nd = _blob(p[8:], 0.3, xs, ys, cx, cy, r, size, soft=1.3)
            if p[3] < 0.35:
                ring = _unit((1.6 - nd) * 2.0) * (1.0 - stain)
                _blend(bg, win, 0.35 * ring, _hsv(0.1, 0.45, 0.6))
            _blend(bg, win, (0.45 + 0.4 * p[4]) * stain,
                   _hsv(0.04 + 0.05 * p[5], 0.4 + 0.3 * p[6], 0.08 + 0.12 * p[7]))

    # Leaf geometry: (S, S) layers.
    blades, stems = _layout(rng, st)
    alpha = np.zeros((S, S), np.float32)
    depth = np.full((S, S), -1.0, np.float32)
    vein = np.zeros((S, S), np.float32)
    side = np.zeros((S, S), np.float32)
    stem = np.zeros((S, S), np.float32)
    for bl in blades:
        _draw_blade(bl, S, alpha, depth, vein, side)
    for sx0, sy0, sx1, sy1, hw in stems:
        _draw_stem(sx0, sy0, sx1, sy1, hw, S, stem)
    # Total coverage, stems over blades, then box-filtered to the output size.
    cover = 1.0 - (1.0 - alpha) * (1.0 - stem)
    cover_out = _downsample(cover, ss) * (1.0 / (ss * ss))

    g = rng.random(10).tolist()
    # Cast shadow: the leaf's coverage shifted down-left or down-right, darkening the soil.
    sh = max(int(round((0.01 + 0.02 * g[0]) * size)), 1)
    sdx = sh if g[1] < 0.5 else -sh
    shadow = np.ones((size, size), np.float32)
    shadow[sh:, max(sdx, 0): size + min(sdx, 0)] -= (0.25 + 0.2 * g[2]) * cover_out[
        : size - sh, max(-sdx, 0): size - max(sdx, 0)]
    bg *= shadow

    # Leaf colour: a per-image green, lit from one side, folded along the midrib, lighter veins.
    h, sat, val = st.hue + 0.09 * (g[3] - 0.5), 0.45 + 0.4 * g[4], 0.32 + 0.36 * g[5]
    green = _hsv(h, sat, val)
    vein_col = _hsv(h - 0.03, sat * 0.55, min(val * 1.5, 0.95))
    stem_col = _hsv(h - 0.04, sat * 0.7, min(val * 1.25, 0.9))
    phi, fold, vein_strength = 2 * math.pi * g[6], 0.03 + 0.06 * g[7], 0.4 + 0.3 * g[8]
    pos = _centres(S) - 0.5
    shade = 0.1 * _smooth_noise(rng, 3 + int(4 * g[9]), S)
    shade += 0.18 * math.cos(phi) * pos[None, :] + (1.0 + 0.18 * math.sin(phi) * pos[:, None])
    stem_shade = shade * stem  # before the fold: a stem has none
    shade += fold * side
    leaf = _paint(green, shade)
    leaf -= (leaf - vein_col) * (vein_strength * vein)

    # Where lesions can go: well inside a blade and off the canvas border, so that each
    # shows; blight takes margin pixels instead.
    inner = np.zeros((S, S), bool)
    m = max(int(0.05 * S), 1)
    inner[m:-m, m:-m] = True
    interior = np.flatnonzero((alpha > 0.99) & (depth > 0.02) & inner)
    margin = np.flatnonzero((alpha > 0.2) & (alpha < 0.8) & (stem < 0.1) & inner)
    scale = 1.0 if st.family == "compound" else min(max(blades[0].length / 0.7, 0.8), 1.2)

    # A benign mark, drawn whatever the condition: a soil speck or a faint yellowing about
    # the size of a lesion.
    g = rng.random(12).tolist()
    if g[0] < 0.35 and len(interior):
        cx, cy = _sample(rng, interior, S)
        r = 0.008 + 0.012 * g[1]
        found = _window(cx, cy, 1.4 * r + 1.0 / S, S)
        if found:
            win, xs, ys = found
            speck = _blob(g[6:], 0.3, xs, ys, cx, cy, r, S)[0]
            if g[0] < 0.2:
                _blend(leaf, win, 0.75 * speck, _hsv(0.07, 0.5, 0.22))
            else:
                _blend(leaf, win, 0.35 * speck, _hsv(0.16, 0.6, 0.7))
    # Camera white balance and exposure, applied last.
    gain = np.array([0.96 + 0.08 * x for x in g[2:5]], np.float32) * (0.92 + 0.16 * g[5])

    if disease is not None:
        paint, lo, hi = _LESIONS[disease]
        n = max(1, round(int(rng.integers(lo, hi + 1)) * severity))
        scale *= severity ** 0.5
        pool = margin if disease == "Blight" and len(margin) else interior
        if len(pool) == 0:
            pool = np.flatnonzero(alpha > 0.5)
        for _ in range(n if len(pool) else 0):
            cx, cy = _sample(rng, pool, S)
            paint(rng, leaf, S, cx, cy, scale)

    # Premultiplied leaf (blade colour where no stem, stem colour over it), box-filtered,
    # over the soil.
    leaf *= alpha * (1.0 - stem)
    leaf += _paint(stem_col, stem_shade)
    img = _downsample(leaf, ss)
    img *= 1.0 / (ss * ss)
    img += bg * (1.0 - cover_out)
    img *= (gain * 255.0).reshape(3, 1, 1)
    img += 0.5
    np.clip(img, 0.0, 255.0, out=img)
    return np.ascontiguousarray(img.astype(np.uint8).transpose(1, 2, 0))


# ---------------------------------------------------------------- the collection


def _check_crop(crop: object) -> None:
    if not isinstance(crop, str) or not crop.strip():
        raise ValueError(f"crop names must be non-empty strings, got {crop!r}")
    if crop != crop.strip() or crop in (".", "..") or any(ch in crop for ch in "/\\\0"):
        raise ValueError(f"crop name {crop!r} is not a safe folder name")
    if "___" in crop or crop.endswith("_"):
        raise ValueError(f"crop name {crop!r} must not contain '___' or end in '_' "
                         "(it is the <Crop>___<condition> separator)")


def _check_count(name: str, value: object, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def _seed_for(seed: int, crop: str, condition: str, index: int) -> np.random.Generator:
    return np.random.default_rng(
        [seed, zlib.crc32(crop.encode("utf-8")), zlib.crc32(condition.encode("utf-8")), index])


def _write_png(folder: str, index: int, pixels: np.ndarray) -> None:
    buf = io.BytesIO()
    # Fixed options and no metadata chunks: the bytes depend on the pixels only.
    Image.fromarray(pixels, "RGB").save(buf, format="PNG", compress_level=1)
    final = os.path.join(folder, f"{index:05d}.png")
    tmp = os.path.join(folder, f".{index:05d}.png.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(buf.getvalue())
    os.replace(tmp, final)


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


def generate(root: str | os.PathLike, *, seed: int, image_size: int, crops: Sequence[str],
             healthy: int, per_disease: int, workers: int = 0, progress: bool = True,
             severity: float = 1.0) -> dict:
    """Write the synthetic collection under `root` and return timing and per-class counts.

    Per crop: `healthy` images in <Crop>___healthy and `per_disease` images in each
    <Crop>___<Disease> folder, lesions drawn at `severity` (see `render_leaf`). Existing class folders are overwritten (images past the new
    count are removed); other folders under `root` are left alone. workers=0 uses one process
    per core, workers=1 renders in this process. Worker processes start by forkserver (no
    inherited threads), so a calling script needs the usual `if __name__ == "__main__":`.

    Returns {"images", "seconds", "images_per_second", "workers", "classes": {folder: count}}.
    """
    seed = _check_count("seed", seed, 0)
    image_size = _check_count("image_size", image_size, 16)
    healthy = _check_count("healthy", healthy, 1)
    per_disease = _check_count("per_disease", per_disease, 1)
    workers = _check_count("workers", workers, 0)
    if not 0.1 <= severity <= 10:
        raise ValueError(f"severity must be within 0.1..10, got {severity!r}")
    if isinstance(crops, (str, bytes)) or not isinstance(crops, Sequence) or not crops:
        raise ValueError(f"crops must be a non-empty list of names, got {crops!r}")
    for crop in crops:
        _check_crop(crop)
    if len(set(crops)) != len(crops):
        raise ValueError(f"crops must be unique, got {list(crops)}")

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    total = len(crops) * (healthy + len(DISEASES) * per_disease)
    procs = workers or os.cpu_count() or 1
    # Several chunks per process keeps the processes busy to the end; 64 bounds the
    # progress-bar step.
    chunk = max(1, min(64, math.ceil(total / (8 * procs))))
    classes: dict[str, int] = {}
    jobs = []
    for crop in crops:
        for condition, count in ((HEALTHY, healthy), *((d, per_disease) for d in DISEASES)):
            folder = root / f"{crop}___{condition}"
            folder.mkdir(exist_ok=True)
            _prune(folder, count)
            classes[folder.name] = count
            jobs += [(str(folder), seed, image_size, crop, condition, i, min(i + chunk, count), float(severity))
                     for i in range(0, count, chunk)]
    procs = min(procs, len(jobs))

    t0 = time.perf_counter()
    with tqdm(total=total, unit="img", desc="synthetic leaves",
              disable=None if progress else True) as bar:
        if procs == 1:
            for job in jobs:
                bar.update(_run_job(job))
        else:
            with _pool_context().Pool(procs) as pool:
                for n in pool.imap_unordered(_run_job, jobs):
                    bar.update(n)
    seconds = time.perf_counter() - t0
    return {"images": total, "seconds": seconds,
            "images_per_second": total / seconds if seconds > 0 else float("inf"),
            "workers": procs, "classes": classes}

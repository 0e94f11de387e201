"""The healthy leaf: per-crop styles, blade layout and the drawing helpers every part shares.

`render.render_leaf` draws a picture from these pieces; `lesions` paints on the same canvas::

    st = _style("Apple")                         # proportions, hue, venation of the crop
    blades, stems = _layout(rng, st)             # one leaf's pose, in image units
    _draw_blade(blades[0], S, alpha, depth, vein, side)

The leaf's shape family (ovate, lanceolate, palmate, compound) and its typical proportions
follow from the crop name, so any crop name works; hue, shade, pose and venation vary per image.
"""

from __future__ import annotations

import colorsys
import math
import zlib
from functools import cache, lru_cache
from typing import NamedTuple

import numpy as np

_FAMILIES = ("ovate", "lanceolate", "palmate", "compound")
# PlantVillage crops get their botanical family; any other name gets one from its CRC.
_KNOWN_FAMILY = {
    "apple": "ovate",
    "blueberry": "ovate",
    "orange": "ovate",
    "peach": "lanceolate",
    "cherry": "lanceolate",
    "pepper": "lanceolate",
    "corn": "lanceolate",
    "grape": "palmate",
    "squash": "palmate",
    "tomato": "compound",
    "potato": "compound",
    "raspberry": "compound",
    "soybean": "compound",
    "strawberry": "compound",
}


class _Style(NamedTuple):
    """Per-crop proportions; every image jitters around them."""

    family: str
    width: float  # blade half-width / blade length at the widest point
    a: float  # width profile u**a * (1-u)**b along the blade (u: 0 base, 1 tip)
    b: float
    serration: float  # tooth depth, fraction of the local half-width
    teeth: int  # teeth along one margin of a blade
    hue: float  # HSV hue of the crop's typical green
    veins: int  # lateral vein pairs per blade
    vein_slope: float  # how far a lateral vein runs tipwards per unit of width
    lobes: int  # palmate: lobes; compound: leaflet pairs
    spread: float  # palmate: angle between neighbouring lobes (radians)


class _Blade(NamedTuple):
    """One blade: a simple leaf, a palmate lobe or a compound leaflet."""

    x: float  # base point, image units (0..1)
    y: float
    angle: float  # direction base -> tip
    length: float
    width: float
    a: float
    b: float
    serration: float
    teeth: int
    bend: float  # sideways offset of the tip, fraction of the length
    veins: int
    vein_slope: float


@cache
def _style(crop: str) -> _Style:
    key = zlib.crc32(crop.encode("utf-8"))
    family = _KNOWN_FAMILY.get(crop.lower(), _FAMILIES[key % len(_FAMILIES)])
    u = np.random.default_rng(key).random(12).tolist()  # Python floats keep arrays float32
    hue = 0.24 + 0.08 * u[0]
    serration = 0.0 if u[1] < 0.3 else 0.03 + 0.07 * u[2]
    teeth = 10 + int(12 * u[3])
    if family == "ovate":
        return _Style(
            family,
            0.30 + 0.08 * u[4],
            0.55 + 0.25 * u[5],
            0.8 + 0.35 * u[6],
            serration,
            teeth,
            hue,
            6 + int(3 * u[7]),
            1.2 + 0.8 * u[8],
            1,
            0.0,
        )
    if family == "lanceolate":
        return _Style(
            family,
            0.15 + 0.07 * u[4],
            0.7 + 0.35 * u[5],
            0.9 + 0.5 * u[6],
            serration,
            teeth + 6,
            hue,
            8 + int(4 * u[7]),
            1.8 + 1.2 * u[8],
            1,
            0.0,
        )
    if family == "palmate":  # lobes always toothed, fewer teeth per (shorter) lobe
        return _Style(
            family,
            0.30 + 0.08 * u[4],
            0.6 + 0.2 * u[5],
            1.0 + 0.4 * u[6],
            max(serration, 0.05),
            teeth // 2 + 4,
            hue,
            4 + int(2 * u[7]),
            1.3 + 0.6 * u[8],
            5 if u[9] < 0.75 else 3,
            math.radians(36 + 14 * u[10]),
        )
    return _Style(
        family,
        0.25 + 0.07 * u[4],
        0.6 + 0.3 * u[5],
        0.8 + 0.4 * u[6],
        serration,
        teeth // 2 + 3,
        hue,
        4 + int(2 * u[7]),
        1.2 + 0.6 * u[8],
        2 + int(u[9] < 0.5),
        0.0,
    )


# ---------------------------------------------------------------- drawing helpers
# The canvas is (3, S, S) float32 RGB in [0, 1], channels first so that mixing in an (S, S)
# coverage broadcasts over contiguous rows. Geometry is in image units (0..1), so a picture
# looks the same at any size. Small shapes are drawn on a window (a pair of slices) around
# them. Random numbers are drawn in fixed-size batches (`rng.random(k).tolist()`): fewer calls,
# and a shape off the canvas still consumes its draws, so the draw order never shifts.

_ALL = slice(None)
_LUT = 2048  # samples of a blade's profiles along its length
_PAD = 4  # "outside the blade" samples before the base and after the tip
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
    taps = (
        (-(f**3) + 2 * f**2 - f) / 2,
        (3 * f**3 - 5 * f**2 + 2) / 2,
        (-3 * f**3 + 4 * f**2 + f) / 2,
        (f**3 - f**2) / 2,
    )
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
    rr = r * (
        1.0 + amount * (u6[4] * np.sin(k1 * ang + math.tau * u6[2]) + 0.4 * u6[5] * np.sin(k2 * ang + math.tau * u6[3]))
    )
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
    width = uc**a * (1.0 - uc) ** b
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
    found = _box(
        min(bl.x, tx) - abs(s) * hw,
        max(bl.x, tx) + abs(s) * hw,
        min(bl.y, ty) - abs(c) * hw,
        max(bl.y, ty) + abs(c) * hw,
        S,
    )
    if found is None:
        return
    win, xs, ys = found
    dx, dy = xs - bl.x, ys - bl.y
    u = dx * (c / L) + dy * (s / L)  # along the midrib: 0 base .. 1 tip
    vn = dy * (c / (L * W)) - dx * (s / (L * W))  # across, in units of the half-width
    vn -= (bl.bend / W) * u * u  # midrib curved sideways
    idx = np.clip(u * _LUT + (_PAD + 0.5), 0.0, _LUT + 2 * _PAD).astype(np.intp)
    width_lut, midrib_lut = _profiles(bl.a, bl.b, bl.serration, bl.teeth)
    prof = width_lut[idx]
    av = np.abs(vn)
    d = (prof - av) * (L * W)  # > 0 inside, image units
    a_b = _unit(d * (S / 1.2) + 0.5)

    px = L * W * S  # half-width units -> canvas pixels
    midrib = _unit(midrib_lut[idx] * max(0.005 * S, 0.7) - av * px + 0.5)
    # Lateral veins: lines of constant u - slope * |v|, `veins` of them along the blade.
    t = u * bl.veins - av * (bl.vein_slope * W * bl.veins)
    lateral = np.abs(t - np.round(t))
    lateral *= -(px / W / bl.veins / math.sqrt(1.0 + bl.vein_slope**2) / max(0.0028 * S, 0.6))
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
    L = 0.6 + 0.32 * g[0]  # overall extent of the leaf
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
        blades.append(_Blade(x, y, ang, length, wid, a, b, st.serration, st.teeth, bnd, veins, st.vein_slope))

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
            blade(
                bx - math.cos(ang) * back,
                by - math.sin(ang) * back,
                ang,
                ln * 1.1,
                width,
                bend * 0.5 + 0.04 * jit[11 + i],
                st.veins,
            )
        pl = L * (0.2 + 0.05 * jit[0])
        stems.append((bx - dc * pl, by - ds * pl, bx, by, 0.009))
    else:  # compound: a rachis with leaflet pairs and a terminal leaflet
        rl = L * 0.62
        bx, by = cx - dc * L / 2, cy - ds * L / 2
        stems.append((bx, by, bx + dc * rl, by + ds * rl, 0.007))
        blade(
            bx + dc * (rl - 0.04 * L), by + ds * (rl - 0.04 * L), theta + 0.1 * jit[0], L * 0.42, width, bend, st.veins
        )
        for i in range(st.lobes):
            pos = rl * (0.22 + 0.62 * i / max(st.lobes - 0.5, 1)) + 0.02 * L * jit[1 + i]
            ln = L * (0.26 + 0.05 * i / max(st.lobes - 1, 1)) * (1.0 + 0.1 * jit[4 + i])
            px, py = bx + dc * pos, by + ds * pos
            for sgn, j in ((1, 7 + i), (-1, 10 + i)):
                ang = theta + sgn * (1.2 - 0.12 * i + 0.12 * jit[j])  # near-perpendicular
                blade(
                    px,
                    py,
                    ang,
                    ln * (1.0 + 0.06 * jit[j + 3]),
                    width * 1.05,
                    sgn * 0.05 * jit[13],
                    max(st.veins - 1, 3),
                )
    return blades, stems


# ---------------------------------------------------------------- shared with render and lesions


def _sample(rng: np.random.Generator, candidates: np.ndarray, S: int) -> tuple[float, float]:
    """A random point in a random pixel of `candidates` (flat indices), image units."""
    i = int(candidates[rng.integers(len(candidates))])
    jx, jy = rng.random(2).tolist()
    return (i % S + jx) / S, (i // S + jy) / S


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

"""One picture: `render_leaf` draws the soil, the leaf, a benign mark and the lesions in turn.

    from finalbn.synthetic import render_leaf
    img = render_leaf(np.random.default_rng(0), 64, "Apple", "Rust")   # (64, 64, 3) uint8

Each step below draws from `rng` in a fixed order, and every part of the healthy picture comes
before the lesions, so with the same generator state a diseased image is the healthy image plus
lesions.
"""

from __future__ import annotations

import math

import numpy as np

from finalbn.synthetic.leaf import (
    _blend,
    _blob,
    _centres,
    _downsample,
    _draw_blade,
    _draw_stem,
    _hsv,
    _layout,
    _paint,
    _sample,
    _settle_allocator,
    _smooth_noise,
    _Style,
    _style,
    _unit,
    _window,
)
from finalbn.synthetic.lesions import _LESIONS, DISEASES

# Up to this output size the leaf is drawn at twice the size and box-filtered down: cheap
# anti-aliasing for thin veins and small lesions (larger images are smooth enough at 1x).
_SUPERSAMPLE_UP_TO = 256


def render_leaf(
    rng: np.random.Generator, size: int, crop: str, disease: str | None, severity: float = 1.0
) -> np.ndarray:
    """One (size, size, 3) uint8 image of a `crop` leaf, healthy (None) or with `disease`.

    `severity` multiplies the number of lesions and their area (1.0: the scarce early-stage
    cues of the study; the pretrain stage's source task uses late-stage leaves, as ImageNet or
    PlantVillage photos show obvious symptoms).

    Everything but the lesions is drawn first, from the same draws of `rng` whatever the
    disease, so two generators in the same state give a healthy image and the same image
    with lesions added.
    """
    _check_render_arguments(size, crop, disease, severity)
    _settle_allocator()
    size = int(size)
    st = _style(crop)
    # The soil is drawn at the output size (it is soft anyway); the leaf at ss x that, on a
    # canvas of S pixels, and box-filtered down before the two are composited.
    ss = 2 if size <= _SUPERSAMPLE_UP_TO else 1
    S = size * ss

    bg = _soil(rng, size)
    _soil_distractors(rng, bg, size)
    blades, alpha, depth, vein, side, stem = _leaf_layers(rng, st, S)
    # Total coverage, stems over blades, then box-filtered to the output size.
    cover = 1.0 - (1.0 - alpha) * (1.0 - stem)
    cover_out = _downsample(cover, ss) * (1.0 / (ss * ss))

    g = rng.random(10).tolist()  # shared by the shadow and the leaf colour
    _cast_shadow(bg, cover_out, g, size)
    leaf, stem_col, stem_shade = _leaf_colour(rng, st, g, S, vein, side, stem)
    interior, margin, scale = _lesion_sites(st, blades, alpha, depth, stem, S)
    gain = _benign_mark(rng, leaf, interior, S)
    if disease is not None:
        _paint_lesions(rng, leaf, S, disease, severity, scale, interior, margin, alpha)
    return _composite(leaf, alpha, stem, stem_col, stem_shade, bg, cover_out, gain, ss)


def _check_crop(crop: object) -> None:
    if not isinstance(crop, str) or not crop.strip():
        raise ValueError(f"crop names must be non-empty strings, got {crop!r}")
    if crop != crop.strip() or crop in (".", "..") or any(ch in crop for ch in "/\\\0"):
        raise ValueError(f"crop name {crop!r} is not a safe folder name")
    if "___" in crop or crop.endswith("_"):
        raise ValueError(
            f"crop name {crop!r} must not contain '___' or end in '_' (it is the <Crop>___<condition> separator)"
        )


def _check_severity(severity: float) -> None:
    if not 0.1 <= severity <= 10:
        raise ValueError(f"severity must be within 0.1..10, got {severity!r}")


def _check_render_arguments(size: int, crop: str, disease: str | None, severity: float) -> None:
    if disease is not None and disease not in _LESIONS:
        raise ValueError(f"unknown disease {disease!r} (have: {', '.join(DISEASES)})")
    _check_severity(severity)
    _check_crop(crop)
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 8:
        raise ValueError(f"size must be an integer >= 8, got {size!r}")


def _soil(rng: np.random.Generator, size: int) -> np.ndarray:
    """Soil (3, size, size): brown, brightness noise at three scales plus pixel grain, a
    warm/cool tint drift."""
    g = rng.random(6).tolist()
    soil = _hsv(0.05 + 0.06 * g[0], 0.35 + 0.3 * g[1], 0.28 + 0.22 * g[2])
    tone = 0.5 * _smooth_noise(rng, 3 + int(3 * g[3]), size)
    tone += 0.3 * _smooth_noise(rng, 10 + int(6 * g[4]), size)
    tone += 0.25 * _smooth_noise(rng, max(size // 3, 4), size)
    tone += 0.2 * rng.standard_normal((size, size), dtype=np.float32)
    tone *= 0.2
    tone += 1.0
    bg = _paint(soil, tone)
    bg += _paint(np.array([0.03, 0.015, -0.01], np.float32).reshape(3, 1, 1), _smooth_noise(rng, 4, size))
    return bg


def _soil_distractors(rng: np.random.Generator, bg: np.ndarray, size: int) -> None:
    """Pale pebbles, and dark stains about lesion-sized or larger, some with a lighter rim
    like a leaf spot's halo."""
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
            _blend(bg, win, (0.45 + 0.4 * p[4]) * stain, _hsv(0.04 + 0.05 * p[5], 0.4 + 0.3 * p[6], 0.08 + 0.12 * p[7]))


def _leaf_layers(rng: np.random.Generator, st: _Style, S: int):
    """Leaf geometry: its blades, and (S, S) layers alpha, depth, vein, side and stem."""
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
    return blades, alpha, depth, vein, side, stem


def _cast_shadow(bg: np.ndarray, cover_out: np.ndarray, g: list[float], size: int) -> None:
    """The leaf's coverage shifted down-left or down-right, darkening the soil."""
    sh = max(int(round((0.01 + 0.02 * g[0]) * size)), 1)
    sdx = sh if g[1] < 0.5 else -sh
    shadow = np.ones((size, size), np.float32)
    shadow[sh:, max(sdx, 0) : size + min(sdx, 0)] -= (0.25 + 0.2 * g[2]) * cover_out[
        : size - sh, max(-sdx, 0) : size - max(sdx, 0)
    ]
    bg *= shadow


def _leaf_colour(rng: np.random.Generator, st: _Style, g: list[float], S: int, vein, side, stem):
    """A per-image green, lit from one side, folded along the midrib, lighter veins.

    Returns the leaf colour layer (3, S, S), the stem colour and the stem's shading.
    """
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
    return leaf, stem_col, stem_shade


def _lesion_sites(st: _Style, blades, alpha, depth, stem, S: int):
    """Where lesions can go: well inside a blade and off the canvas border, so that each
    shows; blight takes margin pixels instead. Returns (interior, margin, scale): flat pixel
    indices, and how large this leaf is drawn."""
    inner = np.zeros((S, S), bool)
    m = max(int(0.05 * S), 1)
    inner[m:-m, m:-m] = True
    interior = np.flatnonzero((alpha > 0.99) & (depth > 0.02) & inner)
    margin = np.flatnonzero((alpha > 0.2) & (alpha < 0.8) & (stem < 0.1) & inner)
    scale = 1.0 if st.family == "compound" else min(max(blades[0].length / 0.7, 0.8), 1.2)
    return interior, margin, scale


def _benign_mark(rng: np.random.Generator, leaf: np.ndarray, interior: np.ndarray, S: int) -> np.ndarray:
    """A benign mark, drawn whatever the condition: a soil speck or a faint yellowing about
    the size of a lesion. Returns the camera gain (its draws share the mark's batch)."""
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
    return np.array([0.96 + 0.08 * x for x in g[2:5]], np.float32) * (0.92 + 0.16 * g[5])


def _paint_lesions(
    rng: np.random.Generator,
    leaf: np.ndarray,
    S: int,
    disease: str,
    severity: float,
    scale: float,
    interior,
    margin,
    alpha,
) -> None:
    paint, lo, hi = _LESIONS[disease]
    n = max(1, round(int(rng.integers(lo, hi + 1)) * severity))
    scale *= severity**0.5
    pool = margin if disease == "Blight" and len(margin) else interior
    if len(pool) == 0:
        pool = np.flatnonzero(alpha > 0.5)
    for _ in range(n if len(pool) else 0):
        cx, cy = _sample(rng, pool, S)
        paint(rng, leaf, S, cx, cy, scale)


def _composite(leaf, alpha, stem, stem_col, stem_shade, bg, cover_out, gain, ss: int) -> np.ndarray:
    """Premultiplied leaf (blade colour where no stem, stem colour over it), box-filtered,
    over the soil; gain applied and rounded to (size, size, 3) uint8."""
    leaf *= alpha * (1.0 - stem)
    leaf += _paint(stem_col, stem_shade)
    img = _downsample(leaf, ss)
    img *= 1.0 / (ss * ss)
    img += bg * (1.0 - cover_out)
    img *= (gain * 255.0).reshape(3, 1, 1)
    img += 0.5
    np.clip(img, 0.0, 255.0, out=img)
    return np.ascontiguousarray(img.astype(np.uint8).transpose(1, 2, 0))

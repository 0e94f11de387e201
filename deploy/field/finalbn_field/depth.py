"""Samples of more than 8 bits, and float samples: what a file's bit depth and range are, and how
they map to 8 bits. `images.decode` uses it (training's and the field's one decoder).

    how = deep_of(img, fh)          # None: an 8-bit image, which Pillow converts
    rgb, found = finish(np.asarray(img), how, "auto")
    found.label                     # 'I;16 12-bit (sBIT)'

Pillow decodes a 16-bit grey PNG or TIFF whole (modes I;16, I, F), but keeps only the high byte
of 16-bit colour PNGs and TIFFs, cannot open float64 or float colour TIFFs, and does not read a
PNG's sBIT chunk: those are read here, with pypng and tifffile. `intensity` (`check_intensity`)
says how samples map to 0..255; `images.decode` documents its three forms.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import png  # pypng: 16-bit colour PNGs, every bit (Pillow keeps the high byte)
from PIL import Image

__all__ = [
    "AUTO_AT",
    "INTENSITIES",
    "TIFF_MAGIC",
    "Decoded",
    "Intensity",
    "SampleError",
    "check_intensity",
    "dataset_auto",
    "deep_of",
    "finish",
    "read_png16",
    "read_tiff",
]


class SampleError(ValueError):
    """A file whose samples cannot be read; `images.decode` refuses it with this one-line reason."""


def _text(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


# intensity: how samples of more than 8 bits, or float samples, map to 0..255 (`images.decode`)
INTENSITIES = ("auto", "container")  # or a fixed [lo, hi]
# "auto:12": auto, with an image that records no depth read at no fewer than 12 bits: what prepare
# found for the whole data set (`dataset_auto`), so that a dark image, in training and in the field,
# is read at its data set's depth instead of one guessed from its own maximum.
AUTO_AT = "auto:"
Intensity = str | tuple[float, float]
_DEPTHS = (8, 10, 12, 14, 16, 20, 24, 32)  # what an image's own maximum is rounded up to, with no record
_NUMERIC = frozenset({"I", "F", "I;16", "I;16B", "I;16L", "I;16N", "I;16S"})  # Pillow modes that keep every bit
TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
# EXIF orientation -> the transpose that makes the image upright (ImageOps.exif_transpose's table)
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


@dataclass(frozen=True)
class Decoded:
    """What `images.decode` found in a file and how it mapped the samples to 8 bits."""

    mode: str  # the samples as stored: Pillow's mode ("RGB", "P", "I;16", "F"), or "RGB;16", "L;64F", ...
    bits: int  # bits per sample of the container: 1, 8, 16, 32 or 64
    kind: str  # "u" unsigned, "i" signed or "f" float samples
    significant: int | None  # bits that carry data; None where the range is no bit depth (float, min..max, fixed)
    # where the range came from: container, sBIT, TIFF MaxSampleValue, TIFF BitsPerSample, image maximum,
    # data set depth (intensity auto:<bits>), float 0..1, image min..max (the image's own: ambiguous),
    # fixed (intensity [lo, hi])
    source: str
    range: tuple[float, float]  # the sample values mapped to 0 and 255
    size: tuple[int, int]  # width, height as decoded (a drafted JPEG's reduced size)
    scale: int = 1  # a JPEG decoded at 1/scale (draft); 1: full size
    # how many of the 256 output levels the image's own values span inside the range (below 2: a varied
    # image decoded blank, all clipped or squeezed into one level: `blank`)
    levels: float = 256.0
    data: tuple[float, float] | None = None  # the image's own smallest and largest sample (deep images)

    @property
    def blank(self) -> bool:
        """The image's values vary, but decode to fewer than 2 of 256 levels (a range that misses them)."""
        return self.data is not None and self.data[1] > self.data[0] and self.levels < 2

    @property
    def deep(self) -> bool:
        """More than 8 bits per sample, or float samples."""
        return self.bits > 8 or self.kind == "f"

    @property
    def label(self) -> str:
        """'RGB 8-bit', 'I;16 12-bit (sBIT)', 'F 32-bit float (float 0..1)': prepare counts these."""
        if not self.deep:
            return f"{self.mode} {self.bits}-bit"
        depth = f"{self.bits}-bit float" if self.kind == "f" else f"{self.significant or self.bits}-bit"
        return f"{self.mode} {depth} ({self.source})"


class _Deep(NamedTuple):
    """How to read an image whose samples hold more than 8 bits (`deep_of`)."""

    reader: str  # pillow (its I;16/I/F modes keep every bit), png (pypng) or tiff (tifffile)
    mode: str
    kind: str
    bits: int
    record: tuple[float, str] | None = None  # the largest sample value the file declares, and where
    invert: bool = False  # a min-is-white TIFF


def check_intensity(value: Any) -> Intensity:
    """`value` checked: "auto", "container", or [lo, hi] with lo < hi (a list, as JSON and YAML give it)."""
    if isinstance(value, str) and value in INTENSITIES:
        return value
    if (
        isinstance(value, str)
        and value.startswith(AUTO_AT)
        and value[len(AUTO_AT) :].isdigit()
        and int(value[len(AUTO_AT) :]) in _DEPTHS
    ):
        return value
    if (
        isinstance(value, (tuple, list))
        and len(value) == 2
        and all(isinstance(v, (int, float)) for v in value)
        and value[0] < value[1]
    ):
        return float(value[0]), float(value[1])
    raise ValueError(f"intensity must be 'auto', 'container' or [lo, hi] with lo < hi (got {value!r})")


def dataset_auto(depths: set[int]) -> str:
    """The intensity prepare records for a data set under "auto": "auto:<bits>" when the images that
    record no depth all imply one (`depths`, read off their maxima), else "auto"."""
    return f"{AUTO_AT}{next(iter(depths))}" if len(depths) == 1 else "auto"


def _png_header(fh) -> tuple[int, int, tuple[int, ...]]:
    """A PNG's bit depth, colour type and sBIT bytes (empty: none) from its chunks before IDAT
    (Pillow does not read sBIT)."""
    pos, depth, ctype, sbit = fh.tell(), 0, 0, b""
    fh.seek(8)
    while len(head := fh.read(8)) == 8:
        length, tag = struct.unpack(">I4s", head)
        if tag in (b"IDAT", b"IEND"):
            break
        body = fh.read(length) if tag in (b"IHDR", b"sBIT") else b""
        fh.seek(length - len(body) + 4, 1)
        if tag == b"IHDR" and len(body) >= 10:
            depth, ctype = body[8], body[9]
        sbit = body if tag == b"sBIT" else sbit
    fh.seek(pos)
    return depth, ctype, tuple(sbit)


def _seq(value: Any) -> tuple[Any, ...]:
    return () if value is None else tuple(value) if isinstance(value, (tuple, list)) else (value,)


def _tiff_record(max_sample: Any, bps: int, bits: int) -> tuple[float, str] | None:
    """A TIFF's declared largest sample: MaxSampleValue (281), else 2^BitsPerSample - 1 when that is
    less than its container (12 bits decoded into 16)."""
    if _seq(max_sample):
        return float(max(_seq(max_sample))), "TIFF MaxSampleValue"
    return (2.0**bps - 1, "TIFF BitsPerSample") if bps < bits else None


def deep_of(img: Image.Image, fh) -> _Deep | None:
    """How to read `img` if its samples hold more than 8 bits, else None (Pillow converts it).
    Pillow keeps only the high byte of 16-bit colour PNGs and TIFFs, and cannot open float64 or
    float colour TIFFs: pypng and tifffile read those."""
    if img.format == "PNG":
        depth, ctype, sbit = _png_header(fh)
        if depth != 16:
            return None
        colour = sbit[: 3 if ctype in (2, 6) else 1]
        record = (2.0 ** max(colour) - 1, "sBIT") if colour and 0 < max(colour) <= 16 else None
        mode = {0: "I;16", 2: "RGB;16", 4: "LA;16", 6: "RGBA;16"}.get(ctype, img.mode)
        return _Deep("pillow" if ctype == 0 else "png", mode, "u", 16, record)
    if img.format == "TIFF":
        tags = getattr(img, "tag_v2", {})
        bps = _seq(tags.get(258)) or (1,)
        if max(bps) <= 8:
            return None
        if img.mode not in _NUMERIC:
            return _Deep("tiff", "", "", 0)
        kind = {2: "i", 3: "f"}.get((_seq(tags.get(339)) or (1,))[0], "u")
        return _Deep(
            "pillow", img.mode, kind, bps[0], _tiff_record(tags.get(281), bps[0], bps[0]), _seq(tags.get(262)) == (0,)
        )
    if img.mode in _NUMERIC:
        kind = "f" if img.mode == "F" else "i" if img.mode in ("I", "I;16S") else "u"
        return _Deep("pillow", img.mode, kind, 32 if img.mode in ("I", "F") else 16)
    return None


def read_png16(fh) -> np.ndarray:
    """A 16-bit PNG's samples (H, W, planes) as stored, every bit (pypng's read(): no sBIT shift)."""
    fh.seek(0)
    try:
        width, height, rows, info = png.Reader(file=fh).read()
        return np.vstack([np.asarray(r, dtype=np.uint16) for r in rows]).reshape(height, width, info["planes"])
    except (png.Error, zlib.error, EOFError, ValueError) as exc:
        raise SampleError(f"truncated or corrupt PNG image data ({_text(exc)})") from exc


def read_tiff(fh, too_big: Callable[[int, int], str | None]) -> tuple[np.ndarray, _Deep, int | None]:
    """A TIFF's first image as tifffile decodes it, every bit of every sample: (samples (H, W[, S]),
    how, EXIF orientation). `too_big(width, height)`: the reason to refuse that size, or None;
    checked before any pixel is decoded."""
    import tifffile  # lazy: a second to import, and only TIFFs Pillow cannot read whole need it

    fh.seek(0)
    values: np.ndarray  # any rank: the shape is checked below
    try:
        with tifffile.TiffFile(fh) as tif:
            page = tif.pages[0]
            tags = {t.code: t.value for t in page.tags.values()}
            refusal = too_big(page.imagewidth, page.imagelength)
            values, axes = (np.zeros(0), "") if refusal else (page.asarray(), page.axes)
    except Exception as exc:  # tifffile raises many kinds on damaged files (TiffFileError, TypeError, KeyError, ...)
        if "imagecodecs" in str(exc):
            raise SampleError(
                f"this TIFF's compression needs the imagecodecs package ({_text(exc)}): pip install imagecodecs"
            ) from exc
        raise SampleError(f"truncated or corrupt TIFF image data ({_text(exc)})") from exc
    if refusal:
        raise SampleError(refusal)
    values = np.moveaxis(values, 0, -1) if axes.startswith("S") and values.ndim == 3 else values
    photometric = int(_seq(tags.get(262))[0]) if _seq(tags.get(262)) else 1
    if values.ndim not in (2, 3) or values.dtype.kind not in "uif" or photometric not in (0, 1, 2):
        raise SampleError(f"unsupported TIFF layout (samples {values.dtype}, axes {axes}, photometric {photometric})")
    bits, kind = values.dtype.itemsize * 8, values.dtype.kind
    planes = values.shape[2] if values.ndim == 3 else 1
    mode = ("L", "LA", "RGB", "RGBA")[min(planes, 4) - 1] + f";{bits}" + {"f": "F", "i": "S"}.get(kind, "")
    record = _tiff_record(tags.get(281), (_seq(tags.get(258)) or (bits,))[0], bits)
    return values, _Deep("tiff", mode, kind, bits, record, photometric == 0), tags.get(274)


def _range(colour: np.ndarray, how: _Deep, intensity: Intensity) -> tuple[float, float, int | None, str]:
    """(lo, hi, significant bits, source): the sample values that `intensity` maps to 0 and 255."""
    kind, bits = how.kind, how.bits
    if kind != "f" and bits <= 8:
        return 0.0, 2.0**bits - 1, bits, "container"
    if not isinstance(intensity, str):
        return intensity[0], intensity[1], None, "fixed"
    if intensity == "container":
        low = -(2.0 ** (bits - 1)) if kind == "i" else 0.0
        return (0.0, 1.0, None, "container") if kind == "f" else (low, low + 2.0**bits - 1, bits, "container")
    finite = colour[np.isfinite(colour)] if kind == "f" else colour
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    if (kind == "f" and (lo < 0 or hi > 1)) or (kind == "i" and lo < 0):
        return lo, hi if hi > lo else lo + 1, None, "image min..max"
    if kind == "f":
        return 0.0, 1.0, None, "float 0..1"
    if how.record is not None and hi <= how.record[0]:
        return 0.0, how.record[0], int(how.record[0]).bit_length(), how.record[1]
    depth = next((b for b in _DEPTHS if hi < 2**b), bits)
    at_least = int(intensity[len(AUTO_AT) :]) if intensity.startswith(AUTO_AT) else 0
    if at_least > depth:  # a dark image of a deeper data set: read at the data set's depth
        return 0.0, 2.0**at_least - 1, at_least, "data set depth"
    return 0.0, 2.0**depth - 1, depth, "image maximum"


def finish(
    values: np.ndarray, how: _Deep, intensity: Intensity, orientation: int | None = None
) -> tuple[Image.Image, Decoded]:
    """Samples (H, W[, C]) of more than 8 bits -> 8-bit RGB by `intensity` (`_range`), linearly,
    clipped; NaN is black; alpha (grey+alpha, RGBA) composited onto white; EXIF orientation applied."""
    dtype = np.float64 if how.bits > 16 else np.float32  # float32 holds every 16-bit value exactly
    values = np.asarray(values, dtype=dtype)
    values = values[..., None] if values.ndim == 2 else values
    n = values.shape[2]
    colour = values[..., : 3 if n >= 3 else 1]
    lo, hi, significant, source = _range(colour, how, intensity)
    finite = colour[np.isfinite(colour)] if how.kind == "f" else colour
    data = (float(finite.min()), float(finite.max())) if finite.size else None
    levels = 0.0 if data is None else max(0.0, min(data[1], hi) - max(data[0], lo)) * 255.0 / (hi - lo)
    out = np.clip((np.nan_to_num(colour, nan=lo, posinf=hi, neginf=lo) - lo) * dtype(255.0 / (hi - lo)), 0, 255)
    out = 255 - out if how.invert else out
    if n in (2, 4):
        alpha = np.clip(np.nan_to_num(values[..., -1:]) / (1.0 if how.kind == "f" else 2.0**how.bits - 1), 0, 1)
        out = out * alpha + 255 * (1 - alpha)
    img = Image.fromarray(np.rint(np.broadcast_to(out, out.shape[:2] + (3,))).astype(np.uint8))
    img = img.transpose(_TRANSPOSE[orientation]) if orientation in _TRANSPOSE else img
    return img, Decoded(
        how.mode, how.bits, how.kind, significant, source, (float(lo), float(hi)), img.size, levels=levels, data=data
    )

"""Safe image decoding and folder scanning, shared by training and the field command.

Every image the project reads goes through :func:`load_rgb`, which either
returns a fully decoded 8-bit RGB ``PIL.Image.Image`` or raises
:class:`BadImage` with a one-line reason.  The content decides what is an
image, never the suffix: whatever Pillow decodes (JPEG however it is named,
.jfif and .jpe included, PNG, WebP, AVIF, TIFF, ...) plus HEIC/HEIF photos
through ``pillow-heif``.  A file that is not an image is refused naming what
it is (``not an image (detected: QuickTime movie file (video/quicktime))``).
:func:`scan_folder` sorts a folder into usable images and rejected files (with
reasons), so a dataset can be vetted before training instead of failing
halfway through an epoch::

    images, rejected = scan_folder("data/raw/benign")
    for r in rejected:
        print(f"skipping {r.path}: {r.reason}")
    img = load_rgb(images[0])

Samples of more than 8 bits (16-bit PNG and TIFF, 16-bit colour included, signed ints, float
TIFFs) are scaled by their data, not their container: a 12-bit image in a 16-bit file keeps its
levels (:func:`decode`, its ``intensity`` and what it reports in :class:`Decoded`). Given the
model's input ``size``, a JPEG decodes at 1/2, 1/4 or 1/8 scale while its shorter side stays at
least ``size`` (Pillow's draft), so a 108 MP phone photo costs a few MB; ``max_pixels`` guards
the size decoded.

What phones, NAS boxes and archives leave beside photos (hidden files and
folders, ``@eaDir``, ``__MACOSX``, ``Thumbs.db``, ``desktop.ini``) is a
system file (:func:`is_system`): skipped, never decoded.  File names that are
not valid UTF-8 are written as text with :func:`escape_name` and read back
with :func:`unescape_name` (reversible).

Nothing here writes to, moves or deletes the files it looks at.
"""

from __future__ import annotations

import os
import re
import struct
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pillow_heif
import puremagic
from PIL import Image, ImageOps, UnidentifiedImageError

from .depth import (
    INTENSITIES,
    TIFF_MAGIC,
    Decoded,
    Intensity,
    SampleError,
    check_intensity,
    deep_of,
    finish,
    read_png16,
    read_tiff,
)

pillow_heif.register_heif_opener()  # HEIC/HEIF (iPhone photos); AVIF is Pillow's own

__all__ = [
    "MAX_PIXELS",
    "SYSTEM_FILES",
    "SYSTEM_FOLDERS",
    "INTENSITIES",
    "BadImage",
    "Decoded",
    "Intensity",
    "Rejected",
    "check_image",
    "decode",
    "detected_format",
    "escape_name",
    "formula_safe",
    "is_system",
    "load_rgb",
    "scan_folder",
    "unescape_name",
]

# What phones, NAS boxes, archives and file browsers leave beside photos. Names starting with
# "." (.thumbnails, .DS_Store, ._IMG_1.jpg) are system files too.
SYSTEM_FOLDERS: frozenset[str] = frozenset({"@eaDir", "__MACOSX", "$RECYCLE.BIN", "System Volume Information"})
SYSTEM_FILES: frozenset[str] = frozenset({"thumbs.db", "desktop.ini", "ehthumbs.db"})  # compared lower-case

# The default of max_pixels: Pillow's own default for Image.MAX_IMAGE_PIXELS (about 0.25 GB of
# 24-bit pixels). decode checks it in place of Pillow's check, on the size it decodes (a drafted
# JPEG's), so a larger max_pixels does loosen it.
MAX_PIXELS: int = 89_478_485

# Everything Pillow raises for bad bytes. Anything else (TypeError,
# AttributeError, ...) is a bug in this code or in Pillow and should surface.
# UnidentifiedImageError is an OSError and is handled before these.
_DECODE_ERRORS = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    struct.error,
    Image.DecompressionBombError,
    Image.DecompressionBombWarning,
)

# "La" is left out: Pillow cannot convert it, and no file format decodes to it.
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa"})


class BadImage(ValueError):
    """An image that cannot be used; ``str(exc)`` is a one-line reason, e.g. 'truncated image data'."""

    def __init__(self, reason: str) -> None:
        super().__init__(_one_line(reason))

    @property
    def reason(self) -> str:
        return str(self)


@dataclass(frozen=True)
class Rejected:
    """A file in a scanned folder that is not a usable image."""

    path: str  # as given (str of the Path)
    reason: str  # one line, human readable


def _one_line(text: str) -> str:
    # Pillow and libtiff messages sometimes span lines; reports and logs
    # expect one reason per line.
    return " ".join(str(text).split())


def _error_text(exc: BaseException) -> str:
    return _one_line(str(exc)) or type(exc).__name__


def is_system(path: str | Path, folder: str | Path) -> bool:
    """True for a hidden file or folder, or a SYSTEM_FOLDERS/SYSTEM_FILES entry, anywhere in
    `path` below `folder` (which `path` must lie under)."""
    parts = Path(path).relative_to(folder).parts
    return any(p.startswith(".") or p in SYSTEM_FOLDERS for p in parts) or parts[-1].lower() in SYSTEM_FILES


def escape_name(path: str | Path) -> str:
    """A path (or any text a user controls: a folder name, a label value) as printable, valid
    UTF-8 text that is safe in a spreadsheet, reversibly:

    - each byte of the name that is not valid UTF-8 (held by Python as a surrogateescape code
      point, as os.listdir gives it) is written ``\\xNN``, and a backslash ``\\\\``;
    - text that a spreadsheet would run as a formula (OWASP "CSV injection", CWE-1236: a first
      character ``=``, ``+``, ``-``, ``@``, tab or carriage return, unless the whole text is a plain
      number such as ``-1``) gets a backslash before that character: ``\\=cmd|' /C calc'!A0.png``,
      ``\\t`` and ``\\r`` for tab and carriage return.

    Valid UTF-8 names without backslashes that start otherwise are unchanged. Inverse:
    :func:`unescape_name`."""
    text = os.fspath(path).replace("\\", "\\\\")
    return formula_safe("".join(f"\\x{ord(c) - 0xDC00:02x}" if 0xDC80 <= ord(c) <= 0xDCFF else c for c in text))


def formula_safe(text: str) -> str:
    """`text` with a backslash before a first character that would make a spreadsheet run it as a
    formula (``=``, ``+``, ``-``, ``@``; tab and carriage return written ``\\t``, ``\\r``), unless
    the whole text is a plain number (``-1``, ``+0.5``). The formula part of :func:`escape_name`,
    for text that is already escaped or never read back (a source class, a label value)."""
    if text[:1] in _FORMULA_START and not _NUMBER.fullmatch(text):
        return "\\" + _FORMULA_START[text[0]] + text[1:]
    return text


# What a spreadsheet takes for the start of a formula, and how escape_name writes it after its backslash.
_FORMULA_START = {"=": "=", "+": "+", "-": "-", "@": "@", "\t": "t", "\r": "r"}
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
_ESCAPE = re.compile(r"\\(\\|x[0-9a-f]{2}|[=+\-@tr])")
_UNESCAPE = {"\\": "\\", "=": "=", "+": "+", "-": "-", "@": "@", "t": "\t", "r": "\r"}


def unescape_name(text: str) -> str:
    """The path or text (a str for open() and Path, surrogateescape as Python holds such names)
    that :func:`escape_name` wrote as `text`."""
    return _ESCAPE.sub(lambda m: _UNESCAPE[m[1]] if len(m[1]) == 1 else chr(0xDC00 + int(m[1][1:], 16)), text)


def detected_format(path: str | Path) -> str:
    """What a file's content is, from its magic bytes (puremagic), for a refusal's reason:
    e.g. 'QuickTime movie file (video/quicktime)', or 'content not recognised'."""
    try:
        found = puremagic.magic_file(os.fspath(path))
    except (OSError, ValueError, puremagic.PureError):
        found = []
    if not found:
        return "content not recognised"
    best = found[0]
    return f"{best.name} ({best.mime_type})" if best.mime_type else best.name


def _has_alpha(img: Image.Image) -> bool:
    if img.mode in _ALPHA_MODES or "transparency" in img.info:
        return True
    return img.mode == "P" and img.palette is not None and img.palette.mode == "RGBA"


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert a decoded 8-bit image of any Pillow mode to 8-bit RGB (always a new image)."""
    if _has_alpha(img):
        # Transparent regions are background. Compositing onto white keeps
        # them neutral; dropping alpha would expose whatever colour happens
        # to sit under it (often black), which can look like a dark lesion.
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    # 1, L, P, RGB, CMYK, YCbCr, LAB, HSV: Pillow's conversions are right.
    # convert() returns a copy even for RGB, so the result never refers to
    # the (closed) file.
    return img.convert("RGB")


def _open_file(path: Path):
    if path.is_symlink() and not path.exists():
        raise BadImage("broken link")
    try:
        if not path.is_file():
            # Opening a FIFO would block; directories and devices are not images.
            raise BadImage("no such file" if not path.exists() else "not a regular file")
        if path.stat().st_size == 0:
            raise BadImage("empty file (0 bytes)")
        return path.open("rb")
    except OSError as exc:
        raise BadImage(f"cannot read file ({_error_text(exc)})") from exc


def _open(fh) -> Image.Image:
    """Pillow's lazy image of `fh` (`Image.open`), with Pillow's own decompression-bomb limit lifted
    for the call: it judges a file on its header's size, before a JPEG's draft could decode it at
    1/8 scale. `decode` checks the size it will really decode (`_too_big`) before any pixel is
    read. (Pillow's limit is a process-wide setting: restored at once, under a lock.)"""
    with _OPEN_LOCK:
        limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            fh.seek(0)
            return Image.open(fh)
        finally:
            Image.MAX_IMAGE_PIXELS = limit


_OPEN_LOCK = threading.Lock()


def _draft(img: Image.Image, size: int | None) -> int:
    """A JPEG at least twice `size` on its shorter side decodes at 1/2, 1/4 or 1/8 scale (libjpeg's
    DCT scaling, Pillow's draft), its shorter side still >= size; returns the scale (1: full)."""
    if not size or img.format not in ("JPEG", "MPO") or min(img.size) < 2 * size:  # MPO: a phone's JPEG
        return 1
    width = img.size[0]
    img.draft(img.mode, (size, size))
    return round(width / img.size[0])


def _too_big(width: int, height: int, max_pixels: int, scale: int = 1) -> str | None:
    """Why an image of that size (as it will decode) is refused, or None."""
    if width * height > max_pixels:
        at = f" at 1/{scale} scale" if scale > 1 else ""
        return (
            f"image is {width}x{height} = {width * height} pixels{at}, over the {max_pixels}-pixel limit "
            "(a decompression-bomb guard; to use it raise datasets.<name>.max_pixels for training, or "
            "finalbn-field predict --max-pixels N)"
        )
    return f"image has no pixels ({width}x{height})" if width == 0 or height == 0 else None


def decode(
    path: str | Path, max_pixels: int = MAX_PIXELS, intensity: Intensity = "auto", size: int | None = None
) -> tuple[Image.Image, Decoded]:
    """(the fully decoded 8-bit RGB image, what was found: :class:`Decoded`). Raises
    BadImage(reason) for anything unusable.

    The content decides the format, not the suffix. EXIF orientation is applied, transparency is
    composited onto white. 8-bit images convert as Pillow converts them, whatever `intensity`.
    Samples of more than 8 bits, and float samples, map linearly to 0..255 (clipped) by `intensity`:

    - "auto": unsigned ints by the bits that carry data: PNG sBIT, TIFF MaxSampleValue or
      BitsPerSample, else the image's own maximum rounded up to 8/10/12/14/16 (.., 32) bits
      (a 12-bit image in a 16-bit file: 0..4095); float images on 0..1 as 0..1; floats outside
      0..1 and ints with negative values by the image's own min..max (source "image min..max":
      ambiguous, prepare says so).
    - "container": the container's full range: 16-bit 0..65535, signed its signed range,
      float 0..1 (values outside are clipped).
    - (lo, hi): lo -> 0, hi -> 255, clipped, for every image of more than 8 bits or float samples.

    Given `size` (the model's input), a JPEG decodes at reduced scale, its shorter side still >=
    size (`_draft`). Images over `max_pixels` (width*height as they will decode, from the header)
    are refused before any pixel data is decoded.
    """
    intensity = check_intensity(intensity)
    path = Path(path)
    fh = _open_file(path)
    with fh, warnings.catch_warnings():
        # Pillow's plugins warn (MPO frames, GIF, ...) between its limit and twice it; make that a
        # refusal too. (catch_warnings is process-global: fine for DataLoader worker processes,
        # racy across threads.)
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img = _open(fh)
        except UnidentifiedImageError as exc:
            fh.seek(0)
            if fh.read(4) not in TIFF_MAGIC:  # float64, float colour, packed 12-bit: tifffile reads those
                raise BadImage(f"not an image (detected: {detected_format(path)})") from exc
            img = None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise BadImage(f"over Pillow's decompression-bomb limit ({_error_text(exc)})") from exc
        except _DECODE_ERRORS as exc:
            raise BadImage(f"truncated or corrupt image data ({_error_text(exc)})") from exc
        try:
            if img is None:
                return _tiff(fh, max_pixels, intensity)
            with img:
                return _decode_open(img, fh, max_pixels, intensity, size)
        except SampleError as exc:
            raise BadImage(str(exc)) from exc


def _tiff(fh, max_pixels: int, intensity: Intensity) -> tuple[Image.Image, Decoded]:
    values, how, orientation = read_tiff(fh, lambda w, h: _too_big(w, h, max_pixels))
    return finish(values, how, intensity, orientation)


def _decode_open(
    img: Image.Image, fh, max_pixels: int, intensity: Intensity, size: int | None
) -> tuple[Image.Image, Decoded]:
    scale = _draft(img, size)
    width, height = img.size
    refusal = _too_big(width, height, max_pixels, scale)
    if refusal:
        raise BadImage(refusal)
    how = deep_of(img, fh)
    if how is not None and how.reader == "tiff":  # Pillow would keep the high byte of each sample
        return _tiff(fh, max_pixels, intensity)
    try:
        if how is not None and how.reader == "png":  # likewise
            return finish(read_png16(fh), how, intensity, img.getexif().get(0x0112))
        img.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise BadImage(f"over Pillow's decompression-bomb limit ({_error_text(exc)})") from exc
    except _DECODE_ERRORS as exc:
        raise BadImage(f"truncated or corrupt {img.format} image data ({_error_text(exc)})") from exc
    try:
        upright = ImageOps.exif_transpose(img)
    except _DECODE_ERRORS as exc:
        # Guessing "no rotation" could silently feed a sideways image.
        raise BadImage(f"unreadable EXIF metadata, orientation unknown ({_error_text(exc)})") from exc
    if how is not None:
        return finish(np.asarray(upright), how, intensity)
    bits = 1 if img.mode == "1" else 8
    info = Decoded(img.mode, bits, "u", bits, "container", (0.0, 2.0**bits - 1), upright.size, scale)
    try:
        return _to_rgb(upright), info
    except ValueError as exc:  # e.g. a mode Pillow cannot convert to RGB
        raise BadImage(f"cannot convert mode {upright.mode!r} to RGB ({_error_text(exc)})") from exc


def resize_square(img: Image.Image, size: int) -> Image.Image:
    """Shorter side to `size` (bilinear), then a centre crop to `size` x `size`: the evaluation
    geometry of training (`finalbn.data.tensors.decode_images`) and of the field command, one function."""
    w, h = img.size
    scale = size / min(w, h)
    if (w, h) != (size, size):
        img = img.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BILINEAR)
        w, h = img.size
        left, top = (w - size) // 2, (h - size) // 2
        img = img.crop((left, top, left + size, top + size))
    return img


def load_rgb(
    path: str | Path, max_pixels: int = MAX_PIXELS, intensity: Intensity = "auto", size: int | None = None
) -> Image.Image:
    """Fully decoded 8-bit RGB image: :func:`decode` without its account. Raises BadImage(reason)."""
    return decode(path, max_pixels, intensity, size)[0]


def check_image(
    path: str | Path,
    max_pixels: int = MAX_PIXELS,
    intensity: Intensity = "auto",
    size: int | None = None,
    found: dict[Path, Decoded] | None = None,
) -> str | None:
    """None if load_rgb would succeed, else the reason. `found`, when given, collects what
    :func:`decode` found in a usable image, under Path(path)."""
    try:
        img, info = decode(path, max_pixels, intensity, size)
    except BadImage as exc:
        return str(exc)
    img.close()
    if found is not None:
        found[Path(path)] = info
    return None


def scan_folder(
    folder: str | Path,
    max_pixels: int = MAX_PIXELS,
    intensity: Intensity = "auto",
    size: int | None = None,
    found: dict[Path, Decoded] | None = None,
) -> tuple[list[Path], list[Rejected]]:
    """Usable image files directly inside `folder` (sorted by name, not recursive; subfolders ignored),
    and every other regular file with its reason. Raises FileNotFoundError(one-line message naming the
    folder) if it does not exist or is not a directory. An empty folder returns ([], []).

    Every file is fully decoded, whatever its suffix: the content decides (:func:`load_rgb`), so a
    scan costs about one pass over the data. System files (:func:`is_system`) are rejected as
    such without being read. Broken symlinks and other non-regular entries (FIFOs, sockets) are
    rejected too, so nothing in the folder goes unreported except subfolders. `max_pixels`,
    `intensity`, `size` and `found` are :func:`check_image`'s.
    """
    folder = Path(folder)
    if not folder.exists():
        raise FileNotFoundError(f"image folder not found: {escape_name(folder)}")
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder is not a directory: {escape_name(folder)}")

    images: list[Path] = []
    rejected: list[Rejected] = []
    for entry in sorted(folder.iterdir(), key=lambda p: p.name):
        if entry.is_symlink() and not entry.exists():
            rejected.append(Rejected(str(entry), "broken link"))
            continue
        if entry.is_dir():
            continue
        if is_system(entry, folder):
            rejected.append(Rejected(str(entry), "system file (hidden, Thumbs.db, desktop.ini, ...): skipped"))
            continue
        if not entry.is_file():
            rejected.append(Rejected(str(entry), "not a regular file"))
            continue
        reason = check_image(entry, max_pixels, intensity, size, found)
        if reason is None:
            images.append(entry)
        else:
            rejected.append(Rejected(str(entry), reason))
    return images, rejected

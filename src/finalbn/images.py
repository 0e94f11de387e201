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
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pillow_heif
import puremagic
from PIL import Image, ImageOps, UnidentifiedImageError

pillow_heif.register_heif_opener()  # HEIC/HEIF (iPhone photos); AVIF is Pillow's own

__all__ = [
    "MAX_PIXELS",
    "SYSTEM_FILES",
    "SYSTEM_FOLDERS",
    "BadImage",
    "Rejected",
    "check_image",
    "detected_format",
    "escape_name",
    "is_system",
    "load_rgb",
    "scan_folder",
    "unescape_name",
]

# What phones, NAS boxes, archives and file browsers leave beside photos. Names starting with
# "." (.thumbnails, .DS_Store, ._IMG_1.jpg) are system files too.
SYSTEM_FOLDERS: frozenset[str] = frozenset({"@eaDir", "__MACOSX", "$RECYCLE.BIN", "System Volume Information"})
SYSTEM_FILES: frozenset[str] = frozenset({"thumbs.db", "desktop.ini", "ehthumbs.db"})  # compared lower-case

# Pillow's own default for Image.MAX_IMAGE_PIXELS (about 0.25 GB of 24-bit
# pixels). Pillow's limit stays in force as well, so a larger max_pixels
# cannot loosen it; a smaller one tightens it.
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
    """A path as printable, valid UTF-8 text, reversibly: each byte of the name that is not
    valid UTF-8 (held by Python as a surrogateescape code point, as os.listdir gives it) is
    written ``\\xNN``, and a backslash ``\\\\``. Valid UTF-8 names without backslashes are
    unchanged. Inverse: :func:`unescape_name`."""
    text = os.fspath(path).replace("\\", "\\\\")
    return "".join(f"\\x{ord(c) - 0xDC00:02x}" if 0xDC80 <= ord(c) <= 0xDCFF else c for c in text)


_ESCAPE = re.compile(r"\\(\\|x[0-9a-f]{2})")


def unescape_name(text: str) -> str:
    """The path (a str for open() and Path, surrogateescape as Python holds such names) that
    :func:`escape_name` wrote as `text`."""
    return _ESCAPE.sub(lambda m: "\\" if m[1] == "\\" else chr(0xDC00 + int(m[1][1:], 16)), text)


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


def _gray_to_rgb(values: np.ndarray) -> Image.Image:
    gray = np.rint(values).astype(np.uint8)
    return Image.fromarray(gray).convert("RGB")


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert a decoded image of any Pillow mode to 8-bit RGB (always a new image)."""
    mode = img.mode
    if mode == "I" or mode.startswith("I;16"):
        # 16-bit PNG/TIFF decode to these modes. Scale the whole 16-bit range
        # (65535 -> 255) rather than letting convert("L") clip everything
        # above 255 to white. Mode "I" is treated as 16-bit data because
        # that is what it holds in practice.
        values = np.clip(np.asarray(img, dtype=np.float64), 0, 65535) / 257.0
        return _gray_to_rgb(values)
    if mode == "F":
        # No universal range for float images; follow Pillow's convention
        # (values already on 0..255, clipped) and map NaN to black.
        values = np.nan_to_num(np.asarray(img, dtype=np.float64), nan=0.0)
        return _gray_to_rgb(np.clip(values, 0, 255))
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


def load_rgb(path: str | Path, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Fully decoded RGB image. Raises BadImage(reason) for anything unusable.

    The content decides the format, not the suffix. EXIF orientation is
    applied, transparency is composited onto white, 16-bit data is scaled
    to 8 bits. Images over ``max_pixels`` (width*height from the header)
    are refused before any pixel data is decoded.
    """
    path = Path(path)
    if path.is_symlink() and not path.exists():
        raise BadImage("broken link")
    try:
        if not path.is_file():
            # Opening a FIFO would block; directories and devices are not images.
            raise BadImage("no such file" if not path.exists() else "not a regular file")
        if path.stat().st_size == 0:
            raise BadImage("empty file (0 bytes)")
        fh = path.open("rb")
    except OSError as exc:
        raise BadImage(f"cannot read file ({_error_text(exc)})") from exc

    with fh, warnings.catch_warnings():
        # Pillow only warns between its limit and twice its limit; make that
        # a refusal too. (catch_warnings is process-global: fine for
        # DataLoader worker processes, racy across threads.)
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img = Image.open(fh)
        except UnidentifiedImageError as exc:
            raise BadImage(f"not an image (detected: {detected_format(path)})") from exc
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise BadImage(f"over Pillow's decompression-bomb limit ({_error_text(exc)})") from exc
        except _DECODE_ERRORS as exc:
            raise BadImage(f"truncated or corrupt image data ({_error_text(exc)})") from exc

        with img:
            width, height = img.size
            if width * height > max_pixels:
                raise BadImage(
                    f"image is {width}x{height} = {width * height} pixels, "
                    f"over the {max_pixels}-pixel limit"
                )
            if width == 0 or height == 0:
                raise BadImage(f"image has no pixels ({width}x{height})")
            try:
                img.load()
            except _DECODE_ERRORS as exc:
                raise BadImage(f"truncated or corrupt {img.format} image data ({_error_text(exc)})") from exc
            try:
                upright = ImageOps.exif_transpose(img)
            except _DECODE_ERRORS as exc:
                # Guessing "no rotation" could silently feed a sideways image.
                raise BadImage(f"unreadable EXIF metadata, orientation unknown ({_error_text(exc)})") from exc

    try:
        return _to_rgb(upright)
    except ValueError as exc:  # e.g. a mode Pillow cannot convert to RGB
        raise BadImage(f"cannot convert mode {upright.mode!r} to RGB ({_error_text(exc)})") from exc


def check_image(path: str | Path, max_pixels: int = MAX_PIXELS) -> str | None:
    """None if load_rgb would succeed, else the reason."""
    try:
        img = load_rgb(path, max_pixels)
    except BadImage as exc:
        return str(exc)
    img.close()
    return None


def scan_folder(folder: str | Path, max_pixels: int = MAX_PIXELS) -> tuple[list[Path], list[Rejected]]:
    """Usable image files directly inside `folder` (sorted by name, not recursive; subfolders ignored),
    and every other regular file with its reason. Raises FileNotFoundError(one-line message naming the
    folder) if it does not exist or is not a directory. An empty folder returns ([], []).

    Every file is fully decoded, whatever its suffix: the content decides (:func:`load_rgb`), so a
    scan costs about one pass over the data. System files (:func:`is_system`) are rejected as
    such without being read. Broken symlinks and other non-regular entries (FIFOs, sockets) are
    rejected too, so nothing in the folder goes unreported except subfolders.
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
        reason = check_image(entry, max_pixels)
        if reason is None:
            images.append(entry)
        else:
            rejected.append(Rejected(str(entry), reason))
    return images, rejected

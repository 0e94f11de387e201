"""Safe image decoding and folder scanning.

Every image the project reads goes through :func:`load_rgb`, which either
returns a fully decoded 8-bit RGB ``PIL.Image.Image`` or raises
:class:`BadImage` with a one-line reason.  :func:`scan_folder` sorts a folder
into usable images and rejected files (with reasons), so a dataset can be
vetted before training instead of failing halfway through an epoch::

    images, rejected = scan_folder("data/raw/benign")
    for r in rejected:
        print(f"skipping {r.path}: {r.reason}")
    img = load_rgb(images[0])

Nothing here writes to, moves or deletes the files it looks at.
"""

from __future__ import annotations

import struct
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = [
    "IMAGE_SUFFIXES",
    "MAX_PIXELS",
    "BadImage",
    "Rejected",
    "check_image",
    "load_rgb",
    "scan_folder",
]

IMAGE_SUFFIXES: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
)

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
            raise BadImage("not a decodable image (format not recognised)") from exc
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
                raise BadImage(f"truncated or corrupt image data ({_error_text(exc)})") from exc
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

    Every image is fully decoded, so a scan costs about one pass over the data.
    Broken symlinks and other non-regular entries (FIFOs, sockets) are
    rejected too, so nothing in the folder goes unreported except subfolders.
    """
    folder = Path(folder)
    if not folder.exists():
        raise FileNotFoundError(f"image folder not found: {folder}")
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder is not a directory: {folder}")

    images: list[Path] = []
    rejected: list[Rejected] = []
    for entry in sorted(folder.iterdir(), key=lambda p: p.name):
        if entry.is_symlink() and not entry.exists():
            rejected.append(Rejected(str(entry), "broken link"))
            continue
        if entry.is_dir():
            continue
        if not entry.is_file():
            rejected.append(Rejected(str(entry), "not a regular file"))
            continue
        if entry.suffix.lower() not in IMAGE_SUFFIXES:
            what = f"suffix {entry.suffix!r}" if entry.suffix else "no suffix"
            rejected.append(Rejected(str(entry), f"not an image file ({what})"))
            continue
        reason = check_image(entry, max_pixels)
        if reason is None:
            images.append(entry)
        else:
            rejected.append(Rejected(str(entry), reason))
    return images, rejected

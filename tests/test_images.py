"""Tests for finalbn_field.images (training's and the field's one decoder): every image is tiny and made in tmp_path."""

from __future__ import annotations

import json
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import png
import pytest
from PIL import Image, ImageFile

from conftest import PARAMS, TINY_SPLIT
from finalbn.config import load_config
from finalbn.data.splits import prepare_dataset
from finalbn.data.tensors import decode_images, decode_settings, decoded_cache_path, load_splits
from finalbn.infra.errors import DataError
from finalbn.stages.prepare import _extra
from finalbn_field import images
from finalbn_field.images import (
    MAX_PIXELS,
    SYSTEM_FILES,
    BadImage,
    Rejected,
    check_image,
    escape_name,
    load_rgb,
    scan_folder,
    unescape_name,
)
from finalbn_field.images import load_rgb as field_load_rgb

# ---------------------------------------------------------------- helpers


def noise(w: int = 32, h: int = 24, seed: int = 0) -> Image.Image:
    # Noise compresses badly, so cutting the file in half lands in pixel data.
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def save(img: Image.Image, path: Path, fmt: str | None = None, **kw) -> Path:
    img.save(path, fmt, **kw)
    return path


def truncate_half(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose IHDR claims width x height but carries no pixel data."""

    def chunk(tag: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))
    return path


def assert_rgb(img: Image.Image, size: tuple[int, int] | None = None) -> None:
    assert isinstance(img, Image.Image)
    assert img.mode == "RGB"
    if size is not None:
        assert img.size == size


def rejected_reason(path: Path) -> str:
    reason = check_image(path)
    assert reason is not None
    with pytest.raises(BadImage) as info:
        load_rgb(path)
    assert str(info.value) == reason
    return reason


# ---------------------------------------------------------------- constants and types


def test_constants():
    assert all(s == s.lower() for s in SYSTEM_FILES)
    assert MAX_PIXELS == 89_478_485
    assert issubclass(BadImage, ValueError)


def test_bad_image_reason_is_one_line():
    assert str(BadImage("a\nb\r\n  c")) == "a b c"


def test_rejected_is_frozen():
    r = Rejected("x.txt", "nope")
    with pytest.raises(AttributeError):
        r.reason = "other"  # type: ignore[misc]


# ---------------------------------------------------------------- unusable files


def test_zero_byte_file(tmp_path):
    p = tmp_path / "empty.jpg"
    p.touch()
    assert rejected_reason(p) == "empty file (0 bytes)"


def test_text_file_renamed_jpg(tmp_path):
    p = tmp_path / "notes.jpg"
    p.write_text("this is not a picture\n")
    assert rejected_reason(p).startswith("not an image (detected: ")


def test_truncated_png(tmp_path):
    p = truncate_half(save(noise(), tmp_path / "cut.png"))
    with Image.open(p) as img:  # header is intact, so opening alone would not notice
        assert img.size == (32, 24)
    assert rejected_reason(p).startswith("truncated or corrupt PNG image data")


def test_truncated_jpeg(tmp_path):
    p = truncate_half(save(noise(64, 64), tmp_path / "cut.jpg", quality=95))
    with Image.open(p) as img:  # the cut is in the scan data, past the header
        assert img.size == (64, 64)
    assert rejected_reason(p).startswith("truncated or corrupt JPEG image data")


def test_truncated_image_does_not_flip_global_pillow_setting(tmp_path):
    p = truncate_half(save(noise(), tmp_path / "cut.png"))
    check_image(p)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_missing_file(tmp_path):
    assert check_image(tmp_path / "nope.png") == "no such file"


def test_directory_is_not_an_image(tmp_path):
    d = tmp_path / "sub.png"
    d.mkdir()
    assert check_image(d) == "not a regular file"


# ---------------------------------------------------------------- decompression bombs


def test_over_max_pixels_refused_before_decoding(tmp_path, monkeypatch):
    p = save(noise(10, 10), tmp_path / "big.png")

    def no_decoding(self):
        raise AssertionError("pixel data was decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    with pytest.raises(BadImage) as info:
        load_rgb(p, max_pixels=50)
    assert str(info.value).startswith("image is 10x10 = 100 pixels, over the 50-pixel limit (")
    assert "datasets.<name>.max_pixels" in str(info.value) and "--max-pixels" in str(info.value)  # what to do


def test_exactly_max_pixels_is_allowed(tmp_path):
    p = save(noise(10, 10), tmp_path / "ok.png")
    assert_rgb(load_rgb(p, max_pixels=100), (10, 10))
    assert check_image(p, max_pixels=99) is not None


def test_huge_header_without_data_is_refused(tmp_path):
    # 20000x20000 is over twice Pillow's limit: Pillow raises
    # DecompressionBombError while opening; it must come out as BadImage.
    p = png_header_only(tmp_path / "bomb.png", 20000, 20000)
    reason = rejected_reason(p)
    assert "decompression-bomb" in reason
    assert "400000000" in reason


def test_max_pixels_not_pillows_global_limit_decides(tmp_path, monkeypatch):
    """decode checks max_pixels in place of Pillow's check at open, so raising it works."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 40)  # 100 px > 2*40: Image.open would raise
    p = save(noise(10, 10), tmp_path / "bomb.png")
    assert_rgb(load_rgb(p, max_pixels=10**9), (10, 10))
    with pytest.raises(BadImage, match="decompression-bomb"):
        load_rgb(p, max_pixels=99)


@pytest.mark.parametrize("exc", [Image.DecompressionBombError("big"), Image.DecompressionBombWarning("big")])
def test_pillow_bomb_inside_a_plugin_becomes_bad_image(tmp_path, monkeypatch, exc):
    """Pillow's plugins check frames themselves (MPO, GIF, ...): their error or warning is a refusal."""

    def bomb(self):
        raise exc

    monkeypatch.setattr(ImageFile.ImageFile, "load", bomb)
    p = save(noise(10, 10), tmp_path / "bomb.png")
    with pytest.raises(BadImage, match="decompression-bomb"):
        load_rgb(p)


# ---------------------------------------------------------------- modes and conversions


def test_16bit_grayscale_png_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257, 32768, 65535]], dtype=np.uint16)
    p = save(Image.fromarray(values), tmp_path / "deep.png")
    with Image.open(p) as raw:
        assert raw.mode in ("I;16", "I")
    img = load_rgb(p)
    assert_rgb(img, (4, 1))
    out = np.asarray(img)
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 0] == out[..., 2]).all()
    assert out[0, :, 0].tolist() == [0, 1, 128, 255]


def test_16bit_big_endian_tiff(tmp_path):
    # (convert("I;16B") clips at 255 in Pillow, so build the bytes directly)
    img16 = Image.frombytes("I;16B", (3, 1), np.array([0, 32768, 65535], dtype=">u2").tobytes())
    p = save(img16, tmp_path / "deep.tif")
    with Image.open(p) as raw:
        assert raw.mode == "I;16B"
    assert np.asarray(load_rgb(p))[0, :, 0].tolist() == [0, 128, 255]


def test_32bit_int_tiff_with_negative_values_spans_its_own_range(tmp_path):
    arr = np.array([[-5, 0, 50000, 100000]], dtype=np.int32)
    p = save(Image.fromarray(arr), tmp_path / "int.tif")
    with Image.open(p) as raw:
        assert raw.mode == "I"
    img, info = images.decode(p)
    assert np.asarray(img)[0, :, 0].tolist() == [0, 0, 128, 255]  # -5..100000 -> 0..255
    assert info.source == "image min..max" and info.range == (-5.0, 100000.0)


def test_32bit_int_tiff_without_negatives_by_its_maximum(tmp_path):
    arr = np.array([[0, 32768, 65535]], dtype=np.int32)
    p = save(Image.fromarray(arr), tmp_path / "int.tif")
    img, info = images.decode(p)
    assert np.asarray(img)[0, :, 0].tolist() == [0, 128, 255] and info.label == "I 16-bit (image maximum)"


def test_float_tiff_outside_0_1_spans_its_own_range(tmp_path):
    arr = np.array([[-1.0, 0.0, 127.0, 255.0, 1000.0, np.nan]], dtype=np.float32)
    p = save(Image.fromarray(arr), tmp_path / "float.tif")
    with Image.open(p) as raw:
        assert raw.mode == "F"
    img, info = images.decode(p)
    assert np.asarray(img)[0, :, 0].tolist() == [0, 0, 33, 65, 255, 0]  # (v + 1) * 255 / 1001; NaN is black
    assert info.source == "image min..max" and info.label == "F 32-bit float (image min..max)"


def test_cmyk_jpeg(tmp_path):
    cmyk = Image.new("CMYK", (16, 16), (0, 255, 255, 0))  # pure red in CMYK
    p = save(cmyk, tmp_path / "print.jpg", quality=95)
    with Image.open(p) as raw:
        assert raw.mode == "CMYK"
    img = load_rgb(p)
    assert_rgb(img, (16, 16))
    r, g, b = img.getpixel((8, 8))
    assert r > 200 and g < 60 and b < 60


def test_rgba_png_composited_on_white(tmp_path):
    rgba = Image.new("RGBA", (3, 1))
    rgba.putpixel((0, 0), (0, 0, 0, 0))  # fully transparent black
    rgba.putpixel((1, 0), (255, 0, 0, 128))  # half-transparent red
    rgba.putpixel((2, 0), (0, 0, 255, 255))  # opaque blue
    img = load_rgb(save(rgba, tmp_path / "alpha.png"))
    assert_rgb(img, (3, 1))
    assert img.getpixel((0, 0)) == (255, 255, 255)
    r, g, b = img.getpixel((1, 0))
    assert r == 255 and 120 <= g <= 135 and g == b
    assert img.getpixel((2, 0)) == (0, 0, 255)


def test_palette_png_with_transparency(tmp_path):
    pal = Image.new("P", (2, 1))
    pal.putpalette([0, 0, 0, 0, 200, 0])  # index 0 black, index 1 green
    pal.putpixel((0, 0), 0)
    pal.putpixel((1, 0), 1)
    p = save(pal, tmp_path / "pal.png", transparency=0)
    with Image.open(p) as raw:
        assert raw.mode == "P" and "transparency" in raw.info
    img = load_rgb(p)
    assert img.getpixel((0, 0)) == (255, 255, 255)
    assert img.getpixel((1, 0)) == (0, 200, 0)


def test_gif_with_transparency(tmp_path):
    pal = Image.new("P", (2, 1))
    pal.putpalette([0, 0, 0, 255, 0, 0])
    pal.putpixel((1, 0), 1)
    img = load_rgb(save(pal, tmp_path / "anim.gif", transparency=0))
    assert img.getpixel((0, 0)) == (255, 255, 255)
    assert img.getpixel((1, 0)) == (255, 0, 0)


def test_la_png_composited_on_white(tmp_path):
    la = Image.new("LA", (2, 1))
    la.putpixel((0, 0), (0, 0))
    la.putpixel((1, 0), (40, 255))
    img = load_rgb(save(la, tmp_path / "la.png"))
    assert img.getpixel((0, 0)) == (255, 255, 255)
    assert img.getpixel((1, 0)) == (40, 40, 40)


@pytest.mark.parametrize(
    ("mode", "fmt", "suffix", "value", "expected"),
    [
        ("L", "PNG", ".png", 77, (77, 77, 77)),
        ("1", "PNG", ".png", 1, (255, 255, 255)),
        ("1", "BMP", ".bmp", 0, (0, 0, 0)),
        ("RGB", "BMP", ".bmp", (10, 20, 30), (10, 20, 30)),
        ("RGB", "TIFF", ".tiff", (10, 20, 30), (10, 20, 30)),
        ("RGB", "WEBP", ".webp", (10, 20, 30), None),  # lossy: only the mode is checked
        ("L", "JPEG", ".jpeg", 77, None),
    ],
)
def test_other_modes_become_rgb(tmp_path, mode, fmt, suffix, value, expected):
    p = save(Image.new(mode, (4, 3), value), tmp_path / f"img{suffix}", fmt)
    img = load_rgb(p)
    assert_rgb(img, (4, 3))
    if expected is not None:
        assert img.getpixel((1, 1)) == expected


def test_palette_without_transparency(tmp_path):
    pal = Image.new("P", (2, 1))
    pal.putpalette([5, 6, 7, 200, 100, 50])
    pal.putpixel((1, 0), 1)
    img = load_rgb(save(pal, tmp_path / "pal.png"))
    assert img.getpixel((0, 0)) == (5, 6, 7)
    assert img.getpixel((1, 0)) == (200, 100, 50)


def test_conversion_helper_covers_modes_without_a_file_format():
    # No file format decodes to these modes; check the conversion directly.
    rgba_pre = Image.new("RGBa", (1, 1), (0, 0, 0, 255))
    assert images._to_rgb(rgba_pre).getpixel((0, 0)) == (0, 0, 0)
    for mode in ("YCbCr", "HSV", "I;16L", "I;16B"):
        assert images._to_rgb(Image.new(mode, (2, 2))).mode == "RGB"


def test_result_is_independent_of_the_file(tmp_path):
    p = save(noise(), tmp_path / "a.png")
    img = load_rgb(p)
    p.unlink()
    img.load()
    assert img.getpixel((0, 0)) is not None
    assert img.copy().size == (32, 24)


# ---------------------------------------------------------------- EXIF orientation


@pytest.mark.parametrize(("orientation", "top_colour"), [(6, "red"), (8, "blue")])
def test_exif_rotated_jpeg(tmp_path, orientation, top_colour):
    # Stored 32 wide x 16 high: left half red, right half blue.
    stored = Image.new("RGB", (32, 16), (0, 0, 255))
    stored.paste((255, 0, 0), (0, 0, 16, 16))
    exif = Image.Exif()
    exif[0x0112] = orientation
    p = save(stored, tmp_path / f"rot{orientation}.jpg", quality=95, exif=exif.tobytes())

    img = load_rgb(p)
    assert_rgb(img, (16, 32))  # swapped
    # 6 means "rotate 90 degrees clockwise to display", so the left (red)
    # half ends up on top; 8 is the opposite rotation.
    top, bottom = img.getpixel((8, 4)), img.getpixel((8, 28))
    red, blue = (top, bottom) if top_colour == "red" else (bottom, top)
    assert red[0] > 200 and red[2] < 60
    assert blue[2] > 200 and blue[0] < 60


# ---------------------------------------------------------------- content decides, not the suffix


def test_png_named_jpg_is_accepted(tmp_path):
    p = save(noise(), tmp_path / "really_a_png.jpg", "PNG")
    assert check_image(p) is None
    assert_rgb(load_rgb(p), (32, 24))


@pytest.mark.parametrize(
    "name, fmt",
    [
        ("browser.jfif", "JPEG"),
        ("saved.jpe", "JPEG"),
        ("phone.avif", "AVIF"),
        ("iphone.heic", "HEIF"),
        ("no_suffix", "PNG"),
        ("IMG_1.JPG", "WEBP"),
    ],
)
def test_what_pillow_or_pillow_heif_decodes_is_an_image_whatever_its_suffix(tmp_path, name, fmt):
    p = save(noise(), tmp_path / name, fmt)
    assert check_image(p) is None
    assert_rgb(load_rgb(p), (32, 24))
    good, bad = scan_folder(tmp_path)
    assert good == [p] and bad == []


@pytest.mark.parametrize(
    "content, detected",
    [
        (b"\x00\x00\x00\x14ftypqt  \x00\x00\x00\x00qt  " + bytes(64), "QuickTime movie file (video/quicktime)"),
        (b"%PDF-1.4\n%\xe2\xe3\n1 0 obj\n" + bytes(64), "(application/pdf)"),
        (b"\x1f\x8b\x08\x00" + bytes(64), "gzip"),
        (bytes(range(256)), "content not recognised"),
    ],
    ids=["video", "pdf", "gzip", "noise"],
)
def test_a_refusal_names_the_detected_format(tmp_path, content, detected):
    """A phone's video, a scanned PDF, a compressed file and noise, each saved as .jpg."""
    p = tmp_path / "IMG_0001.jpg"  # the suffix says JPEG; the content is something else
    p.write_bytes(content)
    reason = rejected_reason(p)
    assert reason.startswith("not an image (detected: ") and detected.lower() in reason.lower(), reason


def test_a_corrupt_file_of_a_known_format_names_it(tmp_path):
    p = truncate_half(save(noise(64, 64), tmp_path / "cut.heic", "HEIF"))
    assert rejected_reason(p).startswith("truncated or corrupt")


HOSTILE_NAMES = [
    b"caf\xe9.jpg",
    b"\xff\xfe\x00"[:2] + b".png",
    b"back\\slash.png",
    b"lit\\xe9ral.png",
    "ünï cödé.png".encode(),
    b"sp ace, (1) #:'\".png",
    b"x\\\\y\xc3(.png",
]


@pytest.mark.parametrize("raw", HOSTILE_NAMES, ids=range(len(HOSTILE_NAMES)))
def test_names_are_escaped_reversibly_as_valid_utf8(raw):
    name = os.fsdecode(raw)
    text = escape_name(name)
    assert text.encode("utf-8").decode("utf-8") == text and text.isprintable()
    assert unescape_name(text) == name and os.fsencode(unescape_name(text)) == raw
    if b"\\" not in raw and raw.decode("utf-8", "replace") == raw.decode("utf-8", "ignore"):
        assert text == name  # valid UTF-8 without backslashes is written as it is


def test_a_file_whose_name_is_not_utf8_is_scanned_and_decoded(tmp_path):
    folder = os.fsencode(tmp_path)
    with open(folder + b"/caf\xe9 (1).png", "wb") as fh:
        noise().save(fh, "PNG")
    good, bad = scan_folder(tmp_path)
    assert bad == [] and len(good) == 1
    assert escape_name(good[0].name) == "caf\\xe9 (1).png"
    assert_rgb(load_rgb(unescape_name(escape_name(good[0]))))


def test_load_rgb_accepts_str_paths(tmp_path):
    p = save(noise(), tmp_path / "a.png")
    assert_rgb(load_rgb(str(p)))
    assert check_image(str(p)) is None


# ---------------------------------------------------------------- scan_folder


def test_scan_sorts_and_ignores_subfolders(tmp_path):
    for name in ("c.png", "a.png", "b.JPG"):
        save(noise(), tmp_path / name, "PNG" if name.endswith(".png") else "JPEG")
    sub = tmp_path / "nested"
    sub.mkdir()
    save(noise(), sub / "inside.png")

    good, bad = scan_folder(tmp_path)
    assert good == [tmp_path / "a.png", tmp_path / "b.JPG", tmp_path / "c.png"]
    assert all(isinstance(p, Path) for p in good)
    assert bad == []


def test_scan_accepts_str_folder(tmp_path):
    save(noise(), tmp_path / "a.png")
    assert scan_folder(str(tmp_path)) == ([tmp_path / "a.png"], [])


def test_scan_rejects_non_images_naming_what_they_are(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "labels.csv").write_text("a,b\n")
    (tmp_path / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (tmp_path / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")
    (tmp_path / "README").write_text("no suffix")
    save(noise(), tmp_path / "x.png")

    good, bad = scan_folder(tmp_path)
    assert good == [tmp_path / "x.png"]
    reasons = {Path(r.path).name: r.reason for r in bad}
    system = "system file (hidden, Thumbs.db, desktop.ini, ...): skipped"
    assert reasons[".DS_Store"] == reasons["Thumbs.db"] == system
    assert {n for n, r in reasons.items() if r.startswith("not an image (detected: ")} == {
        "README",
        "labels.csv",
        "notes.txt",
    }
    assert [r.path for r in bad] == sorted(r.path for r in bad)


def test_scan_lists_hidden_junk_with_reason(tmp_path):
    # macOS "AppleDouble" files carry an image suffix but are not images.
    (tmp_path / "._photo.jpg").write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X")
    save(noise(), tmp_path / "photo.jpg", "JPEG")
    good, bad = scan_folder(tmp_path)
    assert good == [tmp_path / "photo.jpg"]
    assert len(bad) == 1
    assert bad[0].path == str(tmp_path / "._photo.jpg")
    assert bad[0].reason == "system file (hidden, Thumbs.db, desktop.ini, ...): skipped"


def test_scan_rejected_path_is_str_of_given_path(tmp_path):
    (tmp_path / "empty.png").touch()
    _, bad = scan_folder(tmp_path)
    assert bad == [Rejected(str(tmp_path / "empty.png"), "empty file (0 bytes)")]


def test_scan_passes_max_pixels(tmp_path):
    save(noise(10, 10), tmp_path / "a.png")
    good, bad = scan_folder(tmp_path, max_pixels=50)
    assert good == []
    assert bad[0].reason.startswith("image is 10x10 = 100 pixels, over the 50-pixel limit (")


def test_scan_missing_folder(tmp_path):
    missing = tmp_path / "does_not_exist"
    with pytest.raises(FileNotFoundError) as info:
        scan_folder(missing)
    msg = str(info.value)
    assert str(missing) in msg and "\n" not in msg


def test_scan_path_that_is_a_file(tmp_path):
    f = save(noise(), tmp_path / "a.png")
    with pytest.raises(FileNotFoundError) as info:
        scan_folder(f)
    msg = str(info.value)
    assert str(f) in msg and "\n" not in msg


def test_scan_empty_folder(tmp_path):
    assert scan_folder(tmp_path) == ([], [])


def _symlink(target: Path, link: Path) -> None:
    try:
        link.symlink_to(target)
    except (OSError, NotImplementedError):
        pytest.skip("symlinks not supported here")


def test_scan_follows_symlinks_to_files(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    target = save(noise(), elsewhere / "real.png")
    folder = tmp_path / "data"
    folder.mkdir()
    _symlink(target, folder / "link.png")
    good, bad = scan_folder(folder)
    assert good == [folder / "link.png"]
    assert bad == []
    assert_rgb(load_rgb(folder / "link.png"), (32, 24))


def test_scan_broken_symlink(tmp_path):
    _symlink(tmp_path / "gone.png", tmp_path / "dangling.png")
    _, bad = scan_folder(tmp_path)
    assert bad == [Rejected(str(tmp_path / "dangling.png"), "broken link")]
    assert check_image(tmp_path / "dangling.png") == "broken link"


def test_scan_symlink_to_folder_is_ignored(tmp_path):
    sub = tmp_path / "sub"
    sub.mkdir()
    save(noise(), sub / "a.png")
    folder = tmp_path / "data"
    folder.mkdir()
    _symlink(sub, folder / "linked_dir")
    assert scan_folder(folder) == ([], [])


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
@pytest.mark.timeout(10)
def test_scan_fifo_is_rejected_without_blocking(tmp_path):
    os.mkfifo(tmp_path / "pipe.png")
    _, bad = scan_folder(tmp_path)
    assert bad == [Rejected(str(tmp_path / "pipe.png"), "not a regular file")]


def _mixed_folder(folder: Path) -> None:
    save(noise(), folder / "good.png")
    save(noise(), folder / "good.jpg", quality=90)
    (folder / "empty.jpg").touch()
    (folder / "text.jpg").write_text("plain\ntext\n")
    (folder / "notes.txt").write_text("x")
    truncate_half(save(noise(seed=1), folder / "cut.png"))
    truncate_half(save(noise(seed=2), folder / "cut.jpg"))  # small: cut lands in the header
    png_header_only(folder / "bomb.png", 20000, 20000)


def test_scan_never_modifies_files(tmp_path):
    _mixed_folder(tmp_path)
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in tmp_path.iterdir()}
    scan_folder(tmp_path)
    after = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in tmp_path.iterdir()}
    assert after == before


def test_every_reason_is_one_line(tmp_path):
    _mixed_folder(tmp_path)
    _symlink(tmp_path / "gone.png", tmp_path / "dangling.png")
    good, bad = scan_folder(tmp_path)
    assert [p.name for p in good] == ["good.jpg", "good.png"]
    assert len(bad) == 7
    cut = [r.reason for r in bad if Path(r.path).name.startswith("cut.")]
    assert len(cut) == 2 and all(r.startswith("truncated or corrupt") for r in cut)
    for r in bad:
        assert r.reason and "\n" not in r.reason and "\r" not in r.reason, r


@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow's TIFF plugin warns about bad tags
def test_corrupted_bytes_only_ever_raise_bad_image(tmp_path):
    # Random damage to real files of each format: load_rgb must either
    # succeed or raise BadImage, never anything else.
    rng = np.random.default_rng(123)
    originals = {}
    for fmt, suffix in [
        ("PNG", ".png"),
        ("JPEG", ".jpg"),
        ("GIF", ".gif"),
        ("BMP", ".bmp"),
        ("TIFF", ".tif"),
        ("WEBP", ".webp"),
    ]:
        p = save(noise(16, 12), tmp_path / f"orig{suffix}", fmt)
        originals[suffix] = p.read_bytes()
    p = tmp_path / "victim"
    for data in originals.values():
        for i in range(40):
            damaged = bytearray(data)
            if i % 2:
                damaged = damaged[: int(rng.integers(1, len(damaged)))]
            else:
                for pos in rng.integers(0, len(damaged), size=4):
                    damaged[pos] = int(rng.integers(0, 256))
            p.write_bytes(bytes(damaged))
            try:
                assert_rgb(load_rgb(p))
            except BadImage as exc:
                assert "\n" not in str(exc)


# ---------------------------------------------------------------- bit depth and range (issue 33)


def png16(path: Path, samples: np.ndarray, sbit: bytes | None = None) -> Path:
    """A 16-bit PNG of (H, W) grey or (H, W, 3|4) colour samples (pypng), with an sBIT chunk if given."""
    h, w = samples.shape[:2]
    planes = 1 if samples.ndim == 2 else samples.shape[2]
    writer = png.Writer(w, h, greyscale=planes in (1, 2), alpha=planes in (2, 4), bitdepth=16)
    with open(path, "wb") as fh:
        writer.write(fh, samples.reshape(h, w * planes).tolist())
    if sbit is not None:  # sBIT goes before IDAT
        data = path.read_bytes()
        at = data.index(b"IDAT") - 4
        chunk = struct.pack(">I", len(sbit)) + b"sBIT" + sbit + struct.pack(">I", zlib.crc32(b"sBIT" + sbit))
        path.write_bytes(data[:at] + chunk + data[at:])
    return path


GRADIENT12 = np.arange(4096, dtype=np.uint16).reshape(64, 64)  # every 12-bit level once


def levels(img: Image.Image, channel: int = 0) -> int:
    return len(np.unique(np.asarray(img)[..., channel]))


def test_12bit_png_with_sbit_keeps_its_levels(tmp_path):
    p = png16(tmp_path / "g.png", GRADIENT12 // 2, sbit=bytes([12]))  # max 2047, but the file says 12 bits
    with Image.open(p) as raw:
        assert raw.mode == "I;16"
    img, info = images.decode(p)
    assert_rgb(img, (64, 64))
    assert info.label == "I;16 12-bit (sBIT)" and info.range == (0.0, 4095.0) and info.deep
    assert np.asarray(img).max() == 127 and levels(img) == 128  # scaled by 4095, not by its own maximum


def test_12bit_png_without_sbit_by_its_maximum(tmp_path):
    p = save(Image.fromarray(GRADIENT12), tmp_path / "g.png")
    img, info = images.decode(p)
    assert info.source == "image maximum" and info.significant == 12 and info.range == (0.0, 4095.0)
    assert levels(img) >= 200 and np.asarray(img).max() == 255  # (x / 257 kept 16 levels)


def test_12bit_tiff_by_its_max_sample_value(tmp_path):
    tifffile = pytest.importorskip("tifffile")
    p = tmp_path / "g.tif"
    tifffile.imwrite(p, GRADIENT12 // 2, extratags=[(281, "H", 1, 4095, True)])  # MaxSampleValue
    img, info = images.decode(p)
    assert info.label == "I;16 12-bit (TIFF MaxSampleValue)" and np.asarray(img).max() == 127
    plain = tmp_path / "plain.tif"
    tifffile.imwrite(plain, GRADIENT12)
    img, info = images.decode(plain)
    assert info.label == "I;16 12-bit (image maximum)" and levels(img) >= 200


def test_full_16bit_png_spans_the_container(tmp_path):
    full = (np.arange(4096, dtype=np.uint32).reshape(64, 64) * 16 + 15).astype(np.uint16)  # 15..65535
    img, info = images.decode(save(Image.fromarray(full), tmp_path / "g.png"))
    assert info.significant == 16 and info.range == (0.0, 65535.0) and levels(img) == 256


@pytest.mark.parametrize("fmt", ["png", "tif"])
def test_16bit_rgb_keeps_every_bit(tmp_path, fmt):
    """Pillow decodes 16-bit colour to its high byte: 12-bit data would be 16 levels."""
    rgb = np.stack([GRADIENT12, GRADIENT12[::-1], GRADIENT12 // 2], axis=-1)
    if fmt == "png":
        p = png16(tmp_path / "c.png", rgb)
    else:
        tifffile = pytest.importorskip("tifffile")
        p = tmp_path / "c.tif"
        tifffile.imwrite(p, rgb, photometric="rgb")
    with Image.open(p) as raw:
        assert raw.mode == "RGB" and len(np.unique(np.asarray(raw)[..., 0])) == 16  # what Pillow alone gives
    img, info = images.decode(p)
    assert info.mode == "RGB;16" and info.significant == 12
    assert min(levels(img, c) for c in range(3)) >= 128 and levels(img, 0) >= 200
    assert np.array_equal(
        np.asarray(img)[..., 0],
        np.asarray(images.decode(save(Image.fromarray(GRADIENT12), tmp_path / "grey.png"))[0])[..., 0],
    )


def test_16bit_rgba_png_composited_on_white(tmp_path):
    rgba = np.zeros((1, 2, 4), dtype=np.uint16)
    rgba[0, 0] = (0, 0, 0, 0)  # transparent black
    rgba[0, 1] = (65535, 0, 0, 65535)  # opaque red
    img = load_rgb(png16(tmp_path / "a.png", rgba))
    assert np.asarray(img).tolist() == [[[255, 255, 255], [255, 0, 0]]]


def test_float_tiff_0_1_is_not_clipped(tmp_path):
    p = save(Image.fromarray((GRADIENT12 / 4095).astype(np.float32)), tmp_path / "f.tif")
    img, info = images.decode(p)
    assert info.label == "F 32-bit float (float 0..1)" and levels(img) == 256  # (clipping to 0..255: 2 levels)


def test_float64_and_float_colour_tiffs_pillow_cannot_open(tmp_path):
    tifffile = pytest.importorskip("tifffile")
    p = tmp_path / "f64.tif"
    tifffile.imwrite(p, GRADIENT12.astype(np.float64) * 0.5 - 100.0)  # -100..1947.5
    with pytest.raises(Image.UnidentifiedImageError):
        Image.open(p)
    img, info = images.decode(p)
    assert info.source == "image min..max" and info.range == (-100.0, 1947.5) and levels(img) == 256
    q = tmp_path / "rgbf.tif"
    tifffile.imwrite(q, np.stack([GRADIENT12 / 4095.0] * 3, axis=-1).astype(np.float32), photometric="rgb")
    img, info = images.decode(q)
    assert info.label == "RGB;32F 32-bit float (float 0..1)" and levels(img) == 256


def test_min_is_white_deep_tiff_is_inverted(tmp_path):
    tifffile = pytest.importorskip("tifffile")
    p = tmp_path / "mw.tif"
    tifffile.imwrite(p, GRADIENT12, photometric="miniswhite")  # Pillow reads I;16 and would not invert it
    out = np.asarray(load_rgb(p))[..., 0].ravel()
    assert out[0] == 255 and out[-1] == 0


def test_intensity_fixed_and_container(tmp_path):
    p = save(Image.fromarray(GRADIENT12), tmp_path / "g.png")
    img, info = images.decode(p, intensity=[0, 2047])  # a list, as YAML and JSON give it
    out = np.asarray(img)[..., 0].ravel()
    assert info.source == "fixed" and info.range == (0.0, 2047.0)
    assert out[2047] == 255 and (out[2048:] == 255).all() and levels(img) == 256  # above hi: clipped
    img, info = images.decode(p, intensity="container")
    assert info.range == (0.0, 65535.0) and np.asarray(img).max() == 16  # 4095 / 257
    f = save(Image.fromarray(np.array([[-0.5, 0.5, 2.0]], dtype=np.float32)), tmp_path / "f.tif")
    assert np.asarray(load_rgb(f, intensity="container"))[0, :, 0].tolist() == [0, 128, 255]  # 0..1, clipped
    for bad in ("linear", [5, 5], [1, 2, 3], None):
        with pytest.raises(ValueError, match="intensity"):
            load_rgb(p, intensity=bad)


def test_8bit_images_decode_to_exactly_the_same_bytes(tmp_path):
    """8-bit images (the embedded default's PNGs among them) are Pillow's conversion, whatever intensity or size."""
    png_ = save(noise(64, 64), tmp_path / "rgb.png")
    jpg = save(noise(100, 90, seed=2), tmp_path / "small.jpg", quality=90)  # under twice the size: never drafted
    for p in (png_, jpg):
        with Image.open(p) as raw:
            want = raw.convert("RGB").tobytes()
        for intensity in ("auto", "container", (0, 4095)):
            img, info = images.decode(p, intensity=intensity, size=64)
            assert img.tobytes() == want and info.label == "RGB 8-bit" and info.scale == 1 and not info.deep


def test_found_collects_what_each_usable_image_holds(tmp_path):
    save(noise(), tmp_path / "a.png")
    save(Image.fromarray(GRADIENT12), tmp_path / "b.png")
    (tmp_path / "c.txt").write_text("no")
    found: dict = {}
    good, bad = scan_folder(tmp_path, found=found)
    assert [p.name for p in good] == ["a.png", "b.png"] and len(bad) == 1
    assert {p.name: d.label for p, d in found.items()} == {"a.png": "RGB 8-bit", "b.png": "I;16 12-bit (image maximum)"}


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_corrupted_deep_files_only_ever_raise_bad_image(tmp_path):
    tifffile = pytest.importorskip("tifffile")
    rgb = np.stack([GRADIENT12[:16, :16]] * 3, axis=-1)
    tifffile.imwrite(tmp_path / "o.tif", rgb, photometric="rgb")
    tifffile.imwrite(tmp_path / "o64.tif", rgb[..., 0].astype(np.float64))
    originals = [
        png16(tmp_path / "o.png", rgb).read_bytes(),
        (tmp_path / "o.tif").read_bytes(),
        (tmp_path / "o64.tif").read_bytes(),
    ]
    rng = np.random.default_rng(7)
    p = tmp_path / "victim"
    for data in originals:
        for i in range(40):
            damaged = bytearray(data)
            if i % 2:
                damaged = damaged[: int(rng.integers(1, len(damaged)))]
            else:
                for pos in rng.integers(0, len(damaged), size=4):
                    damaged[pos] = int(rng.integers(0, 256))
            p.write_bytes(bytes(damaged))
            try:
                assert_rgb(load_rgb(p))
            except BadImage as exc:
                assert "\n" not in str(exc)


def test_compressed_deep_tiff_without_imagecodecs_is_refused_naming_it(tmp_path):
    tifffile = pytest.importorskip("tifffile")
    try:
        import imagecodecs  # here: optional; the test needs it absent  # noqa: F401

        pytest.skip("imagecodecs is installed: tifffile decodes LZW")
    except ImportError:
        pass
    p = tmp_path / "lzw.tif"
    tifffile.imwrite(p, np.stack([GRADIENT12] * 3, axis=-1), photometric="rgb", compression="zlib")
    with tifffile.TiffFile(p) as tif:
        at = tif.pages[0].tags[259].offset + 8  # the Compression entry's inline value
    data = bytearray(p.read_bytes())
    data[at : at + 2] = struct.pack("<H", 5)  # LZW, which tifffile leaves to imagecodecs
    p.write_bytes(bytes(data))
    assert "pip install imagecodecs" in rejected_reason(p)


# ---------------------------------------------------------------- very large photos (issue 33, item 9)


@pytest.fixture(scope="module")
def big_jpeg(tmp_path_factory) -> Path:
    """A 12000x9000 (108 MP) phone-sized JPEG: over Pillow's limit, solid so it encodes in a second or two."""
    path = tmp_path_factory.mktemp("big") / "photo.jpg"
    Image.new("RGB", (12000, 9000), (40, 120, 30)).save(path, quality=85)
    return path


def test_a_108mp_jpeg_is_drafted_to_no_less_than_the_model_input(big_jpeg):
    img, info = images.decode(big_jpeg, size=224)
    assert info.scale == 8 and img.size == info.size == (1500, 1125) and min(img.size) >= 224
    assert np.abs(np.asarray(img).astype(int) - (40, 120, 30)).max() <= 3
    img, info = images.decode(big_jpeg, size=1024)  # 9000 // 1024 = 8: still 1/8, shorter side 1125 >= 1024
    assert min(img.size) >= 1024
    img, info = images.decode(big_jpeg, size=3000)  # 1/2 only
    assert info.scale == 2 and img.size == (6000, 4500)


def test_a_108mp_jpeg_without_a_target_size_is_judged_whole(big_jpeg):
    reason = check_image(big_jpeg)
    assert reason is not None and "108000000 pixels" in reason and "datasets.<name>.max_pixels" in reason
    assert check_image(big_jpeg, size=64) is None


def test_a_large_image_that_cannot_be_drafted_is_refused_naming_the_options(tmp_path):
    p = png_header_only(tmp_path / "scan.png", 12000, 9000)  # a PNG cannot decode at reduced scale
    reason = check_image(p, size=64)
    assert reason.startswith("image is 12000x9000 = 108000000 pixels, over the 89478485-pixel limit")
    assert "datasets.<name>.max_pixels" in reason and "finalbn-field predict --max-pixels" in reason
    raised = check_image(p, max_pixels=200_000_000, size=64)  # the limit raised: now it is judged on its data
    assert raised is not None and raised.startswith("truncated or corrupt PNG")


def test_prepare_refuses_images_whose_maxima_imply_different_depths(tmp_path):
    root = tmp_path / "pv"
    for k, (cond, n) in enumerate((("healthy", 8), ("Scab", 5))):
        for i in range(n):
            top = 1023 if i % 3 == 0 else 4095  # some look 10-bit, some 12-bit: no record says which
            arr = (np.arange(256, dtype=np.uint32).reshape(16, 16) * (top + 1) // 256 + i + 10 * k).clip(0, top)
            arr[0, 0] = top
            (root / f"Apple___{cond}").mkdir(parents=True, exist_ok=True)
            save(Image.fromarray(arr.astype(np.uint16)), root / f"Apple___{cond}" / f"{i}.png")
    base = TINY_SPLIT + [f"datasets.0.root={root}", "datasets.0.source=plantvillage", "datasets.0.image_size=16"]
    cfg = load_config([PARAMS], base)
    with pytest.raises(DataError) as info:
        prepare_dataset(cfg.datasets[0], cfg.split, tmp_path / "splits", progress=False)
    msg = str(info.value)
    assert "\n" not in msg and "5 look 10-bit, 8 look 12-bit" in msg
    name = cfg.datasets[0].name
    assert f"--set datasets.{name}.intensity=[0,4095]" in msg and "container" in msg
    cfg = load_config([PARAMS], base + [f"datasets.{name}.intensity=[0,4095]"])  # the fix, as the line spells it
    summary = prepare_dataset(cfg.datasets[0], cfg.split, tmp_path / "splits", progress=False)[0]
    assert summary["intensity"] == (0.0, 4095.0)
    assert summary["decoded"]["counts"] == {"I;16 16-bit (fixed)": 13} and summary["decoded"]["high_bit_depth"] == 13


def test_prepare_records_and_reports_what_the_images_hold(tmp_path, monkeypatch):
    monkeypatch.setenv("FINALBN_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "pv"
    for k, (cond, n) in enumerate((("healthy", 8), ("Scab", 5))):
        (root / f"Apple___{cond}").mkdir(parents=True)
        for i in range(n):
            arr = np.roll(GRADIENT12[:32, :32] + 2048, i + 10 * k)  # 2048..4063: 12-bit by its maximum
            if i < 2:
                png16(root / f"Apple___{cond}" / f"{i}.png", arr, sbit=bytes([12]))
            else:
                save(Image.fromarray(arr), root / f"Apple___{cond}" / f"{i}.png")
    save(noise(32, 32), root / "Apple___healthy" / "rgb.png")
    cfg = load_config(
        [PARAMS], TINY_SPLIT + [f"datasets.0.root={root}", "datasets.0.source=plantvillage", "datasets.0.image_size=16"]
    )
    summary = prepare_dataset(cfg.datasets[0], cfg.split, tmp_path / "splits", progress=False)[0]
    written = json.loads((tmp_path / "splits" / cfg.datasets[0].name / "0" / "split.json").read_text())
    assert written["intensity"] == "auto:12" and written["max_pixels"] == 89_478_485  # the data set's depth
    assert written["decoded"] == {
        "counts": {"I;16 12-bit (image maximum)": 9, "I;16 12-bit (sBIT)": 4, "RGB 8-bit": 1},
        "high_bit_depth": 13,
        "own_range": 0,
        "inferred_depths": {"12": 9},
    }
    line = _extra(summary)
    assert "decoded (intensity auto:12): 9 I;16 12-bit (image maximum), 4 I;16 12-bit (sBIT), 1 RGB 8-bit" in line
    assert "bit depth read off the image maximum (no sBIT or TIFF record): 9 as 12-bit" in line
    manifest = tmp_path / "splits" / cfg.datasets[0].name / "0" / "manifest.csv"
    got = load_splits(manifest, 16)["train"]  # decoded with split.json's intensity
    assert torch_equal(got.images, decode_images(list(got.paths), 16, intensity="auto:12"))
    assert decoded_cache_path(manifest, 16, "auto:12").is_file()
    assert decoded_cache_path(manifest, 16, (0.0, 4095.0)) != decoded_cache_path(manifest, 16)


def torch_equal(a, b) -> bool:
    return bool((a == b).all()) and a.shape == b.shape


def _gradient12(path: Path, top: int, shift: int = 0) -> Path:
    """A 16x16 16-bit grey PNG without sBIT whose values reach `top` (a 12-bit scanner's bright or dark image)."""
    arr = (np.arange(256, dtype=np.uint32).reshape(16, 16) * (top + 1) // 256 + shift).clip(0, top)
    arr[-1, -1] = top
    path.parent.mkdir(parents=True, exist_ok=True)
    return save(Image.fromarray(arr.astype(np.uint16)), path)


def test_a_dark_image_is_read_at_its_data_sets_depth_in_training_and_the_field(tmp_path):
    """The depths read off the maxima agree (12-bit): prepare records `intensity: auto:12`, and a dark
    image of that scanner (max ~1000, alone it looks 10-bit) decodes as 12-bit in training and in
    the field, not 4x brighter."""
    root = tmp_path / "pv"
    for k, (cond, n) in enumerate((("healthy", 8), ("Scab", 5))):
        for i in range(n):
            _gradient12(root / f"Apple___{cond}" / f"{i}.png", 4095, i + 10 * k)
    base = TINY_SPLIT + [f"datasets.0.root={root}", "datasets.0.source=plantvillage", "datasets.0.image_size=16"]
    cfg = load_config([PARAMS], base)
    summary = prepare_dataset(cfg.datasets[0], cfg.split, tmp_path / "splits", progress=False)[0]
    assert summary["intensity"] == "auto:12" and summary["decoded"]["inferred_depths"] == {"12": 13}
    manifest = tmp_path / "splits" / cfg.datasets[0].name / "0" / "manifest.csv"
    assert decode_settings(manifest)[0] == "auto:12" and len(load_splits(manifest, 16)["train"].labels) == 6
    dark = _gradient12(tmp_path / "field" / "dark.png", 1000)
    alone = np.asarray(load_rgb(dark))  # no data set: its maximum says 10-bit
    at_depth = np.asarray(load_rgb(dark, intensity="auto:12"))
    assert alone.max() == 249 and at_depth.max() == round(1000 * 255 / 4095)
    assert np.array_equal(np.asarray(field_load_rgb(dark, intensity="auto:12")), at_depth)
    bright = _gradient12(tmp_path / "field" / "bright.png", 16000)  # deeper than the data set: its own depth
    assert np.asarray(load_rgb(bright, intensity="auto:12")).max() == round(16000 * 255 / 16383)


def test_a_fixed_range_that_would_blank_images_is_refused(tmp_path):
    """[0, 4095] for 12-bit PNGs is right, but a float 0..1 TIFF beside them would decode black
    (0..1 is less than one of 4096/256 levels): refused in one line naming it and its values."""
    import tifffile  # here: optional in this file (its other TIFF tests importorskip it)

    root = tmp_path / "pv"
    for k, (cond, n) in enumerate((("healthy", 8), ("Scab", 5))):
        for i in range(n):
            _gradient12(root / f"Apple___{cond}" / f"{i}.png", 4095, i + 10 * k)
    tifffile.imwrite(root / "Apple___healthy" / "float.tif", np.linspace(0, 1, 256, dtype=np.float32).reshape(16, 16))
    base = TINY_SPLIT + [
        f"datasets.0.root={root}",
        "datasets.0.source=plantvillage",
        "datasets.0.image_size=16",
        "datasets.0.intensity=[0, 4095]",
    ]
    cfg = load_config([PARAMS], base)
    with pytest.raises(DataError) as info:
        prepare_dataset(cfg.datasets[0], cfg.split, tmp_path / "splits", progress=False)
    msg = str(info.value)
    assert "\n" not in msg and "1 images would train as blank images under intensity [0, 4095]" in msg
    assert "float.tif: F 32-bit float (fixed), values 0..1" in msg and not (tmp_path / "splits").exists()


def test_an_image_gone_since_prepare_is_one_line_naming_it(tmp_path):
    """The ceiling and the grid decode what the split names: a file deleted or replaced since
    `finalbn prepare` is a DataError naming it and what to do, not a traceback."""
    good = tmp_path / "a.png"
    Image.new("RGB", (8, 8), (10, 200, 30)).save(good)
    assert decode_images([str(good)], 8).shape == (1, 3, 8, 8)
    gone = tmp_path / "gone.png"
    with pytest.raises(DataError, match=r"gone\.png: no such file: .*run prepare again") as exc:
        decode_images([str(good), str(gone)], 8)
    assert "\n" not in str(exc.value)
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(DataError, match=r"text\.png: .*run prepare again"):
        decode_images([str(tmp_path / "text.png")], 8)

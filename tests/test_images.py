"""Tests for finalbn.images: every image is tiny and made in tmp_path."""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from finalbn import images
from finalbn.images import (
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
    assert str(info.value) == "image is 10x10 = 100 pixels, over the 50-pixel limit"


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


def test_pillow_bomb_error_becomes_bad_image(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 40)  # 100 px > 2*40: error
    p = save(noise(10, 10), tmp_path / "bomb.png")
    with pytest.raises(BadImage, match="decompression-bomb"):
        load_rgb(p, max_pixels=10**9)


def test_pillow_bomb_warning_becomes_bad_image(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 60)  # 60 < 100 px <= 120: only a warning
    p = save(noise(10, 10), tmp_path / "bomb.png")
    with pytest.raises(BadImage, match="decompression-bomb"):
        load_rgb(p, max_pixels=10**9)


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


def test_32bit_int_tiff_treated_as_16bit(tmp_path):
    arr = np.array([[-5, 0, 32768, 65535, 100000]], dtype=np.int32)
    p = save(Image.fromarray(arr), tmp_path / "int.tif")
    with Image.open(p) as raw:
        assert raw.mode == "I"
    assert np.asarray(load_rgb(p))[0, :, 0].tolist() == [0, 0, 128, 255, 255]


def test_float_tiff_clipped_to_0_255(tmp_path):
    arr = np.array([[-1.0, 0.0, 127.6, 255.0, 1000.0, np.nan]], dtype=np.float32)
    p = save(Image.fromarray(arr), tmp_path / "float.tif")
    with Image.open(p) as raw:
        assert raw.mode == "F"
    assert np.asarray(load_rgb(p))[0, :, 0].tolist() == [0, 0, 128, 255, 255, 0]


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


@pytest.mark.parametrize("name, fmt", [("browser.jfif", "JPEG"), ("saved.jpe", "JPEG"), ("phone.avif", "AVIF"),
                                       ("iphone.heic", "HEIF"), ("no_suffix", "PNG"), ("IMG_1.JPG", "WEBP")])
def test_what_pillow_or_pillow_heif_decodes_is_an_image_whatever_its_suffix(tmp_path, name, fmt):
    p = save(noise(), tmp_path / name, fmt)
    assert check_image(p) is None
    assert_rgb(load_rgb(p), (32, 24))
    good, bad = scan_folder(tmp_path)
    assert good == [p] and bad == []


@pytest.mark.parametrize("content, detected", [
    (b"\x00\x00\x00\x14ftypqt  \x00\x00\x00\x00qt  " + bytes(64), "QuickTime movie file (video/quicktime)"),
    (b"%PDF-1.4\n%\xe2\xe3\n1 0 obj\n" + bytes(64), "(application/pdf)"),
    (b"\x1f\x8b\x08\x00" + bytes(64), "gzip"),
    (bytes(range(256)), "content not recognised"),
], ids=["video", "pdf", "gzip", "noise"])
def test_a_refusal_names_the_detected_format(tmp_path, content, detected):
    """A phone's video, a scanned PDF, a compressed file and noise, each saved as .jpg."""
    p = tmp_path / "IMG_0001.jpg"  # the suffix says JPEG; the content is something else
    p.write_bytes(content)
    reason = rejected_reason(p)
    assert reason.startswith("not an image (detected: ") and detected.lower() in reason.lower(), reason


def test_a_corrupt_file_of_a_known_format_names_it(tmp_path):
    p = truncate_half(save(noise(64, 64), tmp_path / "cut.heic", "HEIF"))
    assert rejected_reason(p).startswith("truncated or corrupt")


HOSTILE_NAMES = [b"caf\xe9.jpg", b"\xff\xfe\x00"[:2] + b".png", b"back\\slash.png", b"lit\\xe9ral.png", "ünï cödé.png".encode(),
                 b"sp ace, (1) #:'\".png", b"x\\\\y\xc3(.png"]


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
    assert {n for n, r in reasons.items() if r.startswith("not an image (detected: ")} == {"README", "labels.csv", "notes.txt"}
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
    assert bad[0].reason == "image is 10x10 = 100 pixels, over the 50-pixel limit"


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
    for fmt, suffix in [("PNG", ".png"), ("JPEG", ".jpg"), ("GIF", ".gif"), ("BMP", ".bmp"), ("TIFF", ".tif"), ("WEBP", ".webp")]:
        p = save(noise(16, 12), tmp_path / f"orig{suffix}", fmt)
        originals[suffix] = p.read_bytes()
    p = tmp_path / "victim"
    for suffix, data in originals.items():
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

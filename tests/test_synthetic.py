"""The procedural leaf generator: layout, determinism, image validity, lesion design, arguments."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from finalbn.infra.io import temporary_name
from finalbn.synthetic import DISEASES, generate, leaf, render_leaf
from finalbn.synthetic.collection import _TMP_NAME

CONDITIONS = ("healthy", *DISEASES)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _small(root: Path, **kw) -> dict:
    args = dict(seed=3, image_size=16, crops=["Apple", "Grape"], healthy=3, per_disease=2, workers=1, progress=False)
    args.update(kw)
    return generate(root, **args)


def test_layout_counts_and_stats(tmp_path):
    stats = _small(tmp_path / "new" / "root")  # parents are created
    root = tmp_path / "new" / "root"
    expected = {
        f"{crop}___{cond}": (3 if cond == "healthy" else 2) for crop in ("Apple", "Grape") for cond in CONDITIONS
    }
    assert sorted(p.name for p in root.iterdir()) == sorted(expected)
    for folder, n in expected.items():
        assert sorted(p.name for p in (root / folder).iterdir()) == [f"{i:05d}.png" for i in range(n)]
    assert stats["classes"] == expected
    assert stats["images"] == sum(expected.values()) == 22
    assert stats["seconds"] > 0
    assert stats["images_per_second"] == pytest.approx(stats["images"] / stats["seconds"])
    assert stats["workers"] == 1


def test_healthy_by_crop_sets_one_crops_healthy_count(tmp_path):
    """The dataset's crop gets more healthy images (the default: Apple, for 10 disjoint test sets)."""
    stats = generate(
        tmp_path,
        seed=0,
        image_size=16,
        crops=["Apple", "Grape"],
        healthy=2,
        per_disease=1,
        workers=1,
        progress=False,
        healthy_by_crop={"Apple": 5},
    )
    assert stats["classes"]["Apple___healthy"] == 5 and stats["classes"]["Grape___healthy"] == 2
    assert len(list((tmp_path / "Apple___healthy").iterdir())) == 5
    assert stats["images"] == 5 + 2 + 2 * len(DISEASES)
    with pytest.raises(ValueError, match=r"healthy_by_crop names crops not generated: \['Tomato'\]"):
        generate(
            tmp_path,
            seed=0,
            image_size=16,
            crops=["Apple"],
            healthy=2,
            per_disease=1,
            workers=1,
            progress=False,
            healthy_by_crop={"Tomato": 3},
        )


def test_images_are_rgb_png_of_requested_size(tmp_path):
    _small(tmp_path, image_size=24, crops=["Tomato"])
    paths = sorted(tmp_path.rglob("*.png"))
    assert len(paths) == 3 + 2 * len(DISEASES)
    for p in paths:
        with Image.open(p) as im:
            assert im.format == "PNG" and im.mode == "RGB" and im.size == (24, 24)
            assert not im.info.keys() - {"dpi"}  # no text/time metadata
    pixels = [np.asarray(Image.open(p)) for p in paths]
    assert len({px.tobytes() for px in pixels}) == len(pixels)  # every image its own


def test_byte_identical_across_runs_and_worker_counts(tmp_path):
    _small(tmp_path / "a", workers=1)
    _small(tmp_path / "b", workers=2)
    _small(tmp_path / "c", workers=1)
    a = _files(tmp_path / "a")
    assert a == _files(tmp_path / "b") == _files(tmp_path / "c")
    _small(tmp_path / "d", seed=4)
    d = _files(tmp_path / "d")
    assert d.keys() == a.keys() and all(d[k] != a[k] for k in a)


def test_rerun_overwrites_its_folders_only(tmp_path):
    _small(tmp_path, healthy=5)
    first = _files(tmp_path)
    (tmp_path / "Apple___healthy" / "00001.png").write_bytes(b"corrupt")
    (tmp_path / "Apple___Rust" / ".00000.png.123.tmp").write_bytes(b"half")  # interrupted run
    (tmp_path / "Grape___Rust" / ".00001.png.123.0a1b2c3d.tmp").write_bytes(b"half")  # io's name
    (tmp_path / "Other___healthy").mkdir()
    (tmp_path / "Other___healthy" / "00000.png").write_bytes(b"not ours")

    _small(tmp_path, healthy=3)
    after = _files(tmp_path)
    assert after.pop("Other___healthy/00000.png") == b"not ours"
    assert sorted(p.name for p in (tmp_path / "Apple___healthy").iterdir()) == [
        "00000.png",
        "00001.png",
        "00002.png",
    ]  # 00003/00004 of the larger run are gone
    dropped = {f"{crop}___healthy/{i:05d}.png" for crop in ("Apple", "Grape") for i in (3, 4)}
    assert after == {k: v for k, v in first.items() if k not in dropped}
    assert not list(tmp_path.rglob("*.tmp"))


def test_temp_name_pattern_matches_the_writers_names(tmp_path):
    # _prune finds an interrupted run's leftovers by this pattern: it must match the names
    # finalbn.infra.io gives a PNG's temporary file (and those of older runs), and nothing else.
    assert _TMP_NAME.match(temporary_name(tmp_path / "00042.png").name)
    assert _TMP_NAME.match(".00042.png.123.tmp")
    for name in ("00042.png", ".00042.png", ".notes.txt.123.tmp", ".0042.png.123.tmp"):
        assert not _TMP_NAME.match(name), name


@pytest.mark.parametrize("crop", ["Apple", "Pepper", "Tomato", "Grape", "Kohlrabi-2"])
def test_disease_only_adds_small_lesions(crop):
    # 40 leaves, 10 per disease. Same generator state: the diseased image is the healthy one
    # plus lesions, so the pixels that differ are the lesions.
    changed, strength = {d: [] for d in DISEASES}, {d: [] for d in DISEASES}
    for i in range(40):
        disease = DISEASES[i % len(DISEASES)]
        healthy = render_leaf(np.random.default_rng([11, i]), 64, crop, None).astype(int)
        sick = render_leaf(np.random.default_rng([11, i]), 64, crop, disease).astype(int)
        diff = np.abs(sick - healthy).max(axis=-1)
        assert diff.any(), (crop, disease, i)
        changed[disease].append((diff > 0).mean())
        strength[disease].append(diff[diff > 0].mean())
    for disease in DISEASES:
        assert max(changed[disease]) < 0.15, (crop, disease, changed[disease])
        assert np.mean(changed[disease]) < 0.05, (crop, disease)  # scarce cues...
        assert np.mean(strength[disease]) > 15, (crop, disease)  # ...but visible ones


def test_render_leaf_shapes_and_families():
    for size in (16, 37, 64):
        img = render_leaf(np.random.default_rng(0), size, "Apple", "Rust")
        assert img.shape == (size, size, 3) and img.dtype == np.uint8
    a = render_leaf(np.random.default_rng(5), 32, "Cherry", None)
    assert np.array_equal(a, render_leaf(np.random.default_rng(5), 32, "Cherry", None))
    # Any crop name gets a style; the families are all reachable from names.
    families = {leaf._style(f"crop{i}").family for i in range(40)}
    assert families == set(leaf._FAMILIES)
    with pytest.raises(ValueError, match="unknown disease"):
        render_leaf(np.random.default_rng(0), 32, "Apple", "Scab")


@pytest.mark.parametrize(
    "override",
    [
        {"image_size": 15},
        {"image_size": 32.0},
        {"healthy": 0},
        {"per_disease": 0},
        {"seed": -1},
        {"workers": -1},
        {"crops": []},
        {"crops": "Apple"},
        {"crops": [""]},
        {"crops": ["a/b"]},
        {"crops": ["Apple___x"]},
        {"crops": ["Apple_"]},
        {"crops": [".."]},
        {"crops": ["A", "A"]},
        {"healthy": True},
    ],
)
def test_bad_arguments_raise_one_line_value_error(tmp_path, override):
    with pytest.raises(ValueError) as info:
        _small(tmp_path / "out", **override)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "out").exists()  # nothing written before the check

"""The prepare stage on tiny collections: each source, counts, disjointness, determinism, bad input."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import PARAMS, make_plantvillage, write_png
from finalbn.cli import main
from finalbn.config import ConfigError
from finalbn.data.splits import DataError, draw_split, prepare_dataset, read_manifest


def _ds(load, tiny_split, root: Path, *extra: str):
    cfg = load(tiny_split + [f"datasets.0.root={root}", *extra])
    return cfg.datasets[0], cfg.split


def _prepare(load, tiny_split, root, out, *extra, replicates=1):
    ds, split = _ds(load, tiny_split, root, *extra)
    summaries = prepare_dataset(ds, split, out, progress=False, replicates=replicates)
    assert len(summaries) == replicates
    return summaries[0]


def test_plantvillage_counts_disjoint_and_pooled(load, tiny_split, tmp_path):
    root = make_plantvillage(tmp_path / "pv", "Pepper,_bell", healthy=10, diseases={"Bacterial_spot": 3, "Mold": 4})
    make_plantvillage(tmp_path / "pv", "Apple", healthy=9)  # another crop is ignored
    summary = _prepare(
        load, tiny_split, root, tmp_path / "out", "datasets.0.source=plantvillage", "datasets.0.crop=Pepper,_bell"
    )
    rows = read_manifest(tmp_path / "out" / "synthetic-apple" / "0" / "manifest.csv")
    by = {
        (s, lab): [r for r in rows if r["split"] == s and r["label"] == lab]
        for s in ("train", "val", "test")
        for lab in (0, 1)
    }
    assert [len(by[k]) for k in sorted(by)] == [2, 2, 4, 2, 2, 1]  # test, train, val × (majority, minority)
    paths = [r["path"] for r in rows]
    assert len(set(paths)) == len(paths)  # disjoint splits
    assert all("Pepper,_bell___" in p for p in paths)
    assert {r["source_class"] for r in rows if r["label"] == 1} <= {
        "Pepper,_bell___Bacterial_spot",
        "Pepper,_bell___Mold",
    }
    assert all(r["source_class"] == "Pepper,_bell___healthy" for r in rows if r["label"] == 0)
    minority_by_class = sum(
        sum(v for k, v in summary["counts"][s]["by_source_class"].items() if "healthy" not in k)
        for s in ("train", "val", "test")
    )
    assert minority_by_class == 5
    assert summary["classes"] == ["healthy", "diseased"]
    assert summary["usable"]["Pepper,_bell___Mold"] == 4


def test_same_params_same_bytes_and_seed_changes_draw(load, tiny_split, tmp_path):
    root = make_plantvillage(tmp_path / "pv")
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    _prepare(load, tiny_split, root, a, "datasets.0.source=plantvillage")
    _prepare(load, tiny_split, root, b, "datasets.0.source=plantvillage")
    for name in ("manifest.csv", "split.json"):
        assert (a / "synthetic-apple" / "0" / name).read_bytes() == (b / "synthetic-apple" / "0" / name).read_bytes()
    _prepare(load, tiny_split, root, c, "datasets.0.source=plantvillage", "split.seed=99")
    assert (a / "synthetic-apple" / "0" / "manifest.csv").read_bytes() != (
        c / "synthetic-apple" / "0" / "manifest.csv"
    ).read_bytes()


def test_manifest_hash_and_sha256_columns(load, tiny_split, tmp_path):
    root = make_plantvillage(tmp_path / "pv")
    summary = _prepare(load, tiny_split, root, tmp_path / "o", "datasets.0.source=plantvillage")
    out = tmp_path / "o" / "synthetic-apple" / "0"
    assert summary["manifest_sha256"] == hashlib.sha256((out / "manifest.csv").read_bytes()).hexdigest()
    row = read_manifest(out / "manifest.csv")[0]
    assert row["sha256"] == hashlib.sha256(Path(row["path"]).read_bytes()).hexdigest()
    assert json.loads((out / "split.json").read_text())["manifest_sha256"] == summary["manifest_sha256"]


def test_folders_source(load, tiny_split, tmp_path):
    for i in range(9):
        write_png(tmp_path / "src" / "negative" / f"n{i}.png", i)
    for i in range(3):
        write_png(tmp_path / "src" / "positive_a" / f"p{i}.png", 100 + i)
        write_png(tmp_path / "src" / "positive_b" / f"q{i}.png", 200 + i)
    summary = _prepare(
        load,
        tiny_split,
        tmp_path / "src",
        tmp_path / "o",
        "datasets.0.source=folders",
        "datasets.0.crop=null",
        "datasets.0.majority=[negative]",
        "datasets.0.minority=[positive_a, positive_b]",
    )
    assert summary["classes"] == ["majority", "minority"]
    assert summary["counts"]["train"]["minority"] == 2 and summary["counts"]["test"]["majority"] == 2


def test_bad_files_are_listed_and_skipped(load, tiny_split, tmp_path):
    root = make_plantvillage(tmp_path / "pv")
    (root / "Apple___healthy" / "empty.png").write_bytes(b"")
    (root / "Apple___Scab" / "notes.txt").write_text("field notes")
    (root / "Apple___Scab" / "fake.jpg").write_text("not a jpeg")
    summary = _prepare(load, tiny_split, root, tmp_path / "o", "datasets.0.source=plantvillage")
    reasons = {Path(r["path"]).name: r["reason"] for r in summary["rejected"]}
    assert set(reasons) == {"empty.png", "notes.txt", "fake.jpg"}
    assert all(reasons.values())
    rows = read_manifest(tmp_path / "o" / "synthetic-apple" / "0" / "manifest.csv")
    assert not any(Path(r["path"]).name in reasons for r in rows)
    assert (root / "Apple___Scab" / "fake.jpg").read_text() == "not a jpeg"  # inputs are never touched


def test_replicates_redraw_the_split(load, tiny_split, tmp_path):
    """A replicate is another draw: other minority training images; same counts; replicate 0 is
    the same whatever the number of replicates."""
    root = make_plantvillage(tmp_path / "pv", healthy=20, diseases={"Scab": 8, "Rot": 8})
    _prepare(load, tiny_split, root, tmp_path / "one", "datasets.0.source=plantvillage")
    _prepare(load, tiny_split, root, tmp_path / "many", "datasets.0.source=plantvillage", replicates=4)
    base = tmp_path / "many" / "synthetic-apple"
    assert (base / "0" / "manifest.csv").read_bytes() == (
        tmp_path / "one" / "synthetic-apple" / "0" / "manifest.csv"
    ).read_bytes()
    minority = []
    for r in range(4):
        rows = read_manifest(base / str(r) / "manifest.csv")
        assert sum(1 for x in rows if x["split"] == "train" and x["label"] == 1) == 2
        minority.append(frozenset(x["path"] for x in rows if x["split"] == "train" and x["label"] == 1))
        assert json.loads((base / str(r) / "split.json").read_text())["replicate"] == r
    assert len(set(minority)) > 1


def test_disjoint_test_sets_share_no_image_across_replicates():
    usable = {
        0: [("h", Path(f"h{i:02d}.png")) for i in range(30)],
        1: [("d", Path(f"d{i:02d}.png")) for i in range(12)],
    }
    split = type("S", (), {"train": (4, 2), "val": (2, 1), "test": (3, 3), "seed": 5, "disjoint_test": True})()
    draws = [draw_split(usable, split, ("healthy", "diseased"), ("h", "d"), r, None, replicates=3) for r in range(3)]
    tests = []
    for rows in draws:
        for label, n in ((0, (4, 2, 3)), (1, (2, 1, 3))):
            got = [sum(1 for x in rows if x["label"] == label and x["split"] == s) for s in ("train", "val", "test")]
            assert got == list(n)
        assert len({x["path"] for x in rows}) == len(rows)  # disjoint within a replicate
        tests.append({x["path"] for x in rows if x["split"] == "test"})
    assert not (tests[0] & tests[1]) and not (tests[0] & tests[2]) and not (tests[1] & tests[2])
    # without the option, replicates share test images (12 diseased, 3 per test set, 3 replicates)
    shared = type(
        "S", (), {**{k: getattr(split, k) for k in ("train", "val", "test", "seed")}, "disjoint_test": False}
    )()
    plain = [
        {
            x["path"]
            for x in draw_split(usable, shared, ("healthy", "diseased"), ("h", "d"), r, None)
            if x["split"] == "test"
        }
        for r in range(3)
    ]
    assert plain[0] & plain[1] or plain[0] & plain[2] or plain[1] & plain[2]
    with pytest.raises(
        DataError,
        match=r"disjoint_test: class diseased \(d\) has 12 usable images, 5 disjoint test "
        r"sets of 3 need 15",
    ):
        draw_split(usable, split, ("healthy", "diseased"), ("h", "d"), 0, None, replicates=5)


def test_too_few_images_names_the_class(load, tiny_split, tmp_path):
    root = make_plantvillage(tmp_path / "pv", diseases={"Scab": 3})
    with pytest.raises(DataError, match=r"class diseased \(Apple___Scab\) has 3 usable images, the split needs 5"):
        _prepare(load, tiny_split, root, tmp_path / "o", "datasets.0.source=plantvillage")


def test_too_few_images_also_says_which_files_were_refused(load, tiny_split, tmp_path):
    """The refusal counts the rejected files by kind, one example each, and lists them all in
    refused.json; with nothing rejected the message is the draw's own and no file is written."""
    root = make_plantvillage(tmp_path / "pv", diseases={"Scab": 3})
    for name in ("a.jpg", "b.jpg"):
        (root / "Apple___Scab" / name).write_text("not a photo")
    (root / "Apple___Scab" / "c.png").write_bytes(b"")
    with pytest.raises(DataError) as err:
        _prepare(load, tiny_split, root, tmp_path / "o", "datasets.0.source=plantvillage")
    refused = tmp_path / "o" / "synthetic-apple" / "refused.json"
    assert str(err.value) == (
        "class diseased (Apple___Scab) has 3 usable images, the split needs 5 (2 train + 1 val + "
        "2 test); not usable: 2 files not an image (e.g. Apple___Scab/a.jpg), 1 file empty file "
        f"(e.g. Apple___Scab/c.png); every reason in {refused}"
    )
    record = json.loads(refused.read_text())
    assert [Path(r["path"]).name for r in record["rejected"]] == ["a.jpg", "b.jpg", "c.png"] and record["skipped"] == []
    clean = make_plantvillage(tmp_path / "clean", diseases={"Scab": 3})
    with pytest.raises(DataError) as err:
        _prepare(load, tiny_split, clean, tmp_path / "o2", "datasets.0.source=plantvillage")
    assert "not usable" not in str(err.value) and not (tmp_path / "o2" / "synthetic-apple" / "refused.json").exists()


@pytest.mark.parametrize(
    "layout, expected",
    [
        ("missing_root", "root folder .* does not exist"),
        ("no_crop", r"no <Apple>___<condition> folders .* \(crops found: Grape\)"),
        ("no_healthy", "Apple___healthy does not exist"),
        ("no_disease", "no disease folders"),
        ("empty_minority", "has 0 usable images"),
    ],
)
def test_missing_or_empty_folders(load, tiny_split, tmp_path, layout, expected):
    root = tmp_path / "pv"
    if layout == "no_crop":
        make_plantvillage(root, "Grape")
    elif layout == "no_healthy":
        make_plantvillage(root, healthy=0)  # disease folders only
    elif layout == "no_disease":
        make_plantvillage(root, diseases={})
    elif layout == "empty_minority":
        make_plantvillage(root, diseases={})
        (root / "Apple___Scab").mkdir()
    with pytest.raises(DataError, match=expected):
        _prepare(load, tiny_split, root, tmp_path / "o", "datasets.0.source=plantvillage")


def test_folders_source_missing_dir(load, tiny_split, tmp_path):
    (tmp_path / "src" / "negative").mkdir(parents=True)
    with pytest.raises(DataError, match="class folder .*positive does not exist"):
        _prepare(
            load,
            tiny_split,
            tmp_path / "src",
            tmp_path / "o",
            "datasets.0.source=folders",
            "datasets.0.crop=null",
            "datasets.0.majority=[negative]",
            "datasets.0.minority=[positive]",
        )


def test_failed_prepare_keeps_earlier_outputs(load, tiny_split, tmp_path, monkeypatch, capsys):
    """CLI: exit 2 with one line, and the manifest from a good run is still there, unchanged."""
    root = make_plantvillage(tmp_path / "pv")
    monkeypatch.chdir(tmp_path)
    args = [
        "prepare",
        "--params",
        str(PARAMS),
        *sum([["--set", o] for o in tiny_split], []),
        "--set",
        f"datasets.0.root={root}",
        "--set",
        "datasets.0.source=plantvillage",
    ]
    assert main(args) == 0
    manifest = tmp_path / "data" / "splits" / "synthetic-apple" / "0" / "manifest.csv"
    before = manifest.read_bytes()
    assert "prepare synthetic-apple: 10 replicate split(s) of train 4/2" in capsys.readouterr().out
    assert main(args + ["--set", "split.test=[2, 50]"]) == 2
    err = capsys.readouterr().err.strip()
    assert "has 8 usable images, the split needs 53" in err and len(err.splitlines()) == 1
    assert manifest.read_bytes() == before
    assert not [p for p in manifest.parent.iterdir() if p.name.startswith(".")]  # no temp files left


# ---------------------------------------------------------------- copies never straddle splits


def _with_copies(root: Path) -> Path:
    """A PlantVillage folder where some images have byte-identical copies, as browsers and
    archives leave them (`IMG_0003 (1).png`), in the majority and the minority."""
    make_plantvillage(root, healthy=14, diseases={"Scab": 7})
    for folder, names in (("Apple___healthy", ("img000", "img003", "img004")), ("Apple___Scab", ("img001",))):
        for name in names:
            src = root / folder / f"{name}.png"
            shutil.copy(src, root / folder / f"{name} (1).png")
            if name == "img003":
                shutil.copy(src, root / folder / f"{name} (2).png")
    return root


def test_copies_go_whole_into_one_split_for_every_seed(load, tiny_split, tmp_path):
    root = _with_copies(tmp_path / "pv")
    for seed in range(40):
        summary = _prepare(
            load, tiny_split, root, tmp_path / "o", "datasets.0.source=plantvillage", f"split.seed={seed}"
        )
        rows = read_manifest(tmp_path / "o" / "synthetic-apple" / "0" / "manifest.csv")
        split_of = {}
        for r in rows:
            split_of.setdefault(r["sha256"], set()).add(r["split"])
        assert all(len(s) == 1 for s in split_of.values()), seed
        counts = summary["counts"]
        assert [(counts[s]["majority"], counts[s]["minority"]) for s in ("train", "val", "test")] == [
            (4, 2),
            (2, 1),
            (2, 2),
        ]
        groups = summary["duplicate_groups"]
        assert sorted(len(g["paths"]) for g in groups) == [2, 2, 2, 3]
        drawn = {r["path"] for r in rows}
        for g in groups:  # a group is drawn whole or not at all, and its split is recorded
            assert len(drawn & set(g["paths"])) in (0, len(g["paths"]))
            assert g["split"] == (
                next(r["split"] for r in rows if r["path"] == g["paths"][0]) if g["paths"][0] in drawn else None
            )


def test_without_copies_the_draw_is_the_plain_seeded_draw():
    usable = {0: [("h", Path(f"h{i:02d}.png")) for i in range(20)], 1: [("d", Path(f"d{i:02d}.png")) for i in range(9)]}
    hashes = {p.as_posix(): p.stem for label in (0, 1) for _, p in usable[label]}
    split = type("S", (), {"train": (4, 2), "val": (2, 1), "test": (3, 3), "seed": 5, "disjoint_test": False})()
    a = draw_split(usable, split, ("healthy", "diseased"), ("h", "d"), 1, hashes)
    b = draw_split(usable, split, ("healthy", "diseased"), ("h", "d"), 1, None)
    assert a == b
    order = np.random.default_rng([5, 1, 0]).permutation(20)  # the majority's seeded order, cut in three
    assert sorted(r["path"] for r in a if r["label"] == 0 and r["split"] == "train") == sorted(
        f"h{i:02d}.png" for i in order[:4]
    )


@pytest.mark.parametrize("layout", ["copy_under_both_classes", "folder_listed_as_both"])
def test_an_image_under_both_labels_is_refused_naming_the_files(load, tiny_split, tmp_path, capsys, layout):
    root = tmp_path / "imgs"
    for i in range(12):
        write_png(root / "good" / f"g{i}.png", i)
    for i in range(6):
        write_png(root / "crack" / f"c{i}.png", 100 + i)
    lists = ["datasets.0.majority=[good]", "datasets.0.minority=[crack]"]
    if layout == "copy_under_both_classes":
        shutil.copy(root / "crack" / "c2.png", root / "good" / "g_copy.png")
        want = [f"{root / 'crack' / 'c2.png'} (crack)", f"{root / 'good' / 'g_copy.png'} (good)"]
    else:
        lists = ["datasets.0.majority=[good, crack]", "datasets.0.minority=[crack]"]
        want = [f"{root / 'crack' / 'c0.png'} (crack)", "6 image(s) would carry both labels"]
    args = [
        "prepare",
        "--params",
        str(PARAMS),
        *[
            x
            for o in tiny_split
            + [f"datasets.0.root={root}", "datasets.0.source=folders", "datasets.0.crop=null", *lists]
            for x in ("--set", o)
        ],
        "--out",
        str(tmp_path / "out"),
    ]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "would carry both labels" in err
    assert all(w in err for w in want), err
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").rglob("manifest.csv"))


# ---------------------------------------------------------------- PlantVillage as users download it


@pytest.mark.parametrize(
    "crop, folders",
    [
        ("Tomato", ["Tomato_healthy", "Tomato__Target_Spot", "Tomato__Tomato_YellowLeaf__Curl_Virus"]),  # Kaggle
        ("Pepper__bell", ["Pepper__bell___healthy", "Pepper__bell___Bacterial_spot"]),  # Kaggle
        ("Pepper,_bell", ["Pepper,_bell___healthy", "Pepper,_bell___Bacterial_spot"]),  # the original repository
        ("Apple", ["Apple___Healthy", "Apple___Scab"]),  # healthy in any case
    ],
)
def test_plantvillage_copies_with_other_separators(load, tiny_split, tmp_path, crop, folders):
    root = tmp_path / "pv"
    for j, name in enumerate(folders):
        for i in range(12 if "ealthy" in name else 6):
            write_png(root / name / f"{i}.png", 1000 * j + i)
    for other in ("Pepper__bell___Bacterial_spot", "Potato___Early_blight", "Potato_healthy"):  # other crops
        write_png(root / other / "x.png", 99_000 + len(other))
    summary = _prepare(
        load, tiny_split, root, tmp_path / "o", "datasets.0.source=plantvillage", f"datasets.0.crop={crop}"
    )
    assert summary["source_classes"]["majority"] == [folders[0]]
    assert summary["source_classes"]["minority"] == sorted(folders[1:])


def test_no_crop_folders_names_the_look_alikes(load, tiny_split, tmp_path):
    root = tmp_path / "pv"
    for name in ("Tomato_healthy", "Tomato__Target_Spot", "Pepper__bell___healthy", "Potato___Late_blight"):
        write_png(root / name / "a.png", 1)
    with pytest.raises(DataError) as err:
        _prepare(load, tiny_split, root, tmp_path / "o", "datasets.0.source=plantvillage", "datasets.0.crop=Tomatoes")
    msg = str(err.value)
    assert "look-alike folders: Tomato__Target_Spot, Tomato_healthy;" in msg
    assert "crops found: Pepper__bell, Potato, Tomato" in msg and len(msg.splitlines()) == 1


# ---------------------------------------------------------------- groups (patients, lesions) never straddle splits


def _patients(root: Path, patients: int = 10, benign: int = 3, malignant: int = 2, blank: int = 0) -> list[str]:
    """An ISIC-2020-like folder: every patient has `benign` and `malignant` images; `blank` more
    benign rows with no patient_id. Returns the overrides of a csv dataset grouped by patient_id."""
    rows, n = ["image,patient_id,label"], 0
    for p in range(patients):
        for label, k in (("benign", benign), ("malignant", malignant)):
            for _ in range(k):
                write_png(root / f"img{n:03d}.png", 7_000 + n)
                rows.append(f"img{n:03d},IP_{p:02d},{label}")
                n += 1
    for _ in range(blank):
        write_png(root / f"img{n:03d}.png", 7_000 + n)
        rows.append(f"img{n:03d},,benign")
        n += 1
    (root / "gt.csv").write_text("\n".join(rows) + "\n")
    return [
        f"datasets.0.root={root}",
        "datasets.0.source=csv",
        "datasets.0.crop=null",
        "datasets.0.labels=gt.csv",
        "datasets.0.image_column=image",
        "datasets.0.label_column=label",
        "datasets.0.majority=[benign]",
        "datasets.0.minority=[malignant]",
        "datasets.0.group_column=patient_id",
    ]


def _group_of_rows(root: Path, rows: list[dict]) -> dict[str, set[str]]:
    """patient_id -> the splits its drawn images are in."""
    table = dict(line.split(",")[:2] for line in (root / "gt.csv").read_text().splitlines()[1:])
    out: dict[str, set[str]] = {}
    for r in rows:
        out.setdefault(table[Path(r["path"]).stem], set()).add(r["split"])
    return out


def test_no_patient_in_two_splits_and_the_counts_are_exact(load, tiny_split, tmp_path):
    root = tmp_path / "isic"
    sets = _patients(root)
    straddled = 0
    for seed in range(12):
        out = tmp_path / f"o{seed}"
        summary = _prepare(load, tiny_split, root, out, *sets[1:], f"split.seed={seed}", replicates=2)
        for r in range(2):
            rows = read_manifest(out / "synthetic-apple" / str(r) / "manifest.csv")
            where = _group_of_rows(root, rows)
            assert all(len(s) == 1 for s in where.values()), (seed, r, where)
            got = [
                sum(1 for x in rows if x["split"] == s and x["label"] == lab)
                for s in ("train", "val", "test")
                for lab in (0, 1)
            ]
            assert got == [4, 2, 2, 1, 2, 2], (seed, r)
        g = summary["groups"]
        assert g["by"] == "patient_id" and g["groups"] == 10 and g["ungrouped"]["images"] == 0
        assert sum(g["per_split"].values()) + g["unused"] == 10
        rows = read_manifest(out / "synthetic-apple" / "0" / "manifest.csv")
        assert {p: s.pop() for p, s in _group_of_rows(root, rows).items()} == {
            p: s for p, s in g["split_of"].items() if s is not None
        }
        plain = _prepare(load, tiny_split, root, tmp_path / "plain", *sets[1:-1], f"split.seed={seed}")
        assert "groups" not in plain  # without the key: the plain draw, and split.json as before
        where = _group_of_rows(root, read_manifest(tmp_path / "plain" / "synthetic-apple" / "0" / "manifest.csv"))
        straddled += any(len(s) > 1 for s in where.values())
    assert straddled  # what the key prevents: without it, patients straddle splits


def test_idc_patient_folders_are_one_group_with_group_by_folder(load, tiny_split, tmp_path):
    root = tmp_path / "IDC"
    for p in range(8):
        for cls, k in (("0", 3), ("1", 2)):
            for i in range(k):
                write_png(root / f"{10250 + p}" / cls / f"{p}_{cls}_{i}.png", 100 * p + 10 * int(cls) + i)
    sets = [
        "datasets.0.source=folders",
        "datasets.0.crop=null",
        "datasets.0.majority=[*/0]",
        "datasets.0.minority=[*/1]",
        "datasets.0.group_by_folder=true",
    ]
    for seed in range(8):
        summary = _prepare(load, tiny_split, root, tmp_path / "o", *sets, f"split.seed={seed}")
        rows = read_manifest(tmp_path / "o" / "synthetic-apple" / "0" / "manifest.csv")
        where: dict[str, set[str]] = {}
        for r in rows:
            where.setdefault(Path(r["path"]).parts[-3], set()).add(r["split"])
        assert all(len(s) == 1 for s in where.values()), (seed, where)
        assert [sum(1 for x in rows if x["split"] == s) for s in ("train", "val", "test")] == [6, 3, 4]
        g = summary["groups"]
        assert g["by"] == "folder" and g["groups"] == 8 and set(g["split_of"]) == {f"{10250 + p}" for p in range(8)}
        assert {p: s.pop() for p, s in where.items()} == {p: s for p, s in g["split_of"].items() if s}


@pytest.mark.parametrize(
    "extra, expected",
    [
        (["datasets.0.majority=[negative]", "datasets.0.minority=[*/1]"], "group_by_folder needs glob patterns"),
        (["datasets.0.majority=[**/0]", "datasets.0.minority=[**/1]"], "group_by_folder cannot group by '**'"),
        (
            ["datasets.0.majority=[*/0]", "datasets.0.minority=[*/1]", "datasets.0.group_column=patient"],
            "source folders takes no 'group_column'",
        ),
    ],
)
def test_group_keys_are_refused_where_they_cannot_apply(load, extra, expected):
    with pytest.raises(ConfigError, match=expected.replace("*", r"\*")) as err:
        load(["datasets.0.source=folders", "datasets.0.crop=null", "datasets.0.group_by_folder=true", *extra])
    assert "\n" not in str(err.value)


def test_a_split_the_groups_cannot_fill_is_refused_naming_the_counts(load, tiny_split, tmp_path, capsys):
    root = tmp_path / "isic"
    sets = _patients(root, patients=2, benign=8, malignant=4)  # 8 minority images, but in 2 groups for 3 splits
    args = [
        "prepare",
        "--params",
        str(PARAMS),
        *[x for o in tiny_split + sets for x in ("--set", o)],
        "--out",
        str(tmp_path / "out"),
    ]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "groups (patient_id): a group goes whole into one split" in err
    # the first patient goes to train, the second to val (no split's need fits 4 minority images): test is empty
    assert (
        "test majority needs 2, its groups give 0; test minority needs 2, its groups give 0 (2 groups hold "
        "minority images, 8 images in all)" in err
    )
    assert not list((tmp_path / "out").rglob("manifest.csv"))


def test_rows_without_a_group_value_are_their_own_groups_and_reported(tmp_path, capsys, tiny_split):
    root = tmp_path / "isic"
    sets = _patients(root, patients=6, blank=5)
    args = [
        "prepare",
        "--params",
        str(PARAMS),
        *[x for o in tiny_split + sets for x in ("--set", o)],
        "--out",
        str(tmp_path / "out"),
    ]
    assert main(args) == 0
    line = capsys.readouterr().out
    summary = json.loads((tmp_path / "out" / "synthetic-apple" / "0" / "split.json").read_text())
    g = summary["groups"]
    assert g["groups"] == 6 and g["ungrouped"]["images"] == 5
    assert g["ungrouped"]["paths"] == [(root / f"img{n:03d}.png").as_posix() for n in range(30, 35)]
    per = ", ".join(f"{g['per_split'][s]} {s}" for s in ("train", "val", "test"))
    alone = ", ".join(f"{g['ungrouped']['per_split'][s]} {s}" for s in ("train", "val", "test"))
    assert f"; groups (patient_id): {per}; 5 images without a group value, each its own group ({alone} drawn)" in line


def test_grouped_draw_is_deterministic_and_replicates_differ(load, tiny_split, tmp_path):
    root = tmp_path / "isic"
    sets = _patients(root, patients=12)
    for out in ("a", "b"):
        _prepare(load, tiny_split, root, tmp_path / out, *sets[1:], replicates=3)
    base = {r: (tmp_path / "a" / "synthetic-apple" / str(r) / "manifest.csv").read_bytes() for r in range(3)}
    for r in range(3):
        for name in ("manifest.csv", "split.json"):
            assert (tmp_path / "a" / "synthetic-apple" / str(r) / name).read_bytes() == (
                tmp_path / "b" / "synthetic-apple" / str(r) / name
            ).read_bytes()
    assert len(set(base.values())) > 1


def test_disjoint_majority_keeps_each_replicates_healthy_test_images_its_own():
    """split.disjoint_test: majority: the healthy test sets are disjoint between replicates, the
    diseased ones come from one shared pool (here 6 diseased images, 3 per test set, 4 replicates)."""
    usable = {0: [("h", Path(f"h{i:02d}.png")) for i in range(40)], 1: [("d", Path(f"d{i:02d}.png")) for i in range(9)]}
    split = type("S", (), {"train": (4, 2), "val": (2, 1), "test": (6, 3), "seed": 5, "disjoint_test": "majority"})()
    draws = [draw_split(usable, split, ("healthy", "diseased"), ("h", "d"), r, None, replicates=4) for r in range(4)]
    healthy, diseased = [], []
    for rows in draws:
        assert len({x["path"] for x in rows}) == len(rows)  # disjoint within a replicate
        healthy.append({x["path"] for x in rows if x["split"] == "test" and x["label"] == 0})
        diseased.append({x["path"] for x in rows if x["split"] == "test" and x["label"] == 1})
        assert len(healthy[-1]) == 6 and len(diseased[-1]) == 3
    assert all(not (a & b) for i, a in enumerate(healthy) for b in healthy[i + 1 :])
    assert any(a & b for i, a in enumerate(diseased) for b in diseased[i + 1 :])  # 4 x 3 > 9: shared
    with pytest.raises(
        DataError,
        match=r"disjoint_test: class healthy \(h\) has 40 usable images, 7 disjoint test "
        r"sets of 6 need 42",
    ):
        draw_split(usable, split, ("healthy", "diseased"), ("h", "d"), 0, None, replicates=7)


def test_disjoint_majority_is_refused_with_groups(load, tiny_split, tmp_path):
    root = tmp_path / "isic"
    sets = _patients(root, patients=14)
    with pytest.raises(DataError, match=r"split.disjoint_test: majority cannot be kept with groups"):
        _prepare(load, tiny_split, root, tmp_path / "o", *sets[1:], "split.disjoint_test=majority", replicates=3)


def test_disjoint_test_with_groups_shares_no_patient_across_replicates(load, tiny_split, tmp_path):
    root = tmp_path / "isic"
    sets = _patients(root, patients=14)
    _prepare(load, tiny_split, root, tmp_path / "o", *sets[1:], "split.disjoint_test=true", replicates=3)
    tests = []
    for r in range(3):
        rows = read_manifest(tmp_path / "o" / "synthetic-apple" / str(r) / "manifest.csv")
        where = _group_of_rows(root, rows)
        assert all(len(s) == 1 for s in where.values())
        assert [sum(1 for x in rows if x["split"] == s) for s in ("train", "val", "test")] == [6, 3, 4]
        tests.append({p for p, s in where.items() if s == {"test"}})
    assert not (tests[0] & tests[1]) and not (tests[0] & tests[2]) and not (tests[1] & tests[2])


def test_a_missing_group_column_or_a_literal_folder_is_refused_in_one_line(load, tiny_split, tmp_path):
    root = tmp_path / "isic"
    sets = _patients(root, patients=4)
    with pytest.raises(
        DataError,
        match=r"has no column 'patient' \(group_column\); columns: 'image', 'patient_id', "
        r"'label'",
    ):
        _prepare(load, tiny_split, root, tmp_path / "o", *sets[1:-1], "datasets.0.group_column=patient")
    for p in range(4):  # a folder whose name merely looks like a pattern is taken as written: it has no group
        for i in range(4):
            write_png(tmp_path / "scans" / "[2020] neg" / f"{p}_{i}.png", 500 + 10 * p + i)
        write_png(tmp_path / "scans" / f"{p}" / "1" / "x.png", 900 + p)
    with pytest.raises(DataError, match=r"group_by_folder: majority entry '\[2020\] neg' is a folder of that name"):
        _prepare(
            load,
            tiny_split,
            tmp_path / "scans",
            tmp_path / "o",
            "datasets.0.source=folders",
            "datasets.0.crop=null",
            "datasets.0.majority=[[2020] neg]",
            "datasets.0.minority=[*/1]",
            "datasets.0.group_by_folder=true",
        )

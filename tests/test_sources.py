"""Layouts as users have them (finalbn.sources through `finalbn prepare`): a labels table (ISIC,
ELPV, Kaggle), many folders per class by glob pattern (patient-per-folder), and file names that
are not valid UTF-8 (Windows archives unpacked on Linux). Every input is made by the test."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from finalbn.cli import main
from finalbn.data import decode_images
from finalbn.images import unescape_name
from finalbn.splits import DataError, read_manifest

from conftest import PARAMS, write_png


def _prepare(tmp_path: Path, capsys, *overrides: str) -> tuple[int, str, Path]:
    """`finalbn prepare` on dataset 0 with the tiny split (train 4/2, val 2/1, test 2/2):
    (exit code, stderr+stdout, the out folder)."""
    out = tmp_path / "out"
    sets = ["split.train=[4, 2]", "split.val=[2, 1]", "split.test=[2, 2]", "datasets.0.crop=null", *overrides]
    code = main(["prepare", "--params", str(PARAMS), *[x for o in sets for x in ("--set", o)], "--out", str(out)])
    got = capsys.readouterr()
    return code, got.err + got.out, out


def _summary(out: Path) -> dict:
    return json.loads((out / "synthetic-apple" / "0" / "split.json").read_text())


# ---------------------------------------------------------------- a labels table


def _isic(tmp_path: Path, table: str, n_benign: int = 10, n_malignant: int = 6) -> Path:
    """An ISIC-style folder: ISIC_<7 digits>.jpg files, and ground_truth.csv with `table` as text."""
    root = tmp_path / "isic train"  # a space in the path, as on users' disks
    for i in range(n_benign + n_malignant + 3):
        write_png(root / f"ISIC_{i:07d}.jpg", i)  # PNG content behind .jpg: the content decides
    (root / "ground_truth.csv").write_text(table)
    return root


ISIC = ["datasets.0.source=csv", "datasets.0.labels=ground_truth.csv", "datasets.0.image_column=image_name",
        "datasets.0.label_column=benign_malignant"]


def test_isic_with_its_csv_and_every_bad_row_reported(tmp_path, capsys):
    rows = ["image_name,patient_id,benign_malignant"]
    rows += [f"ISIC_{i:07d},IP_{i},benign" for i in range(10)]
    rows += [f"ISIC_{i:07d}.jpg,IP_{i},malignant" for i in range(10, 16)]  # with its suffix, or without
    rows += ["ISIC_0000099,IP_99,benign",            # line 18: no such image
             "ISIC_0000003,IP_3,benign",             # line 19: listed again, same label
             "ISIC_0000016,IP_16,indeterminate",     # line 20: a label in neither list
             "ISIC_0000017,IP_17,benign",            # lines 21-22: the same image with two labels
             "ISIC_0000017,IP_17,malignant",
             ",IP_0,benign"]                         # line 23: no name
    root = _isic(tmp_path, "\n".join(rows) + "\n")
    code, text, out = _prepare(tmp_path, capsys, f"datasets.0.root={root}", *ISIC,
                               "datasets.0.majority=[benign]", "datasets.0.minority=[malignant]")
    assert code == 0, text
    s = _summary(out)
    t = s["table"]
    assert (t["rows"], t["used"]) == (22, 16)
    reasons = {r["line"]: r["reason"] for r in t["skipped"]}
    assert sorted(reasons) == [18, 19, 20, 21, 22, 23]
    assert reasons[18].startswith("no image file ISIC_0000099")
    assert reasons[19] == "the same image as line 5 (listed again)"
    assert reasons[20] == "label 'indeterminate' is in neither majority nor minority"
    assert "another label" in reasons[21] and "another label" in reasons[22]
    assert reasons[23] == "no image name"
    assert t["skipped_by_reason"] == {"conflicting labels": 2, "label in neither list": 1, "listed again": 1,
                                      "missing image": 1, "no name": 1}
    assert s["usable"] == {"benign": 10, "malignant": 6}
    assert "table: 22 rows, 16 used, 6 skipped" in text and "1 missing image" in text
    manifest = read_manifest(out / "synthetic-apple" / "0" / "manifest.csv")
    assert {r["source_class"] for r in manifest} == {"benign", "malignant"}
    assert all(Path(r["path"]).name != "ISIC_0000017.jpg" for r in manifest)


def test_labels_as_numbers_and_names_with_leading_zeros_stay_text(tmp_path, capsys):
    """`0`/`1` labels (ELPV, most Kaggle sets), `007`-style ids: read as written, never as numbers."""
    rows = ["id,file,target"] + [f"{i:03d},ISIC_{i:07d},{int(i >= 10)}" for i in range(16)]
    root = _isic(tmp_path, "\n".join(rows) + "\n")
    code, text, out = _prepare(tmp_path, capsys, f"datasets.0.root={root}", *ISIC[:2],
                               "datasets.0.image_column=file", "datasets.0.label_column=target",
                               "datasets.0.majority=[0]", "datasets.0.minority=[1]")
    assert code == 0, text
    assert _summary(out)["usable"] == {"0": 10, "1": 6}
    assert _summary(out)["source_classes"] == {"majority": ["0"], "minority": ["1"]}


@pytest.mark.parametrize("table, expected", [
    ("", "is empty"),
    ("image_name,benign_malignant\n", "has a header but no rows"),
    ("image,diagnosis\nISIC_0000001,benign\n", "has no column 'image_name' (image_column); columns: 'image', 'diagnosis'"),
    ("image_name,diagnosis\nISIC_0000001,benign\n", "has no column 'benign_malignant' (label_column)"),
])
def test_a_table_without_its_columns_or_rows_is_one_line_exit_2(tmp_path, capsys, table, expected):
    root = _isic(tmp_path, table)
    code, text, out = _prepare(tmp_path, capsys, f"datasets.0.root={root}", *ISIC,
                               "datasets.0.majority=[benign]", "datasets.0.minority=[malignant]")
    assert code == 2 and len(text.strip().splitlines()) == 1 and expected in text, text
    assert not out.exists()


def test_a_missing_table_or_csv_keys_are_named(tmp_path, capsys):
    root = _isic(tmp_path, "image_name,benign_malignant\n")
    code, text, _ = _prepare(tmp_path, capsys, f"datasets.0.root={root}", *ISIC[:1], "datasets.0.labels=/no/such.csv",
                             *ISIC[2:], "datasets.0.majority=[benign]", "datasets.0.minority=[malignant]")
    assert code == 2 and "labels table /no/such.csv does not exist" in text
    code, text, _ = _prepare(tmp_path, capsys, f"datasets.0.root={root}", "datasets.0.source=csv",
                             "datasets.0.majority=[benign]", "datasets.0.minority=[malignant]")
    assert code == 2 and "source csv needs 'labels', 'image_column', 'label_column'" in text


# ---------------------------------------------------------------- many folders per class


def test_patient_folders_by_glob_pattern_are_expanded_and_recorded(tmp_path, capsys):
    """The breast-histopathology layout: <patient>/0 and <patient>/1 for every patient."""
    root = tmp_path / "IDC"
    for p in range(4):
        for i in range(4):
            write_png(root / f"{10250 + p}" / "0" / f"{p}_{i}.png", 100 * p + i)
        for i in range(2):
            write_png(root / f"{10250 + p}" / "1" / f"{p}_{i}.png", 10_000 + 100 * p + i)
    (root / "@eaDir" / "0").mkdir(parents=True)  # a NAS box's thumbnails folder is no patient
    code, text, out = _prepare(tmp_path, capsys, f"datasets.0.root={root}", "datasets.0.source=folders",
                               "datasets.0.majority=[*/0]", "datasets.0.minority=[*/1]")
    assert code == 0, text
    s = _summary(out)
    patients = [f"{10250 + p}" for p in range(4)]
    assert s["patterns"] == {"majority": {"*/0": [f"{p}/0" for p in patients]},
                             "minority": {"*/1": [f"{p}/1" for p in patients]}}
    assert s["usable"] == {**{f"{p}/0": 4 for p in patients}, **{f"{p}/1": 2 for p in patients}}


def test_a_pattern_that_matches_nothing_is_one_line_exit_2(tmp_path, capsys):
    root = tmp_path / "IDC"
    write_png(root / "1" / "0" / "a.png", 1)
    code, text, _ = _prepare(tmp_path, capsys, f"datasets.0.root={root}", "datasets.0.source=folders",
                             "datasets.0.majority=[*/0]", "datasets.0.minority=[*/2]")
    assert code == 2 and "minority pattern '*/2' matches no folder under" in text and len(text.strip().splitlines()) == 1


def test_a_folder_named_like_a_pattern_is_taken_as_written(tmp_path, capsys):
    root = tmp_path / "scans"
    for i in range(12):
        write_png(root / "[2020] ok" / f"{i}.png", i)
    for i in range(6):
        write_png(root / "crack*" / f"{i}.png", 100 + i)
    code, text, out = _prepare(tmp_path, capsys, f"datasets.0.root={root}", "datasets.0.source=folders",
                               "datasets.0.majority=[[2020] ok]", "datasets.0.minority=[crack*]")
    assert code == 0, text
    assert _summary(out)["source_classes"] == {"majority": ["[2020] ok"], "minority": ["crack*"]}
    assert "patterns" not in _summary(out)


# ---------------------------------------------------------------- names that are not UTF-8


def test_names_that_are_not_utf8_are_used_and_written_escaped(tmp_path, capsys):
    root = tmp_path / "cracks"
    for cls, n in (("ok", 12), ("crack", 6)):
        folder = os.fsencode(root / cls)
        os.makedirs(folder)
        for i in range(n):
            write_png(Path(os.fsdecode(folder + b"/Bild %d \xe4\xf6.png" % i)), 1000 * len(cls) + i)
    code, text, out = _prepare(tmp_path, capsys, f"datasets.0.root={root}", "datasets.0.source=folders",
                               "datasets.0.majority=[ok]", "datasets.0.minority=[crack]")
    assert code == 0, text
    raw = (out / "synthetic-apple" / "0" / "manifest.csv").read_bytes()
    raw.decode("utf-8")  # valid UTF-8 throughout
    rows = read_manifest(out / "synthetic-apple" / "0" / "manifest.csv")
    assert all(r["path"].endswith(" \\xe4\\xf6.png") for r in rows)
    assert all(os.path.isfile(unescape_name(r["path"])) for r in rows)
    assert decode_images([r["path"] for r in rows], 16).shape == (len(rows), 3, 16, 16)


def test_collect_errors_are_data_errors(load, tmp_path):
    from finalbn.sources import collect

    cfg = load(["datasets.0.source=folders", "datasets.0.crop=null", f"datasets.0.root={tmp_path}",
                "datasets.0.majority=[a]", "datasets.0.minority=[b]"])
    with pytest.raises(DataError, match="class folder .* does not exist"):
        collect(cfg.datasets[0], progress=False)


# ---------------------------------------------------------------- near-duplicates (an option)


def _photo(seed: int) -> "Image.Image":
    from PIL import Image
    import numpy as np

    small = np.random.default_rng(seed).integers(0, 256, (12, 12, 3), dtype=np.uint8)
    return Image.fromarray(small).resize((96, 96), Image.BICUBIC)  # smooth shapes, like a photo


def _with_look_alikes(root: Path) -> list[tuple[str, str]]:
    """ok/ 12 photos + crack/ 6, and for 3 ok and 2 crack photos a resized, recompressed copy."""
    pairs = []
    for cls, n, base in (("ok", 12, 0), ("crack", 6, 500)):
        (root / cls).mkdir(parents=True)
        for i in range(n):
            _photo(base + i).save(root / cls / f"{i:02d}.png")
        for i in range(3 if cls == "ok" else 2):
            _photo(base + i).resize((72, 72)).save(root / cls / f"{i:02d} (1).jpg", quality=75)
            pairs.append(tuple(sorted((f"{root / cls / f'{i:02d}.png'}", f"{root / cls / f'{i:02d} (1).jpg'}"))))
    return pairs


def test_near_duplicates_off_by_default_and_grouped_when_asked(tmp_path, capsys):
    root = tmp_path / "cracks"
    pairs = _with_look_alikes(root)
    base = [f"datasets.0.root={root}", "datasets.0.source=folders", "datasets.0.majority=[ok]",
            "datasets.0.minority=[crack]", "split.train=[5, 2]", "split.val=[2, 1]", "split.test=[3, 3]"]
    straddled = 0
    for seed in range(12):
        code, text, out = _prepare(tmp_path / f"off{seed}", capsys, *base, f"split.seed={seed}")
        assert code == 0, text
        s = _summary(out)
        assert s["near_duplicates"] is None and s["duplicate_groups"] == []
        where = {r["path"]: r["split"] for r in read_manifest(out / "synthetic-apple" / "0" / "manifest.csv")}
        straddled += sum(a in where and b in where and where[a] != where[b] for a, b in pairs)
    assert straddled > 0  # without the option, look-alikes land in two splits

    for seed in range(12):
        code, text, out = _prepare(tmp_path / f"on{seed}", capsys, *base, f"split.seed={seed}",
                                   "split.near_duplicates=6")
        assert code == 0, text
        s = _summary(out)
        assert s["near_duplicates"]["max_distance"] == 6 and s["near_duplicates"]["across_labels"] == []
        groups = {tuple(g["paths"]): g for g in s["duplicate_groups"]}
        assert sorted(groups) == sorted(pairs) and all(g["near"] for g in groups.values())
        where = {r["path"]: r["split"] for r in read_manifest(out / "synthetic-apple" / "0" / "manifest.csv")}
        for a, b in pairs:
            assert where.get(a) == where.get(b) == groups[(a, b)]["split"]

"""Layouts as users have them (finalbn.data.sources through `finalbn prepare`): a labels table (ISIC,
ELPV, Kaggle), many folders per class by glob pattern (patient-per-folder), and file names that
are not valid UTF-8 (Windows archives unpacked on Linux). Every input is made by the test."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import PARAMS, write_png
from finalbn.cli import main
from finalbn.data.refusals import file_kind
from finalbn.data.sources import collect
from finalbn.data.splits import DataError, read_manifest
from finalbn.data.tables import read
from finalbn.data.tensors import decode_images
from finalbn_field.images import unescape_name


def _prepare(tmp_path: Path, capsys, *overrides: str) -> tuple[int, str, Path]:
    """`finalbn prepare` on dataset 0 with the tiny split (train 4/2, val 2/1, test 2/2):
    (exit code, stderr+stdout, the out folder)."""
    out = tmp_path / "out"
    sets = [
        "split.train=[4, 2]",
        "split.val=[2, 1]",
        "split.test=[2, 2]",
        "split.disjoint_test=false",
        "datasets.0.crop=null",
        *overrides,
    ]
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


ISIC = [
    "datasets.0.source=csv",
    "datasets.0.labels=ground_truth.csv",
    "datasets.0.image_column=image_name",
    "datasets.0.label_column=benign_malignant",
]


def test_isic_with_its_csv_and_every_bad_row_reported(tmp_path, capsys):
    rows = ["image_name,patient_id,benign_malignant"]
    rows += [f"ISIC_{i:07d},IP_{i},benign" for i in range(10)]
    rows += [f"ISIC_{i:07d}.jpg,IP_{i},malignant" for i in range(10, 16)]  # with its suffix, or without
    rows += [
        "ISIC_0000099,IP_99,benign",  # line 18: no such image
        "ISIC_0000003,IP_3,benign",  # line 19: listed again, same label
        "ISIC_0000016,IP_16,indeterminate",  # line 20: a label in neither list
        "ISIC_0000017,IP_17,benign",  # lines 21-22: the same image with two labels
        "ISIC_0000017,IP_17,malignant",
        ",IP_0,benign",
    ]  # line 23: no name
    root = _isic(tmp_path, "\n".join(rows) + "\n")
    code, text, out = _prepare(
        tmp_path,
        capsys,
        f"datasets.0.root={root}",
        *ISIC,
        "datasets.0.majority=[benign]",
        "datasets.0.minority=[malignant]",
    )
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
    assert t["skipped_by_reason"] == {
        "conflicting labels": 2,
        "label in neither list": 1,
        "listed again": 1,
        "missing image": 1,
        "no name": 1,
    }
    assert s["usable"] == {"benign": 10, "malignant": 6}
    assert "table: 22 rows, 16 used, 6 skipped" in text and "1 missing image" in text
    manifest = read_manifest(out / "synthetic-apple" / "0" / "manifest.csv")
    assert {r["source_class"] for r in manifest} == {"benign", "malignant"}
    assert all(Path(r["path"]).name != "ISIC_0000017.jpg" for r in manifest)


def test_labels_as_numbers_and_names_with_leading_zeros_stay_text(tmp_path, capsys):
    """`0`/`1` labels (ELPV, most Kaggle sets), `007`-style ids: read as written, never as numbers."""
    rows = ["id,file,target"] + [f"{i:03d},ISIC_{i:07d},{int(i >= 10)}" for i in range(16)]
    root = _isic(tmp_path, "\n".join(rows) + "\n")
    code, text, out = _prepare(
        tmp_path,
        capsys,
        f"datasets.0.root={root}",
        *ISIC[:2],
        "datasets.0.image_column=file",
        "datasets.0.label_column=target",
        "datasets.0.majority=[0]",
        "datasets.0.minority=[1]",
    )
    assert code == 0, text
    assert _summary(out)["usable"] == {"0": 10, "1": 6}
    assert _summary(out)["source_classes"] == {"majority": ["0"], "minority": ["1"]}


@pytest.mark.parametrize(
    "table, expected",
    [
        ("", "is empty"),
        ("image_name,benign_malignant\n", "has a header but no rows"),
        (
            "image,diagnosis\nISIC_0000001,benign\n",
            "has no column 'image_name' (image_column); columns: 'image', 'diagnosis'",
        ),
        ("image_name,diagnosis\nISIC_0000001,benign\n", "has no column 'benign_malignant' (label_column)"),
    ],
)
def test_a_table_without_its_columns_or_rows_is_one_line_exit_2(tmp_path, capsys, table, expected):
    root = _isic(tmp_path, table)
    code, text, out = _prepare(
        tmp_path,
        capsys,
        f"datasets.0.root={root}",
        *ISIC,
        "datasets.0.majority=[benign]",
        "datasets.0.minority=[malignant]",
    )
    assert code == 2 and len(text.strip().splitlines()) == 1 and expected in text, text
    assert not out.exists()


def test_a_missing_table_or_csv_keys_are_named(tmp_path, capsys):
    root = _isic(tmp_path, "image_name,benign_malignant\n")
    code, text, _ = _prepare(
        tmp_path,
        capsys,
        f"datasets.0.root={root}",
        *ISIC[:1],
        "datasets.0.labels=/no/such.csv",
        *ISIC[2:],
        "datasets.0.majority=[benign]",
        "datasets.0.minority=[malignant]",
    )
    assert code == 2 and "labels table /no/such.csv does not exist" in text
    code, text, _ = _prepare(
        tmp_path,
        capsys,
        f"datasets.0.root={root}",
        "datasets.0.source=csv",
        "datasets.0.majority=[benign]",
        "datasets.0.minority=[malignant]",
    )
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
    code, text, out = _prepare(
        tmp_path,
        capsys,
        f"datasets.0.root={root}",
        "datasets.0.source=folders",
        "datasets.0.majority=[*/0]",
        "datasets.0.minority=[*/1]",
    )
    assert code == 0, text
    s = _summary(out)
    patients = [f"{10250 + p}" for p in range(4)]
    assert s["patterns"] == {
        "majority": {"*/0": [f"{p}/0" for p in patients]},
        "minority": {"*/1": [f"{p}/1" for p in patients]},
    }
    assert s["usable"] == {**{f"{p}/0": 4 for p in patients}, **{f"{p}/1": 2 for p in patients}}


def test_a_pattern_that_matches_nothing_is_one_line_exit_2(tmp_path, capsys):
    root = tmp_path / "IDC"
    write_png(root / "1" / "0" / "a.png", 1)
    code, text, _ = _prepare(
        tmp_path,
        capsys,
        f"datasets.0.root={root}",
        "datasets.0.source=folders",
        "datasets.0.majority=[*/0]",
        "datasets.0.minority=[*/2]",
    )
    assert (
        code == 2 and "minority pattern '*/2' matches no folder under" in text and len(text.strip().splitlines()) == 1
    )


def test_a_folder_named_like_a_pattern_is_taken_as_written(tmp_path, capsys):
    root = tmp_path / "scans"
    for i in range(12):
        write_png(root / "[2020] ok" / f"{i}.png", i)
    for i in range(6):
        write_png(root / "crack*" / f"{i}.png", 100 + i)
    code, text, out = _prepare(
        tmp_path,
        capsys,
        f"datasets.0.root={root}",
        "datasets.0.source=folders",
        "datasets.0.majority=[[2020] ok]",
        "datasets.0.minority=[crack*]",
    )
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
    code, text, out = _prepare(
        tmp_path,
        capsys,
        f"datasets.0.root={root}",
        "datasets.0.source=folders",
        "datasets.0.majority=[ok]",
        "datasets.0.minority=[crack]",
    )
    assert code == 0, text
    raw = (out / "synthetic-apple" / "0" / "manifest.csv").read_bytes()
    raw.decode("utf-8")  # valid UTF-8 throughout
    rows = read_manifest(out / "synthetic-apple" / "0" / "manifest.csv")
    assert all(r["path"].endswith(" \\xe4\\xf6.png") for r in rows)
    assert all(os.path.isfile(unescape_name(r["path"])) for r in rows)
    assert decode_images([r["path"] for r in rows], 16).shape == (len(rows), 3, 16, 16)


def test_collect_errors_are_data_errors(load, tmp_path):
    cfg = load(
        [
            "datasets.0.source=folders",
            "datasets.0.crop=null",
            f"datasets.0.root={tmp_path}",
            "datasets.0.majority=[a]",
            "datasets.0.minority=[b]",
        ]
    )
    with pytest.raises(DataError, match="class folder .* does not exist"):
        collect(cfg.datasets[0], progress=False)


# ---------------------------------------------------------------- near-duplicates (an option)


def _photo(seed: int) -> Image.Image:
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
    base = [
        f"datasets.0.root={root}",
        "datasets.0.source=folders",
        "datasets.0.majority=[ok]",
        "datasets.0.minority=[crack]",
        "split.train=[5, 2]",
        "split.val=[2, 1]",
        "split.test=[3, 3]",
        "split.disjoint_test=false",
    ]
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
        code, text, out = _prepare(
            tmp_path / f"on{seed}", capsys, *base, f"split.seed={seed}", "split.near_duplicates=6"
        )
        assert code == 0, text
        s = _summary(out)
        assert s["near_duplicates"]["max_distance"] == 6 and s["near_duplicates"]["across_labels"] == []
        groups = {tuple(g["paths"]): g for g in s["duplicate_groups"]}
        assert sorted(groups) == sorted(pairs) and all(g["near"] for g in groups.values())
        where = {r["path"]: r["split"] for r in read_manifest(out / "synthetic-apple" / "0" / "manifest.csv")}
        for a, b in pairs:
            assert where.get(a) == where.get(b) == groups[(a, b)]["split"]


# ---------------------------------------------------------------- tables as people export them


def _table(root: Path, name: str, rows: list[list[str]], sep: str, encoding: str, newline: str = "\n") -> Path:
    """`rows` written as a spreadsheet program would: `sep` between cells, `encoding` (BOM included
    where the codec writes one: utf-8-sig, utf-16)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / name).write_bytes((newline.join(sep.join(r) for r in rows) + newline).encode(encoding))
    return root / name


def _french(tmp_path: Path) -> tuple[Path, list[list[str]]]:
    """16 images and a table whose labels and names are not ASCII (`bénin`, `Müller`)."""
    root = tmp_path / "isic"
    for i in range(16):
        write_png(root / f"ISIC_{i:07d}.jpg", i)
    rows = [["image_name", "médecin", "diagnostic"]]
    rows += [[f"ISIC_{i:07d}", "Müller", "bénin" if i < 10 else "malin"] for i in range(16)]
    return root, rows


FRENCH = [
    "datasets.0.source=csv",
    "datasets.0.image_column=image_name",
    "datasets.0.label_column=diagnostic",
    "datasets.0.majority=[bénin]",
    "datasets.0.minority=[malin]",
]


@pytest.mark.parametrize(
    "name, sep, encoding, newline, recorded, said",
    [
        (
            "labels.csv",
            ";",
            "cp1252",
            "\r\n",
            ("cp1252", "fallback", ";"),
            "read as cp1252 (fallback: not UTF-8), separator ';'",
        ),
        (
            "labels.txt",
            "\t",
            "utf-16",
            "\r\n",
            ("utf-16", "BOM", "\t"),
            "read as utf-16 (byte-order mark), separator '\\t'",
        ),
        ("labels.csv", ";", "utf-8-sig", "\n", ("utf-8-sig", "BOM", ";"), "separator ';' (sniffed)"),
        ("labels.csv", "\t", "utf-8", "\n", ("utf-8", "UTF-8", "\t"), "read as utf-8, separator '\\t' (sniffed)"),
        ("labels.csv", ",", "utf-8-sig", "\r\n", ("utf-8-sig", "BOM", ","), None),
    ],
)
def test_excel_exports_are_read_and_how_is_recorded(tmp_path, capsys, name, sep, encoding, newline, recorded, said):
    """Excel's CSV (`;` and cp1252 in much of Europe), its "Unicode Text" (UTF-16 with a BOM, tabs),
    "CSV UTF-8" (a BOM), tabs in a .csv: read; the encoding and separator are in split.json, and the
    summary line says so unless the table is UTF-8 with commas."""
    root, rows = _french(tmp_path)
    _table(root, name, rows, sep, encoding, newline)
    code, text, out = _prepare(tmp_path, capsys, f"datasets.0.root={root}", f"datasets.0.labels={name}", *FRENCH)
    assert code == 0, text
    t = _summary(out)["table"]
    assert (t["encoding"], t["encoding_from"], t["separator"]) == recorded and t["separator_from"] == "sniffed"
    assert _summary(out)["usable"] == {"bénin": 10, "malin": 6} and t["used"] == 16
    assert (said in text) if said else ("read as" not in text)


def test_an_ordinary_comma_table_reads_as_before(tmp_path, capsys):
    rows = ["id,file,target"] + [f"{i:03d},ISIC_{i:07d},{int(i >= 10)}" for i in range(16)]
    root = _isic(tmp_path, "\n".join(rows) + "\n")
    code, text, out = _prepare(
        tmp_path,
        capsys,
        f"datasets.0.root={root}",
        *ISIC[:2],
        "datasets.0.image_column=file",
        "datasets.0.label_column=target",
        "datasets.0.majority=[0]",
        "datasets.0.minority=[1]",
    )
    assert code == 0, text
    t = _summary(out)["table"]
    assert (t["encoding"], t["encoding_from"], t["separator"], t["separator_from"]) == (
        "utf-8",
        "UTF-8",
        ",",
        "sniffed",
    )
    assert "read as" not in text


def test_table_options_read_what_detection_cannot(tmp_path, capsys):
    """UTF-16 without its BOM is refused naming the option; table_encoding and table_separator read it."""
    root, rows = _french(tmp_path)
    _table(root, "labels.txt", rows, "\t", "utf-16-le")
    base = [f"datasets.0.root={root}", "datasets.0.labels=labels.txt", *FRENCH]
    code, text, out = _prepare(tmp_path, capsys, *base)
    assert code == 2 and len(text.strip().splitlines()) == 1, text
    assert "holds NUL bytes and no byte-order mark" in text and "set table_encoding" in text
    code, text, out = _prepare(
        tmp_path, capsys, *base, "datasets.0.table_encoding=utf-16-le", "datasets.0.table_separator=tab"
    )
    assert code == 0, text
    t = _summary(out)["table"]
    assert (t["encoding"], t["encoding_from"], t["separator"], t["separator_from"]) == (
        "utf-16-le",
        "table_encoding",
        "\t",
        "table_separator",
    )


@pytest.mark.parametrize(
    "sets, expected",
    [
        (
            ["datasets.0.table_separator=|"],
            "has no column 'image_name' (image_column); columns: 'image_name;médecin;"
            "diagnostic' (read as cp1252 (fallback: not UTF-8), separator '|' "
            "(table_separator): set table_separator and table_encoding",
        ),
        (["datasets.0.table_encoding=utf-8"], "is not utf-8 (table_encoding): byte 0xe9 at offset 12"),
        (["datasets.0.table_encoding=nope"], "table_encoding 'nope' is not an encoding Python knows"),
        (["datasets.0.table_separator=ab"], "table_separator 'ab' is not one character"),
    ],
)
def test_a_table_read_otherwise_is_refused_naming_how_it_was_read(tmp_path, capsys, sets, expected):
    root, rows = _french(tmp_path)
    _table(root, "labels.csv", rows, ";", "cp1252")
    code, text, _ = _prepare(
        tmp_path, capsys, f"datasets.0.root={root}", "datasets.0.labels=labels.csv", *FRENCH, *sets
    )
    assert code == 2 and len(text.strip().splitlines()) == 1 and expected in text, text


def test_a_table_in_no_known_encoding_is_refused(tmp_path, capsys):
    root, rows = _french(tmp_path)
    (root / "labels.csv").write_bytes("\n".join(",".join(r) for r in rows).encode("cp1252") + b"\x81\x8d\n")
    code, text, _ = _prepare(tmp_path, capsys, f"datasets.0.root={root}", "datasets.0.labels=labels.csv", *FRENCH)
    assert code == 2 and len(text.strip().splitlines()) == 1, text
    assert (
        "is neither UTF-8 (byte 0xe9 at offset 12)" in text
        and "nor cp1252 (byte 0x81" in text
        and "set table_encoding" in text
    )


@pytest.mark.parametrize(
    "sets, expected",
    [
        (["datasets.0.source=folders", "datasets.0.one_hot=true"], "source folders takes no 'one_hot'"),
        (["datasets.0.source=folders", "datasets.0.table_separator=;"], "source folders takes no 'table_separator'"),
        (
            [
                "datasets.0.source=csv",
                "datasets.0.labels=t.csv",
                "datasets.0.image_column=image",
                "datasets.0.one_hot=true",
                "datasets.0.label_column=dx",
            ],
            "one_hot takes no 'label_column'",
        ),
    ],
)
def test_table_keys_are_validated(tmp_path, capsys, sets, expected):
    code, text, _ = _prepare(
        tmp_path, capsys, f"datasets.0.root={tmp_path}", "datasets.0.majority=[a]", "datasets.0.minority=[b]", *sets
    )
    assert code == 2 and len(text.strip().splitlines()) == 1 and expected in text, text


# ---------------------------------------------------------------- labels as archives write them


def test_numeric_labels_compare_as_numbers(tmp_path, capsys):
    """`1.0` in the table is `1` in `minority: [1]`; the source class is the value as listed."""
    rows = ["image_name,target"] + [f"ISIC_{i:07d},{'1.0' if i >= 10 else '0.0' if i % 2 else '0'}" for i in range(16)]
    rows += ["ISIC_0000016,2.0", "ISIC_0000017,benign"]
    root = _isic(tmp_path, "\n".join(rows) + "\n")
    code, text, out = _prepare(
        tmp_path,
        capsys,
        f"datasets.0.root={root}",
        *ISIC[:3],
        "datasets.0.label_column=target",
        "datasets.0.majority=[0]",
        "datasets.0.minority=[1]",
    )
    assert code == 0, text
    s = _summary(out)
    assert s["usable"] == {"0": 10, "1": 6}
    assert [r["reason"] for r in s["table"]["skipped"]] == [
        "label '2.0' is in neither majority nor minority",
        "label 'benign' is in neither majority nor minority",
    ]


def _isic2019(tmp_path: Path, extra: list[str]) -> Path:
    """ISIC 2019's ground truth: a column per class, 1.0 in the row's class and 0.0 elsewhere."""
    root = tmp_path / "ISIC_2019_Training_Input"
    classes = ["MEL", "NV", "BCC", "UNK"]
    rows = ["image," + ",".join(classes)]
    for i in range(16):
        hot = "NV" if i < 10 else "MEL"
        rows.append(f"ISIC_{i:07d}," + ",".join("1.0" if c == hot else "0.0" for c in classes))
        write_png(root / f"ISIC_{i:07d}.jpg", i)
    for i in range(16, 16 + len(extra)):
        write_png(root / f"ISIC_{i:07d}.jpg", i)
    rows += [f"ISIC_{16 + i:07d},{values}" for i, values in enumerate(extra)]
    (root / "ISIC_2019_Training_GroundTruth.csv").write_text("\n".join(rows) + "\n")
    return root


ONE_HOT = [
    "datasets.0.source=csv",
    "datasets.0.labels=ISIC_2019_Training_GroundTruth.csv",
    "datasets.0.image_column=image",
    "datasets.0.one_hot=true",
]


def test_isic_2019_one_hot_table_with_every_odd_row_reported(tmp_path, capsys):
    root = _isic2019(
        tmp_path,
        [
            "0.0,0.0,1.0,0.0",  # line 18: BCC, listed nowhere
            "0.0,0.0,0.0,0.0",  # line 19: no class
            "1.0,1.0,0.0,0.0",  # line 20: MEL and NV
            "0.5,0.0,0.0,0.0",
        ],
    )  # line 21: not 0/1
    code, text, out = _prepare(
        tmp_path, capsys, f"datasets.0.root={root}", *ONE_HOT, "datasets.0.majority=[NV]", "datasets.0.minority=[MEL]"
    )
    assert code == 0, text
    s = _summary(out)
    assert s["usable"] == {"NV": 10, "MEL": 6} and s["table"]["one_hot"] is True
    reasons = {r["line"]: r["reason"] for r in s["table"]["skipped"]}
    assert reasons == {
        18: "label 'BCC' is in neither majority nor minority (the row's 1 is in column 'BCC')",
        19: "no class: none of the columns 'NV', 'MEL' holds 1",
        20: "several classes: columns 'NV', 'MEL' each hold 1",
        21: "class column 'MEL' holds '0.5', not 0 or 1",
    }
    assert s["table"]["skipped_by_reason"] == {
        "label in neither list": 1,
        "no class": 1,
        "not 0 or 1": 1,
        "several classes": 1,
    }
    assert {r["source_class"] for r in read_manifest(out / "synthetic-apple" / "0" / "manifest.csv")} == {"NV", "MEL"}


def test_a_one_hot_class_column_missing_is_named(tmp_path, capsys):
    root = _isic2019(tmp_path, [])
    code, text, _ = _prepare(
        tmp_path,
        capsys,
        f"datasets.0.root={root}",
        *ONE_HOT,
        "datasets.0.majority=[NV, SCC]",
        "datasets.0.minority=[MEL]",
    )
    assert code == 2 and len(text.strip().splitlines()) == 1, text
    assert (
        "has no class column(s) 'SCC' (one_hot: majority/minority name columns); columns: 'image', 'MEL', 'NV', "
        "'BCC', 'UNK'" in text
    )


def test_ham10000_ids_find_their_file_in_any_folder(tmp_path, capsys):
    """HAM10000: `image_id` without suffix or folder; the files in part_1/ and part_2/; `dx` labels."""
    root = tmp_path / "HAM10000"
    rows = ["lesion_id,image_id,dx"]
    for i in range(17):
        write_png(root / f"HAM10000_images_part_{1 + i % 2}" / f"ISIC_{i:07d}.jpg", i)
        rows.append(f"HAM_{i:07d},ISIC_{i:07d},{'nv' if i < 10 else 'mel'}")
    write_png(root / "HAM10000_images_part_2" / "ISIC_0000016.png", 99)  # the same id twice: ambiguous
    (root / "HAM10000_metadata.csv").write_text("\n".join(rows) + "\n")
    code, text, out = _prepare(
        tmp_path,
        capsys,
        f"datasets.0.root={root}",
        "datasets.0.source=csv",
        "datasets.0.labels=HAM10000_metadata.csv",
        "datasets.0.image_column=image_id",
        "datasets.0.label_column=dx",
        "datasets.0.majority=[nv]",
        "datasets.0.minority=[mel]",
    )
    assert code == 0, text
    s = _summary(out)
    assert s["usable"] == {"nv": 10, "mel": 6}
    assert [r["reason"] for r in s["table"]["skipped"]] == [
        "ambiguous: 2 files under the root are named ISIC_0000016 or ISIC_0000016.* "
        "(HAM10000_images_part_1/ISIC_0000016.jpg, HAM10000_images_part_2/ISIC_0000016.png)"
    ]


# ---------------------------------------------------------------- reasons survive a refusal


def test_a_short_class_says_why_rows_and_files_were_not_usable(tmp_path, capsys):
    rows = ["image_name,benign_malignant"] + [f"ISIC_{i:07d},benign" for i in range(10)]
    rows += [f"ISIC_{i:07d},malignant" for i in range(10, 13)]  # 3 malignant: the split needs 5
    rows += [
        f"ISIC_{i:07d},{v}"
        for i, v in zip(range(13, 17), ["indeterminate", "unknown", "indeterminate", "indeterminate"])
    ]
    rows += ["ISIC_0000099,malignant", "ISIC_0000017,malignant", "ISIC_0000018,malignant"]
    root = _isic(tmp_path, "\n".join(rows) + "\n")
    (root / "ISIC_0000017.jpg").write_text("a note, not a photo")
    (root / "ISIC_0000018.jpg").write_bytes((root / "ISIC_0000018.jpg").read_bytes()[:60])  # cut short
    code, text, out = _prepare(
        tmp_path,
        capsys,
        f"datasets.0.root={root}",
        *ISIC,
        "datasets.0.majority=[benign]",
        "datasets.0.minority=[malignant]",
    )
    assert code == 2 and len(text.strip().splitlines()) == 1, text
    refused = out / "synthetic-apple" / "refused.json"
    assert "class minority (malignant) has 3 usable images, the split needs 5" in text
    assert (
        "not usable: 4 rows label in neither list (labels seen: 'indeterminate' 3, 'unknown' 1; e.g. line 15: "
        "ISIC_0000013), 1 row missing image (e.g. line 19: ISIC_0000099)" in text
    )
    assert f"; every reason in {refused}" in text
    record = json.loads(refused.read_text())
    kinds = {Path(r["path"]).name: file_kind(r["reason"]) for r in record["rejected"]}
    assert set(kinds) == {"ISIC_0000017.jpg", "ISIC_0000018.jpg"} and kinds["ISIC_0000017.jpg"] == "not an image"
    for name, kind in kinds.items():
        assert f"1 file {kind} (e.g. {name})" in text
    assert [r["line"] for r in record["skipped"]] == [15, 16, 17, 18, 19] and record["error"].startswith(
        "class minority"
    )
    assert record["not_usable"]["labels_seen"] == {"indeterminate": 3, "unknown": 1}
    # once the split can be drawn, the record of the refusal goes
    code, text, out = _prepare(
        tmp_path,
        capsys,
        f"datasets.0.root={root}",
        *ISIC,
        "datasets.0.majority=[benign]",
        "datasets.0.minority=[malignant]",
        "split.test=[2, 1]",
        "split.val=[2, 0]",
    )
    assert code == 0, text
    assert not refused.exists()


def test_a_utf8_comma_table_gives_the_cells_pandas_gave_before(tmp_path):
    """The same cells as the former `pd.read_csv(..., dtype=str, encoding="utf-8-sig", sep=",")`:
    quotes, leading zeros, spaces after commas, empty cells, NA-looking text, a BOM."""
    text = 'image, label ,note\n007,0,"a, b"\n"x y.jpg", 1,NA\n0010,1.0,\nnull,n/a,"say ""hi"""\n'
    for bom in (b"", b"\xef\xbb\xbf"):
        path = tmp_path / "t.csv"
        path.write_bytes(bom + text.encode())
        df, how = read(path, "t", ["image", "label"])
        before = pd.read_csv(
            path, dtype=str, keep_default_na=False, encoding="utf-8-sig", sep=",", skipinitialspace=True
        )
        before.columns = [c.strip() for c in before.columns]
        pd.testing.assert_frame_equal(df, before)
        assert (how["separator"], how["encoding"]) == (",", "utf-8-sig" if bom else "utf-8")

"""Outputs safe to open in a spreadsheet (OWASP "CSV injection", CWE-1236): no cell the tool writes
from a user's string (a file or folder name, a label value) starts with =, +, -, @, tab or CR
unless it is a plain number; programs recover the exact path through `images.unescape_name`."""

from __future__ import annotations

import csv
import os
import re
from pathlib import Path

import pytest

from conftest import write_png
from finalbn.config.schema import DatasetConfig, SplitConfig
from finalbn.data.splits import prepare_dataset, read_manifest
from finalbn.data.tensors import load_splits
from finalbn_field.images import escape_name, formula_safe, unescape_name

NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def formula_cells(path: Path) -> list[str]:
    """The cells of a CSV file that a spreadsheet would run as a formula."""
    with path.open(newline="", encoding="utf-8") as fh:
        return [
            c
            for row in csv.reader(fh)
            for c in row
            if c[:1] in ("=", "+", "-", "@", "\t", "\r") and not NUMBER.fullmatch(c)
        ]


@pytest.mark.parametrize(
    "text",
    [
        "=cmd|' /C calc'!A0.png",
        "+SUM(A1)",
        "-2+3",
        "@SUM(1)",
        "\tx.png",
        "\rx.png",
        "=",
        "-",
        "\\=already",
        "a\\b=c",
        "dir/=x.png",
    ],
)
def test_escape_name_makes_formulas_text_and_is_reversible(text):
    out = escape_name(text)
    assert not (out[:1] in "=+-@\t\r" and not NUMBER.fullmatch(out)), out
    assert unescape_name(out) == text


@pytest.mark.parametrize("number", ["-1", "+1", "-0.5", "1e-3", "-2E+4", ".5"])
def test_plain_numbers_stay_as_written(number):
    assert escape_name(number) == number and formula_safe(number) == number


def test_a_name_that_is_not_utf8_and_starts_like_a_formula_round_trips():
    name = os.fsdecode(b"=\xff.png")
    assert escape_name(name) == "\\=\\xff.png" and unescape_name(escape_name(name)) == name


def test_manifests_of_hostile_names_are_spreadsheet_safe_and_still_decode(tmp_path, monkeypatch):
    """A relative root starting with '-', class folders named like formulas, files named like
    formulas: the manifest's cells are text in a spreadsheet, and the images still load."""
    monkeypatch.chdir(tmp_path)
    root = Path("-scans")  # relative: the manifest's paths start with the root
    for i in range(10):
        write_png(root / '=HYPERLINK("http://x")' / f"+{i}.png", i)
    for i in range(6):
        write_png(root / "@evil" / f"=1+{i}.png", 100 + i)
    ds = DatasetConfig(
        name="hostile",
        source="folders",
        root=str(root),
        image_size=16,
        majority=('=HYPERLINK("http://x")',),
        minority=("@evil",),
    )
    split = SplitConfig(seed=0, train=(4, 2), val=(2, 1), test=(2, 2))
    prepare_dataset(ds, split, tmp_path / "splits", progress=False, replicates=1)
    manifest = tmp_path / "splits" / "hostile" / "0" / "manifest.csv"
    assert formula_cells(manifest) == []
    rows = read_manifest(manifest)
    assert rows and all(r["path"].startswith("\\-scans/") for r in rows)
    assert {r["source_class"] for r in rows} == {'\\=HYPERLINK("http://x")', "\\@evil"}
    assert all(Path(unescape_name(r["path"])).is_file() for r in rows)  # the exact path, recovered
    tensors = load_splits(manifest, 16)
    assert sum(len(t.labels) for t in tensors.values()) == len(rows)

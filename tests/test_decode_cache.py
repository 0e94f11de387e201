"""Decode once: split tensors come from an on-disk cache keyed by manifest hash and size."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from finalbn.data import tensors
from finalbn.data.tensors import decoded_cache_path, load_splits
from finalbn.train.cell import run_cell

MANIFEST = Path("data/splits/synthetic-apple/0/manifest.csv")


def _forbid_decoding(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("an image file was opened")

    monkeypatch.setattr("finalbn_field.images.load_rgb", refuse)
    monkeypatch.setattr("finalbn.data.tensors.load_rgb", refuse)
    monkeypatch.setattr("PIL.Image.open", refuse)


def test_no_image_is_opened_once_the_cache_exists(prepared, monkeypatch):
    load, _ = prepared
    first = load_splits(MANIFEST, 32)
    assert decoded_cache_path(MANIFEST, 32).is_file()
    tensors._load_cached.cache_clear()  # a new process: nothing in memory, the file on disk
    _forbid_decoding(monkeypatch)
    again = load_splits(MANIFEST, 32)
    for split in ("train", "val", "test"):
        assert torch.equal(first[split].images, again[split].images)
        assert torch.equal(first[split].labels, again[split].labels)
        assert first[split].paths == again[split].paths and first[split].sources == again[split].sources
    run_cell(load(["ablation.da=true"]), "synthetic-apple", Path("data/splits"))  # a whole cell too


def test_cache_is_keyed_by_manifest_content_and_size(prepared):
    a = decoded_cache_path(MANIFEST, 32)
    assert decoded_cache_path(MANIFEST, 48) != a
    assert decoded_cache_path(Path("data/splits/synthetic-apple/1/manifest.csv"), 32) != a


def test_a_corrupt_cache_file_is_rebuilt(prepared, caplog):
    good = load_splits(MANIFEST, 32)
    path = decoded_cache_path(MANIFEST, 32)
    path.write_bytes(b"not a tensor file")
    tensors._load_cached.cache_clear()
    again = load_splits(MANIFEST, 32)
    assert torch.equal(good["train"].images, again["train"].images)
    assert "could not be read" in caplog.text
    tensors._load_cached.cache_clear()
    assert torch.equal(load_splits(MANIFEST, 32)["test"].images, good["test"].images)  # rewritten whole


def test_an_unwritable_cache_costs_speed_not_results(prepared, monkeypatch, tmp_path):
    blocker = tmp_path / "file-not-folder"
    blocker.write_text("x")
    monkeypatch.setenv("FINALBN_CACHE", str(blocker))
    tensors._load_cached.cache_clear()
    assert len(load_splits(MANIFEST, 32)["train"].labels) == 6


def test_missing_manifest_is_one_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="run `finalbn prepare`"):
        load_splits(tmp_path / "nope.csv", 32)

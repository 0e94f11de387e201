"""finalbn-field: the card pins its model (sha256), and a full disk leaves a CSV of whole rows.

Tiny ONNX models built with onnx.helper (no torch, no export): the real export's digest and its
MLflow copy are checked in test_export.test_export_writes_a_checked_model_and_registers_it.
"""

from __future__ import annotations

import csv
import errno
import io
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import mlflow.onnx
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from conftest import ROOT
from test_images import noise, save

FIELD = ROOT / "deploy" / "field"
sys.path.insert(0, str(FIELD))

from finalbn_field import cli as field_cli  # noqa: E402
from finalbn_field import predict as field_predict  # noqa: E402
from finalbn_field.predict import file_sha256  # noqa: E402

SIZE = 8


def _onnx(path: Path, seed: int) -> Path:
    """image (batch, 3, 8, 8) -> logits = mean over pixels @ W + b, probs = softmax (opset 17)."""
    rng = np.random.default_rng(seed)
    w = helper.make_tensor("w", TensorProto.FLOAT, [3, 2], rng.normal(size=6).astype(np.float32).tolist())
    b = helper.make_tensor("b", TensorProto.FLOAT, [2], rng.normal(size=2).astype(np.float32).tolist())
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["image"], ["m"], axes=[2, 3], keepdims=0),
            helper.make_node("MatMul", ["m", "w"], ["mw"]),
            helper.make_node("Add", ["mw", "b"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probs"], axis=1),
        ],
        "tiny",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, SIZE, SIZE])],
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 2]),
            helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", 2]),
        ],
        initializer=[w, b],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    onnx.save_model(model, str(path))
    return path


def _export(folder: Path, seed: int = 0, pinned: bool = True) -> Path:
    """model.onnx and model.json (the card's fields the field reads), as `finalbn export` writes them."""
    folder.mkdir(parents=True, exist_ok=True)
    model = _onnx(folder / "model.onnx", seed)
    card = {
        "format": "finalbn-field/1",
        "classes": ["healthy", "diseased"],
        "positive_class": 1,
        "input": {"name": "image", "dtype": "float32", "shape": ["batch", 3, SIZE, SIZE]},
        "outputs": ["logits", "probs"],
        "image_size": SIZE,
        "preprocessing": {"size": SIZE, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]},
        "onnx": {"opset": 17, "ir_version": 8},
    }
    if pinned:
        card["onnx"].update(sha256=file_sha256(model), size=model.stat().st_size)
    (folder / "model.json").write_text(json.dumps(card))
    return folder


def _run(capsys, *args) -> tuple[int, list[str]]:
    code = field_cli.main(["predict", *args])
    return code, capsys.readouterr().err.strip().splitlines()


def test_a_model_from_another_export_is_refused_before_any_image(tmp_path, capsys):
    ours = _export(tmp_path / "ours", seed=0)
    other = _onnx(tmp_path / "other.onnx", seed=1)
    want, got = file_sha256(ours / "model.onnx"), file_sha256(other)
    assert want != got
    shutil.copy(other, ours / "model.onnx")  # the swap: another export's model beside this card
    missing = tmp_path / "never-read.png"  # an image that does not exist: the refusal must come first
    code, err = _run(capsys, "--model", str(ours / "model.onnx"), str(missing), "--out", str(tmp_path / "p.csv"))
    assert code == 2 and len(err) == 1, err
    assert f"(sha256 {got}) is not the model" in err[0] and f"describes (sha256 {want})" in err[0]
    assert "--allow-model-mismatch" in err[0] and "never-read" not in err[0]
    assert not (tmp_path / "p.csv").exists()  # nothing written either

    # a deliberate swap: it runs, and the summary line says so
    img = save(noise(), tmp_path / "leaf.png")
    code, err = _run(capsys, "--model", str(ours), str(img), "--out", str(tmp_path / "p.csv"), "--allow-model-mismatch")
    assert code == 0 and len(err) == 1
    assert "1 images, 1 predicted" in err[0] and "MODEL MISMATCH (--allow-model-mismatch)" in err[0]
    assert got[:16] in err[0] and want[:16] in err[0]


def test_the_pinned_model_runs_and_an_int8_file_is_checked_against_its_own_pin(tmp_path, capsys):
    ours = _export(tmp_path / "ours")
    img = save(noise(), tmp_path / "leaf.png")
    code, err = _run(capsys, "--model", str(ours / "model.onnx"), str(img), "--out", str(tmp_path / "p.csv"))
    assert code == 0 and len(err) == 1 and "MISMATCH" not in err[0] and "NOT VERIFIED" not in err[0]
    int8 = _onnx(ours / "model.int8.onnx", seed=2)  # stands in for a kept INT8 file
    card = json.loads((ours / "model.json").read_text())
    card["int8"] = {"kept": True, "sha256": file_sha256(int8), "size": int8.stat().st_size}
    (ours / "model.json").write_text(json.dumps(card))
    code, err = _run(capsys, "--model", str(int8), str(img), "--out", str(tmp_path / "p.csv"))
    assert code == 0 and "MISMATCH" not in err[0]
    _onnx(int8, seed=3)  # an INT8 file of another export: named against the card's int8 pin
    code, err = _run(capsys, "--model", str(int8), str(img))
    assert code == 2 and len(err) == 1 and f"describes (sha256 {card['int8']['sha256']})" in err[0]


def test_a_card_without_a_digest_is_refused_unless_allowed(tmp_path, capsys):
    old = _export(tmp_path / "old", pinned=False)  # an export older than the pin
    img = save(noise(), tmp_path / "leaf.png")
    code, err = _run(capsys, "--model", str(old), str(tmp_path / "never-read.png"))
    assert code == 2 and len(err) == 1
    assert "records no sha256 of its model" in err[0] and "--allow-model-mismatch" in err[0]
    code, err = _run(capsys, "--model", str(old), str(img), "--out", str(tmp_path / "p.csv"), "--allow-model-mismatch")
    assert code == 0 and len(err) == 1 and "model NOT VERIFIED" in err[0]


def test_the_mlflow_model_folder_passes_the_check(tmp_path, capsys):
    """`mlflow.onnx` stores onnx.save_model of the loaded proto, with the card in extra_files/: the
    served model.onnx is byte-identical to the exported one, so the card's digest holds there."""
    ours = _export(tmp_path / "ours")
    served = tmp_path / "served"
    mlflow.onnx.save_model(
        onnx.load(str(ours / "model.onnx")),
        str(served),
        save_as_external_data=False,
        extra_files=[str(ours / "model.json")],
    )
    assert (served / "extra_files" / "model.json").is_file() and not (served / "model.json").exists()
    assert file_sha256(served / "model.onnx") == json.loads((ours / "model.json").read_text())["onnx"]["sha256"]
    img = save(noise(), tmp_path / "leaf.png")
    capsys.readouterr()  # MLflow's own progress bars
    code, err = _run(capsys, "--model", str(served), str(img), "--out", str(tmp_path / "p.csv"))
    assert code == 0 and len(err) == 1 and "MISMATCH" not in err[0], err


# --- a full disk ---------------------------------------------------------------------------------


class Full:
    """A text file that takes `room` bytes: the write past it lands partly (as a disk does), then
    OSError(`code`) — on that write, or (`on="flush"`) on the flush after it."""

    def __init__(self, fh, room: int, code: int = errno.ENOSPC, on: str = "write") -> None:
        self.fh, self.room, self.code, self.on, self.full = fh, room, code, on, False

    def write(self, text: str) -> int:
        data = text.encode("utf-8")
        if len(data) <= self.room:
            self.room -= len(data)
            return self.fh.write(text)
        self.fh.write(data[: self.room].decode("utf-8", "ignore"))  # the torn part reaches the disk
        self.room, self.full = 0, True
        if self.on == "write":
            raise OSError(self.code, os.strerror(self.code))
        return len(text)

    def flush(self) -> None:
        self.fh.flush()
        if self.full and self.on == "flush":
            raise OSError(self.code, os.strerror(self.code))

    def tell(self) -> int:
        return self.fh.tell()

    def close(self) -> None:
        self.fh.close()

    @property
    def closed(self) -> bool:
        return self.fh.closed


def _fake_model():
    """What _predict_rows needs of a FieldModel: the card, the decoder, probabilities."""
    card = {"preprocessing": {"size": SIZE, "mean": [0.5] * 3, "std": [0.25] * 3}}
    return SimpleNamespace(
        card=card,
        load_image=lambda path: field_predict.load_image(path, card),
        probabilities=lambda b: np.tile(np.float32([0.25, 0.75]), (len(b), 1)),
    )


def _images(folder: Path, n: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    return [save(noise(seed=i), folder / f"{i:02d}.png") for i in range(n)]


def _whole(path: Path) -> list[dict]:
    text = path.read_bytes().decode("utf-8")
    assert text.endswith("\r\n"), repr(text[-40:])  # ends in a whole row
    return list(csv.DictReader(io.StringIO(text, newline="")))


@pytest.mark.parametrize(
    "code,on", [(errno.ENOSPC, "write"), (errno.ENOSPC, "flush"), (errno.EDQUOT, "write"), (errno.EFBIG, "write")]
)
def test_a_full_disk_cuts_the_csv_back_to_its_last_whole_row(tmp_path, code, on):
    paths = _images(tmp_path / "img", 7)
    out = tmp_path / "preds.csv"
    header = len(",".join(field_cli.COLUMNS)) + 2
    row = len(f"{paths[0]},0.250000,0.750000,1,diseased,ok,") + 2
    sink = field_cli.RowWriter(
        Full(open(out, "w", newline="", encoding="utf-8"), header + 3 * row + row // 2, code, on), str(out)
    )
    with pytest.raises(field_cli.OutputFull) as exc:
        field_cli._predict_rows(_fake_model(), paths, None, ["healthy", "diseased"], 2, sink)
    rows = _whole(out)
    # batches of 2: the header and rows 1-2 fit; rows 3-4 land partly (row 3 whole, row 4 torn): cut back
    assert [r["path"] for r in rows] == [str(p) for p in paths[: sink.rows]] and sink.rows == 2
    assert {r["status"] for r in rows} == {"ok"}
    msg = str(exc.value)
    assert msg.startswith(f"{field_cli.NO_ROOM[code][0]} writing {out}: kept the header and 2 whole rows (images 1-2)")
    assert "\n" not in msg


def test_a_disk_full_before_the_header_keeps_an_empty_file(tmp_path):
    out = tmp_path / "preds.csv"
    sink = field_cli.RowWriter(Full(open(out, "w", newline="", encoding="utf-8"), 5), str(out))
    with pytest.raises(field_cli.OutputFull, match=r"kept nothing \(not even the header\); free space"):
        field_cli._predict_rows(_fake_model(), _images(tmp_path, 1), None, ["healthy", "diseased"], 2, sink)
    assert out.read_bytes() == b""


def test_a_full_standard_output_is_one_line_and_exit_1(tmp_path, monkeypatch, capsys):
    paths = _images(tmp_path / "img", 3)
    model = _export(tmp_path / "m")
    header = len(",".join(field_cli.COLUMNS)) + 2
    monkeypatch.setattr(sys, "stdout", Full(io.StringIO(), header + 10))
    code = field_cli.main(["predict", "--model", str(model), *map(str, paths), "--batch-size", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1, err
    assert err[0] == (
        "finalbn-field predict: error: no space left on device writing standard output after the "
        "header only: whatever reads it may hold a torn last row; free space and run again"
    )


def test_a_file_size_limit_end_to_end_exits_1_with_whole_rows(tmp_path):
    """`finalbn-field predict` under RLIMIT_FSIZE (SIGXFSZ ignored: the kernel answers EFBIG, and
    writes the row that crosses the limit partly): one line, exit 1, the CSV cut back."""
    model = _export(tmp_path / "m")
    paths = _images(tmp_path / "img", 6)
    env = {**os.environ, "PYTHONPATH": str(FIELD), "PYTHONDONTWRITEBYTECODE": "1"}
    cmd = [
        sys.executable,
        "-m",
        "finalbn_field",
        "predict",
        "--model",
        str(model),
        *map(str, paths),
        "--batch-size",
        "1",
    ]
    whole = subprocess.run(
        [*cmd, "--out", str(tmp_path / "all.csv")], env=env, capture_output=True, text=True, timeout=120
    )
    assert whole.returncode == 0, whole.stderr
    full = (tmp_path / "all.csv").read_bytes()
    lines = full.splitlines(keepends=True)
    limit = sum(map(len, lines[:4])) + len(lines[4]) // 2  # the header, 3 rows, half the 4th

    def limited() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    out = tmp_path / "preds.csv"
    res = subprocess.run(
        [*cmd, "--out", str(out)], env=env, capture_output=True, text=True, timeout=120, preexec_fn=limited
    )
    err = res.stderr.strip().splitlines()
    assert res.returncode == 1 and len(err) == 1, res.stderr
    assert err[0] == (
        f"finalbn-field predict: error: file too large for this file system/limit writing {out}: kept "
        "the header and 3 whole rows (images 1-3); write --out to another file system (or raise the "
        "file-size limit) and run again"
    )
    assert out.read_bytes() == b"".join(lines[:4])

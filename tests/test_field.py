"""finalbn-field (deploy/field): torch-free field inference on an exported model."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
import tifffile
from PIL import Image

from conftest import PARAMS, ROOT, prepare_tiny
from finalbn.config import load_config
from finalbn.data import tensors
from finalbn.data.tensors import decode_images
from finalbn.models import get_spec
from finalbn.stages import export, grid
from finalbn.stages.export import card as export_card
from finalbn.stages.export import preprocess as train_preprocess
from finalbn.stages.export import prior_threshold
from finalbn.stats.metrics import classification_report
from test_images import GRADIENT12, noise, png16, png_header_only, save, truncate_half
from test_spreadsheet_safe import formula_cells

FIELD = ROOT / "deploy" / "field"
sys.path.insert(0, str(FIELD))  # the package as its own folder holds it (installed: `pip install deploy/field`)

from finalbn_field import cli as field_cli  # noqa: E402
from finalbn_field import decision, images  # noqa: E402
from finalbn_field import predict as field  # noqa: E402
from finalbn_field.images import BadImage, decode, unescape_name  # noqa: E402
from finalbn_field.images import load_rgb as field_load_rgb  # noqa: E402

SPLITS = Path("data/splits")


def test_the_project_decodes_and_decides_with_the_field_packages_modules():
    """One source: the field package (which cannot import the project, torch-free) holds the image
    decoder, its bit-depth code and the decision rules; the project imports them, no copy."""
    assert not [n for n in ("images.py", "depth.py", "decision.py") if (ROOT / "src" / "finalbn" / n).exists()]
    assert tensors.load_rgb is images.load_rgb and export_card.prior_threshold is decision.prior_threshold
    assert Path(images.__file__).resolve().parent == (FIELD / "finalbn_field").resolve()


def _odd_images(folder: Path) -> list[Path]:
    """Images in every mode training converts: RGB, grayscale, 16-bit, RGBA, palette, CMYK, EXIF-rotated."""
    folder.mkdir(parents=True, exist_ok=True)
    rgb = noise(40, 30, seed=1)
    out = [
        save(rgb, folder / "rgb.jpg", quality=90),
        save(noise(23, 50, seed=2).convert("L"), folder / "gray.png"),
        save(Image.fromarray((np.arange(48 * 40).reshape(40, 48) * 30 % 65536).astype(np.uint16)), folder / "deep.png"),
        save(noise(33, 33, seed=3).convert("RGBA"), folder / "rgba.png"),
        save(noise(64, 20, seed=4).convert("P"), folder / "palette.png"),
        save(noise(35, 45, seed=5).convert("CMYK"), folder / "cmyk.jpg"),
    ]
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° on display
    out.append(save(noise(50, 20, seed=6), folder / "rotated.jpg", exif=exif.tobytes()))
    return out


def test_preprocessing_is_trainings_eval_transform(tmp_path):
    """The field's input for an image equals training's: decode_images, then the torchvision
    evaluation transform (tensors.eval_transform)."""
    spec = get_spec("efficientnet_lite0")
    card = {"preprocessing": {**spec.preprocessing(), "size": 32}}
    paths = _odd_images(tmp_path)
    train = train_preprocess(decode_images([str(p) for p in paths], 32), spec.mean, spec.std)
    mine = np.stack([field.preprocess(field_load_rgb(p), card) for p in paths])
    assert mine.shape == train.shape == (len(paths), 3, 32, 32) and mine.dtype == np.float32
    assert np.abs(mine - train).max() <= 1e-5
    assert isinstance(train, np.ndarray)  # the export's input is numpy, as the field's


def test_the_decision_rules_are_the_projects_own_file():
    """The field applies model.json's curve with the very code the export computed it with."""
    for p in (0.001, 0.02, 0.5):
        assert field.prior_threshold([1000, 10], p) == prior_threshold((1000, 10), p)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny grid (31, 63) and its best final-BN run exported to <root>/models, once for the
    module (the tests only read it): (cfg, models folder, export's result, root holding the
    splits and the MLflow store)."""
    root = tmp_path_factory.mktemp("exported")
    before = {k: v for k, v in os.environ.items() if k.startswith("MLFLOW_")}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FINALBN_CACHE", str(root / "cache"))
        overrides = prepare_tiny(root, mp)
        cfg = load_config(
            [PARAMS],
            overrides
            + [
                "grid.configs=[31, 63]",
                "grid.replicates=1",
                "grid.headline.configs=[]",
                "grid.workers=1",
                "grid.archs=[resnet18]",
                "selection.replicates=1",
            ],
        )  # a small graph to export (test_export checks each backbone)
        grid.run_shard(cfg, SPLITS, log=lambda m: None)
        out = export.export(cfg, SPLITS, root / "models", log=lambda m: None, register=False)
    for k in [k for k in os.environ if k.startswith("MLFLOW_")]:  # mlflow.set_experiment exports its id
        del os.environ[k]
    os.environ.update(before)
    return cfg, root / "models", out, root


def _rows(path: Path) -> list[dict]:
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_field_predict_equals_the_torch_evaluation_and_keeps_going_past_bad_files(exported, tmp_path, capsys):
    cfg, models, out, root = exported
    card = out["card"]
    manifest = _rows(root / SPLITS / cfg.datasets[0].name / str(card["replicate"]) / "manifest.csv")
    test = [r for r in manifest if r["split"] == "test"]
    preds = tmp_path / "preds.csv"
    code = field_cli.main(
        ["predict", "--model", str(models / "model.onnx"), *[r["path"] for r in test], "--out", str(preds)]
    )
    assert code == 0
    rows = _rows(preds)
    assert [r["path"] for r in rows] == [r["path"] for r in test] and {r["status"] for r in rows} == {"ok"}
    # the same labels as the torch evaluation of the same run, and so the same F1
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    local = client.download_artifacts(card["model_run_id"], "predictions/test_predictions.csv", str(tmp_path))
    torch_rows = {r["path"]: r for r in _rows(Path(local))}
    for r in rows:
        t = torch_rows[r["path"]]
        assert int(r["label"]) == int(float(t["p1_last"]) > 0.5)
        assert abs(float(r["p_diseased"]) - float(t["p1_last"])) <= 1e-4
    labels = np.array([int(r["label"]) for r in test])
    p1 = np.array([float(r["p_diseased"]) for r in rows])
    f1 = classification_report(labels, np.stack([1 - p1, p1], 1))["f1_1"]
    assert f1 == pytest.approx(client.get_run(card["model_run_id"]).data.metrics["test/f1_1"], abs=1e-9)
    err = capsys.readouterr().err
    assert "finalbn-field: 4 images, 4 predicted" in err and "argmax (on validation it flagged" in err

    # a folder mixing good and broken files: one row each, the good ones predicted, exit 1
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for r in test[:2]:
        shutil.copy(r["path"], mixed / Path(r["path"]).name)
    _odd_images(mixed / "odd")
    truncate_half(save(noise(64, 64), mixed / "truncated.png"))
    (mixed / "empty.jpg").write_bytes(b"")
    (mixed / "notes.txt").write_text("not an image")
    (mixed / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0garbage" * 10)
    png_header_only(mixed / "bomb.png", 20000, 20000)
    code = field_cli.main(
        [
            "predict",
            "--model",
            str(models / "model.onnx"),
            "--images",
            str(mixed),
            "--out",
            str(tmp_path / "mixed.csv"),
            "--prevalence",
            "0.05",
        ]
    )
    assert code == 1
    rows = {Path(r["path"]).name: r for r in _rows(tmp_path / "mixed.csv")}
    assert len(rows) == 2 + 7 + 5
    bad = {n: r["error"] for n, r in rows.items() if r["status"] == "error"}
    assert set(bad) == {"truncated.png", "empty.jpg", "notes.txt", "corrupt.jpg", "bomb.png"}
    assert "empty file" in bad["empty.jpg"] and "decompression-bomb" in bad["bomb.png"]
    assert "truncated" in bad["truncated.png"] and bad["notes.txt"].startswith("not an image (detected: ")
    assert all(r["label"] in ("0", "1") and r["p_diseased"] for n, r in rows.items() if n not in bad)
    err = capsys.readouterr().err
    assert "14 images, 9 predicted" in err and "5 failed" in err and "for a field prevalence of 0.05" in err
    assert "on validation it flagged" in err and "of healthy images (<= " in err


def test_the_model_and_the_output_are_checked_before_any_image(exported, tmp_path, capsys):
    _, models, _, _ = exported
    img = save(noise(), tmp_path / "a.png")

    def run(*args) -> tuple[int, list[str]]:
        code = field_cli.main(["predict", *args])
        return code, capsys.readouterr().err.strip().splitlines()

    lonely = tmp_path / "lonely"
    lonely.mkdir()
    shutil.copy(models / "model.onnx", lonely / "model.onnx")
    code, err = run("--model", str(lonely / "model.onnx"), str(img))
    assert code == 2 and len(err) == 1 and "no model.json beside" in err[0]

    wrong = tmp_path / "wrong"
    shutil.copytree(models, wrong)
    card = json.loads((wrong / "model.json").read_text())
    card["input"]["shape"] = ["batch", 3, 64, 64]
    (wrong / "model.json").write_text(json.dumps(card))
    code, err = run("--model", str(wrong / "model.onnx"), str(img))
    assert code == 2 and len(err) == 1 and "do not match" in err[0]

    (wrong / "model.onnx").write_bytes(b"not onnx")
    code, err = run("--model", str(wrong / "model.onnx"), str(img))
    assert code == 2 and len(err) == 1 and "cannot be loaded by onnxruntime" in err[0]

    code, err = run("--model", str(models / "model.onnx"), str(img), "--out", str(tmp_path / "nowhere" / "p.csv"))
    assert code == 2 and len(err) == 1 and "does not exist" in err[0]
    code, err = run("--model", str(models / "model.onnx"), str(img), "--device", "cuda")
    assert code == 2 and "CUDAExecutionProvider" in err[0]  # never silently on CPU
    code, err = run("--model", str(models / "model.onnx"), str(img), "--threshold", "1.5")
    assert code == 2 and "--threshold must lie in (0, 1)" in err[0]
    code, err = run("--model", str(models / "model.onnx"), str(img), "--miss-cost", "10")
    assert code == 2 and len(err) == 1 and "--miss-cost needs --prevalence" in err[0]
    # a card exported before the validation curve: --prevalence says what to do, one line
    old = tmp_path / "old"
    shutil.copytree(models, old)
    card = json.loads((old / "model.json").read_text())
    del card["decision"]["operating_curve"]
    (old / "model.json").write_text(json.dumps(card))
    code, err = run("--model", str(old / "model.onnx"), str(img), "--prevalence", "0.02")
    assert code == 2 and len(err) == 1 and "no validation operating curve" in err[0]


@pytest.mark.slow
def test_installs_and_runs_in_a_clean_venv_without_torch(exported, tmp_path):
    """pip install deploy/field[cpu] into a fresh venv: torch is not there, predict works."""
    _, models, _, _ = exported
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    pip = subprocess.run(
        [str(py), "-m", "pip", "install", "--quiet", f"{FIELD}[cpu]"],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
    )
    assert pip.returncode == 0, pip.stderr[-3000:]
    no_torch = subprocess.run([str(py), "-c", "import torch"], capture_output=True, text=True)
    assert no_torch.returncode != 0 and "No module named 'torch'" in no_torch.stderr
    img = save(noise(40, 40), tmp_path / "leaf.png")
    out = subprocess.run(
        [str(venv / "bin" / "finalbn-field"), "predict", "--model", str(models / "model.onnx"), str(img)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    rows = list(csv.DictReader(out.stdout.splitlines()))
    assert len(rows) == 1 and rows[0]["status"] == "ok" and rows[0]["label"] in ("0", "1")


def test_system_files_are_skipped_and_counted(exported, tmp_path, capsys):
    _, models, _, _ = exported
    photos = tmp_path / "card"
    for p in (photos / "a.png", photos / "day 2" / "b.png"):
        p.parent.mkdir(parents=True, exist_ok=True)
        save(noise(), p)
    for junk in (
        ".thumbnails/a.png",
        "@eaDir/a.png/SYNOFILE_THUMB_M.jpg",
        "__MACOSX/day 2/._b.png",
        "Thumbs.db",
        "day 2/desktop.ini",
        ".DS_Store",
        "._a.png",
    ):
        (photos / junk).parent.mkdir(parents=True, exist_ok=True)
        (photos / junk).write_bytes(b"\x00junk")
    out = tmp_path / "p.csv"
    assert (
        field_cli.main(["predict", "--model", str(models / "model.onnx"), "--images", str(photos), "--out", str(out)])
        == 0
    )
    assert sorted(Path(r["path"]).name for r in _rows(out)) == ["a.png", "b.png"]
    err = capsys.readouterr().err
    assert "2 images, 2 predicted" in err and "7 system files skipped" in err


def test_phone_formats_and_names_that_are_not_utf8_are_predicted(exported, tmp_path, capsys):
    """.jfif/.jpe (browsers), AVIF, HEIC (iPhones) are decoded by content; a name that is not valid
    UTF-8 (a Windows archive unpacked on Linux) is predicted and written escaped, reversibly."""
    _, models, _, _ = exported
    photos = tmp_path / "phone"
    photos.mkdir()
    for name, fmt in (("a.jfif", "JPEG"), ("b.jpe", "JPEG"), ("c.avif", "AVIF"), ("d.HEIC", "HEIF")):
        save(noise(seed=len(name)), photos / name, fmt)
    with open(os.fsencode(photos) + b"/caf\xe9 (1).png", "wb") as fh:
        noise(seed=9).save(fh, "PNG")
    out = tmp_path / "p.csv"
    assert (
        field_cli.main(["predict", "--model", str(models / "model.onnx"), "--images", str(photos), "--out", str(out)])
        == 0
    )
    rows = _rows(out)  # read as UTF-8: the file is valid UTF-8
    assert [Path(r["path"]).name for r in rows] == ["a.jfif", "b.jpe", "c.avif", "caf\\xe9 (1).png", "d.HEIC"]
    assert {r["status"] for r in rows} == {"ok"}
    assert all(Path(unescape_name(r["path"])).is_file() for r in rows)
    assert "5 images, 5 predicted" in capsys.readouterr().err


def test_a_crash_keeps_every_finished_row(exported, tmp_path, monkeypatch):
    _, models, _, _ = exported
    paths = [save(noise(seed=i), tmp_path / f"{i:02d}.png") for i in range(7)]
    calls = []
    real = field.FieldModel.probabilities

    def dies_on_the_third_batch(self, batch):
        calls.append(len(batch))
        if len(calls) == 3:
            raise MemoryError("out of memory")
        return real(self, batch)

    monkeypatch.setattr(field.FieldModel, "probabilities", dies_on_the_third_batch)
    out = tmp_path / "p.csv"
    with pytest.raises(MemoryError):
        field_cli.main(
            ["predict", "--model", str(models / "model.onnx"), *map(str, paths), "--batch-size", "2", "--out", str(out)]
        )
    rows = _rows(out)
    assert [r["path"] for r in rows] == [str(p) for p in paths[:4]] and {r["status"] for r in rows} == {"ok"}


def test_the_csv_is_safe_in_a_spreadsheet_and_gives_the_exact_paths_back(exported, tmp_path, monkeypatch, capsys):
    """Files named like formulas, given as relative paths (the CSV's cells start with the name):
    each path cell is text in a spreadsheet (OWASP CSV injection), and unescape_name gives it back."""
    _, models, _, _ = exported
    monkeypatch.chdir(tmp_path)
    names = ["=1+2.png", "+cmd.png", "-x.png", "@SUM(1).png", "\tt.png", "ok.png"]
    for i, name in enumerate(names):
        save(noise(seed=i), tmp_path / name)
    out = tmp_path / "p.csv"
    # `--`: after it, "-x.png" is a file, not an option (as in any command line)
    assert field_cli.main(["predict", "--model", str(models / "model.onnx"), "--out", str(out), "--", *names]) == 0
    assert formula_cells(out) == []
    assert [unescape_name(r["path"]) for r in _rows(out)] == names
    assert "6 images, 6 predicted" in capsys.readouterr().err


def test_the_field_decodes_with_the_cards_intensity_as_training_does(tmp_path):
    """A 12-bit scan: the field's pixels equal training's decode under the card's intensity (none: auto)."""
    spec = get_spec("efficientnet_lite0")
    scans = [
        save(Image.fromarray(GRADIENT12 // 2), tmp_path / "scan.png"),
        png16(
            tmp_path / "rgb.png",
            np.stack([GRADIENT12, GRADIENT12 // 3, GRADIENT12[::-1]], axis=-1),
            sbit=bytes([12, 12, 12]),
        ),
    ]
    seen = []
    for intensity in (None, [0, 1023], "container"):
        card = {
            "preprocessing": {
                **spec.preprocessing(),
                "size": 32,
                **({} if intensity is None else {"intensity": intensity}),
            }
        }
        train = decode_images(
            [str(p) for p in scans],
            32,
            intensity=tuple(intensity) if isinstance(intensity, list) else intensity or "auto",
        ).numpy()
        mine = np.stack(
            [np.asarray(field.resize_square(field.load_image(p, card), 32)).transpose(2, 0, 1) for p in scans]
        )
        assert np.array_equal(mine, train)
        seen.append(mine)
    assert not np.array_equal(seen[0], seen[1]) and not np.array_equal(seen[0], seen[2])  # the card's value counts


def test_the_field_drafts_a_large_jpeg_as_training_does(tmp_path):
    p = save(noise(640, 480, seed=9), tmp_path / "photo.jpg", quality=90)
    assert decode(p, size=32)[1].scale == 8  # 480 // 32 = 15: decoded at 1/8, 80x60
    card = {"preprocessing": {"size": 32, "mean": [0.5] * 3, "std": [0.25] * 3}}
    mine = np.asarray(field.resize_square(field.load_image(p, card), 32)).transpose(2, 0, 1)
    assert np.array_equal(mine, decode_images([str(p)], 32)[0].numpy())


def test_max_pixels_option_refuses_with_what_to_do(tmp_path):
    args = field_cli._parser().parse_args(["predict", "--model", "m.onnx", "x.png", "--max-pixels", "500"])
    assert args.max_pixels == 500
    assert field_cli._parser().parse_args(["predict", "--model", "m.onnx", "x.png"]).max_pixels == 89_478_485
    card = {"preprocessing": {"size": 16, "mean": [0.5] * 3, "std": [0.25] * 3}}
    model = field.FieldModel(tmp_path / "m.onnx", card, None, [], max_pixels=500)
    big = save(noise(40, 40), tmp_path / "big.png")
    with pytest.raises(BadImage, match="--max-pixels"):
        model.load_image(big)
    model.max_pixels = 1600
    assert model.load_image(big).size == (40, 40)


def test_exported_card_carries_the_intensity_and_predict_takes_max_pixels(exported, tmp_path):
    _, models, out, _ = exported
    assert out["card"]["preprocessing"]["intensity"] == "auto"
    assert json.loads((models / "model.json").read_text())["preprocessing"]["intensity"] == "auto"
    big, small = save(noise(60, 60), tmp_path / "big.png"), save(noise(30, 30), tmp_path / "small.png")
    preds = tmp_path / "p.csv"
    code = field_cli.main(
        [
            "predict",
            "--model",
            str(models / "model.onnx"),
            str(big),
            str(small),
            "--max-pixels",
            "1000",
            "--out",
            str(preds),
        ]
    )
    rows = _rows(preds)
    assert code == 1 and [r["status"] for r in rows] == ["error", "ok"]
    assert "over the 1000-pixel limit" in rows[0]["error"] and "--max-pixels" in rows[0]["error"]


def test_the_field_reads_a_dark_image_at_the_cards_depth_and_refuses_one_it_would_blank(tmp_path):
    """The card's intensity is what prepare recorded: `auto:12` reads a dark 12-bit X-ray (max 1000)
    as 12-bit, as training did; a float 0..1 image under a card's [0, 4095] would decode black: it
    gets an error with its reason instead of a prediction about a blank image."""
    dark = np.zeros((16, 16), dtype=np.uint16)
    dark[0, :] = np.arange(16) * 66
    dark[-1, -1] = 1000
    save(Image.fromarray(dark), tmp_path / "dark.png")
    card = {"preprocessing": {"size": 16, "intensity": "auto:12"}}
    assert np.asarray(field.load_image(tmp_path / "dark.png", card)).max() == round(1000 * 255 / 4095)
    tifffile.imwrite(tmp_path / "f.tif", np.linspace(0, 1, 256, dtype=np.float32).reshape(16, 16))
    with pytest.raises(BadImage, match=r"decodes blank under the model's intensity \[0, 4095\]"):
        field.load_image(tmp_path / "f.tif", {"preprocessing": {"size": 16, "intensity": [0, 4095]}})

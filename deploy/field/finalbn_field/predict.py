"""The model and the images: model.json, the onnxruntime session, preprocessing, decisions.

    model = FieldModel.open("models/model.onnx", device="cpu", threads=0)
    x = preprocess(load_rgb(path), model.card)          # (3, H, W) float32, as training's eval
    p = model.probabilities(np.stack([x, ...]))        # (N, 2): P(healthy), P(diseased)

Preprocessing is training's evaluation transform exactly: the image decoded by `images.load_rgb`
(the project's own file, kept identical by its tests) with the card's `preprocessing.intensity`
(how training mapped samples of more than 8 bits; "auto" for a card without it) and a JPEG drafted
for the card's size as training drafted it (`load_image`), the shorter side resized to
`image_size` (bilinear) and a centre crop, scaled to [0, 1], normalised with the card's mean and std.

The card pins its model: `onnx.sha256` (and `int8.sha256` for a kept INT8 file) is checked
against the model file before it is used (`FieldModel.open`); a mismatch, or a card with no
digest (an export older than the pin), is refused unless `allow_mismatch` (--allow-model-mismatch).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
from PIL import Image

from finalbn_field.decision import at_prevalence, prior_threshold
from finalbn_field.images import MAX_PIXELS, BadImage, decode, resize_square

__all__ = [
    "FORMAT",
    "FieldError",
    "FieldModel",
    "file_sha256",
    "load_image",
    "preprocess",
    "prior_threshold",
    "resize_square",
]

FORMAT = "finalbn-field/1"


class FieldError(RuntimeError):
    """A problem with the model or the command line: one line, before any image is read."""


def load_image(path: str | Path, card: dict, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """An image file decoded as training decoded it for this card: its intensity (absent: "auto")
    and, for a JPEG, the reduced scale its size allows. Raises images.BadImage, also for an image
    whose varied values that intensity would decode blank (outside its range, or within one level):
    its prediction would say nothing about it."""
    pre = card["preprocessing"]
    intensity = pre.get("intensity", "auto")
    img, found = decode(path, max_pixels, intensity, int(pre["size"]))
    if found.blank:
        img.close()
        assert found.data is not None  # `blank` is only true with the image's own range
        rule = intensity if isinstance(intensity, str) else "[{:g}, {:g}]".format(*intensity)
        raise BadImage(
            f"decodes blank under the model's intensity {rule} (its {found.label.split(' (')[0]} values "
            f"{found.data[0]:g}..{found.data[1]:g} fall outside it or within one of its levels): "
            "not the kind of image the model was trained on"
        )
    return img


def preprocess(img: Image.Image, card: dict) -> np.ndarray:
    """An RGB image -> the model's (3, H, W) float32 input."""
    pre = card["preprocessing"]
    arr = np.asarray(resize_square(img, int(pre["size"])), dtype=np.float32) / np.float32(255.0)
    mean = np.asarray(pre["mean"], dtype=np.float32)
    std = np.asarray(pre["std"], dtype=np.float32)
    return np.ascontiguousarray(((arr - mean) / std).transpose(2, 0, 1))


def file_sha256(path: Path) -> str:
    """The file's sha256, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def locate(path: Path) -> tuple[Path, Path]:
    """The ONNX file and its model card: `models/model.onnx` with `model.json` beside it (what
    `finalbn export` writes), or a folder holding them, or an MLflow model folder
    (`mlflow artifacts download -u models:/finalbn@champion`: the card in `extra_files/`).
    Raises FieldError naming what is missing."""
    onnx_path = path / "model.onnx" if path.is_dir() else path
    if not onnx_path.is_file():
        raise FieldError(f"no model file {onnx_path}")
    for card in (onnx_path.with_name("model.json"), onnx_path.parent / "extra_files" / "model.json"):
        if card.is_file():
            return onnx_path, card
    raise FieldError(
        f"no model.json beside {onnx_path} (nor extra_files/model.json, where the MLflow registry "
        "keeps it): `finalbn export` writes both"
    )


@dataclass
class FieldModel:
    path: Path
    card: dict
    session: Any
    providers: list[str]
    card_path: Path | None = None
    unverified: str | None = None  # why the model was run although the card does not pin it (the summary says it)
    max_pixels: int = MAX_PIXELS  # the largest image decoded (--max-pixels)

    def load_image(self, path: str | Path) -> Image.Image:
        """`path` decoded for this model (module `load_image`). Raises images.BadImage."""
        return load_image(path, self.card, self.max_pixels)

    @classmethod
    def open(cls, path: str | Path, device: str = "cpu", threads: int = 0, allow_mismatch: bool = False) -> FieldModel:
        path, card_path = locate(Path(path))
        try:
            card = json.loads(card_path.read_text())
        except ValueError as exc:
            raise FieldError(f"{card_path} is not JSON ({exc})") from None
        if not isinstance(card, dict) or card.get("format") != FORMAT:
            raise FieldError(f"{card_path} is not a finalbn model card (format {FORMAT!r})")
        try:
            import onnxruntime as ort
        except ImportError:
            raise FieldError(
                "onnxruntime is not installed: pip install 'finalbn-field[cpu]' "
                "(or [gpu] for onnxruntime-gpu, never both)"
            ) from None
        so = ort.SessionOptions()
        if threads:
            so.intra_op_num_threads = threads
        wanted = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device == "cuda" else ["CPUExecutionProvider"]
        if device == "cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
            raise FieldError(
                "--device cuda: this onnxruntime has no CUDAExecutionProvider "
                f"(available: {', '.join(ort.get_available_providers())}); install finalbn-field[gpu]"
            )
        try:
            sess = ort.InferenceSession(str(path), so, providers=wanted)
        except Exception as exc:  # not an ONNX file, a truncated one, an unknown operator
            raise FieldError(f"{path} cannot be loaded by onnxruntime: {' '.join(str(exc).split())[:300]}") from None
        providers = sess.get_providers()
        if device == "cuda" and "CUDAExecutionProvider" not in providers:  # onnxruntime fell back silently
            raise FieldError(f"--device cuda: onnxruntime fell back to {providers} (CUDA could not start)")
        model = cls(path, card, sess, providers, card_path)
        model._check_pin(allow_mismatch)
        model._check_io()
        return model

    def _check_pin(self, allow_mismatch: bool) -> None:
        """The model file is the one the card describes: its sha256 equals the card's `onnx.sha256`
        (or `int8.sha256`). A mismatch, or a card without a digest, raises FieldError naming both,
        unless `allow_mismatch`: then `unverified` says so for the summary line."""
        card_path = cast(Path, self.card_path)  # open(), the one caller, sets it
        pins = {
            k: e["sha256"]
            for k in ("onnx", "int8")
            if isinstance(e := self.card.get(k), dict) and isinstance(e.get("sha256"), str)
        }
        if "onnx" not in pins:
            if not allow_mismatch:
                raise FieldError(
                    f"{self.card_path} records no sha256 of its model (an export older than the model "
                    f"pin), so {self.path} cannot be checked against it: export the model again, or pass "
                    "--allow-model-mismatch to run it with this card's preprocessing and decision "
                    "thresholds anyway"
                )
            self.unverified = (
                f"model NOT VERIFIED: {card_path.name} records no sha256 of its model (--allow-model-mismatch)"
            )
            return
        digest = file_sha256(self.path)
        if digest in pins.values():
            return
        want = pins["int8" if "int8" in pins and "int8" in self.path.name else "onnx"]
        if not allow_mismatch:
            raise FieldError(
                f"{self.path} (sha256 {digest}) is not the model {self.card_path} describes (sha256 "
                f"{want}): a {self.path.name} from another export? Copy both files of one export "
                "together, or pass --allow-model-mismatch to run it with this card's preprocessing "
                "and decision thresholds anyway"
            )
        self.unverified = (
            f"MODEL MISMATCH (--allow-model-mismatch): {self.path.name} sha256 {digest[:16]} is not "
            f"the model {card_path.name} describes (sha256 {want[:16]})"
        )

    def _check_io(self) -> None:
        want = self.card["input"]
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise FieldError(f"{self.path} has {len(inputs)} inputs; model.json describes one ({want['name']!r})")
        got = inputs[0]
        shape = [d if isinstance(d, int) else "batch" for d in got.shape]
        if got.name != want["name"] or got.type != "tensor(float)" or shape[1:] != list(want["shape"][1:]):
            raise FieldError(
                f"{self.path} takes {got.name!r} {got.type} {got.shape}, but model.json says "
                f"{want['name']!r} float32 {want['shape']}: the model and its card do not match"
            )
        outs = [o.name for o in self.session.get_outputs()]
        if "probs" not in outs:
            raise FieldError(f"{self.path} has no 'probs' output (outputs {outs})")

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        (probs,) = self.session.run(["probs"], {self.card["input"]["name"]: batch})
        return probs

    def threshold(
        self, threshold: float | None = None, prevalence: float | None = None, miss_cost: float | None = None
    ) -> tuple[float | None, str]:
        """The P(diseased) cut and how it was set: given, for a field prevalence (on the card's
        validation operating curve, `decision.at_prevalence`), or argmax. Raises FieldError for a
        card without a curve (an export older than the curve)."""
        if threshold is not None:
            return threshold, f"threshold {threshold:g} (given)"
        if prevalence is not None:
            curve = (self.card.get("decision") or {}).get("operating_curve")
            if not curve:
                raise FieldError(
                    f"{self.card_path} has no validation operating curve "
                    "(decision.operating_curve): export the model again with this finalbn to use "
                    "--prevalence, or give --threshold"
                )
            r = at_prevalence(curve, prevalence, miss_cost)
            return r["threshold"], (
                f"threshold {r['threshold']:.4g} for a field prevalence of {prevalence:g} "
                f"({r['rule']}): on validation it flagged {r['fpr']:.1%} of healthy images "
                f"(<= {r['fpr_upper95']:.1%} at 95%) and found {r['tpr']:.1%} of diseased (>= {r['tpr_lower95']:.1%}) "
                f"({curve['positives']} diseased, {curve['negatives']} healthy)"
            )
        seen = (self.card.get("decision") or {}).get("argmax_validation")
        if seen:  # what argmax did on validation: a model chosen on AUROC may put its 0.5 anywhere
            return None, (
                f"argmax (on validation it flagged {seen['healthy_flagged']:.1%} of healthy images and found "
                f"{seen['diseased_found']:.1%} of diseased; --prevalence sets a cut for your field)"
            )
        return None, "argmax"

"""Models in the store: logged flavours, the registered name and its alias.

    info = log_onnx_and_register(run_id, Path("models/model.onnx"), "image", example, outputs,
                                 Path("models/model.json"), description, tags, metadata)
    info["serve"]   # "models:/finalbn@champion"

The ONNX model is logged with `mlflow.onnx.log_model` on the run that trained it, registered as
REGISTERED_NAME and given the alias ALIAS (`set_registered_model_alias`; MLflow's stages are
deprecated), so `mlflow models serve -m models:/finalbn@champion` serves it. The model is
self-contained: its signature names the input (`{"inputs": {"image": ...}}`), the model card rides
along as `extra_files/model.json` (so `mlflow artifacts download -u models:/finalbn@champion` gives
`finalbn-field` all it needs), and the version carries a description and tags.

MLflow's ONNX flavour does not copy the file: it stores `onnx.save_model` of the loaded proto,
i.e. `proto.SerializeToString()`. The export writes model.onnx as exactly those bytes
(`export.onnx.export_onnx`), so the served `model.onnx` is byte-identical to models/model.onnx and
the card's `onnx.sha256` (checked by `finalbn-field`) holds for the downloaded folder too; this is
verified here before anything is logged, and the version carries the digest and size as tags.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import mlflow
import numpy as np
from mlflow.models import infer_signature

from finalbn.infra import faults
from finalbn.tracking.fingerprint import note_model
from finalbn.tracking.records import MODEL_URI, ONNX_SHA256, ONNX_SIZE
from finalbn.tracking.store import client

REGISTERED_NAME = "finalbn"
ALIAS = "champion"


MODEL_DESCRIPTION = (
    "finalbn's champion: a healthy-vs-diseased image classifier fine-tuned under a 99 %/1 % "
    "imbalance (the best final-BN configuration on validation), exported to ONNX. Input `image`: "
    "float32 [batch, 3, H, W], preprocessed as `extra_files/model.json` says; outputs `logits` and "
    "`probs` (column 1 = diseased). Field use: `finalbn-field predict --model <downloaded folder>`."
)


def log_onnx_and_register(
    run_id: str,
    onnx_path: Path,
    input_name: str,
    example: np.ndarray,
    outputs: dict[str, np.ndarray],
    card_path: Path,
    description: str,
    tags: dict[str, str],
    metadata: dict,
) -> dict:
    """`mlflow.onnx.log_model` on run `run_id` with a named input signature, the model card as an
    extra file and `metadata` in MLmodel; registered, described, tagged, alias `champion`; returns
    {name, version, alias, model_uri, serve}.

    Once per model: a version of the same run whose tag `onnx_sha256` is this file's digest (an
    export killed after registering it) is described and aliased again, not registered twice. The
    run is written to by id, never reopened, so a kill here leaves it as it was (FINISHED)."""
    import mlflow.onnx  # here, not at the top: mlflow.onnx and onnx are the export's alone
    import onnx  # the ONNX file is loaded here only

    c = client()
    data = onnx_path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    proto = onnx.load_from_string(data)
    pinned = (json.loads(card_path.read_text()).get("onnx") or {}).get("sha256")
    if pinned != digest or proto.SerializeToString() != data:  # the export's invariants: never register a model
        raise RuntimeError(  # whose served bytes the card's digest would not match
            f"{onnx_path} (sha256 {digest}) is not what MLflow would store and the card pins (card sha256 "
            f"{pinned}): export it again (`export.onnx.export_onnx` writes the canonical bytes)"
        )
    if _registered(c):
        c.update_registered_model(REGISTERED_NAME, description=MODEL_DESCRIPTION)
    else:
        c.create_registered_model(REGISTERED_NAME, description=MODEL_DESCRIPTION)
    mv = _version_of(c, run_id, digest)
    if mv is None:
        info = mlflow.onnx.log_model(
            proto,
            name="model",
            run_id=run_id,
            signature=infer_signature({input_name: example}, outputs),
            input_example={input_name: example},
            onnx_execution_providers=["CPUExecutionProvider"],
            pip_requirements=["onnxruntime", "numpy"],
            save_as_external_data=False,
            extra_files=[str(card_path)],
            metadata=metadata,
        )
        c.log_artifact(run_id, str(card_path))
        mv = mlflow.register_model(
            info.model_uri, REGISTERED_NAME, tags={**tags, ONNX_SHA256: digest, ONNX_SIZE: str(len(data))}
        )
        faults.point("export.register")
    c.update_model_version(REGISTERED_NAME, mv.version, description=description)
    c.set_registered_model_alias(REGISTERED_NAME, ALIAS, mv.version)
    note_model(REGISTERED_NAME, ALIAS, mv.run_id)  # the export's fingerprint: the alias must stay there
    return {
        "name": REGISTERED_NAME,
        "version": mv.version,
        "alias": ALIAS,
        "model_uri": mv.source,
        "serve": f"models:/{REGISTERED_NAME}@{ALIAS}",
    }


def _version_of(c, run_id: str, digest: str):
    """The registered version of run `run_id` whose ONNX file has `digest`, or None."""
    found = [
        v
        for v in c.search_model_versions(f"name = '{REGISTERED_NAME}'")
        if v.run_id == run_id and (v.tags or {}).get(ONNX_SHA256) == digest
    ]
    return min(found, key=lambda v: int(v.version)) if found else None


def _registered(c) -> bool:
    try:
        c.get_registered_model(REGISTERED_NAME)
    except mlflow.exceptions.MlflowException:
        return False
    return True


def log_torch_model(model, example: np.ndarray, output: np.ndarray) -> None:
    """`mlflow.pytorch.log_model` on the active run (`train.log_model`); `example` is a batch of
    at least 2 (torch.export, MLflow 3's pt2 format, would fix the batch axis at 1) and `output`
    the model's output on it."""
    import mlflow.pytorch  # here, not at the top: it imports torch, which the report and others need not

    info = mlflow.pytorch.log_model(
        model, name="model", signature=infer_signature(example, output), input_example=example
    )
    mlflow.set_tag(MODEL_URI, info.model_uri)

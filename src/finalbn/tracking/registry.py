"""Models in the store: logged flavours, the registered name and its alias.

    info = log_onnx_and_register(run_id, Path("models/model.onnx"), example, outputs, card)
    info["serve"]   # "models:/finalbn@champion"

The ONNX model is logged with `mlflow.onnx.log_model` on the run that trained it, registered as
REGISTERED_NAME and given the alias ALIAS (`set_registered_model_alias`; MLflow's stages are
deprecated), so `mlflow models serve -m models:/finalbn@champion` serves it.
"""
from __future__ import annotations

from pathlib import Path

import mlflow
import mlflow.onnx
import mlflow.pytorch
import numpy as np
import onnx
from mlflow.models import infer_signature

from finalbn.tracking.records import MODEL_URI
from finalbn.tracking.store import client

REGISTERED_NAME = "finalbn"
ALIAS = "champion"


def log_onnx_and_register(run_id: str, onnx_path: Path, example: np.ndarray, outputs: dict[str, np.ndarray],
                          card: dict) -> dict:
    """`mlflow.onnx.log_model` on run `run_id` (with the model card beside it), registered, alias
    `champion`; returns {name, version, alias, model_uri, serve}."""
    with mlflow.start_run(run_id=run_id):
        info = mlflow.onnx.log_model(onnx.load(str(onnx_path)), name="model",
                                     signature=infer_signature(example, outputs), input_example=example,
                                     onnx_execution_providers=["CPUExecutionProvider"],
                                     pip_requirements=["onnxruntime", "numpy"], save_as_external_data=False)
        mlflow.log_dict(card, "model.json")
    mv = mlflow.register_model(info.model_uri, REGISTERED_NAME)
    client().set_registered_model_alias(REGISTERED_NAME, ALIAS, mv.version)
    return {"name": REGISTERED_NAME, "version": mv.version, "alias": ALIAS, "model_uri": info.model_uri,
            "serve": f"models:/{REGISTERED_NAME}@{ALIAS}"}


def log_torch_model(model, example: np.ndarray, output: np.ndarray) -> None:
    """`mlflow.pytorch.log_model` on the active run (`train.log_model`); `example` is a batch of
    at least 2 (torch.export, MLflow 3's pt2 format, would fix the batch axis at 1) and `output`
    the model's output on it."""
    info = mlflow.pytorch.log_model(model, name="model", signature=infer_signature(example, output),
                                    input_example=example)
    mlflow.set_tag(MODEL_URI, info.model_uri)

"""The network to one ONNX file, and its check against PyTorch on the same inputs.

    info = export_onnx(model, size=64, path=Path("models/model.onnx"))   # {opset, ir_version, sha256, size, final_bn}
    check = parity(model, Path("models/model.onnx"), x)                  # onnxruntime vs torch, and the fold

The file is self-contained (`torch.onnx.export(dynamo=True, external_data=False)`), exported in
eval mode, with input `image` (float32, N x 3 x H x W, normalised as model.json says) on a
dynamic batch axis and outputs `logits` and `probs`. A final BN is folded into the last Linear
before the export (`finalbn.models.fold`), so the graph has no BatchNormalization after its last
Gemm/MatMul; the parity check compares against the unfolded network.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from finalbn.data.tensors import eval_transform
from finalbn.models.fold import fold_final_bn
from finalbn.models.network import FinalBNNet

TOLERANCE = 1e-4  # max |P_ort - P_torch| over the test images, at batch 1 and 32
FOLD_TOLERANCE = 1e-5  # max |P_folded - P_unfolded| of the two torch networks on the same images
INPUT, OUTPUTS = "image", ("logits", "probs")
MATMULS = ("Gemm", "MatMul")


class Exported(nn.Module):
    """The network as the field sees it: image -> (logits, softmax probabilities)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.net(image)
        return logits, torch.softmax(logits, dim=1)


def export_onnx(model: nn.Module, size: int, path: Path, *, fold: bool = True, optimize: bool = True) -> dict:
    """One self-contained ONNX file with a dynamic batch axis, written as the bytes MLflow's ONNX
    flavour will store; returns {opset, ir_version, sha256, size, final_bn}.

    `fold`: a FinalBNNet's final BN is folded into its last Linear first (`fold_final_bn`; `model`
    is untouched) and the graph as exported, before any ONNX optimiser, is checked to have no
    BatchNormalization after its last Gemm/MatMul. `final_bn` says what became of it: "folded into
    the last Linear", "none" (no final BN) or "kept" (`fold=False`). `optimize`: torch's ONNX
    optimiser pass (constant folding, fusions), as shipped; False only to inspect the raw graph.
    Raises ValueError when the folded graph still has a BatchNormalization after its last Gemm/MatMul.
    """
    has_bn = isinstance(model, FinalBNNet) and model.final_bn is not None
    net = fold_final_bn(model) if fold and isinstance(model, FinalBNNet) else model
    wrapped = Exported(net).eval()
    example = torch.zeros((2, 3, size, size), dtype=torch.float32)
    prog = torch.onnx.export(
        wrapped,
        (example,),
        dynamo=True,
        input_names=[INPUT],
        output_names=list(OUTPUTS),
        dynamic_shapes={"image": {0: "batch"}},
        external_data=False,
        optimize=False,
    )
    if fold and (left := bn_after_last_matmul(prog.model_proto)):
        raise ValueError(
            f"the exported graph keeps {', '.join(left)} after its last Gemm/MatMul: the final BN was not folded"
        )
    if optimize:
        prog.optimize()  # what torch.onnx.export(optimize=True) runs
    prog.save(str(path))
    proto = without_source_paths(onnx.load(str(path)))
    onnx.checker.check_model(proto, full_check=True)
    canonical = proto.SerializeToString()  # what mlflow.onnx.log_model stores (onnx.save_model of the loaded proto)
    if canonical != path.read_bytes():  # so the registry serves these very bytes and the card's digest holds there
        path.write_bytes(canonical)
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    final_bn = "none" if not has_bn else "folded into the last Linear" if fold else "kept"
    return {"opset": opset, "ir_version": proto.ir_version, **pin(path), "final_bn": final_bn}


def bn_after_last_matmul(proto: onnx.ModelProto) -> list[str]:
    """The BatchNormalization nodes (their names) after the main graph's last Gemm/MatMul, in the
    graph's (topological) order; every one when the graph has no Gemm/MatMul. Empty for a shipped
    model: the head's final BN is folded into its last Linear."""
    ops = [n.op_type for n in proto.graph.node]
    last = max((i for i, op in enumerate(ops) if op in MATMULS), default=-1)
    return [n.name or n.op_type for n in proto.graph.node[last + 1 :] if n.op_type == "BatchNormalization"]


# torch's exporter records each node's Python stack trace, absolute source paths included (the home
# folder of whoever exported): the file shipped to the field would carry them, and the same model
# exported from another folder would get another digest. Nothing reads them at inference.
STACK_TRACE = "pkg.torch.onnx.stack_trace"


def without_source_paths(proto: onnx.ModelProto) -> onnx.ModelProto:
    """`proto` with the exporter's per-node stack traces (`STACK_TRACE`) removed, in the main graph,
    its functions and any subgraph; weights, operators and every other metadata kept."""

    def clean(nodes) -> None:
        for node in nodes:
            kept = [p for p in node.metadata_props if p.key != STACK_TRACE]
            if len(kept) != len(node.metadata_props):
                del node.metadata_props[:]
                node.metadata_props.extend(kept)
            for attr in node.attribute:
                for graph in [attr.g, *attr.graphs] if attr.HasField("g") else attr.graphs:
                    clean(graph.node)

    clean(proto.graph.node)
    for fn in proto.functions:
        clean(fn.node)
    return proto


def pin(path: Path) -> dict:
    """{sha256, size}: what the card records of a model file, and `finalbn-field` checks before use."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return {"sha256": h.hexdigest(), "size": path.stat().st_size}


def preprocess(images_uint8: torch.Tensor, mean, std) -> np.ndarray:
    """uint8 N x 3 x H x W -> the float32 input, by training's own evaluation transform
    (torchvision: scale to [0, 1], normalise with mean/std)."""
    return eval_transform(tuple(mean), tuple(std))(images_uint8).numpy()


def session(path: Path, threads: int = 0) -> ort.InferenceSession:
    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def outputs(path: Path, x: np.ndarray) -> dict[str, np.ndarray]:
    """{logits, probs} of the ONNX model on `x`."""
    return dict(zip(OUTPUTS, session(path).run(list(OUTPUTS), {INPUT: x})))


def parity(model: nn.Module, onnx_path: Path, x: np.ndarray, batch_sizes=(1, 32)) -> dict:
    """onnxruntime vs torch (`model` as trained, unfolded) on the same inputs: per batch size, max
    |Δprob|, max |Δlogit|, label agreement; `passed` when every max |Δprob| <= TOLERANCE with the
    labels identical and the fold holds. `fold` (`fold_parity`): the folded torch network against
    `model`, and whether onnxruntime is within FOLD_TOLERANCE of `model` too.
    `x`: float32 (N, 3, H, W), preprocessed."""
    sess = session(onnx_path)
    model = model.eval()
    out: dict[str, Any] = {"images": int(len(x)), "tolerance": TOLERANCE, "batches": {}}
    for bs in batch_sizes:
        p_ort, p_pt, l_ort, l_pt = [], [], [], []
        for i in range(0, len(x), bs):
            xb = x[i : i + bs]
            lo, po = sess.run(list(OUTPUTS), {INPUT: xb})
            with torch.inference_mode():
                lt = model(torch.from_numpy(xb)).float()
            l_ort.append(lo)
            p_ort.append(po)
            l_pt.append(lt.numpy())
            p_pt.append(torch.softmax(lt, 1).numpy())
        po, pt = np.concatenate(p_ort), np.concatenate(p_pt)
        lo, lt = np.concatenate(l_ort), np.concatenate(l_pt)
        out["batches"][str(bs)] = {
            "max_abs_diff_probs": float(np.abs(po - pt).max()),
            "max_abs_diff_logits": float(np.abs(lo - lt).max()),
            "labels_identical": bool((po.argmax(1) == pt.argmax(1)).all()),
            "label_disagreements": int((po.argmax(1) != pt.argmax(1)).sum()),
        }
    fold = fold_parity(model, x)
    worst_ort = max(b["max_abs_diff_probs"] for b in out["batches"].values())
    out["fold"] = {**fold, "onnx_max_abs_diff_probs": worst_ort, "onnx_within_tolerance": worst_ort <= FOLD_TOLERANCE}
    out["passed"] = fold["passed"] and all(
        b["max_abs_diff_probs"] <= TOLERANCE and b["labels_identical"] for b in out["batches"].values()
    )
    return out


def fold_parity(model: nn.Module, x: np.ndarray, batch: int = 32) -> dict:
    """The folded network (`fold_final_bn`) against `model`, both torch in eval mode, on `x`
    (float32 (N, 3, H, W)) in batches of `batch`: {folded, tolerance (FOLD_TOLERANCE),
    max_abs_diff_probs, max_abs_diff_logits, passed}. `folded` False (and passed) when `model` has
    no final BN: nothing to compare."""
    if not (isinstance(model, FinalBNNet) and model.final_bn is not None):
        return {"folded": False, "tolerance": FOLD_TOLERANCE, "passed": True}
    folded, model = fold_final_bn(model), model.eval()
    dp, dl = 0.0, 0.0
    with torch.inference_mode():
        for i in range(0, len(x), batch):
            xb = torch.from_numpy(x[i : i + batch])
            a, b = model(xb).float(), folded(xb).float()
            dl = max(dl, float((a - b).abs().max()))
            dp = max(dp, float((torch.softmax(a, 1) - torch.softmax(b, 1)).abs().max()))
    return {
        "folded": True,
        "tolerance": FOLD_TOLERANCE,
        "max_abs_diff_probs": dp,
        "max_abs_diff_logits": dl,
        "passed": dp <= FOLD_TOLERANCE,
    }

"""Ship the winner: the best final-BN model to ONNX, checked against PyTorch, for onnxruntime.

    finalbn export                     # the best final-BN configuration over replicates -> models/
    finalbn export --run-id <id>       # that run

Reads the splits and the tracking store; writes `models/model.onnx` (one self-contained file),
`models/model.json` (classes, arch, input size and preprocessing, the source run, manifest hash,
how the configuration was chosen, validation metrics, the decision rules at field prevalences)
and `models/parity.json` (onnxruntime against torch on
the real test images at batch 1 and batch 32; the final BN, folded into the last Linear before
the export, checked folded against unfolded). Past the tolerance the export exits 1 and the
model is not promoted (nothing in models/ is replaced). Then the ONNX model is logged to MLflow
on the export's run, registered as `finalbn` and given the alias `champion`. `select` (which
run, its network), `onnx` (the file, parity), `int8` (optional quantisation), `card` (model.json).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
from pathlib import Path
from typing import cast

import numpy as np

from finalbn import tracking
from finalbn.config import Config
from finalbn.data.splits import split_dir
from finalbn.data.tensors import decode_settings, load_splits
from finalbn.infra import faults, io
from finalbn.models import get_spec
from finalbn.stages.export import standing
from finalbn.stages.export.card import (
    CLASSES,
    decision_rules,
    final_bn_note,
    held_out_card,
    model_card,
    prior_threshold,
    version_description,
    version_tags,
)
from finalbn.stages.export.int8 import INT8_MAX_AUROC_DROP, quantize
from finalbn.stages.export.onnx import (
    FOLD_TOLERANCE,
    INPUT,
    OUTPUTS,
    TOLERANCE,
    Exported,
    bn_after_last_matmul,
    export_onnx,
    fold_parity,
    outputs,
    parity,
    preprocess,
)
from finalbn.stages.export.select import (
    Choice,
    ExportError,
    Source,
    choose,
    held_out_test,
    is_final_bn,
    pooled_validation,
    rebuild,
    run_config,
    selection_card,
)
from finalbn.tracking.adapter import MLFLOW, MlflowTracker
from finalbn.tracking.standing import mark_cells, mark_parents

__all__ = [
    "CLASSES",
    "FOLD_TOLERANCE",
    "INPUT",
    "INT8_MAX_AUROC_DROP",
    "OUTPUTS",
    "TOLERANCE",
    "Choice",
    "ExportError",
    "Exported",
    "Source",
    "bn_after_last_matmul",
    "choose",
    "decision_rules",
    "export",
    "export_onnx",
    "final_bn_note",
    "fold_parity",
    "held_out_card",
    "held_out_test",
    "is_final_bn",
    "main",
    "model_card",
    "parity",
    "parity_failure",
    "pooled_validation",
    "preprocess",
    "prior_threshold",
    "rebuild",
    "run_config",
    "selection_card",
]


def export(
    cfg: Config,
    splits: Path,
    out_dir: Path,
    run_id: str | None = None,
    log=print,
    register: bool = True,
    int8: bool = False,
) -> dict:
    """Choose, rebuild, export, check, and (only when parity holds) promote and register.
    Raises ExportError (no candidate, unknown run, parity past the tolerance)."""
    tracking.setup(cfg, "export")
    # candidates: the grid's cells and the search's trials and comparison runs (not the sensitivity
    # stage's levels, trained under other settings); the export's own retrainings are skipped below
    runs = tracking.finished_cell_runs(tracking.experiment_names(cfg, "grid", "search", "export"))
    k = cfg.selection.replicates
    choice = choose([r for r in runs if not r.flag(tracking.records.EXPORT)], k, run_id)
    run = choice.run
    if run_id is None:  # each configuration's standing in this choice (its rank: sorting the UI shows the champion)
        table = standing.standings([r for r in runs if not r.flag(tracking.records.EXPORT)], k, choice.key)
        rows = {key: dataclasses.asdict(s) for key, s in table.items()}
        mark_parents(tracking.experiment_names(cfg, "grid"), rows)
        mark_cells(tracking.experiment_names(cfg, "search"), rows)  # the search's configurations have no parent
    val_labels, val_p1 = pooled_validation(choice)
    held_out = (*held_out_test(choice), k)  # the same configuration's test predictions on replicates >= k
    selected = selection_card(choice, int(val_labels.sum()))
    va = selected["validation_auroc"]
    log(
        f"export: configuration {selected['config_name']} ({selected['source']}), {choice.how}: "
        f"validation AUROC {_f(va['mean'])} [95% CI {_f(va['ci95'][0])}, {_f(va['ci95'][1])}] over replicates "
        f"{selected['replicates']} ({selected['val_positives']} validation positives pooled); its model: "
        f"replicate {selected['model_replicate']}, run {run.run_id}"
    )
    src = rebuild(run, splits, log=log)
    log(
        f"export: retrained validation AUROC {src.val.get('auroc', math.nan):.4f} (source "
        f"{src.source_val.get('auroc', math.nan):.4f}), minority F1 {src.val.get('f1_1', math.nan):.4f} "
        f"(source {src.source_val.get('f1_1', math.nan):.4f})"
    )
    size = src.cfg.dataset(src.dataset).image_size
    spec = get_spec(src.cfg.model.arch)
    manifest = split_dir(splits, src.dataset, src.replicate) / "manifest.csv"
    tensors = load_splits(manifest, size)
    x = {s: preprocess(tensors[s].images, spec.mean, spec.std) for s in ("test", "val")}
    out_dir.mkdir(parents=True, exist_ok=True)
    with io.temporary_dir(out_dir / "export") as tmp:  # a killed export's leftover is swept the next time
        card, check = _build(
            src,
            tmp,
            out_dir,
            size,
            spec,
            tensors,
            x,
            int8,
            log,
            selected,
            (val_labels, val_p1),
            cfg.selection.prevalences,
            decode_settings(manifest)[0],
            held_out,
        )
        _promote(tmp, out_dir, int8 and card["int8"]["kept"])
    for bs, b in check["batches"].items():
        log(
            f"export: parity at batch {bs}: max |Δprob| {b['max_abs_diff_probs']:.2e}, labels identical "
            f"{b['labels_identical']} ({check['images']} test images)"
        )
    if check["fold"]["folded"]:
        fold = check["fold"]
        log(
            f"export: final BN folded into the last Linear: max |Δprob| {fold['max_abs_diff_probs']:.2e} folded vs "
            f"unfolded torch, {fold['onnx_max_abs_diff_probs']:.2e} onnxruntime vs unfolded torch "
            f"(tolerance {fold['tolerance']:.0e})"
        )
    result = {"model": str(out_dir / "model.onnx"), "card": card, "parity": check}
    # what `dvc metrics show` prints for the export: one short row
    io.write_json(
        out_dir / "metrics.json",
        {"val_auroc": round(float(card["validation"]["auroc"]), 4), "parity_ok": bool(check["passed"])},
    )  # its max |Δprob| is in parity.json (too small for dvc's 5 decimals)
    if register:
        example = x["test"][:2]
        meta = {
            "finalbn_card": "extra_files/model.json",
            "classes": card["classes"],
            "positive_class": 1,
            "config_name": card["selection"]["config_name"],
            "arch": card["arch"],
            "image_size": card["image_size"],
        }
        result["registry"] = tracking.log_onnx_and_register(
            src.model_run_id,
            out_dir / "model.onnx",
            INPUT,
            example,
            outputs(out_dir / "model.onnx", example),
            out_dir / "model.json",
            version_description(card),
            version_tags(card),
            meta,
        )
        log(
            f"export: registered {tracking.REGISTERED_NAME} version {result['registry']['version']}, "
            f"alias @{tracking.ALIAS}"
        )
    return result


def _f(x) -> str:
    return "n/a" if x is None else f"{x:.4f}"


def _build(
    src: Source,
    tmp: Path,
    out_dir: Path,
    size: int,
    spec,
    tensors,
    x: dict,
    int8: bool,
    log,
    selected: dict,
    pooled: tuple,
    prevalences: tuple[float, ...],
    intensity="auto",
    held_out: tuple = ({}, [], 0),
) -> tuple:
    """model.onnx, parity.json (written to out_dir either way: it says why) and model.json in `tmp`
    (`intensity`: how training decoded, split.json's; `held_out`: (test tables by held-out replicate,
    held-out replicates without them, k) for `held_out_card`); raises ExportError when parity fails."""
    diffs = {
        k: abs(float(src.val.get(k, math.nan)) - float(src.source_val.get(k, math.nan))) for k in ("auroc", "f1_1")
    }
    info = export_onnx(src.model, size, tmp / "model.onnx")
    faults.point("export.onnx")
    check = parity(src.model, tmp / "model.onnx", x["test"])
    check.update(
        {
            "source_run_id": src.run_id,
            "model_run_id": src.model_run_id,
            "opset": info["opset"],
            "retrained_vs_source_validation_abs_diff": diffs,
        }
    )
    # (healthy, diseased): the labels are 0 and 1, so the bincount has two entries
    counts = cast(tuple[int, int], tuple(int(c) for c in np.bincount(tensors["train"].labels.numpy(), minlength=2)))
    try:
        rules = decision_rules(src, pooled[0], pooled[1], counts, prevalences, selected["replicates"])
    except ValueError as exc:
        raise ExportError(f"the decision rules need validation predictions of both classes: {exc}") from None
    try:
        held = held_out_card(rules, held_out[0], held_out[1], selected["replicates"], src.replicate, held_out[2])
    except ValueError as exc:  # a held-out test table lacking a class: say so on the card, ship anyway
        held = {
            "measured": False,
            "at_prevalence": [],
            "why": f"The optimism of the validation estimates could not be measured: {exc}.",
        }
    card = model_card(src, size, spec.preprocessing(), info, selected, rules, counts, intensity, held)
    for r in rules["at_prevalence"]:
        log(
            f"export: at a field prevalence of {r['prevalence']:g}: flag P(diseased) >= {r['threshold']:.4f} — on "
            f"validation it flags {r['fpr']:.1%} of healthy (<= {r['fpr_upper95']:.1%} at 95%) and finds "
            f"{r['tpr']:.1%} of diseased (>= {r['tpr_lower95']:.1%}); F1 {r['f1']:.3f} at that prevalence"
        )
    log(f"export: {held['how'] if held['measured'] else held['why']}")
    for r in held["at_prevalence"]:
        log(
            f"export: at {r['prevalence']:g}: F1 {r['validation']['f1']:.3f} on validation, "
            f"{r['held_out_test']['f1']:.3f} on held-out test (optimism {r['optimism']['f1']:+.3f}); diseased found "
            f"{r['validation']['tpr']:.1%} -> {r['held_out_test']['tpr']:.1%}, healthy flagged "
            f"{r['validation']['fpr']:.1%} -> {r['held_out_test']['fpr']:.1%}"
        )
    seen = rules["argmax_validation"]
    log(
        f"export: argmax (the default) flags {seen['healthy_flagged']:.1%} of healthy and finds "
        f"{seen['diseased_found']:.1%} of diseased on validation; `finalbn-field --prevalence` applies the cuts above"
    )
    if not rules["prior_correction"]["applies"]:
        log(f"export: no training-count prior correction: {rules['prior_correction']['why']}")
    io.write_json(out_dir / "parity.json", check)
    if not check["passed"]:
        raise ExportError(
            f"{parity_failure(check)} — see {out_dir / 'parity.json'}; models/model.onnx was not replaced"
        )
    if int8:
        x_train = preprocess(tensors["train"].images, spec.mean, spec.std)
        q = quantize(tmp / "model.onnx", tmp / "model.int8.onnx", x_train, x["val"], tensors["val"].labels.numpy())
        card["int8"] = q
        log(
            f"export: INT8 {q['why']}: validation AUROC {q['fp32_val_auroc']:.4f} -> {q['int8_val_auroc']:.4f}, "
            f"{q['fp32_ms_per_image_batch32']:.2f} -> {q['int8_ms_per_image_batch32']:.2f} ms/image at batch 32"
        )
    io.write_json(tmp / "model.json", card)
    return card, check


def parity_failure(check: dict) -> str:
    """What failed in a `parity` check, one line: onnxruntime against torch past `tolerance` or with
    labels that differ, and/or the folded final BN against the unfolded network past its tolerance."""
    worst = max(b["max_abs_diff_probs"] for b in check["batches"].values())
    ort_ok = all(
        b["max_abs_diff_probs"] <= check["tolerance"] and b["labels_identical"] for b in check["batches"].values()
    )
    fold, why = check["fold"], []
    if not ort_ok:
        why.append(
            f"onnxruntime and torch disagree: max |Δprob| {worst:.2e} (tolerance {check['tolerance']:.0e}) or labels differ"
        )
    if not fold["passed"]:
        why.append(
            f"the final BN folded into the last Linear changes the probabilities: max |Δprob| "
            f"{fold['max_abs_diff_probs']:.2e} (tolerance {fold['tolerance']:.0e})"
        )
    return "; ".join(why)


def _promote(tmp: Path, out_dir: Path, with_int8: bool) -> None:
    """Move the checked files over models/ (each rename atomic)."""
    os.replace(tmp / "model.onnx", out_dir / "model.onnx")
    os.replace(tmp / "model.json", out_dir / "model.json")
    if with_int8:
        os.replace(tmp / "model.int8.onnx", out_dir / "model.int8.onnx")


@dataclasses.dataclass(frozen=True)
class ExportPaths:
    """The prepared splits (the chosen cell's data) and the model folder (model.onnx, model.json,
    parity.json, metrics.json)."""

    splits: Path
    out: Path


def run(
    cfg: Config,
    paths: ExportPaths,
    tracker: MlflowTracker = MLFLOW,
    *,
    run_id: str | None = None,
    register: bool = True,
    int8: bool = False,
    log=print,
) -> dict:
    """The export's core (`export`): the honest choice over the store's cells, rebuilt, exported,
    checked, promoted and registered. It chooses among runs by MLflow filters and registers the
    model in MLflow's registry, so it needs the store-backed tracker. Raises ExportError."""
    tracker.setup(cfg, "export")
    return export(cfg, paths.splits, paths.out, run_id=run_id, log=log, register=register, int8=int8)


def main(cfg: Config, args: argparse.Namespace) -> int:
    """`finalbn export`: the core (`run`) on the store; exit 1 (one line) when the export cannot go on."""
    tracking.detach_project_run()  # under `mlflow run -e export`: the export trains its own run
    try:
        run(
            cfg,
            ExportPaths(Path(args.splits), Path(args.out)),
            MLFLOW,
            run_id=args.run_id,
            log=lambda m: print(m, flush=True),
            register=not args.no_register,
            int8=args.quantize,
        )
    except ExportError as exc:
        print(f"finalbn export: failed: {exc}", file=sys.stderr)
        return 1
    print(f"export: {args.out}/model.onnx, {args.out}/model.json, {args.out}/parity.json")
    return 0

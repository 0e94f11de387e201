"""models/model.json: what the field needs to use the model — classes, input and preprocessing,
where it came from, how it was chosen, its validation metrics, and the decision rules.

    rules = decision_rules(src, val_labels, val_p1, train_counts, prevalences, replicates)
    card = model_card(src, size, spec.preprocessing(), onnx_info, selected, rules, train_counts)

The decision rules are set on the pooled validation predictions of the replicates behind the
choice (`finalbn.decision`): the operating curve (every cut's TPR and FPR) is stored whole, so the
field command can apply any prevalence, and the cut for each of `selection.prevalences` is
written out with what it promises (the share of healthy images flagged, its 95 % upper bound,
the share of diseased images found). The training-count prior correction is given only where it
is valid (`decision.prior_rule_applies`): not for a final BN or SELU, class weights, or another loss.
"""
from __future__ import annotations

import numpy as np

from finalbn import decision
from finalbn.config import TOGGLES, final_layer
from finalbn.decision import prior_threshold
from finalbn.stages.export.onnx import INPUT, OUTPUTS
from finalbn.stages.export.select import Source

__all__ = ["CLASSES", "decision_rules", "model_card", "prior_threshold", "version_description", "version_tags"]

CLASSES = ("healthy", "diseased")  # label 0 (majority) and 1 (minority) of every split


def decision_rules(src: Source, val_labels: np.ndarray, val_p1: np.ndarray, train_counts: tuple[int, int],
                   prevalences: tuple[float, ...], replicates: list[int]) -> dict:
    """The card's `decision`: argmax, the validation operating curve, the cut at each prevalence,
    and the prior correction where it is valid. Raises ValueError when validation lacks a class."""
    curve = decision.operating_curve(val_labels, val_p1)
    curve["replicates"] = list(replicates)
    valid, why = decision.prior_rule_applies(final_layer(src.cfg.model, src.cfg.ablation), src.cfg.ablation.wl,
                                             src.cfg.train.loss)
    prior = {"applies": valid, "why": why, "train_prevalence": train_counts[1] / sum(train_counts),
             "rule": "threshold = k / (1 + k), k = (n1 / n0) * (1 - prevalence) / prevalence"}
    if valid:
        prior["examples"] = {str(p): prior_threshold(train_counts, p) for p in prevalences}
    flagged = float(np.mean(val_p1[val_labels == 0] > 0.5))
    return {
        "default": "argmax",
        "argmax": "label 1 when P(diseased) > P(healthy), i.e. P(diseased) > 0.5",
        "argmax_validation": {"healthy_flagged": flagged,
                              "diseased_found": float(np.mean(val_p1[val_labels == 1] > 0.5))},
        "at_prevalence": [decision.at_prevalence(curve, p) for p in prevalences],
        "operating_curve": curve,
        "how": (f"the cut with the best minority F1 at each prevalence, from the pooled validation predictions of "
                f"replicates {', '.join(map(str, replicates))} ({curve['positives']} diseased, {curve['negatives']} "
                "healthy), their TPR and FPR reweighted to the prevalence (finalbn-field --prevalence takes any "
                "other); `fpr` is the share of healthy images the cut flags, `fpr_upper95` its 95 % upper bound, "
                "`tpr` the share of diseased it finds, `tpr_lower95` its 95 % lower bound (the configuration was "
                "chosen on these predictions, so expect the field's TPR toward the lower bound)"),
        "prior_correction": prior,
    }


def model_card(src: Source, size: int, spec_pre: dict, onnx_info: dict, selected: dict, rules: dict,
               train_counts: tuple[int, int], intensity="auto") -> dict:
    """model.json; `preprocessing.intensity` is how training decoded images of more than 8 bits
    (`images.decode`, split.json's), which finalbn-field applies too."""
    ab = src.cfg.ablation
    return {
        "format": "finalbn-field/1",
        "classes": list(CLASSES), "positive_class": 1,
        "arch": src.cfg.model.arch, "input": {"name": INPUT, "dtype": "float32", "shape": ["batch", 3, size, size],
                                              "layout": "NCHW", "color": "RGB"},
        "outputs": list(OUTPUTS), "image_size": size,
        "preprocessing": {**spec_pre, "size": size, "intensity": intensity},
        "onnx": onnx_info,
        "source_run_id": src.run_id, "model_run_id": src.model_run_id, "retrained": src.retrained,
        "dataset": src.dataset, "replicate": src.replicate, "manifest_sha256": src.manifest_sha256,
        "configuration": {t.upper(): getattr(ab, t) for t in TOGGLES},
        "final_layer": final_layer(src.cfg.model, ab),
        "selection": selected,
        "validation": {k: src.val.get(k) for k in ("auroc", "ap", "f1_1", "balanced_accuracy", "ece")},
        "source_validation": {k: src.source_val.get(k) for k in ("auroc", "ap", "f1_1")},
        "train_counts": list(train_counts),
        "decision": rules,
    }


def _pm(d: dict) -> str:
    lo, hi = (d.get("ci95") or [None, None])[:2]
    ci = f" [95 % CI {lo:.3f}, {hi:.3f}]" if lo is not None and hi is not None else ""
    return f"{d['mean']:.3f}{ci}" if d.get("mean") is not None else "n/a"


def version_description(card: dict) -> str:
    """The registered version's description (Markdown, as MLflow's model page shows it): the
    configuration, how it was chosen, its validation metrics and what to expect in the field at
    each prevalence (the card's decision rules)."""
    sel, val = card["selection"], card["validation"]
    on = [k for k, v in card["configuration"].items() if v] or ["none"]
    lines = [f"**{sel['config_name']}** (config {sel['config_id']}: {', '.join(on)} on; final layer "
             f"{card['final_layer']}), {card['arch']} at {card['image_size']} px, trained on {card['dataset']} "
             f"replicate {card['replicate']} ({card['train_counts'][0]} {card['classes'][0]} / "
             f"{card['train_counts'][1]} {card['classes'][1]}).", "",
             f"Chosen: {sel['how']}; from {sel['source']}.",
             f"Validation AUROC over replicates {', '.join(map(str, sel['replicates']))}: "
             f"{_pm(sel['validation_auroc'])}; test minority F1 over them {_pm(sel['test_minority_f1'])} "
             "(reported, never used to choose).",
             f"This model on validation: AUROC {val['auroc']:.3f}, minority F1 {val['f1_1']:.3f}, ECE {val['ece']:.3f}.",
             "", "Expected in the field (cut on pooled validation predictions; `finalbn-field --prevalence`):", "",
             "| prevalence | flag P(diseased) ≥ | healthy flagged (≤ 95 %) | diseased found (≥ 95 %) | F1 |",
             "|---|---|---|---|---|"]
    for r in card["decision"]["at_prevalence"]:
        lines.append(f"| {r['prevalence']:g} | {r['threshold']:.3f} | {r['fpr']:.1%} ({r['fpr_upper95']:.1%}) | "
                     f"{r['tpr']:.1%} ({r['tpr_lower95']:.1%}) | {r['f1']:.3f} |")
    seen = card["decision"]["argmax_validation"]
    lines += ["", f"Argmax (the default) flags {seen['healthy_flagged']:.1%} of healthy and finds "
              f"{seen['diseased_found']:.1%} of diseased validation images. The model card is `extra_files/model.json`."]
    return "\n".join(lines)


def version_tags(card: dict) -> dict[str, str]:
    """Searchable tags of the registered version."""
    sel = card["selection"]
    return {"config_name": sel["config_name"], "config_id": str(sel["config_id"]), "arch": card["arch"],
            "dataset": card["dataset"], "image_size": str(card["image_size"]), "source_run_id": card["source_run_id"],
            "validation_auroc": f"{card['validation']['auroc']:.4f}", "final_layer": card["final_layer"]}

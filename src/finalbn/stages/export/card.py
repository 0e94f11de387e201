"""models/model.json: what the field needs to use the model — classes, input and preprocessing,
where it came from, how it was chosen, its validation metrics, and the decision rules.

    rules = decision_rules(src, val_labels, val_p1, train_counts, prevalences, replicates)
    card = model_card(src, size, spec.preprocessing(), onnx_info, selected, rules, train_counts)

The decision rules are set on the pooled validation predictions of the replicates behind the
choice (`finalbn_field.decision`): the operating curve (every cut's TPR and FPR) is stored whole, so the
field command can apply any prevalence, and the cut for each of `selection.prevalences` is
written out with what it promises (the share of healthy images flagged, its 95 % upper bound,
the share of diseased images found). The training-count prior correction is given only where it
is valid (`decision.prior_rule_applies`): not for a final BN or SELU, class weights, or another loss.

Those estimates are optimistic: the predictions that set the cuts are those of the replicates that
chose the configuration, and the model shipped is one of them (replicate 0's). The card's
`operating_points_held_out` measures by how much: the same cuts applied to the test predictions of
the configuration's runs on replicates >= k (`held_out_points`; models that neither chose the
configuration nor saw those images), their TPR, FPR and F1 at each prevalence set beside the
validation estimates, the difference named optimism — or one sentence saying why it could not be
measured.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from finalbn.config import TOGGLES, final_layer
from finalbn.stages.export.onnx import FOLD_TOLERANCE, INPUT, OUTPUTS
from finalbn.stages.export.select import Source
from finalbn.stats import selection
from finalbn_field import decision
from finalbn_field.decision import prior_threshold

__all__ = [
    "CLASSES",
    "decision_rules",
    "final_bn_note",
    "held_out_card",
    "held_out_points",
    "model_card",
    "prior_threshold",
    "version_description",
    "version_tags",
]

CLASSES = ("healthy", "diseased")  # label 0 (majority) and 1 (minority) of every split


def decision_rules(
    src: Source,
    val_labels: np.ndarray,
    val_p1: np.ndarray,
    train_counts: tuple[int, int],
    prevalences: tuple[float, ...],
    replicates: list[int],
) -> dict:
    """The card's `decision`: argmax, the validation operating curve, the cut at each prevalence,
    and the prior correction where it is valid. Raises ValueError when validation lacks a class."""
    curve = decision.operating_curve(val_labels, val_p1)
    curve["replicates"] = list(replicates)
    valid, why = decision.prior_rule_applies(
        final_layer(src.cfg.model, src.cfg.ablation), src.cfg.ablation.wl, src.cfg.train.loss
    )
    prior = {
        "applies": valid,
        "why": why,
        "train_prevalence": train_counts[1] / sum(train_counts),
        "rule": "threshold = k / (1 + k), k = (n1 / n0) * (1 - prevalence) / prevalence",
    }
    if valid:
        prior["examples"] = {str(p): prior_threshold(train_counts, p) for p in prevalences}
    flagged = float(np.mean(val_p1[val_labels == 0] > 0.5))
    return {
        "default": "argmax",
        "argmax": "label 1 when P(diseased) > P(healthy), i.e. P(diseased) > 0.5",
        "argmax_validation": {
            "healthy_flagged": flagged,
            "diseased_found": float(np.mean(val_p1[val_labels == 1] > 0.5)),
        },
        "at_prevalence": [decision.at_prevalence(curve, p) for p in prevalences],
        "operating_curve": curve,
        "how": (
            f"the cut with the best minority F1 at each prevalence, from the pooled validation predictions of "
            f"replicates {selection.replicate_span(replicates)} (the replicates that chose the configuration; the "
            f"shipped model is replicate {src.replicate}'s; {curve['positives']} diseased, {curve['negatives']} "
            "healthy), their TPR and FPR reweighted to the prevalence (finalbn-field --prevalence takes any "
            "other); `fpr` is the share of healthy images the cut flags, `fpr_upper95` its 95 % upper bound, "
            "`tpr` the share of diseased it finds, `tpr_lower95` its 95 % lower bound (the configuration was "
            "chosen on these predictions, so expect the field's TPR toward the lower bound; "
            "`operating_points_held_out` measures the optimism on held-out replicates)"
        ),
        "prior_correction": prior,
    }


def held_out_points(cuts: Mapping[float, float], tables: Sequence[pd.DataFrame]) -> list[dict]:
    """The cuts on test predictions that neither set them nor chose the configuration.

    cuts: prevalence pi (a share in (0, 1)) -> threshold on P(diseased) (flag when p1 >= threshold,
    as `decision.operating_curve` cuts). tables: one test prediction table per held-out replicate
    (`predictions/test_predictions.csv`: `label` 0/1, `p1_last` P(diseased) at the last epoch).
    Per table: TPR = share of label-1 rows flagged, FPR = share of label-0 rows flagged, F1 at pi
    = `decision.f1_at(TPR, FPR, pi)` (the test split is balanced: reweighted to pi). Returns, per
    cut in order, {prevalence, threshold, tpr, fpr, f1 (each the mean over the tables: a replicate
    is the unit), f1_per_table, n (tables)}. Raises ValueError for no table or a table lacking a class."""
    if not tables:
        raise ValueError("no held-out test predictions")
    rates = []
    for t in tables:
        y, p = t["label"].to_numpy(dtype=int), t["p1_last"].to_numpy(dtype=float)
        if not ((y == 1).any() and (y == 0).any()):
            raise ValueError(
                f"a held-out test table lacks a class ({int((y == 1).sum())} diseased, {int((y == 0).sum())} healthy)"
            )
        rates.append((y, p))
    out = []
    for prevalence, threshold in cuts.items():
        tpr = np.array([np.mean(p[y == 1] >= threshold) for y, p in rates])
        fpr = np.array([np.mean(p[y == 0] >= threshold) for y, p in rates])
        f1 = decision.f1_at(tpr, fpr, float(prevalence))
        out.append(
            {
                "prevalence": float(prevalence),
                "threshold": float(threshold),
                "tpr": float(tpr.mean()),
                "fpr": float(fpr.mean()),
                "f1": float(f1.mean()),
                "f1_per_table": [float(x) for x in f1],
                "n": len(rates),
            }
        )
    return out


def held_out_card(
    rules: dict,
    tables: Mapping[int, pd.DataFrame],
    missing: Sequence[int],
    pool: Sequence[int],
    model_replicate: int,
    k: int,
) -> dict:
    """model.json's `operating_points_held_out`: the cuts of `rules["at_prevalence"]` (set on the
    validation predictions of replicates `pool`, 0..k-1) applied to the test predictions of the
    configuration's held-out replicates (`tables`: replicate -> table; `missing`: held-out replicates
    whose run logged none). Per prevalence: `validation` (the cut's pooled validation TPR, FPR, F1),
    `held_out_test` (their means over the held-out replicates, `held_out_points`) and `optimism`
    (validation minus held-out test: positive TPR or F1, negative FPR, means the validation
    estimate flatters the cut). `measured` False with `why` (one sentence) when nothing is held out."""
    span, reps = selection.replicate_span(pool), sorted(tables)
    out = {
        "measured": False,
        "pool": sorted(int(r) for r in pool),
        "model_replicate": int(model_replicate),
        "replicates": reps,
        "missing": sorted(int(r) for r in missing),
    }
    if not reps:
        why = (
            f"its runs on held-out replicates {selection.replicate_span(missing)} logged no test predictions "
            "(trained by an older finalbn: rerun `finalbn grid`)"
            if missing
            else f"the configuration has no FINISHED run on a replicate beyond {selection.replicate_span(range(k))} "
            "(only the grid's headline configurations run there: raise grid.headline.replicates above "
            "selection.replicates)"
        )
        out.update(at_prevalence=[], why=f"The optimism of the validation estimates could not be measured: {why}.")
        return out
    rows = rules["at_prevalence"]
    test = held_out_points({r["prevalence"]: r["threshold"] for r in rows}, [tables[r] for r in reps])
    out["measured"] = True
    out["at_prevalence"] = [
        {
            "prevalence": v["prevalence"],
            "threshold": v["threshold"],
            "validation": {m: v[m] for m in ("tpr", "fpr", "f1")},
            "held_out_test": {
                **{m: t[m] for m in ("tpr", "fpr", "f1")},
                "f1_per_replicate": dict(zip(map(str, reps), t["f1_per_table"])),
                "n": t["n"],
            },
            "optimism": {m: v[m] - t[m] for m in ("tpr", "fpr", "f1")},
        }
        for v, t in zip(rows, test)
    ]
    out["how"] = (
        f"cuts and the estimates beside them from the validation predictions of replicates {span} (the "
        f"replicates that chose the configuration); the shipped model is replicate {model_replicate}'s; "
        f"held-out replicates {selection.replicate_span(reps)} at the same cuts give the test TPR, FPR and "
        f"F1 beside them (each replicate's own model of this configuration on its test split, "
        f"reweighted to the prevalence; mean over {len(reps)} replicate(s)); optimism = validation "
        "estimate minus held-out test estimate"
        + (f"; held-out replicate(s) {selection.replicate_span(missing)} logged no test predictions" if missing else "")
    )
    return out


def model_card(
    src: Source,
    size: int,
    spec_pre: dict,
    onnx_info: dict,
    selected: dict,
    rules: dict,
    train_counts: tuple[int, int],
    intensity="auto",
    held_out: dict | None = None,
) -> dict:
    """model.json; `preprocessing.intensity` is how training decoded images of more than 8 bits
    (`images.decode`, split.json's), which finalbn-field applies too; `held_out` (`held_out_card`)
    is `operating_points_held_out`, written only when given."""
    ab = src.cfg.ablation
    return {
        "format": "finalbn-field/1",
        "classes": list(CLASSES),
        "positive_class": 1,
        "arch": src.cfg.model.arch,
        "input": {
            "name": INPUT,
            "dtype": "float32",
            "shape": ["batch", 3, size, size],
            "layout": "NCHW",
            "color": "RGB",
        },
        "outputs": list(OUTPUTS),
        "image_size": size,
        "preprocessing": {**spec_pre, "size": size, "intensity": intensity},
        "onnx": onnx_info,
        "source_run_id": src.run_id,
        "model_run_id": src.model_run_id,
        "retrained": src.retrained,
        "dataset": src.dataset,
        "replicate": src.replicate,
        "manifest_sha256": src.manifest_sha256,
        "configuration": {t.upper(): getattr(ab, t) for t in TOGGLES},
        "final_layer": final_layer(src.cfg.model, ab),
        "final_bn": final_bn_note(final_layer(src.cfg.model, ab), onnx_info.get("final_bn", "kept")),
        "selection": selected,
        "validation": {k: src.val.get(k) for k in ("auroc", "ap", "f1_1", "balanced_accuracy", "ece")},
        "source_validation": {k: src.source_val.get(k) for k in ("auroc", "ap", "f1_1")},
        "train_counts": list(train_counts),
        "decision": rules,
        **({"operating_points_held_out": held_out} if held_out is not None else {}),
    }


def final_bn_note(final: str, in_onnx: str) -> dict:
    """The card's `final_bn`: {folded (bool), how (one sentence)}. `final`: the final layer (one of
    `FINAL_LAYERS`); `in_onnx`: what the export did with a final BN (`export_onnx`'s `final_bn`:
    "folded into the last Linear", "kept" or "none"). The card is written only after the fold's
    parity held, so a folded note states its tolerance."""
    if final != "bn" or in_onnx == "none":
        return {"folded": False, "how": f"no final BN (final layer {final}): nothing to fold"}
    if in_onnx == "kept":
        return {"folded": False, "how": "the final BN is a BatchNormalization node of model.onnx (not folded)"}
    return {
        "folded": True,
        "how": (
            "the final BN is folded into the last Linear at export (eval mode, its running statistics: "
            "W' = diag(gamma / sqrt(var + eps)) W, b' = gamma (b - mean) / sqrt(var + eps) + beta), so "
            "model.onnx has no BatchNormalization after its last Gemm/MatMul; its probabilities equal the "
            f"unfolded network's within {FOLD_TOLERANCE:.0e} (parity.json's `fold`)"
        ),
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
    lines = [
        f"**{sel['config_name']}** (config {sel['config_id']}: {', '.join(on)} on; final layer "
        f"{card['final_layer']}), {card['arch']} at {card['image_size']} px, trained on {card['dataset']} "
        f"replicate {card['replicate']} ({card['train_counts'][0]} {card['classes'][0]} / "
        f"{card['train_counts'][1]} {card['classes'][1]}).",
        "",
        f"Chosen: {sel['how']}; from {sel['source']}.",
        f"Validation AUROC over replicates {', '.join(map(str, sel['replicates']))}: "
        f"{_pm(sel['validation_auroc'])}; test minority F1 over them {_pm(sel['test_minority_f1'])} "
        "(reported, never used to choose).",
        f"This model on validation: AUROC {val['auroc']:.3f}, minority F1 {val['f1_1']:.3f}, ECE {val['ece']:.3f}."
        + (
            " Its final BN is folded into the last Linear of model.onnx."
            if card.get("final_bn", {}).get("folded")
            else ""
        ),
        "",
        f"Expected in the field (cut on the pooled validation predictions of replicates "
        f"{selection.replicate_span(sel['replicates'])}, the replicates that chose the configuration; "
        "`finalbn-field --prevalence`):",
        "",
        "| prevalence | flag P(diseased) ≥ | healthy flagged (≤ 95 %) | diseased found (≥ 95 %) | F1 |",
        "|---|---|---|---|---|",
    ]
    for r in card["decision"]["at_prevalence"]:
        lines.append(
            f"| {r['prevalence']:g} | {r['threshold']:.3f} | {r['fpr']:.1%} ({r['fpr_upper95']:.1%}) | "
            f"{r['tpr']:.1%} ({r['tpr_lower95']:.1%}) | {r['f1']:.3f} |"
        )
    lines += ["", *held_out_markdown(card.get("operating_points_held_out"))]
    seen = card["decision"]["argmax_validation"]
    lines += [
        f"Argmax (the default) flags {seen['healthy_flagged']:.1%} of healthy and finds "
        f"{seen['diseased_found']:.1%} of diseased validation images. The model card is `extra_files/model.json`."
    ]
    return "\n".join(lines)


def held_out_markdown(held: dict | None) -> list[str]:
    """The description's lines on `operating_points_held_out`: its sentence and, when measured, a
    table of each prevalence's validation estimate, held-out test estimate and optimism."""
    if not held:
        return []
    if not held["measured"]:
        return [held["why"], ""]
    lines = [
        f"Operating points: {held['how']}.",
        "",
        "| prevalence | cut | F1: validation → held-out test (optimism) | diseased found | healthy flagged |",
        "|---|---|---|---|---|",
    ]
    for r in held["at_prevalence"]:
        v, t, o = r["validation"], r["held_out_test"], r["optimism"]
        lines.append(
            f"| {r['prevalence']:g} | {r['threshold']:.3f} | {v['f1']:.3f} → {t['f1']:.3f} "
            f"({o['f1']:+.3f}) | {v['tpr']:.1%} → {t['tpr']:.1%} | {v['fpr']:.1%} → {t['fpr']:.1%} |"
        )
    return lines + [""]


def version_tags(card: dict) -> dict[str, str]:
    """Searchable tags of the registered version."""
    sel = card["selection"]
    return {
        "config_name": sel["config_name"],
        "config_id": str(sel["config_id"]),
        "arch": card["arch"],
        "dataset": card["dataset"],
        "image_size": str(card["image_size"]),
        "source_run_id": card["source_run_id"],
        "validation_auroc": f"{card['validation']['auroc']:.4f}",
        "final_layer": card["final_layer"],
    }

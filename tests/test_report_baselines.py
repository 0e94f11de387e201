"""The imbalance baselines' Holm family and the rivals listed apart; the exploratory flag of BN by
(UF, WL) setting. Tiny hand-made tables, numbers checked by hand."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from finalbn.stages.report import baselines
from finalbn.stages.report.answer import by_setting_section
from finalbn.stages.report.factorial import SETTING_COLUMNS, by_setting
from finalbn.stages.report.markdown import Page

TOGGLES = ("bn", "wl", "da", "mx", "uf", "wd")
PRODUCT = list(itertools.product([True, False], repeat=6))

# per replicate (0..3): none 63, BN only 31, and the methods' test minority F1 on base 63
F63 = [0.10, 0.12, 0.08, 0.11]
F31 = [0.50, 0.40, 0.45, 0.52]
FOCAL = [0.35, 0.26, 0.30, 0.37]
LA = [0.60, 0.41, 0.50, 0.47]


def _cell(cid, rep, f1, baseline="", ece=0.2, auroc=None):
    flags = dict(zip(TOGGLES, PRODUCT[cid]))
    return {
        "dataset": "apple",
        "arch": "lite0",
        "replicate": rep,
        "config_id": cid,
        "baseline": baseline,
        **flags,
        "test_f1_1": f1,
        "test_f1_1_pc": np.nan,
        "test_f1_1_vt": f1,
        "test_auroc": 0.5 + f1 / 2 if auroc is None else auroc,
        "test_ap": 0.5,
        "test_ece": ece,
        "val_auroc": 0.8,
    }


def _cells(extra_methods=()) -> pd.DataFrame:
    rows = []
    for r in range(4):
        rows += [
            _cell(63, r, F63[r], ece=0.30),
            _cell(31, r, F31[r]),
            _cell(63, r, FOCAL[r], "focal"),
            _cell(63, r, LA[r], "logit_adjusted"),
            _cell(63, r, F63[r], "temperature", ece=0.05),
        ]
        rows += [_cell(63, r, f[r], name) for name, f in extra_methods]
    return pd.DataFrame(rows)


def _p(d) -> float:
    d = np.asarray(d, float)
    return float(2 * stats.t.sf(abs(d.mean()) / (d.std(ddof=1) / math.sqrt(len(d))), len(d) - 1))


def _holm_by_hand(p: list[float]) -> list[float]:
    order = sorted(range(len(p)), key=lambda i: p[i])
    out, running = [0.0] * len(p), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p) - rank) * p[i]))
        out[i] = running
    return out


def test_paired_p_and_one_holm_family_per_scope():
    t = baselines.imbalance_table(_cells()).set_index("method")
    assert list(t.index) == ["none (63)", "BN only (31)", "focal", "logit_adjusted", "temperature"]
    assert (t["family"] == "baselines").all()
    sub = lambda a, b: np.subtract(a, b)  # noqa: E731
    auc = lambda f: [0.5 + x / 2 for x in f]  # noqa: E731
    # every comparison of the table, hand-computed: (method, comparison) -> raw p (sd > 0 everywhere but temperature's base)
    raw = {
        ("none (63)", "f1_1_vs_bn"): _p(sub(F63, F31)),
        ("none (63)", "auroc_vs_bn"): _p(sub(auc(F63), auc(F31))),
        ("focal", "f1_1_vs_bn"): _p(sub(FOCAL, F31)),
        ("focal", "auroc_vs_bn"): _p(sub(auc(FOCAL), auc(F31))),
        ("focal", "f1_1_vs_base"): _p(sub(FOCAL, F63)),
        ("logit_adjusted", "f1_1_vs_bn"): _p(sub(LA, F31)),
        ("logit_adjusted", "auroc_vs_bn"): _p(sub(auc(LA), auc(F31))),
        ("logit_adjusted", "f1_1_vs_base"): _p(sub(LA, F63)),
        ("temperature", "f1_1_vs_bn"): _p(sub(F63, F31)),
        ("temperature", "auroc_vs_bn"): _p(sub(auc(F63), auc(F31))),
        ("temperature", "f1_1_vs_base"): 1.0,
    }  # all differences 0: t_interval's p = 1
    for (m, c), p in raw.items():
        assert t.loc[m, f"{c}_p"] == pytest.approx(p, rel=1e-9), (m, c)
    adjusted = dict(zip(raw, _holm_by_hand(list(raw.values()))))
    for (m, c), p in adjusted.items():
        assert t.loc[m, f"{c}_p_holm"] == pytest.approx(p, rel=1e-9), (m, c)
    assert len(adjusted) == 11 and t.loc["BN only (31)", [f"{c}_p_holm" for c in baselines.COMPARISONS]].isna().all()
    assert math.isnan(t.loc["none (63)", "f1_1_vs_base_p_holm"])


def test_holm_family_is_per_dataset_and_arch():
    one = baselines.imbalance_table(_cells())
    two = baselines.imbalance_table(pd.concat([_cells(), _cells().assign(dataset="pear")], ignore_index=True))
    for ds in ("apple", "pear"):  # a second scope does not enlarge the first's family
        part = two[two["dataset"] == ds].reset_index(drop=True)
        assert part["focal" == part["method"]]["f1_1_vs_bn_p_holm"].to_numpy() == pytest.approx(
            one[one["method"] == "focal"]["f1_1_vs_bn_p_holm"].to_numpy()
        )


def test_words_follow_the_holm_adjusted_p():
    t = baselines.imbalance_table(_cells()).set_index("method")
    lines = {line.split(" ", 1)[0]: line for line in baselines.summary_lines(baselines.imbalance_table(_cells()))}
    assert t.loc["focal", "f1_1_vs_bn_p_holm"] < 0.05  # FOCAL − F31 ≈ −0.15 with a small spread
    assert "— falls short of BN only," in lines["focal"]
    assert f"Holm-adjusted p = {t.loc['focal', 'f1_1_vs_bn_p_holm']:.2g} (family `baselines`)" in lines["focal"]
    # logit-adjusted: +0.0275 on average but spread ±0.07: raw and adjusted p far above 0.05
    assert t.loc["logit_adjusted", "f1_1_vs_bn_p_holm"] > 0.05
    assert "— is not distinguishable from BN only," in lines["logit_adjusted"]
    assert "beats" not in lines["logit_adjusted"]
    for line in lines.values():
        assert "Holm-adjusted p = " in line


def test_a_raw_p_below_005_is_not_enough():
    # a method barely below BN: raw p < 0.05 alone, but Holm over the 11 + 3 comparisons lifts it above
    near = [f - 0.03 + e for f, e in zip(F31, (0.0, 0.012, -0.012, 0.004))]
    t = baselines.imbalance_table(_cells([("near", near)])).set_index("method")
    assert t.loc["near", "f1_1_vs_bn_p"] < 0.05 < t.loc["near", "f1_1_vs_bn_p_holm"]
    line = next(s for s in baselines.summary_lines(t.reset_index()) if s.startswith("near "))
    assert "is not distinguishable from BN only" in line and "falls short" not in line


def test_temperature_and_same_argmax_methods_are_listed_apart():
    # "copy" has its base's minority F1 on every replicate (to 1e-12) under another name: detected from the data
    t = baselines.imbalance_table(_cells([("copy", [f + 1e-12 for f in F63])]))
    by = t.set_index("method")["moves_decisions"]
    assert by.to_dict() == {
        "none (63)": True,
        "BN only (31)": True,
        "focal": True,
        "logit_adjusted": True,
        "temperature": False,
        "copy": False,
    }
    lines = baselines.summary_lines(t)
    temp = next(s for s in lines if s.startswith("temperature"))
    assert temp.startswith(
        "temperature (on config 63) changes no decision (its argmax equals its base's): listed "
        "apart, ECE 0.050 vs 0.300 (its base);"
    )
    assert "falls short" not in temp and "not counted for or against BN only" in temp and "Holm-adjusted p = " in temp
    assert next(s for s in lines if s.startswith("copy")).startswith("copy (on config 63) changes no decision")
    compact = baselines.compact_line(t)
    assert compact == (
        "falls short of BN only: focal; is not distinguishable from BN only: logit_adjusted; "
        "listed apart as changing no decision: temperature, copy"
    )
    # the header's sentence form: "word: method, method; word: method"
    for part in compact.split("; "):
        word, methods = part.split(": ")
        assert word and all(m.strip() for m in methods.split(", "))


def test_temperature_is_apart_by_name_even_when_its_f1_moved():
    t = baselines.imbalance_table(_cells([("temperature_v2", [f + 0.05 for f in F63])])).set_index("method")
    assert not t.loc["temperature_v2", "moves_decisions"]
    assert baselines.moves_decisions(
        "focal",
        pd.DataFrame({"replicate": [0], "test_f1_1": [0.3]}),
        pd.DataFrame({"replicate": [0], "test_f1_1": [0.3 + 1e-6]}),
    )


def test_one_replicate_is_exploratory_without_p():
    cells = _cells()
    t = baselines.imbalance_table(cells[cells["replicate"] == 0]).set_index("method")
    assert t["f1_1_vs_bn_p"].isna().all() and t["f1_1_vs_bn_p_holm"].isna().all()
    lines = baselines.summary_lines(t.reset_index())
    focal = next(s for s in lines if s.startswith("focal"))
    assert "is exploratory (one replicate) against BN only" in focal and "over 1 replicate," in focal
    assert "Holm-adjusted p = n/a" in focal
    assert (baselines.shown(t.reset_index())["replicates"] == "1, exploratory (one replicate)").all()


# --------------------------------------------------------------------------- BN by (UF, WL) setting


def _grid(replicates) -> pd.DataFrame:
    """All 64 configurations on each replicate; F1 = 0.3 + 0.2 BN + 0.01 × replicate."""
    rows = []
    for r in replicates:
        for cid in range(64):
            f = dict(zip(TOGGLES, PRODUCT[cid]))
            rows.append(
                {
                    "dataset": "apple",
                    "arch": "x",
                    "replicate": r,
                    "config_id": cid,
                    **f,
                    "test_f1_1": 0.3 + 0.2 * f["bn"] + 0.01 * r,
                }
            )
    return pd.DataFrame(rows)


def test_by_setting_one_replicate_is_exploratory():
    s = by_setting(_grid([0]), "apple/x")
    assert list(s.columns) == SETTING_COLUMNS
    assert s["factorial_exploratory"].tolist() == [True] * 4 and (s["factorial_replicates"] == 1).all()
    assert (s["factorial_pairs"] == 8).all() and s["factorial_estimate"].to_numpy() == pytest.approx([0.2] * 4)


def test_by_setting_several_replicates_is_not_exploratory():
    s = by_setting(_grid([0, 1, 2]), "apple/x")
    assert not s["factorial_exploratory"].any() and (s["factorial_replicates"] == 3).all()
    assert (s["factorial_pairs"] == 24).all()
    # a replicate missing one configuration is not complete: the factorial rests on the other two
    g = _grid([0, 1, 2])
    s = by_setting(g[~((g["replicate"] == 2) & (g["config_id"] == 5))], "apple/x")
    assert (s["factorial_replicates"] == 2).all() and not s["factorial_exploratory"].any()


def test_by_setting_without_a_complete_replicate_is_not_flagged():
    g = _grid([0])
    s = by_setting(g[g["config_id"] != 5], "apple/x")
    assert s["factorial_estimate"].isna().all() and (s["factorial_replicates"] == 0).all()
    assert not s["factorial_exploratory"].any()


def test_by_setting_section_labels_one_replicate_numbers(tmp_path):
    one, page = tmp_path / "one", None
    one.mkdir()
    page = Page(one, multi_arch=False)
    by_setting_section(page, by_setting(_grid([0]), "apple/x"))
    md = "\n".join(page.md)
    assert "| setting | factorial evidence |" in md and md.count("| exploratory (one replicate) |") >= 4
    assert (
        "The factorial's per-setting numbers of every setting rest on one replicate: exploratory (one replicate)" in md
    )
    three = tmp_path / "three"
    three.mkdir()
    page = Page(three, multi_arch=False)
    by_setting_section(page, by_setting(_grid([0, 1, 2]), "apple/x"))
    md = "\n".join(page.md)
    assert "| 3 replicates |" in md and "exploratory (one replicate)" not in md

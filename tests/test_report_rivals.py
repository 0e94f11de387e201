"""The report's rivals at each field prevalence, the strongest rival's sentence and the planner's section,
on hand-made rows."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from finalbn.stages.export import select
from finalbn.stages.report import rivals
from finalbn.stages.report.markdown import Page
from finalbn.stats import inference
from finalbn.tracking import RunRecord


def _rows(method: str, config_id: int, f1s: list[float], pi: float = 0.05) -> list[dict]:
    return [
        {
            "run_id": f"{method}{config_id}r{r}",
            "dataset": "d",
            "arch": "a",
            "config_id": config_id,
            "baseline": method,
            "replicate": r,
            "protocol": "last",
            "prevalence": pi,
            "cut_f1_1": f1,
            "f1_1": f1 - 0.1,
        }
        for r, f1 in enumerate(f1s)
    ]


def _at_pi() -> pd.DataFrame:
    bn = [0.70, 0.72, 0.68, 0.71]
    rows = _rows("", 31, bn) + _rows("", 63, [0.40, 0.45, 0.42, 0.41])
    rows += _rows("vector_scaling", 63, [b + d for b, d in zip(bn, [0.01, -0.01, 0.02, -0.02])])  # matches BN
    rows += _rows("patchcore", 63, [0.30, 0.31, 0.29, 0.30])  # far below
    return pd.DataFrame(rows)


def test_each_rival_is_paired_with_bn_only_by_replicate():
    table = rivals.rivals_table(_at_pi())
    by = table.set_index("method")
    vs = by.loc[rivals.label("vector_scaling")]
    assert vs["estimate"] == pytest.approx(0.0) and vs["n"] == 4
    pc = by.loc[rivals.label("patchcore")]
    assert pc["estimate"] == pytest.approx(np.mean([0.30, 0.31, 0.29, 0.30]) - np.mean([0.70, 0.72, 0.68, 0.71]))
    assert pc["p_holm"] < 0.05 and by.loc[rivals.BN_LABEL, "n"] == 0  # BN is the reference: no pair
    assert by.loc[rivals.NONE_LABEL, "f1_argmax"] == pytest.approx(0.32)


def test_the_strongest_rival_is_named_with_its_standing():
    at_pi = pd.concat([_at_pi(), pd.DataFrame(_rows("final_bn_removed", 31, [0.9, 0.9, 0.9, 0.9]))], ignore_index=True)
    line = rivals.best_rival_line(rivals.rivals_table(at_pi), [0.05])
    # the final BN removed at inference is the final BN itself (a sensitivity level), never "the strongest rival"
    assert line is not None and "vector scaling (Guo 2017) 0.703 against 0.703" in line and "Kocaman" not in line
    assert "is not distinguishable from the final BN after Holm's adjustment" in line and "4 paired replicates" in line
    assert rivals.best_rival_line(rivals.rivals_table(_at_pi()), [0.5]) is None  # no rows at that π


def test_the_rivals_section_and_the_planner_section(tmp_path):
    page = Page(tmp_path, multi_arch=False)
    table = rivals.rivals_table(_at_pi())
    rivals.rivals_section(page, table, [0.05])
    needs = {
        "sentence": "To reach minority F1 0.80 at a 5 % prevalence with the final BN, label about 23 defect images.",
        "prevalence": 0.05,
        "needed": {
            "final BN (31)": {"n": 22.4, "ci_low": 14.0, "ci_high": None, "n_max": 40, "extrapolated": False},
            "none (63)": {"n": None, "ci_low": 17996.6, "ci_high": None, "n_max": 40},
            "class_balanced (on 63)": {"n": 41065.2, "ci_low": 16622.6, "ci_high": 1e5, "n_max": 40},
            "lws (on 63)": {"n": 61.2, "ci_low": 30.0, "ci_high": 99.0, "n_max": 40, "extrapolated": True},
            "vector_scaling (on 63)": {"error": "fewer than 3 distinct n"},
        },
        "curves": {"final BN (31)": {"asymptote": 0.91}},
        "mlflow_run_id": "abc",
    }
    assert rivals.needs_section(page, needs, None) == needs["sentence"]
    md = "\n".join(page.md)
    assert "## The rivals at each field prevalence" in md and (tmp_path / "rivals.csv").is_file()
    assert "| 23 | 14–∞ |" in md and "never (the curve levels off below the target) | — |" in md  # no 17997
    assert "more than 160 (4x the 40 measured): not estimable from these counts | — |" in md  # no 41065
    assert "62 (extrapolated beyond the 40 measured) | 30–99 |" in md
    assert "not fitted: fewer than 3 distinct n" in md and "`abc`" in md
    assert rivals.needs_section(Page(tmp_path, multi_arch=False), None, None) is None


def test_an_interval_never_leaves_its_metrics_range():
    r = inference.t_interval([0.85, 1.0, 1.0, 0.95])  # AUROCs: mean 0.95, the t interval's top above 1
    assert r["ci_high"] > 1.0
    c = inference.clipped(r, 0.0, 1.0)
    assert c["clipped"] and c["ci_high"] == 1.0 and c["ci_low"] == pytest.approx(r["ci_low"])
    assert c["estimate"] == r["estimate"] and not inference.clipped(c, 0.0, 1.0)["clipped"]
    assert np.isnan(inference.clipped(inference.t_interval([0.9]), 0.0, 1.0)["ci_high"])  # no interval: none made


def test_the_model_card_clips_the_validation_auroc_interval():
    runs = {
        r: RunRecord(
            run_id=f"r{r}",
            name=f"r{r}",
            status="FINISHED",
            start_time=r,
            end_time=r,
            tags={"config_key": "k", "replicate": str(r), "config_id": "31", "config_name": "BN"},
            params={},
            metrics={"val_last_auroc": v, "val_last_balanced_loss": 0.3, "test_f1_1": 0.5, "test_auroc": 0.9},
        )
        for r, v in enumerate([0.85, 1.0, 1.0, 0.95])
    }
    choice = select.Choice(run=runs[0], key="k", runs=runs, how="", candidates=1)
    card = select.selection_card(choice, positives=28)
    lo, hi = card["validation_auroc"]["ci95"]
    assert hi == 1.0 and 0.7 < lo < 0.95  # the registry's description quotes this interval

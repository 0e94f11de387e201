"""Choices with honest confidence: the report's choice checked on replicates that did not make it,
and the model card's operating points set beside what the same cuts give on held-out replicates'
test predictions. Hand-made cells and prediction tables with hand-computed answers."""

from __future__ import annotations

import itertools
import math

import pandas as pd
import pytest

from finalbn.stages.export import card as export_card
from finalbn.stages.export import select as export_select
from finalbn.stages.report import choice
from finalbn.stages.report.cells import prepare
from finalbn.stats import selection
from finalbn.tracking import RunRecord

TOGGLES = ("bn", "wl", "da", "mx", "uf", "wd")
PRODUCT = list(itertools.product([True, False], repeat=6))


def _row(rep, cid, val_auroc, dataset="apple"):
    flags = dict(zip(TOGGLES, PRODUCT[cid]))
    return {
        "run_id": f"{cid}-{rep}",
        "dataset": dataset,
        "arch": "efficientnet_lite0",
        "replicate": rep,
        "config_id": cid,
        "config_name": "+".join(t.upper() for t in TOGGLES if flags[t]) or "none",
        **flags,
        "selected_epoch": 5,
        "test_f1_1": 0.5,
        "test_f1_0": 0.9,
        "test_precision_1": 0.5,
        "test_recall_1": 0.5,
        "test_precision_0": 0.9,
        "test_recall_0": 0.9,
        "test_ece": 0.1,
        "test_brier": 0.2,
        "test_auroc": 0.75,
        "test_ap": 0.75,
        "test_f1_1_pc": 0.45,
        "test_sel_f1_1": 0.49,
        "val_auroc": val_auroc,
        "val_f1_1": 0.5,
        "val_balanced_loss": 0.5,
    }


def _cells(rows):
    return prepare(pd.DataFrame(rows))[0]


def _lucky_grid():
    """k = 2: config 31 leads on replicates 0-1 (0.95) and is last on 2-4 (0.80); 15 is best there
    (0.92), then 63 (0.88), 47 (0.85). 15 also has replicate 5 (no one else: not shared); 20 runs on
    0-1 only (a candidate never held out); 0 on replicate 0 only (not a candidate)."""
    held = {31: 0.80, 15: 0.92, 63: 0.88, 47: 0.85}
    rows = []
    for cid, later in held.items():
        rows += [_row(r, cid, 0.95 if cid == 31 else 0.90) for r in (0, 1)]
        rows += [_row(r, cid, later) for r in (2, 3, 4)]
    rows += [_row(5, 15, 0.10), _row(0, 20, 0.70), _row(1, 20, 0.70), _row(0, 0, 1.0)]
    return _cells(rows)


def test_a_choice_that_wins_within_sample_but_ranks_last_held_out_says_so():
    cand, lines = choice.selection_table(_lucky_grid(), k=2, n_boot=200)
    assert cand["config_id"].tolist()[0] == 31 and cand["wins"].iloc[0] == 1.0  # within-sample: always
    assert "wins" not in lines[0] and "chosen on validation over replicates 0-1" in lines[0]
    assert lines[1] == (
        "apple/efficientnet_lite0: on held-out replicates 2-4 (not used to choose), the 4 "
        "configurations run there rank config 31 4th of 4 by mean validation AUROC (0.800 vs best "
        "0.920, config 15); chosen on those replicates instead, it would be chosen in 0% of 200 "
        "bootstrap resamples of them"
    )
    assert (
        lines[2].startswith(
            "apple/efficientnet_lite0: within-sample only: config 31 wins 100% of 200 bootstrap "
            "resamples of replicates 0-1"
        )
        and "so optimistic" in lines[2]
    )


def test_selection_csv_carries_the_held_out_mean_and_rank():
    cand, _ = choice.selection_table(_lucky_grid(), k=2, n_boot=50)
    assert {"held_out_val_auroc", "held_out_rank"} <= set(cand.columns)
    got = cand.set_index("config_id")
    assert got.loc[[15, 63, 47, 31], "held_out_val_auroc"].tolist() == pytest.approx([0.92, 0.88, 0.85, 0.80])
    assert got.loc[[15, 63, 47, 31], "held_out_rank"].tolist() == [1, 2, 3, 4]
    assert math.isnan(got.loc[20, "held_out_val_auroc"]) and math.isnan(got.loc[20, "held_out_rank"])
    assert 0 not in got.index  # seen on one replicate: not a candidate at all


def test_a_choice_confirmed_held_out_and_one_that_cannot_be_checked():
    rows = []
    for cid, v in ((31, 0.9), (63, 0.8)):
        rows += [_row(r, cid, v) for r in range(4)]
    _, lines = choice.selection_table(_cells(rows), k=2, n_boot=50)
    assert "rank config 31 1st of 2 by mean validation AUROC (0.900 vs next 0.800, config 63)" in lines[1]
    assert "it would be chosen in 100% of 50" in lines[1]
    _, lines4 = choice.selection_table(_cells(rows), k=4, n_boot=50)
    assert "no candidate was run on a replicate beyond 0-3: the choice cannot be checked" in lines4[1]
    only31 = rows + [_row(4, 31, 0.9)]  # 31 alone beyond 0-3
    _, lines_one = choice.selection_table(_cells(only31), k=4, n_boot=50)
    assert "config 31 is the only candidate run on held-out replicates 4: no held-out ranking" in lines_one[1]


def test_held_out_rows_keep_only_the_replicates_all_share():
    rows = pd.DataFrame(
        {
            "key": ["a"] * 4 + ["b"] * 3 + ["c"] * 2,
            "replicate": [0, 1, 2, 3, 0, 2, 3, 0, 1],
            "val_auroc": [0.9, 0.9, 0.5, 0.6, 0.8, 0.7, 0.8, 1.0, 1.0],
        }
    )
    held, shared = selection.held_out_rows(rows, k=2)
    assert shared == (2, 3) and set(held["key"]) == {"a", "b"}  # c never ran beyond 0-1
    assert sorted(held["replicate"]) == [0, 0, 1, 1] and sorted(held["held_out_replicate"]) == [2, 2, 3, 3]
    assert selection.rank(held, 2)["key"].tolist() == ["b", "a"]
    assert selection.replicate_span([5, 6, 7]) == "5-7" and selection.replicate_span([0, 2]) == "0, 2"


def _table(diseased, healthy):
    rows = [{"path": f"d{i}.png", "label": 1, "p1_last": p} for i, p in enumerate(diseased)]
    rows += [{"path": f"h{i}.png", "label": 0, "p1_last": p} for i, p in enumerate(healthy)]
    return pd.DataFrame(rows)


T1 = _table([0.9, 0.7, 0.5, 0.3], [0.65, 0.2, 0.1, 0.05])
T2 = _table([0.6, 0.61], [0.59, 0.9])


def test_held_out_points_apply_the_cuts_to_each_test_table_and_average_over_replicates():
    got = export_card.held_out_points({0.5: 0.6, 0.1: 0.8}, [T1, T2])
    # cut 0.6: T1 finds 2/4 diseased, flags 1/4 healthy; T2 (p >= cut flags 0.6) 2/2 and 1/2
    f1_t1 = 2 * 0.5 * 0.5 / (0.5 * 0.5 + 0.5 * 0.25 + 0.5)  # 0.5714
    f1_t2 = 2 * 0.5 * 1.0 / (0.5 * 1.0 + 0.5 * 0.5 + 0.5)  # 0.8
    assert got[0]["prevalence"] == 0.5 and got[0]["threshold"] == 0.6 and got[0]["n"] == 2
    assert (got[0]["tpr"], got[0]["fpr"]) == pytest.approx((0.75, 0.375))
    assert got[0]["f1"] == pytest.approx((f1_t1 + f1_t2) / 2) and got[0]["f1_per_table"] == pytest.approx(
        [f1_t1, f1_t2]
    )
    # cut 0.8 at 10 %: T1 1/4 found, none flagged -> F1 2*.1*.25/(.025+.1) = 0.4; T2 none found -> 0
    assert (got[1]["tpr"], got[1]["fpr"], got[1]["f1"]) == pytest.approx((0.125, 0.25, 0.2))
    with pytest.raises(ValueError, match="lacks a class"):
        export_card.held_out_points({0.5: 0.6}, [_table([0.9], [])])


def test_the_card_states_validation_held_out_and_optimism_and_names_the_pool():
    rules = {
        "at_prevalence": [
            {"prevalence": 0.5, "threshold": 0.6, "tpr": 0.9, "fpr": 0.1, "f1": 0.9},
            {"prevalence": 0.1, "threshold": 0.8, "tpr": 0.5, "fpr": 0.0, "f1": 0.6},
        ]
    }
    held = export_card.held_out_card(rules, {5: T1, 6: T2}, [], [0, 1, 2, 3, 4], 0, k=5)
    assert held["measured"] and held["replicates"] == [5, 6] and held["pool"] == [0, 1, 2, 3, 4]
    first = held["at_prevalence"][0]
    assert first["validation"] == {"tpr": 0.9, "fpr": 0.1, "f1": 0.9}
    assert first["held_out_test"]["tpr"] == pytest.approx(0.75) and first["held_out_test"]["n"] == 2
    assert first["optimism"]["f1"] == pytest.approx(0.9 - (0.5714285714 + 0.8) / 2)
    assert first["optimism"]["fpr"] == pytest.approx(0.1 - 0.375)  # negative: validation understated alarms
    assert held["at_prevalence"][1]["optimism"]["f1"] == pytest.approx(0.4)
    assert held["how"].startswith(
        "cuts and the estimates beside them from the validation predictions of replicates "
        "0-4 (the replicates that chose the configuration); the shipped model is "
        "replicate 0's; held-out replicates 5-6 at the same cuts give"
    )
    md = export_card.held_out_markdown(held)
    assert md[0] == f"Operating points: {held['how']}." and "| 0.5 | 0.600 | 0.900 → 0.686 (+0.214) |" in md[4]
    none = export_card.held_out_card(rules, {}, [], [0, 1, 2, 3, 4], 0, k=5)
    assert not none["measured"] and none["at_prevalence"] == []
    assert none["why"] == (
        "The optimism of the validation estimates could not be measured: the configuration has "
        "no FINISHED run on a replicate beyond 0-4 (only the grid's headline configurations run "
        "there: raise grid.headline.replicates above selection.replicates)."
    )
    assert export_card.held_out_markdown(none) == [none["why"], ""]
    old = export_card.held_out_card(rules, {}, [5], [0, 1, 2, 3, 4], 0, k=5)
    assert "held-out replicates 5 logged no test predictions" in old["why"]


def _run(rid, key, rep, t):
    return RunRecord(
        run_id=rid,
        name=rid,
        status="FINISHED",
        start_time=t,
        end_time=t,
        tags={"BN": "true", "config_key": key, "replicate": str(rep), "config_id": "31", "config_name": key},
        params={"model.final_variant": "bn"},
        metrics={"val_last_auroc": 0.9, "val_last_balanced_loss": 0.5, "test_f1_1": 0.8},
    )


def test_the_export_finds_the_chosen_configurations_held_out_runs_and_their_test_predictions(monkeypatch):
    runs = [_run(f"b{r}", "b", r, r) for r in range(4)] + [_run("c0", "c", 0, 9), _run("c2", "c", 2, 10)]
    c = export_select.choose(runs, k=2)
    assert (
        c.key == "b" and sorted(c.runs) == [0, 1] and {r: x.run_id for r, x in c.held_out.items()} == {2: "b2", 3: "b3"}
    )
    texts = {("b2", export_select.TEST_PREDICTIONS): T1.to_csv(index=False)}
    monkeypatch.setattr(export_select.tracking, "artifact_text", lambda run_id, path: texts.get((run_id, path)))
    tables, missing = export_select.held_out_test(c)
    assert list(tables) == [2] and missing == [3] and tables[2]["p1_last"].tolist() == T1["p1_last"].tolist()
    assert export_select.choose(runs, k=4, run_id="b3").held_out == {}  # nothing beyond 0-3


def test_the_registered_description_names_the_pool_and_the_held_out_check():
    at = [
        {"prevalence": 0.5, "threshold": 0.6, "tpr": 0.9, "tpr_lower95": 0.8, "fpr": 0.1, "fpr_upper95": 0.2, "f1": 0.9}
    ]
    held = export_card.held_out_card({"at_prevalence": at}, {5: T1, 6: T2}, [], [0, 1, 2, 3, 4], 0, k=5)
    stat = {"mean": 0.9, "ci95": [0.8, 1.0], "n": 5}
    card = {
        "selection": {
            "config_name": "BN",
            "config_id": 31,
            "how": "the best",
            "source": "grid",
            "replicates": [0, 1, 2, 3, 4],
            "validation_auroc": stat,
            "test_minority_f1": stat,
        },
        "configuration": {"BN": True},
        "final_layer": "bn",
        "arch": "resnet18",
        "image_size": 32,
        "dataset": "apple",
        "replicate": 0,
        "train_counts": [990, 10],
        "classes": ["healthy", "diseased"],
        "validation": {"auroc": 0.9, "f1_1": 0.5, "ece": 0.1},
        "decision": {"at_prevalence": at, "argmax_validation": {"healthy_flagged": 0.0, "diseased_found": 0.5}},
        "operating_points_held_out": held,
    }
    text = export_card.version_description(card)
    assert (
        "Expected in the field (cut on the pooled validation predictions of replicates 0-4, the replicates that "
        "chose the configuration;"
    ) in text
    assert f"Operating points: {held['how']}." in text and "| 0.5 | 0.600 | 0.900 → 0.686 (+0.214) |" in text
    card["operating_points_held_out"] = export_card.held_out_card({"at_prevalence": at}, {}, [], [0, 1, 2, 3, 4], 0, 5)
    assert "could not be measured: the configuration has no FINISHED run" in export_card.version_description(card)

"""The protocol's guarantees: no test label decides anything, and a code change re-runs cells."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd

from finalbn.data.splits import read_manifest
from finalbn.infra import imports
from finalbn.stages import export, grid
from finalbn.stats.results import rank_configs
from finalbn.tracking import RunRecord
from finalbn.train.cell import run_cell
from finalbn_field import decision

SPLITS = Path("data/splits")


def _poison(src: Path, dst: Path) -> None:
    """A copy of the split folder with every test label flipped."""
    shutil.copytree(src, dst)
    for manifest in dst.glob("*/*/manifest.csv"):
        df = pd.read_csv(manifest)
        test = df["split"] == "test"
        df.loc[test, "label"] = 1 - df.loc[test, "label"]
        df.to_csv(manifest, index=False, lineterminator="\n")


def test_poisoned_test_labels_change_no_choice(prepared):
    """Epoch selection, the prior-correction threshold and the best configuration are the same
    when every test label is flipped; only the test metrics move."""
    load, _ = prepared
    _poison(SPLITS, Path("poisoned"))
    assert {r["label"] for r in read_manifest("poisoned/synthetic-apple/0/manifest.csv") if r["split"] == "test"} == {
        0,
        1,
    }
    rows = {"clean": [], "poisoned": []}
    for cid in (31, 63, 47, 15):
        cfg = grid.cell_config(load(["train.epochs=3"]), grid.Cell("synthetic-apple", "efficientnet_lite0", cid, 0))
        clean = run_cell(cfg, "synthetic-apple", SPLITS)
        bad = run_cell(cfg, "synthetic-apple", Path("poisoned"))
        assert bad.fit.selected_epoch == clean.fit.selected_epoch
        assert bad.fit.history == clean.fit.history  # every validation number per epoch
        assert bad.val_last == clean.val_last
        assert bad.train_counts == clean.train_counts  # the prior correction's only input
        assert [p["p1_last"] for p in bad.predictions] == [p["p1_last"] for p in clean.predictions]
        assert [p["label"] for p in bad.predictions] == [1 - p["label"] for p in clean.predictions]
        assert bad.test_last != clean.test_last  # the poison reached the test metrics, and only them
        for name, r in (("clean", clean), ("poisoned", bad)):
            rows[name].append(
                {
                    "config_id": cid,
                    "config_name": r.config_name,
                    "replicate": 0,
                    "val_auroc": r.val_last["auroc"],
                    "val_balanced_loss": r.val_last["balanced_loss"],
                    "val_f1_1": r.val_last["f1_1"],
                    "test_f1_1": r.test_last["f1_1"],
                    "test_auroc": r.test_last["auroc"],
                }
            )
        # the shipped decision rules read validation predictions only: the same cut at every prevalence
        if cid in (31, 15):
            curves = [
                decision.operating_curve(
                    [p["label"] for p in r.val_predictions], [p["p1_last"] for p in r.val_predictions]
                )
                for r in (clean, bad)
            ]
            assert curves[0] == curves[1]
            assert [decision.at_prevalence(curves[1], pi) for pi in (0.5, 0.05, 0.01)] == [
                decision.at_prevalence(curves[0], pi) for pi in (0.5, 0.05, 0.01)
            ]
    ranked = {k: rank_configs(pd.DataFrame(v), 1)["config_id"].tolist() for k, v in rows.items()}
    assert ranked["clean"] == ranked["poisoned"]
    # the export's choice among the final-BN configurations (31, 15), as the store would give the runs
    shipped = {}
    for name, v in rows.items():
        runs = [
            RunRecord(
                run_id=f"{name}{r['config_id']}",
                name="",
                status="FINISHED",
                end_time=1,
                tags={
                    "BN": str(r["config_id"] in (31, 15)).lower(),
                    "config_key": str(r["config_id"]),
                    "replicate": "0",
                },
                params={},
                metrics={
                    "val_last_auroc": r["val_auroc"],
                    "val_last_balanced_loss": r["val_balanced_loss"],
                    "test_f1_1": r["test_f1_1"],
                },
            )
            for r in v
        ]
        shipped[name] = export.choose(runs, k=1).key
    assert shipped["clean"] == shipped["poisoned"]


def test_a_code_change_reruns_a_finished_cell(prepared, tmp_path, monkeypatch):
    load, _ = prepared
    cfg = load(["grid.configs=[31]", "grid.headline.configs=[]", "train.epochs=1"])
    assert grid.run_shard(cfg, SPLITS, log=lambda m: None)["ran"] == 1
    again = grid.run_shard(cfg, SPLITS, log=lambda m: None)
    assert (again["ran"], again["skipped"], again["failed"]) == (0, 1, [])
    # the same package with a fix in train/engine.py: the code version reads the import closure's sources
    pkg = tmp_path / "pkg"
    shutil.copytree(imports.ROOT, pkg, ignore=shutil.ignore_patterns("__pycache__"))
    with open(pkg / "train" / "engine.py", "a") as fh:
        fh.write("\nFIXED = True  # a fix\n")
    before = grid.cell_key(cfg, grid.all_cells(cfg)[0], SPLITS)

    def digest_of(root):
        monkeypatch.setattr(imports, "ROOT", root)
        imports.closure.cache_clear()
        imports.code_digest.cache_clear()

    digest_of(pkg)
    assert grid.cell_key(cfg, grid.all_cells(cfg)[0], SPLITS) != before
    assert grid.run_shard(cfg, SPLITS, log=lambda m: None)["ran"] == 1
    # a module that computes no cell changes no key: the report, a docstring of the tracking layer that
    # records a cell or of the figures drawn of it, the recorder itself
    after = {c: grid.cell_key(cfg, c, SPLITS) for c in grid.all_cells(cfg)}
    (pkg / "stages" / "report" / "markdown.py").write_text("# changed\n")
    for name in (
        "tracking/store.py",
        "tracking/__init__.py",
        "plots/cellplots.py",
        "stages/redraw.py",
        "stages/cellrun.py",
    ):
        text = (pkg / name).read_text()
        assert text.startswith('"""'), name
        (pkg / name).write_text('"""Edited. ' + text[3:])
    digest_of(pkg)
    assert {c: grid.cell_key(cfg, c, SPLITS) for c in grid.all_cells(cfg)} == after
    # in the code that computes a cell, a comment, a docstring or a re-wrapped line changes no key either
    engine = (pkg / "train" / "engine.py").read_text()
    assert engine.count("def loss_value(") == 1 and engine.startswith('"""')
    (pkg / "train" / "engine.py").write_text(
        '"""Edited. ' + engine[3:].replace("def loss_value(", "def loss_value(  # a note\n", 1)
    )
    digest_of(pkg)
    assert {c: grid.cell_key(cfg, c, SPLITS) for c in grid.all_cells(cfg)} == after
    # an edit to the loss changes every key
    engine = (pkg / "train" / "engine.py").read_text()
    (pkg / "train" / "engine.py").write_text(engine.replace("loss_value(", "loss_of("))  # the loss, renamed
    digest_of(pkg)
    assert not set(after.values()) & {grid.cell_key(cfg, c, SPLITS) for c in grid.all_cells(cfg)}
    digest_of(Path(imports.__file__).resolve().parents[1])  # the real sources again, caches cleared

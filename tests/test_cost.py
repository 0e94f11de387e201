"""The cost said before it is spent: cells priced by kind, stages projected, the time left rescaled."""

import dataclasses
import json
from pathlib import Path

import pytest

from finalbn.bench import plan
from finalbn.stages import cost, search
from finalbn.stages.grid import all_cells
from finalbn.stages.grid.plan import cell_kinds
from finalbn.stages.grid.price import cell_seconds, grid_wall, kept_on_disk, price_book
from finalbn.train import features
from finalbn.train.cell import run_cell


def test_prices_come_from_params_scaled_by_pixels_and_not_for_another_arch(load, tmp_path):
    cfg = load()
    c = cfg.cost
    none = tmp_path / "absent.json"
    same = cost.cell_prices(cfg, c.arch, c.image_size, bench=none)
    assert same.seconds["uf_on"] == c.cells["uf_on"] and "params.yaml" in same.source
    double = cost.cell_prices(cfg, c.arch, 2 * c.image_size, bench=none)
    assert double.seconds["uf_on"] == pytest.approx(4 * c.cells["uf_on"])  # compute scales with pixels
    assert double.seconds["warm"] == c.cells["warm"]  # a head on features in memory does not
    assert cost.cell_prices(cfg, "resnet34", c.image_size, bench=none) is None
    assert cost.cell_prices(dataclasses.replace(cfg, cost=None), c.arch, c.image_size, bench=none) is None


def test_this_machines_bench_file_replaces_params(load, tmp_path):
    cfg = load()
    seconds = {k: 1.0 for k in cost.KINDS} | {"tracking": 0.5}
    bench = tmp_path / "bench-cells.json"
    bench.write_text(json.dumps({"device": "cpu", "size": 32, "archs": {"resnet18": {"seconds": seconds}}}))
    p = cost.cell_prices(cfg, "resnet18", 32, bench=bench)
    assert p.cell("uf_on") == 1.5 and "bench-cells.json" in p.source
    bench.write_text(json.dumps({"device": "cuda", "size": 32, "archs": {"resnet18": {"seconds": seconds}}}))
    assert cost.cell_prices(cfg, "resnet18", 32, bench=bench) is None  # a GPU's cells price no CPU run
    bench.write_text("{not json")
    assert cost.cell_prices(cfg, cfg.cost.arch, cfg.cost.image_size, bench=bench).source.startswith("params")


def test_grid_wall_is_the_busiest_shard_and_finished_cells_cost_nothing(load):
    cfg = load()
    cells = all_cells(cfg)
    book, unpriced = price_book(cfg, cells)
    assert book is not None and unpriced == ""
    seconds = cell_seconds(cfg, cells, book)
    total = sum(seconds.values())
    one, two = grid_wall(cfg, cells, cells, book, 1), grid_wall(cfg, cells, cells, book, 2)
    assert one == pytest.approx(total) and total / 2 <= two < total
    # a family's first cell already trained: the next one computes the features (priced as a first)
    kinds = cell_kinds(cells)
    first = next(c for c in kinds if kinds[c] == "first")
    rest = [c for c in cells if c != first]
    assert grid_wall(cfg, cells, rest, book, 1) == pytest.approx(total - seconds[first] + 0.0, rel=0.2)
    assert grid_wall(cfg, cells, [], book, 2) == 0.0


def test_progress_rescales_the_projection_by_the_pace_so_far(monkeypatch):
    now = [0.0]
    monkeypatch.setattr(cost.time, "perf_counter", lambda: now[0])
    bar = cost.Progress("grid", [30.0, 10.0, 10.0], bar=False)
    assert bar.left_seconds() == 50.0  # nothing done: the projection itself
    now[0] = 60.0  # the first 30-s cell took 60 s: the rest will too, twice its projection
    bar.done(0)
    assert bar.left_seconds() == pytest.approx(40.0)
    assert bar.left() == "about 40 s left"
    bar.done(1)
    bar.done(2)
    assert bar.left() == "done"
    bar.close()


def test_duration_reads_as_people_say_it():
    assert cost.duration(40) == "40 s"
    assert cost.duration(750) == "12 min 30 s"
    assert cost.duration(3900) == "1 h 05 min"


def test_projection_line_names_what_is_not_priced():
    assert "projected 2 min 00 s" in cost.projection_line("grid", 120.0, "3 cells", "params")
    line = cost.projection_line("grid", None, "3 cells", unpriced="resnet34 at 224 px")
    assert "resnet34 at 224 px" in line and "finalbn bench --cells" in line


def test_search_projection_prices_the_drawn_families_and_the_pruners_share(load):
    cfg = load()
    full, _ = search.seconds(dataclasses.replace(cfg, cost=dataclasses.replace(cfg.cost, search_share=1.0)), 12, 2)
    pruned, _ = search.seconds(cfg, 12, 2)
    none, _ = search.seconds(cfg, 0, 2)
    assert none < pruned < full
    assert search.seconds(dataclasses.replace(cfg, cost=None), 12, 2)[0] is None


def test_plan_counts_the_stages_that_run(load):
    cfg = load()
    rows, total = plan.table(cfg, None)
    assert [r[0] for r in rows] == list(plan.ORDER)
    assert total == pytest.approx(sum(r[2] for r in rows))
    only_report, t = plan.table(cfg, {"report"})
    assert t == pytest.approx(cost.fixed(cfg, "report"))
    assert dict((r[0], r[1]) for r in only_report)["grid"] == "up to date"


def test_features_kept_on_disk_price_a_plain_familys_first_cell_as_warm(load, monkeypatch):
    cfg = load()
    cells = all_cells(cfg)
    book, _ = price_book(cfg, cells)
    kinds, kept = cell_kinds(cells), cell_kinds(cells, kept=lambda c: True)
    assert {kinds[c] for c in kinds if kept[c] != kinds[c]} == {"first"}  # only the plain families' firsts
    assert {kept[c] for c in kept if kinds[c] in ("first_da", "first_mx")} <= {"first_da", "first_mx"}
    assert grid_wall(cfg, cells, cells, book, 2, kept=lambda c: True) < grid_wall(cfg, cells, cells, book, 2)
    # the search after the grid: its plain trials' replicates train heads on the grid's features
    assert search.seconds(cfg, 8, 2, kept=True)[0] < search.seconds(cfg, 8, 2)[0]
    monkeypatch.setenv("FINALBN_FEATURE_CACHE", "off")  # nothing kept on disk: nothing priced as kept
    assert not plan.after_grid(cfg) and plan.search_seconds(cfg) == search.seconds(cfg, 8, 2)


def test_pricing_reads_what_is_on_disk(prepared, tmp_path, monkeypatch):
    monkeypatch.setenv("FINALBN_FEATURE_CACHE", "on")
    monkeypatch.setenv("FINALBN_CACHE", str(tmp_path / "cache"))
    cfg_of, _ = prepared
    cfg = cfg_of(["train.epochs=1", "grid.configs=[31, 63]", "grid.replicates=2"])
    splits = Path("data/splits")
    cells = all_cells(cfg)
    kept = kept_on_disk(cfg, splits)
    assert kept is not None and not any(kept(c) for c in cells)
    features.CACHE.clear()
    run_cell(cfg, cfg.datasets[0].name, splits, replicate=0)
    kept = kept_on_disk(cfg, splits)
    assert {c.replicate for c in cells if kept(c)} == {0}  # replicate 1's split has none yet
    one = dataclasses.replace(cfg, selection=dataclasses.replace(cfg.selection, replicates=1))
    assert search.features_kept(one, splits) and not search.features_kept(cfg, splits)  # races over 0..4
    frozen_train = cfg_of(["model.frozen_bn=train"])
    assert kept_on_disk(frozen_train, splits) is None  # a body whose BN layers train keeps nothing

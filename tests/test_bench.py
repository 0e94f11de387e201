"""`finalbn bench` runs, writes results/bench.json and refuses bad input with one line."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import ROOT
from finalbn.bench import cells as bench_cells
from finalbn.bench import study as bench
from finalbn.cli import main
from finalbn.stages.grid.plan import all_cells


def test_bench_writes_every_section(prepared, tmp_path, capsys):
    _, overrides = prepared
    out = tmp_path / "results" / "bench.json"
    args = [
        "bench",
        "--params",
        str(ROOT / "params.yaml"),
        *[x for o in overrides for x in ("--set", o)],
        "--device",
        "cpu",
        "--archs",
        "efficientnet_lite0",
        "--sizes",
        "32",
        "--seconds",
        "0.05",
        "--grid-configs",
        "31",
        "63",
        "--batch",
        "8",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    result = json.loads(out.read_text())
    assert {r["dtype"] for r in result["throughput"]} == {"fp32", "bf16"}
    for row in result["throughput"]:
        assert all(row[k] > 0 for k in ("eval", "head_on_features", "uf_on", "full"))
    levers = {lv["lever"]: lv for lv in result["levers"]}
    assert any(k.startswith("channels_last") for k in levers) and any("decode cache" in k for k in levers)
    assert any(k.startswith("DA: one batched pass") for k in levers)
    assert all(lv["speedup"] > 0 for lv in levers.values())
    g = result["grid"]  # the real grid code on the tiny split, shared and not
    assert g["shared"]["cells"] == len(g["configs_shared"]) and g["unshared"]["cells"] == len(g["configs_unshared"])
    assert g["shared_over_unshared"] > 0
    assert result["projection"] is None  # only with --device cuda
    text = capsys.readouterr().out
    assert "lever: channels_last" in text and "grid (UF off" in text


@pytest.mark.parametrize(
    "bad, message",
    [
        (["--sizes", "8"], "--sizes must be >= 32"),
        (["--archs", "no_such_net"], "unknown arch"),
        (["--seconds", "0"], "--seconds must be > 0"),
        (["--grid-configs", "31", "29"], "UF-off configs in 0..63 (got [29])"),
        (["--grid-configs", "64"], "UF-off configs in 0..63 (got [64])"),
        (["--batch", "1"], "--batch must be >= 2"),
    ]
    + ([] if torch.cuda.is_available() else [(["--cells", "--device", "cuda"], "--device cuda but no CUDA device")]),
)
def test_bad_input_is_one_line_exit_2(bad, message, tmp_path, capsys):
    assert main(["bench", "--params", str(ROOT / "params.yaml"), "--out", str(tmp_path / "b.json"), *bad]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "b.json").exists()


def test_paper_projection_arithmetic():
    row = {"eval": 1000.0, "uf_on": 500.0}
    p = bench.project_paper(row, head_rate=10_000.0)
    assert p["cells"] == 64 * 10 * 3
    evals = (10 * 157 + 2 * 300) / 1000.0
    assert p["uf_on_h"] == pytest.approx(32 * 30 * (10 * 1010 / 500.0 + evals) / 3600)
    assert p["uf_off_shared_h"] < p["uf_off_unshared_h"]
    assert p["total_shared_h"] == pytest.approx(p["uf_on_h"] + p["uf_off_shared_h"])


def test_rate_counts_images_per_second():
    calls = []
    r = bench.rate(lambda: calls.append(1), batch=10, device=torch.device("cpu"), seconds=0.05, warmup=1)
    assert r > 0 and len(calls) >= 4


def test_cells_mode_times_each_kind_and_projects_the_grid_and_the_paper(prepared, tmp_path, capsys):
    load, overrides = prepared
    out = tmp_path / "cells.json"
    args = [
        "bench",
        "--cells",
        "--params",
        str(ROOT / "params.yaml"),
        *[x for o in overrides for x in ("--set", o)],
        "--set",
        "model.arch=resnet18",
        "--set",
        "grid.archs=[resnet18]",
        "--device",
        "cpu",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    row = json.loads(out.read_text())["cells"]["archs"]["resnet18"]
    assert set(row["seconds"]) == {*bench_cells.KINDS, "tracking_all_figures"}
    assert all(v >= 0 for v in row["seconds"].values()) and row["seconds"]["uf_on"] > 0
    cfg = load(["model.arch=resnet18", "grid.archs=[resnet18]"])
    assert row["grid"]["cells"] == len(all_cells(cfg))
    # the busiest of the grid's shards, dealt as `finalbn grid --workers` deals them
    assert row["grid"]["cell_seconds"] / cfg.grid.workers <= row["grid"]["wall_s"] <= row["grid"]["cell_seconds"]
    # every cell is priced at its kind plus tracking; drawing every cell's figures costs more
    s = row["seconds"]
    assert row["grid"]["cell_seconds"] == pytest.approx(
        sum(n * (s.get(k, s["first"]) + s["tracking"]) for k, n in row["grid"]["kinds"].items())
    )
    assert row["paper"]["cells"] == 1920
    text = capsys.readouterr().out
    assert "the paper's study: 1920 cells" in text and "this params' grid" in text


def test_cell_kinds_of_the_paper_study():
    kinds = bench_cells.plan_kinds(bench_cells.paper_cells("resnet34"), share=True)
    groups = 10 * 3  # replicates x crops
    # 32 UF-on configurations, half with DA; 4 UF-off families (DA x MX) per group, the rest warm heads
    assert kinds == {
        "uf_on": 16 * groups,
        "uf_on_da": 16 * groups,
        "first": groups,
        "first_mx": groups,
        "first_da": 2 * groups,
        "warm": 28 * groups,
    }
    unshared = bench_cells.plan_kinds(bench_cells.paper_cells("resnet34"), share=False)
    assert "warm" not in unshared and unshared["first"] == 8 * groups and unshared["first_da"] == 16 * groups
    p = bench_cells.project(kinds, dict.fromkeys(bench_cells.KINDS, 1.0) | {"tracking": 0.5}, processes=2)
    assert p["cell_seconds"] == pytest.approx(1920 * 1.5) and p["wall_s"] == pytest.approx(960 * 1.5)


def test_cells_mode_needs_the_splits(tmp_path, capsys):
    assert (
        main(
            [
                "bench",
                "--cells",
                "--params",
                str(ROOT / "params.yaml"),
                "--splits",
                str(tmp_path / "none"),
                "--out",
                str(tmp_path / "b.json"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert "--cells trains real cells on replicate 0" in err and len(err.splitlines()) == 1

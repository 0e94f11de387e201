"""benchmarks/timings.py: pytest's summary read back, the page rendered from the data (a failed
command records no timing), and a file that is not a bench output refused with one line."""

from __future__ import annotations

import importlib.util
import json

import pytest

from conftest import ROOT

_spec = importlib.util.spec_from_file_location("timings", ROOT / "benchmarks" / "timings.py")
timings = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(timings)

MACHINE = {"cpu": "Some Xeon", "cores": 2, "memory_gib": 23.4, "gpu": None, "python": "3.11.7"}


def test_pytest_summary_takes_the_last_summary_and_the_slowest():
    text = (
        "...\n==== slowest 15 durations ====\n612.31s call     tests/test_pipeline.py::test_whole_pipeline\n"
        "0.50s setup    tests/test_a.py::test_b\n150.20s call     tests/test_scaleout.py::test_x\n"
        "2 failed, 918 passed, 1 skipped in 845.12s (0:14:05)\n"
    )
    out = timings.pytest_summary(text)
    assert out["pytest"] == "2 failed, 918 passed, 1 skipped" and out["pytest_s"] == 845.12
    assert [s["test"] for s in out["slowest"]] == [
        "tests/test_pipeline.py::test_whole_pipeline",
        "tests/test_scaleout.py::test_x",
    ]


def test_the_page_says_where_each_number_came_from_and_records_no_timing_for_a_failure():
    base = {"commit": "abc1234", "machine": MACHINE, "date": "2026-12-07 16:00 UTC"}
    page = timings.render(
        {
            "make_test": {
                **base,
                "command": "make test",
                "wall_s": 890.0,
                "exit_code": 0,
                "pytest": "920 passed",
                "pytest_s": 845.1,
                "slowest": [],
            },
            "make_run": {**base, "command": "make run", "wall_s": 95.0, "exit_code": 2},
        }
    )
    assert "do not edit by hand" in page and "commit `abc1234`" in page and "Some Xeon, 2 cores" in page
    assert "wall: **14 min 50 s**" in page and "920 passed in 14 min 05 s" in page
    assert "**Failed** (exit 2) after 1 min 35 s: no timing recorded." in page


def test_a_file_that_is_no_bench_output_is_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(timings, "DATA", tmp_path / "timings.json")
    monkeypatch.setattr(timings, "PAGE", tmp_path / "timings.md")
    bad = tmp_path / "bench.json"
    bad.write_text(json.dumps({"throughput": {}}))
    assert timings.main(["--cells", str(bad)]) == 2
    assert "is not a `finalbn bench --cells` output" in capsys.readouterr().err
    assert not (tmp_path / "timings.md").exists()  # nothing written


@pytest.mark.parametrize(
    "seconds,text", [(59.94, "59.9 s"), (60, "1 min 00 s"), (905.4, "15 min 05 s"), (58454, "16 h 14 min")]
)
def test_minutes(seconds, text):
    assert timings._minutes(seconds) == text


def test_a_clone_folder_that_exists_is_refused_before_any_work(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(timings, "DATA", tmp_path / "timings.json")
    monkeypatch.setattr(timings, "PAGE", tmp_path / "timings.md")
    assert timings.main(["--make-run", "--clone-dir", str(tmp_path)]) == 2
    assert "exists: name a new folder" in capsys.readouterr().err and not (tmp_path / "timings.json").exists()

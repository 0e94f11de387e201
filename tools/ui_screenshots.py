"""Screenshots of the MLflow UI on a finished `make run`, taken in headless Chromium: what a user sees.

    python tools/ui_screenshots.py --store sqlite:///mlflow.db --out shots/   # needs chromium on PATH

It starts `mlflow ui` on the store (127.0.0.1, a free port), finds the pages a user opens first, and
writes one PNG each: the experiments list; the grid's runs sorted by the export's choice
(`selection/rank`, the champion first); a sensitivity parent; a cell's charts; the report run's
`report.html`. It prints each page's URL beside its file. Exit 2 when Chromium or the store is missing.
With Playwright installed (`pip install playwright`; it drives the same Chromium) each page gets 15 s
of real time to load its charts and artifacts; Chromium alone (`--screenshot`) may catch a chart or a
large artifact still loading.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

import mlflow

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--window-size=1600,1000",
    "--virtual-time-budget=20000",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pages(client: mlflow.MlflowClient) -> dict[str, str]:
    """name -> URL fragment (after `#`) of each page to shoot, from what the store holds."""
    exps = {e.name: e.experiment_id for e in client.search_experiments()}
    out = {"experiments": "/experiments"}
    grid = exps.get("finalbn/grid")
    if grid:
        order = urllib.parse.quote("metrics.`selection/rank`")
        out["grid_by_selection_rank"] = f"/experiments/{grid}/runs?orderByKey={order}&orderByAsc=true"
        cells = client.search_runs([grid], "tags.`finalbn.cell` = 'true'", max_results=1)
        if cells:
            out["cell_charts"] = f"/experiments/{grid}/runs/{cells[0].info.run_id}/model-metrics"
        parents = client.search_runs(
            [grid], "tags.`finalbn.parent` = 'true'", max_results=1, order_by=["metrics.`selection/rank` ASC"]
        )
        if parents:
            out["grid_parent"] = f"/experiments/{grid}/runs/{parents[0].info.run_id}"
            out["grid_parent_figures"] = f"/experiments/{grid}/runs/{parents[0].info.run_id}/artifacts"
    sens = exps.get("finalbn/sensitivity")
    if sens:
        runs = client.search_runs([sens], "tags.`finalbn.parent` = 'true'", max_results=1)
        if runs:
            out["sensitivity_parent"] = f"/experiments/{sens}/runs/{runs[0].info.run_id}"
        out["sensitivity_runs"] = f"/experiments/{sens}/runs"
    report = exps.get("finalbn/report")
    if report:
        runs = client.search_runs([report], "", max_results=1, order_by=["attributes.start_time DESC"])
        if runs:
            rid = runs[0].info.run_id
            out["report_run"] = f"/experiments/{report}/runs/{rid}"
            out["report_html"] = f"/experiments/{report}/runs/{rid}/artifacts/report.html"
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", default="sqlite:///mlflow.db")
    ap.add_argument("--out", default="shots")
    args = ap.parse_args(argv)
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if chromium is None:
        print("ui_screenshots: no chromium on PATH (Debian: apt-get install chromium)", file=sys.stderr)
        return 2
    if args.store.startswith("sqlite:///") and not Path(args.store[len("sqlite:///") :]).is_file():
        print(f"ui_screenshots: no store at {args.store}: run `make run` first", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    ui = subprocess.Popen(
        [str(Path(sys.executable).with_name("mlflow")), "ui", "--backend-store-uri", args.store]
        + ["--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(120):
            try:
                urllib.request.urlopen(base, timeout=2)
                break
            except OSError:
                time.sleep(1)
        client = mlflow.MlflowClient(args.store)
        shots = {}
        for name, frag in pages(client).items():
            sep = "&" if "?" in frag else "?"
            shots[out / f"{name}.png"] = f"{base}/#{frag}{sep}workflowType=machine_learning"  # tracking.store.ui_url
        try:
            from playwright.sync_api import sync_playwright  # here: optional, the better browser driver
        except ImportError:
            with tempfile.TemporaryDirectory() as profile:
                for png, url in shots.items():
                    flags = [*CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--screenshot={png}"]
                    subprocess.run([chromium, *flags, url], capture_output=True, timeout=120)
                    print(f"{png}  {url}")
            return 0
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
            for png, url in shots.items():
                page = browser.new_page(viewport={"width": 1600, "height": 1000})
                page.goto(url)
                page.wait_for_timeout(15_000)
                page.screenshot(path=str(png))
                print(f"{png}  {url}")
            browser.close()
    finally:
        ui.terminate()
        ui.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())

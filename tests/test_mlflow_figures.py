"""Figures where MLflow's UI shows them: a grid parent's loss curves and pooled reliability diagram
(drawn once, when the parent closes), and the report run's report.html (every figure inside) and
its Description (the verdict in full). On a real SQLite store, and on hand-made runs."""

from __future__ import annotations

import base64
import csv
import io
import re
from pathlib import Path

import matplotlib.pyplot as plt
import mlflow
import numpy as np
import pytest
from PIL import Image

from conftest import empty_store
from finalbn import tracking
from finalbn.plots import cellplots
from finalbn.stages import grid, report
from finalbn.stages.cellrun import VAL_PREDICTIONS
from finalbn.stages.grid import parentplots
from finalbn.stages.report import html
from finalbn.stages.tracker import MemoryTracker
from finalbn.stats import metrics
from finalbn.tracking import query
from finalbn.tracking.outputs import fit_note
from finalbn.tracking.records import CELL, NOTE, PARENT_KEY, STAGE
from test_report import CEILING, design_grid

SPLITS = Path("data/splits")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


# --------------------------------------------------------------------------- a grid parent's figures


@pytest.mark.slow
def test_a_grid_parent_gets_its_replicates_loss_curves_and_reliability(prepared, monkeypatch):
    load, _ = prepared
    drawn: dict = {}

    def spy_curves(histories, title=""):
        drawn["histories"], drawn["curves_title"] = histories, title
        return loss_curves(histories, title)

    def spy_reliability(bins, title=""):
        drawn["bins"], drawn["reliability_title"] = bins, title
        return reliability_diagram(bins, title)

    loss_curves, reliability_diagram = parentplots.loss_curves, cellplots.reliability_diagram
    monkeypatch.setattr(parentplots, "loss_curves", spy_curves)
    monkeypatch.setattr(cellplots, "reliability_diagram", spy_reliability)
    cfg = load(["grid.configs=[31]", "grid.replicates=2", "grid.headline.configs=[]", "train.epochs=2"])
    assert grid.run_shard(cfg, SPLITS, log=lambda m: None)["ran"] == 2
    client = mlflow.MlflowClient()
    (parent,) = client.search_runs(
        [client.get_experiment_by_name("finalbn/grid").experiment_id], "tags.`finalbn.parent` = 'true'"
    )
    pid = parent.info.run_id
    assert parent.info.status == "FINISHED"
    assert {a.path for a in client.list_artifacts(pid, "plots")} == {"plots/loss_curves.png", "plots/reliability.png"}
    sizes = {}
    for name in ("loss_curves", "reliability"):
        png = Path(client.download_artifacts(pid, f"plots/{name}.png", str(Path.cwd())))
        assert png.read_bytes().startswith(PNG_MAGIC)
        with Image.open(png) as im:
            im.verify()
            sizes[name] = im.size
    assert sizes == {"loss_curves": (600, 400), "reliability": (500, 500)}  # 6 x 4 in and 5 x 5 in at 100 dpi
    # drawn from the two children's per-epoch losses and their validation predictions, pooled
    kids = query.children("finalbn/grid", parent.data.tags[PARENT_KEY])
    assert len(kids) == 2
    histories = [query.metric_history(k.run_id, ("train_loss", "val_loss")) for k in kids]
    assert drawn["histories"] == histories and all(sorted(h) == [1, 2] for h in histories)
    assert all(set(row) == {"train_loss", "val_loss"} for h in histories for row in h.values())
    assert drawn["curves_title"] == "BN (config 31): 2 replicates"
    rows = [r for k in kids for r in csv.DictReader(io.StringIO(query.artifact_text(k.run_id, VAL_PREDICTIONS)))]
    labels = np.array([int(r["label"]) for r in rows])
    p1 = np.array([float(r["p1_last"]) for r in rows])
    probs = np.column_stack([1 - p1, p1])
    assert drawn["bins"] == metrics.reliability_bins(labels, probs) and sum(drawn["bins"]["count"]) == len(rows) == 6
    assert drawn["reliability_title"] == (
        f"BN (config 31): validation, 2 replicates pooled\n6 images, ECE {metrics.ece(labels, probs):.3f}"
    )
    for kid in kids:  # the cells draw none of their own in a grid
        assert client.list_artifacts(kid.run_id, "plots") == []


def _memory_parent(tracker: MemoryTracker, histories: list[dict], predictions: list[list[dict]]) -> str:
    """A parent with one FINISHED cell run per history (per-epoch metrics) and its validation
    predictions (none for an empty list); its parent key is "pk"."""
    pid = tracker.parent(None, "grid", "apple", "arch", 31, "pk", "BN (config 31)")
    for i, (history, preds) in enumerate(zip(histories, predictions)):
        tags = {CELL: "true", PARENT_KEY: "pk", "replicate": str(i)}
        with tracker.cell_run(f"BN r{i}", {STAGE: "grid", **tags}, parent_run_id=pid) as run:
            log = run.epoch_logger()
            for epoch, row in sorted(history.items()):
                log.on_epoch_end(epoch, {"epoch": epoch, **row})
            if preds:
                run.log_files({VAL_PREDICTIONS: _csv(preds)})
    return pid


def test_the_loss_curves_show_each_replicate_and_their_mean_by_epoch():
    tracker = MemoryTracker()
    h0 = {1: {"train_loss": 1.0, "val_loss": 2.0}, 2: {"train_loss": 0.5, "val_loss": 1.0}}
    h1 = {1: {"train_loss": 3.0, "val_loss": 4.0}, 2: {"train_loss": 1.5, "val_loss": 3.0}, 3: {"train_loss": 1.0}}
    preds = [{"path": f"i{i}.png", "label": i % 2, "p1_last": p} for i, p in enumerate((0.1, 0.9, 0.3, 0.6))]
    pid = _memory_parent(tracker, [h0, h1], [preds[:2], preds[2:]])
    kids = tracker.children(None, "grid", "pk")
    assert [k.tags["replicate"] for k in kids] == ["0", "1"]
    before = plt.get_fignums()
    figs = parentplots.parent_figures(tracker, kids, "BN (config 31)")
    assert set(figs) == {parentplots.LOSS_CURVES, parentplots.RELIABILITY}
    (ax,) = figs[parentplots.LOSS_CURVES].axes
    lines = {ln.get_label(): ln for ln in ax.get_lines() if not ln.get_label().startswith("_")}
    assert set(lines) == {"train, mean of 2", "validation, mean of 2"}
    assert lines["train, mean of 2"].get_xdata().tolist() == [1, 2, 3]
    assert lines["train, mean of 2"].get_ydata().tolist() == [2.0, 1.0, 1.0]  # epoch 3: replicate 1 alone
    val = lines["validation, mean of 2"].get_ydata()
    assert val[:2].tolist() == [3.0, 2.0] and np.isnan(val[2])  # no replicate's val loss at epoch 3
    assert len(ax.get_lines()) == 6  # a faint line per replicate and loss, and the two means
    (rax,) = figs[parentplots.RELIABILITY].axes
    probs = np.array([[0.9, 0.1], [0.1, 0.9], [0.7, 0.3], [0.4, 0.6]])
    assert rax.get_title() == (
        f"BN (config 31): validation, 2 replicates pooled\n4 images, ECE {metrics.ece([0, 1, 0, 1], probs):.3f}"
    )
    for fig in figs.values():
        plt.close(fig)
    # logged by the tracker onto the parent, every figure closed
    assert parentplots.log_parent_figures(tracker, pid, kids, "BN (config 31)") == [
        parentplots.LOSS_CURVES,
        parentplots.RELIABILITY,
    ]
    assert {"plots/loss_curves.png", "plots/reliability.png"} <= tracker.runs[pid].files.keys()
    assert plt.get_fignums() == before


def test_a_parent_whose_replicates_logged_nothing_gets_no_figure_and_one_line():
    tracker = MemoryTracker()
    pid = _memory_parent(tracker, [{}, {}], [[], []])
    kids = tracker.children(None, "grid", "pk")
    said: list[str] = []
    assert parentplots.log_parent_figures(tracker, pid, kids, "BN (config 31)", log=said.append) == []
    assert said == [
        f"parent run {pid} (BN (config 31)): 2 finished replicate(s), no plots/loss_curves.png (no per-epoch "
        f"loss), plots/reliability.png (no {VAL_PREDICTIONS})"
    ]
    assert not [f for f in tracker.runs[pid].files if f.startswith("plots/")]
    with pytest.raises(ValueError, match="no replicate has a per-epoch train_loss or val_loss"):
        parentplots.loss_curves([{}, {}])


# --------------------------------------------------------------------------- the report in MLflow


def test_the_report_run_shows_report_html_with_its_figures_and_the_verdict(tmp_path, monkeypatch):
    """The design grid's report (test_report), logged to a real SQLite store."""
    out = tmp_path / "report"
    summary = report.build_report(design_grid(), out, n_boot=100, seed=1, ceilings=[CEILING], train_counts=(1000, 10))
    md = (out / "report.md").read_text()
    page = (out / "report.html").read_text()
    figures = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert len(figures) >= 9 and "ceiling.png" in figures
    assert "](" not in page and page.count('src="data:image/png;base64,') == len(figures)
    first = re.search(r'src="data:image/png;base64,([^"]+)"', page)
    assert first is not None and base64.b64decode(first.group(1)) == (out / "ceiling.png").read_bytes()
    assert "<h2>Verdict</h2>" in page and "<table>" in page
    extra = summary["strongest_rival_and_data_needs"]
    assert summary["description"] == html.description({"apple/efficientnet_lite0": summary["verdict"]}, extra)

    db = tmp_path / "store" / "mlflow.db"
    empty_store(db)
    monkeypatch.chdir(tmp_path)  # the store's artifacts: ./mlruns
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    mlflow.set_tracking_uri(f"sqlite:///{db}")
    rid = tracking.log_report(out, "finalbn-test")
    client = mlflow.MlflowClient()
    assert {"report.html", "report.md", "ceiling.png"} <= {a.path for a in client.list_artifacts(rid)}
    assert query.artifact_text(rid, "report.html") == page
    note = client.get_run(rid).data.tags[NOTE]
    assert note == summary["description"] and 5000 < len(note) <= 8000  # whole: past `runs.set_tag`'s 5000 cut
    assert max(map(len, summary["verdict"])) > 250  # sentences a tag column cuts, in full here
    assert note.startswith("**Verdict**\n\n- ") and all(f"- {line}\n" in note for line in summary["verdict"])
    assert note.endswith("The whole report, its figures inside: `report.html` (this run's artifacts).")


def test_the_markdown_subset_as_html(tmp_path):
    png = tmp_path / "a.png"
    png.write_bytes(PNG_MAGIC + b"fake")
    md = "\n".join(
        [
            "# Title",
            "",
            "Some **bold** and `a<b` text",
            "on two lines.",
            "",
            "- item one, see [docs](https://mlflow.org)",
            "- item two",
            "",
            "| a | b |",
            "|---|---|",
            "| x \\| y | 1 |",
            "",
            "> Note: careful",
            "",
            "![](a.png)",
            "",
            "![](missing.png)",
            "",
            "<script>x</script>",
        ]
    )
    body = html.render(md, tmp_path).split("<body>\n")[1].split("\n</body>")[0]
    data = base64.b64encode(png.read_bytes()).decode()
    assert body.split("\n") == [
        "<h1>Title</h1>",
        "<p>Some <strong>bold</strong> and <code>a&lt;b</code> text",
        "on two lines.</p>",
        "<ul>",
        '<li>item one, see <a href="https://mlflow.org">docs</a></li>',
        "<li>item two</li>",
        "</ul>",
        '<div class="table"><table>',
        *("<thead>", "<tr>", "<th>a</th>", "<th>b</th>", "</tr>", "</thead>"),
        *("<tbody>", "<tr>", "<td>x | y</td>", "<td>1</td>", "</tr>", "</tbody>"),
        "</table></div>",
        "<blockquote>",
        "<p>Note: careful</p>",
        "</blockquote>",
        f'<p><img alt="a" src="data:image/png;base64,{data}"></p>',
        "<p><em>(figure missing.png is not in the report folder)</em></p>",
        "<p>&lt;script&gt;x&lt;/script&gt;</p>",  # raw HTML in the Markdown is shown, not run
    ]
    with pytest.raises(FileNotFoundError, match="report.md does not exist: build the report first"):
        html.write_html(tmp_path)


def test_a_description_longer_than_a_tag_is_cut_at_a_line_and_says_so():
    text = "\n".join(f"- sentence {i} " + "x" * 90 for i in range(100))  # 100 lines, ~10,000 characters
    tail = "\n\n(cut at MLflow's 8000 characters of a description: report.html has the rest)"
    cut = fit_note(text)
    assert len(cut) <= 8000 and cut.endswith(tail)
    kept, lines = cut.removesuffix(tail).split("\n"), text.split("\n")
    assert kept == lines[: len(kept)]  # whole lines only
    assert len("\n".join(lines[: len(kept) + 1]) + tail) > 8000  # as many as fit
    assert fit_note("short") == "short"
    multi = html.description({"a/x": ["one"], "b/y": ["two"]}, ["rival line"])
    assert multi.split("\n") == [
        "**Verdict**",
        "",
        "*a/x*",
        "",
        "- one",
        "",
        "*b/y*",
        "",
        "- two",
        "",
        "rival line",
        "",
        "The whole report, its figures inside: `report.html` (this run's artifacts).",
    ]

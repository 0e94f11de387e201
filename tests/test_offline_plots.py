"""`dvc plots show` offline: the HTML template with Vega inlined (tools/offline_plots.py)."""

from __future__ import annotations

import importlib.util
import sys

import pytest
from dvc_render.html import render_html
from dvc_render.vega import VegaRenderer

from conftest import ROOT

_spec = importlib.util.spec_from_file_location("offline_plots", ROOT / "tools" / "offline_plots.py")
offline_plots = importlib.util.module_from_spec(_spec)
sys.modules["offline_plots"] = offline_plots
_spec.loader.exec_module(offline_plots)

SCRIPTS = {
    "vega": "var vega = 1; // '</script>' in a string",
    "vega-lite": "var vl = 2;",
    "vega-embed": "function vegaEmbed(){}",
}


def test_dvc_draws_into_the_page_with_no_script_from_the_network(tmp_path):
    template = tmp_path / "plots.html"
    template.write_text(offline_plots.page(SCRIPTS))
    renderer = VegaRenderer([{"x": 1, "y": 2, "rev": "workspace"}], "p.csv", template="linear", x="x", y="y")
    out = render_html([renderer], tmp_path / "out" / "index.html", html_template=str(template))
    html = (tmp_path / "out" / "index.html").read_text()
    assert out and "cdn.jsdelivr" not in html and "<script src=" not in html  # DVC's CDN tags left out
    assert "var vl = 2;" in html and "vegaEmbed('#" in html  # the inlined scripts, then DVC's plot
    assert "'<\\/script>'" in html and html.count("</script>") == 4  # three scripts and the plot's: none cut short
    assert offline_plots.MARK in html


def test_a_script_that_would_break_the_page_is_refused():
    with pytest.raises(ValueError, match="placeholder {plot_divs}"):
        offline_plots.page({**SCRIPTS, "vega": "x = '{plot_divs}'"})
    with pytest.raises(ValueError, match="vega-lite is empty"):
        offline_plots.page({**SCRIPTS, "vega-lite": " "})


def test_without_npm_it_says_so_and_leaves_dvc_its_own_page(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(offline_plots.shutil, "which", lambda name: None)
    assert offline_plots.main([str(tmp_path / "plots.html")]) == 0
    assert "npm is not installed" in capsys.readouterr().out and not (tmp_path / "plots.html").exists()


def test_a_page_already_made_is_kept(tmp_path, monkeypatch):
    target = tmp_path / "plots.html"
    target.write_text(offline_plots.page(SCRIPTS))
    monkeypatch.setattr(offline_plots, "fetch", lambda tmp: pytest.fail("fetched again"))
    assert offline_plots.main([str(target)]) == 0

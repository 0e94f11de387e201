"""report.html, the report as MLflow's artifact viewer shows it whole: report.md rendered as one
self-contained page, every figure inside it as a `data:image/png;base64` URI (the viewer shows
report.md as text and an HTML file in a frame that loads no file beside it); and the report run's
Description, the verdict in full (MLflow cuts a long tag in its table).

    write_html(Path("report"))                       # report/report.md + its PNGs -> report/report.html
    note = description({"apple/efficientnet_lite0": lines}, extra)   # Markdown

The Markdown is converted by markdown-it-py (CommonMark, with GitHub's tables), whose image rule
here reads the figure and inlines it.
"""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from markdown_it import MarkdownIt

from finalbn.infra.io import write_text

__all__ = ["HTML_NAME", "description", "render", "write_html"]

HTML_NAME = "report.html"
MIME = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".svg": "image/svg+xml"}
STYLE = """
body { font-family: system-ui, sans-serif; line-height: 1.45; max-width: 1100px; margin: 1.5em auto; padding: 0 1em; }
.table { overflow-x: auto; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.6em 0; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.5em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
img { max-width: 100%; }
blockquote { border-left: 4px solid #ddd; margin: 0.6em 0; padding: 0 0.8em; color: #444; }
code { background: #f3f3f3; padding: 0 0.2em; }
"""


def description(verdicts: Mapping[str, Sequence[str]], extra: Sequence[str] = ()) -> str:
    """The report run's Description (Markdown): the verdict's sentences per scope (`dataset/arch`,
    named when there are several), then `extra` (the strongest rival, the data-needs answer), as
    report.md opens with them; and where the whole report is."""
    lines = ["**Verdict**", ""]
    for scope, said in verdicts.items():
        if len(verdicts) > 1:
            lines += [f"*{scope}*", ""]
        lines += [f"- {line}" for line in said] + [""]
    for line in extra:
        lines += [line, ""]
    return "\n".join(lines + [f"The whole report, its figures inside: `{HTML_NAME}` (this run's artifacts)."])


def write_html(folder: Path, source: str = "report.md") -> Path:
    """`folder`/report.html from `folder`/`source` and the figures it names (`render`); its path.
    Raises FileNotFoundError without `source`."""
    md = Path(folder) / source
    if not md.is_file():
        raise FileNotFoundError(f"{md} does not exist: build the report first")
    out = Path(folder) / HTML_NAME
    write_text(out, render(md.read_text(encoding="utf-8"), Path(folder)))
    return out


def render(md: str, folder: Path, title: str = "Final BN report") -> str:
    """One HTML page of the Markdown `md` (CommonMark with GitHub tables: markdown-it-py); an
    image it names is read from `folder` and embedded as a data URI (one that is not there becomes
    a line saying so). Raw HTML in `md` is shown as text, not run."""
    parser = MarkdownIt("commonmark", {"html": False}).enable("table")

    def image(renderer, tokens, idx, options, env) -> str:  # markdown-it calls it as a method
        token = tokens[idx]
        alt = renderer.renderInlineAsText(token.children or [], options, env)
        return _image(alt, str(token.attrGet("src") or ""), Path(folder))

    parser.add_render_rule("image", image)
    body = parser.render(md).replace("<table>", '<div class="table"><table>').replace("</table>", "</table></div>")
    return (
        f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{html.escape(title)}</title>\n'
        f"<style>{STYLE}</style>\n</head>\n<body>\n{body.strip()}\n</body>\n</html>\n"
    )


def _image(alt: str, src: str, folder: Path) -> str:
    """An <img> whose source is the file `src` of `folder` inlined; a web address is kept."""
    if re.match(r"[a-z]+:", src):  # http:, data: — nothing to read here
        return f'<img alt="{html.escape(alt)}" src="{html.escape(src)}">'
    path = folder / src
    mime = MIME.get(path.suffix.lower())
    if mime is None or not path.is_file():
        return f"<em>(figure {html.escape(src)} is not in the report folder)</em>"
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(alt or path.stem)}" src="data:{mime};base64,{data}">'

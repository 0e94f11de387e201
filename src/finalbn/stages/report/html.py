"""report.html, the report as MLflow's artifact viewer shows it whole: report.md rendered as one
self-contained page, every figure inside it as a `data:image/png;base64` URI (the viewer shows
report.md as text and an HTML file in a frame that loads no file beside it); and the report run's
Description, the verdict in full (MLflow cuts a long tag in its table).

    write_html(Path("report"))                       # report/report.md + its PNGs -> report/report.html
    note = description({"apple/efficientnet_lite0": lines}, extra)   # Markdown

The Markdown is converted here: the `markdown` package is not a dependency, and report.md uses a
small subset (`markdown.Page`, `build._header`): `#` headings, paragraphs, `- ` lists, GitHub
tables, `> ` quotes, images `![alt](file.png)`, links, **bold** and `code`.
"""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

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

# inline Markdown, in order of precedence: `code`, ![image](src), [link](href), **bold**
_INLINE = re.compile(
    r"`(?P<code>[^`]+)`"
    r"|!\[(?P<alt>[^\]]*)\]\((?P<src>[^)\s]+)\)"
    r"|\[(?P<text>[^\]]+)\]\((?P<href>[^)\s]+)\)"
    r"|\*\*(?P<bold>.+?)\*\*"
)
_HEADING = re.compile(r"(#{1,6})\s+(.*)")
_ITEM = re.compile(r"(?:[-*]|\d+\.)\s+(.*)")


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
    """One HTML page of the Markdown `md`; an image it names is read from `folder` and embedded as
    a data URI (one that is not there becomes a line saying so)."""
    body = "\n".join(_blocks(md.splitlines(), Path(folder)))
    return (
        f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{html.escape(title)}</title>\n'
        f"<style>{STYLE}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n"
    )


def _blocks(lines: list[str], folder: Path) -> Iterator[str]:
    """The HTML of each block of `lines`: a heading, a table, a list, a quote or a paragraph
    (blocks are separated by a blank line or by a line that starts another kind)."""
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        if not line:
            i += 1
            continue
        heading = _HEADING.fullmatch(line)
        if heading:
            level = len(heading.group(1))
            yield f"<h{level}>{_inline(heading.group(2), folder)}</h{level}>"
            i += 1
            continue
        kind = _kind(line)
        j = i + 1
        while j < len(lines) and lines[j].strip() and _continues(kind, lines[j].strip()):
            j += 1
        yield _BLOCKS[kind]([x.strip() for x in lines[i:j]], folder)
        i = j


def _kind(line: str) -> str:
    if line.startswith("|"):
        return "table"
    if line.startswith(">"):
        return "quote"
    if _ITEM.fullmatch(line):
        return "ol" if line[0].isdigit() else "ul"
    return "p"


def _continues(kind: str, line: str) -> bool:
    """Whether `line` belongs to the block of `kind` above it (a list item's wrapped line does)."""
    if _HEADING.fullmatch(line):
        return False
    if kind in ("table", "quote"):
        return _kind(line) == kind
    return _kind(line) in (kind, "p") if kind in ("ul", "ol") else _kind(line) == "p"


def _paragraph(lines: list[str], folder: Path) -> str:
    return f"<p>{_inline(' '.join(lines), folder)}</p>"


def _quote(lines: list[str], folder: Path) -> str:
    return f"<blockquote>{_paragraph([x.lstrip('>').strip() for x in lines], folder)}</blockquote>"


def _list(tag: str) -> Callable[[list[str], Path], str]:
    """The HTML of a list block of `tag` (ul, ol)."""

    def make(lines: list[str], folder: Path) -> str:
        items: list[str] = []
        for line in lines:
            item = _ITEM.fullmatch(line)
            if item:
                items.append(item.group(1))
            else:  # a wrapped line of the item above
                items[-1] += " " + line
        return f"<{tag}>\n" + "\n".join(f"<li>{_inline(x, folder)}</li>" for x in items) + f"\n</{tag}>"

    return make


def _cells(row: str) -> list[str]:
    """A table row's cells: split on `|` that is not escaped (`markdown.cell_text` writes `\\|`)."""
    inner = row.strip().removeprefix("|").removesuffix("|")
    return [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", inner)]


def _table(lines: list[str], folder: Path) -> str:
    rows = [_cells(x) for x in lines]
    head, body = (rows[0], rows[2:]) if len(rows) > 1 and set("".join(rows[1])) <= set("-: ") else ([], rows)
    out = ['<div class="table"><table>']
    if head:
        out.append("<thead><tr>" + "".join(f"<th>{_inline(c, folder)}</th>" for c in head) + "</tr></thead>")
    out.append("<tbody>")
    out += ["<tr>" + "".join(f"<td>{_inline(c, folder)}</td>" for c in row) + "</tr>" for row in body]
    out.append("</tbody></table></div>")
    return "\n".join(out)


_BLOCKS = {"p": _paragraph, "quote": _quote, "ul": _list("ul"), "ol": _list("ol"), "table": _table}


def _inline(text: str, folder: Path) -> str:
    """`text` escaped for HTML, its inline Markdown as tags, its images as data URIs."""
    out, at = [], 0
    for m in _INLINE.finditer(text):
        out.append(html.escape(text[at : m.start()]))
        at = m.end()
        if m.group("code") is not None:
            out.append(f"<code>{html.escape(m.group('code'))}</code>")
        elif m.group("src") is not None:
            out.append(_image(m.group("alt"), m.group("src"), folder))
        elif m.group("href") is not None:
            out.append(f'<a href="{html.escape(m.group("href"))}">{_inline(m.group("text"), folder)}</a>')
        else:
            out.append(f"<strong>{_inline(m.group('bold'), folder)}</strong>")
    out.append(html.escape(text[at:]))
    return "".join(out)


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

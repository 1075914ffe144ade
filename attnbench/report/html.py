"""One self-contained HTML page: inline styles, figures as inline data URIs, no script.

Every piece of text that comes from a suite or a result goes through :func:`esc`; figures are
SVG documents embedded as ``<img src="data:image/svg+xml;base64,...">``, so nothing inside a
figure can run or reach the page, and the file needs no network to show.
"""

from __future__ import annotations

import base64
import html
from typing import Any

from attnbench.report.figures import FigureResult
from attnbench.report.tables import Table

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0 auto;
       max-width: 1280px; padding: 0 1.5rem 3rem; color: #1c1c1c; line-height: 1.4; }
h1 { margin-top: 1.2rem; } h2 { border-bottom: 1px solid #ddd; padding-bottom: .2rem;
margin-top: 2.2rem; }
nav { display: flex; flex-wrap: wrap; gap: .2rem .9rem; font-size: .9rem; }
table { border-collapse: collapse; font-size: .8rem; margin: .5rem 0; }
th, td { border: 1px solid #ddd; padding: .2rem .45rem; text-align: left; vertical-align: top; }
th { background: #f3f3f3; position: sticky; top: 0; }
tr.fail td { background: #fff1f0; } tr.pass td { background: #f1fbf1; }
tr.unstable td { background: #fff8e1; }
pre { margin: 0; white-space: pre-wrap; word-break: break-word; max-width: 60rem;
      font-size: .75rem; }
figure { margin: 1rem 0; } figure img { max-width: 100%; height: auto; }
figcaption, .caption { color: #555; font-size: .85rem; max-width: 60rem; }
.note { background: #fffbe6; border: 1px solid #f0e0a0; padding: .4rem .7rem;
        max-width: 60rem; font-size: .9rem; }
.scroll { overflow-x: auto; }
"""


def esc(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def render_table(table: Table) -> str:
    parts = [f'<section id="{esc(table.key)}"><h2>{esc(table.title)}</h2>']
    if table.caption:
        parts.append(f'<p class="caption">{esc(table.caption)}</p>')
    if not table.rows:
        parts.append(f'<p class="note">{esc(table.empty_note)}</p></section>')
        return "".join(parts)
    pre = {i for i, c in enumerate(table.columns) if c in table.preformatted}
    head = "".join(f"<th>{esc(c)}</th>" for c in table.columns)
    body = []
    for n, row in enumerate(table.rows):
        if len(row) != len(table.columns):  # a value under the wrong header is worse than none
            raise ValueError(f"table {table.key!r} row {n}: {len(row)} cells for "
                             f"{len(table.columns)} headers")
        css = table.row_classes[n] if n < len(table.row_classes) else ""
        cells = "".join(f"<td><pre>{esc(v)}</pre></td>" if i in pre else f"<td>{esc(v)}</td>"
                        for i, v in enumerate(row))
        body.append(f'<tr class="{esc(css)}">{cells}</tr>' if css else f"<tr>{cells}</tr>")
    parts.append(f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>'
                 f'{"".join(body)}</tbody></table></div></section>')
    return "".join(parts)


def render_figure(figure: FigureResult) -> str:
    parts = [f'<section id="{esc(figure.key)}"><h2>{esc(figure.title)}</h2>']
    if figure.svg is None:
        parts.append(f'<p class="note">{esc(figure.note)}</p>')
    else:
        data = base64.b64encode(figure.svg.encode("utf-8")).decode("ascii")
        parts.append(f'<figure><img class="figure" alt="{esc(figure.title)}" '
                     f'src="data:image/svg+xml;base64,{data}">'
                     f"<figcaption>{esc(figure.caption)}</figcaption></figure>")
    parts.append("</section>")
    return "".join(parts)


def render_absent(absent: list[tuple[str, str]]) -> str:
    """The sections these runs have nothing for, in one line: title (why)."""
    items = "; ".join(f"<b>{esc(title)}</b> ({esc(why.rstrip('.'))})" for title, why in absent)
    return (f'<section id="not-in-these-runs"><h2>Not in these runs</h2>'
            f'<p class="caption">{items}.</p></section>')


def render_page(title: str, subtitle: str, notes: list[str], sections: list[str],
                nav: list[tuple[str, str]]) -> str:
    links = "".join(f'<a href="#{esc(key)}">{esc(label)}</a>' for key, label in nav)
    note_items = "".join(f"<li>{esc(n)}</li>" for n in notes)
    notes_html = (f'<section id="notes"><h2>What is missing</h2><ul class="note">{note_items}'
                  "</ul></section>") if notes else ""
    return ("<!DOCTYPE html>\n"
            '<html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{esc(title)}</title><style>{STYLE}</style></head><body>"
            f"<h1>{esc(title)}</h1><p class=\"caption\">{esc(subtitle)}</p>"
            f"<nav>{links}</nav>{notes_html}{''.join(sections)}</body></html>\n")

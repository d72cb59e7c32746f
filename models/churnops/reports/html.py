"""Self-contained HTML for the reports: sections, tables and plots embedded as PNG, no external file.

A report is read where it lands: a CI artifact, a mail attachment, a folder
handed to an auditor, a machine without network. So each page is one file:
styles inline, plots as base64 PNG drawn with Matplotlib's object API (a
``Figure`` with the Agg canvas, never ``pyplot``: no global state, safe in
threads), as the model card and the drift report do.

Every section says what it shows; a section whose data is missing says what
is missing and how to get it instead of drawing an empty plot.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5rem auto;max-width:70rem;color:#1d2733;line-height:1.4}
h1{margin-bottom:.2rem}h2{border-bottom:1px solid #ccd;padding-bottom:.2rem;margin-top:2rem}
.meta{color:#556}.what{color:#334}.missing{background:#fff4d6;border-left:4px solid #e0a800;padding:.4rem .8rem}
.fail{color:#b3261e;font-weight:600}.pass{color:#1e7b34;font-weight:600}
table{border-collapse:collapse;font-size:.8rem;margin:.5rem 0}td,th{border:1px solid #ccd;padding:2px 6px;text-align:left;vertical-align:top;overflow-wrap:anywhere}
th{background:#f1f3f7}img{max-width:100%;border:1px solid #dde;margin:.3rem 0}
iframe{width:100%;height:60rem;border:1px solid #ccd}code,pre{font-size:.8rem}pre{white-space:pre-wrap}
"""


def esc(value: object) -> str:
    return html.escape(str(value))


def fmt(value: object, spec: str = ".4g") -> str:
    """A number for people (``n/a`` for a missing or non-finite one); anything else as text."""
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int | float):
        return format(value, spec) if math.isfinite(value) else "n/a"
    return str(value)


def png(fig: Figure, dpi: int = 90) -> str:
    """The figure as a base64 PNG (the Agg canvas attached here: no pyplot, no global backend)."""
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def image(data: str, alt: str) -> str:
    return f'<img alt="{esc(alt)}" src="data:image/png;base64,{data}">'


def table(headers: Sequence[str], rows: Iterable[Sequence[object]], classes: Sequence[str] | None = None) -> str:
    """An HTML table; cells are escaped, numbers formatted by ``fmt``; ``classes`` styles whole rows."""
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = []
    for i, row in enumerate(rows):
        cls = f' class="{classes[i]}"' if classes is not None and classes[i] else ""
        body.append(f"<tr{cls}>" + "".join(f"<td>{esc(fmt(c))}</td>" for c in row) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def paragraphs(lines: Iterable[str]) -> str:
    return "".join(f"<p>{esc(line)}</p>" for line in lines)


def bullets(lines: Iterable[str]) -> str:
    items = "".join(f"<li>{esc(line)}</li>" for line in lines)
    return f"<ul>{items}</ul>" if items else ""


@dataclass(frozen=True)
class Section:
    """One part of a report: what it shows, its content, and what is missing (named, never drawn empty)."""

    key: str
    title: str
    what: str
    body: str = ""
    missing: tuple[str, ...] = ()
    figures: dict[str, Any] = field(default_factory=dict)  # the numbers behind the section, for the JSON twin

    @property
    def status(self) -> str:
        if not self.missing:
            return "complete"
        return "partial" if self.body else "missing"

    def to_doc(self) -> dict[str, Any]:
        return {"title": self.title, "what": self.what, "status": self.status, "missing": list(self.missing), **self.figures}

    def render(self) -> str:
        missing = "".join(f'<p class="missing">Missing: {esc(m)}</p>' for m in self.missing)
        return f'<section id="{esc(self.key)}"><h2>{esc(self.title)}</h2><p class="what">{esc(self.what)}</p>{missing}{self.body}</section>'


def page(title: str, meta: Sequence[str], sections: Sequence[Section]) -> str:
    """The whole report: a title, a few lines of context, a table of contents and the sections."""
    toc = "".join(f'<li><a href="#{esc(s.key)}">{esc(s.title)}</a> ({esc(s.status)})</li>' for s in sections)
    lines = "".join(f'<p class="meta">{esc(m)}</p>' for m in meta)
    body = "".join(s.render() for s in sections)
    return (
        f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title><style>{STYLE}</style></head>'
        f"<body><h1>{esc(title)}</h1>{lines}<ul>{toc}</ul>{body}</body></html>\n"
    )


def embedded_page(document: str, title: str) -> str:
    """Another self-contained page (a model card) shown inside this one, its styles kept apart in an iframe."""
    return f'<iframe title="{esc(title)}" sandbox srcdoc="{html.escape(document, quote=True)}"></iframe>'


def json_block(doc: Any) -> str:
    return f"<pre>{esc(json.dumps(doc, indent=1, sort_keys=True, default=str))}</pre>"

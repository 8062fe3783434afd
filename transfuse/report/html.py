"""HTML building blocks of the study report: escaping, tables, inline figures, sections.

Everything the report shows goes through these helpers, so every user string is escaped once
(:func:`esc`) and every figure is an inline PNG (``data:`` URI) — the report is one self-contained
file that opens with no network.

Later stages (representation analysis, 3D segmentation, self-training) add report sections by
registering a provider in :data:`SECTIONS`::

    @register_section("analysis", order=50)
    def analysis_section(store: Store, study: str) -> Section | None:
        ...  # None when the study has no such results
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .._registry import Registry

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from ..store import Store

__all__ = ["esc", "table", "figure_img", "Section", "SECTIONS", "register_section", "new_figure"]


def esc(value: Any) -> str:
    """``str(value)`` escaped for HTML text and attribute values (quotes included)."""
    return html.escape(str(value), quote=True)


def table(headers: Sequence[Any], rows: Iterable[Sequence[Any]], *, caption: str | None = None,
          cls: str = "data") -> str:
    """An HTML table; every header and cell is escaped (cells are plain text, never markup)."""
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in rows)
    cap = f"<caption>{esc(caption)}</caption>" if caption else ""
    return f'<table class="{esc(cls)}">{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def new_figure(*, width: float = 6.0, height: float = 3.6, ncols: int = 1, nrows: int = 1):
    """A matplotlib ``(Figure, axes)`` on the non-interactive Agg backend (no display needed)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def figure_img(fig: Figure, *, alt: str) -> str:
    """``<img>`` tag holding ``fig`` as an inline base64 PNG; ``alt`` is escaped."""
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<figure><img alt="{esc(alt)}" src="data:image/png;base64,{data}"><figcaption>{esc(alt)}</figcaption></figure>'


@dataclass(frozen=True)
class Section:
    """One report section: an escaped title and a body of HTML built with these helpers."""

    title: str
    body: str
    anchor: str = ""


SectionFn = Callable[["Store", str], "Section | None"]
SECTIONS: Registry[SectionFn] = Registry("report section", list_command="transfuse report --help")


def register_section(name: str, *, order: int = 100) -> Callable[[SectionFn], SectionFn]:
    """Register a report section provider ``fn(store, study) -> Section | None``.

    Sections appear sorted by ``order`` (the core study sections use 0–40).
    """
    return SECTIONS.register(name, order=order)

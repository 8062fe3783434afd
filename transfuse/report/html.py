"""HTML building blocks of the study report: escaping, tables, inline figures, sections.

Everything the report shows goes through these helpers, so every user string is escaped once
(:func:`esc`) and every figure is an inline PNG (``data:`` URI) — the report is one self-contained
file that opens with no network.

Sections beyond the verdicts (representation analysis, 3D segmentation, self-training, ...) each
live in a module of ``transfuse/report/`` that registers a provider in :data:`SECTIONS` and is
imported by name in :mod:`transfuse.report.sections`::

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

__all__ = ["esc", "Html", "table", "figure_img", "check_legends", "mark_key", "Section", "SECTIONS",
           "register_section", "new_figure"]


def esc(value: Any) -> str:
    """``str(value)`` escaped for HTML text and attribute values (quotes included)."""
    return html.escape(str(value), quote=True)


class Html(str):
    """A table cell that is already HTML, every user string in it escaped with :func:`esc`
    (``<details>`` around a long text, say): :func:`table` inserts it as it is."""

    __slots__ = ()


def table(headers: Sequence[Any], rows: Iterable[Sequence[Any]], *, caption: str | None = None,
          cls: str = "data") -> str:
    """An HTML table; every header and cell is escaped (cells are plain text, never markup),
    except cells given as :class:`Html`, which the caller built from escaped parts.

    The table sits in a ``<div class="wide">`` scroll container, so a table wider than the page
    scrolls inside its box instead of widening the page (the CSS also lets cells wrap to fit).
    """
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c if isinstance(c, Html) else esc(c)}</td>" for c in r)
                   + "</tr>" for r in rows)
    cap = f"<caption>{esc(caption)}</caption>" if caption else ""
    return (f'<div class="wide"><table class="{esc(cls)}">{cap}<thead><tr>{head}</tr></thead>'
            f"<tbody>{body}</tbody></table></div>")


def new_figure(*, width: float = 6.0, height: float = 3.6, ncols: int = 1, nrows: int = 1):
    """A matplotlib ``(Figure, axes)`` on the non-interactive Agg backend (no display needed).

    ``axes`` is a ``(nrows, ncols)`` array. Every axes that draws data needs a legend, a labelled
    colorbar or a key before :func:`figure_img` accepts the figure (see :func:`check_legends`).
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


KEY_GID = "transfuse-key"


def mark_key(ax: Any) -> Any:
    """Mark ``ax`` as a key (a text legend drawn by hand): :func:`check_legends` accepts it as the
    legend of every axes of its figure and reads its texts as the legend's labels."""
    ax.set_gid(KEY_GID)
    return ax


def _labels(legend: Any) -> list[str]:
    return [t.get_text() for t in legend.get_texts() if t.get_text().strip()] if legend else []


def _mappables(ax: Any) -> list[Any]:
    return [m for m in (*ax.images, *ax.collections) if m.get_array() is not None]


def _clim_key(m: Any) -> tuple:
    return (m.get_cmap().name, *m.get_clim())


def _draws_data(ax: Any) -> bool:
    return any(a.get_visible() for a in (*ax.lines, *ax.patches, *ax.collections, *ax.images))


def check_legends(fig: Figure) -> list[str]:
    """The legend, colorbar and key labels of ``fig``; raise if a data axes has none.

    Rule: every axes that draws data (lines, bars/patches, collections, images) must have a
    legend with at least one label, or be covered by a figure legend (``fig.legend``) that
    names at least one of its labelled artists (an axes without labelled artists, such as an
    image grid, is covered by any figure legend), or show images/collections whose colour
    mapping (colormap and limits) is that of a labelled colorbar in the figure, or the figure
    has a key axes (:func:`mark_key`). Colorbar axes and key axes themselves are not data axes.

    Returns:
        The labels found, in drawing order, without duplicates.

    Raises:
        ValueError: a data axes has neither legend nor colorbar nor key, or a colorbar has no
            label (a developer error in a figure builder, not bad user input).
    """
    # colorbar axes: made by fig.colorbar (matplotlib labels them "<colorbar>") or a mappable's
    bars = list(dict.fromkeys([ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
                              + [m.colorbar.ax for ax in fig.axes for m in _mappables(ax)
                                 if m.colorbar is not None]))
    keys = [ax for ax in fig.axes if ax.get_gid() == KEY_GID]
    labels: list[str] = []
    for cax in bars:
        text = (cax.get_ylabel() or cax.get_xlabel()).strip()
        if not text:
            raise ValueError("figure has a colorbar without a label: pass label=... to fig.colorbar "
                             "saying the measure and its range")
        labels.append(text)
    # colour mappings a colorbar explains: those of its own colour strip and of its mappable
    mapped = ({_clim_key(m) for cax in bars for m in _mappables(cax)}
              | {_clim_key(m) for ax in fig.axes for m in _mappables(ax) if m.colorbar is not None})
    fig_labels = [t for lg in fig.legends for t in _labels(lg)]
    labels += fig_labels + [t.get_text() for k in keys for t in k.texts if t.get_text().strip()]
    for i, ax in enumerate(fig.axes):
        if ax in bars or ax in keys or not _draws_data(ax):
            continue
        own = _labels(ax.get_legend())
        labels += own
        named = {a.get_label() for a in (*ax.lines, *ax.patches, *ax.collections, *ax.containers)
                 if a.get_label() and not a.get_label().startswith("_")}
        covered = (bool(own) or bool(keys)
                   or (bool(fig_labels) and (not named or bool(named & set(fig_labels))))
                   or any(_clim_key(m) in mapped for m in _mappables(ax)))
        if not covered:
            name = ax.get_title() or ax.get_ylabel() or f"axes {i}"
            raise ValueError(f"figure panel {name!r} draws data but has no legend, colorbar or key: "
                             "call ax.legend() (label the artists), fig.colorbar(..., label=...) or "
                             "fig.legend(...), or mark a text key with mark_key(ax)")
    return list(dict.fromkeys(labels))


def figure_img(fig: Figure, *, alt: str) -> str:
    """``<figure>`` holding ``fig`` as an inline base64 PNG; ``alt`` is escaped.

    The ``<figure>`` element carries ``data-legend``: the legend/colorbar/key labels found by
    :func:`check_legends` (joined by `` | ``, escaped), so tests can check every figure has one.

    Raises:
        ValueError: see :func:`check_legends`.
    """
    labels = check_legends(fig)
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", bbox_inches="tight")  # "tight": figure legends stay in the image
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return (f'<figure data-legend="{esc(" | ".join(labels))}"><img alt="{esc(alt)}" '
            f'src="data:image/png;base64,{data}"><figcaption>{esc(alt)}</figcaption></figure>')


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

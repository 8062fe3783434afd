"""The study report: one self-contained HTML file built from the run store (see :mod:`.html`)."""

from .html import SECTIONS, Section, esc, figure_img, new_figure, register_section, table

__all__ = ["SECTIONS", "Section", "esc", "figure_img", "new_figure", "register_section", "table"]

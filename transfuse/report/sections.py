"""Every section of the study report beyond the verdicts, registered in one place.

Each section lives next to the rest of the report code (``transfuse/report/<name>.py``) and
registers a provider ``fn(store, study) -> Section | None`` in
:data:`~transfuse.report.html.SECTIONS` (``None``: the study has nothing of that kind). This module
imports every one of them by name — no import by string, nothing skipped when a module is
missing — so a renamed or broken section module fails the report and the test that walks
:data:`SECTION_NAMES`, instead of vanishing from reports.
"""

from __future__ import annotations

from ..store import Store
from . import analysis, averaging, clinical, med3d, segmentation, selftrain, ssl  # noqa: F401 — each registers its section
from .html import SECTIONS, Section

__all__ = ["SECTION_NAMES", "extra_sections"]

#: The registered sections, in report order (the registry's ``order``); the test checks the
#: registry holds exactly these.
SECTION_NAMES = ("segmentation_dice", "clinical", "med3d_pretraining", "ssl_pretraining", "averaging",
                 "analysis", "selftrain")


def extra_sections(store: Store, study: str) -> list[Section]:
    """The registered sections the study has, in order."""
    out = []
    for entry in sorted(SECTIONS, key=lambda e: e.meta.get("order", 100)):
        sec = entry.fn(store, study)
        if sec is not None:
            out.append(sec)
    return out

"""The report's section registry (issue 30): explicit, next to the report code, never silently missing."""

import ast
from pathlib import Path

import transfuse.report.sections as sections
from transfuse.report.html import SECTIONS
from transfuse.store import Store

ROOT = Path(__file__).resolve().parents[1] / "transfuse"


def _registering_modules() -> set[str]:
    """Modules whose source registers a section (``@register_section(...)``)."""
    out = set()
    for p in ROOT.rglob("*.py"):
        tree = ast.parse(p.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef) and any(
                    isinstance(d, ast.Call) and getattr(d.func, "id", "") == "register_section"
                    for d in node.decorator_list):
                out.add(".".join(p.relative_to(ROOT.parent).with_suffix("").parts))
    return out


def test_every_section_module_lives_in_report_and_is_imported_by_name():
    mods = _registering_modules()
    assert mods, "no section found: the scan is broken"
    assert all(m.startswith("transfuse.report.") for m in mods), mods
    imported = {f"transfuse.report.{a.name}" for node in ast.parse(Path(sections.__file__).read_text()).body
                if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module is None
                for a in node.names}
    assert mods <= imported, f"section modules not imported by transfuse/report/sections.py: {mods - imported}"


def test_registry_holds_exactly_the_named_sections_in_order():
    entries = sorted(SECTIONS, key=lambda e: e.meta.get("order", 100))
    assert tuple(e.name for e in entries) == sections.SECTION_NAMES


def test_every_section_answers_none_for_a_study_without_its_results(tmp_path):
    store = Store(tmp_path)
    for entry in SECTIONS:
        assert entry.fn(store, "no-such-study") is None, entry.name
    assert sections.extra_sections(store, "no-such-study") == []

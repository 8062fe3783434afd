"""The pretraining records (``<workspace>/pretrain/<name>/pretrain.json``) behind a study's
``med3d:`` or ``ssl:`` sources, read once for the report sections that describe them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import ConfigError, check_name
from ..spec.init_names import source_ref
from ..store import Store

__all__ = ["pretrain_records"]


def pretrain_records(store: Store, study: str, *, prefix: str
                     ) -> tuple[list[tuple[str, dict[str, Any]]], list[str]]:
    """``(records, notes)`` for every source ``<prefix>:<name>`` the study's runs were
    initialised from, sorted: ``(source, pretrain.json as a dict)`` when readable, else a note
    naming the missing or unreadable file (or the unsafe name) instead.

    Args:
        store: the study's store.
        study: the study name.
        prefix: ``"med3d"`` or ``"ssl"``.
    """
    sources = sorted({str(r.spec["init"].get("source")) for r in store.list_runs(study=study)
                      if str(r.spec["init"].get("source") or "").startswith(prefix + ":")})
    records, notes = [], []
    for src in sources:
        try:
            name = check_name(source_ref(src).arg, field="source")
        except ConfigError as e:
            notes.append(f"{src}: {e}")
            continue
        path = Path(store.workspace) / "pretrain" / name / "pretrain.json"
        try:
            meta = json.loads(path.read_text())
        except (OSError, ValueError):
            notes.append(f"{src}: {path} is missing or unreadable")
            continue
        records.append((src, meta if isinstance(meta, dict) else {}))
    return records, notes

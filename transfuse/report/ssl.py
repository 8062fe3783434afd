"""Report section for the self-supervised pretrainings a study's runs were initialised from:
what each ``ssl:`` source was trained on and what it cost (steps, images, seconds), so that
"better than random" is read together with "at this cost"."""

from __future__ import annotations

from typing import Any

from .html import Section, esc, register_section, table
from .pretrained import pretrain_records
from ..store import Store

__all__ = ["ssl_section", "ssl_costs"]


def ssl_costs(store: Store, study: str) -> tuple[list[dict[str, Any]], list[str]]:
    """``(rows, notes)``: one row per ``ssl:`` source used by the study's runs (from its
    ``pretrain.json``), and a note for each source whose record is missing or unreadable."""
    records, notes = pretrain_records(store, study, prefix="ssl")
    rows = []
    for src, meta in records:
        cost, data = meta.get("cost") or {}, meta.get("data") or {}
        rows.append({"source": src, "method": meta.get("method"), "model": meta.get("model"),
                     "data": data.get("name") or data.get("folder"), **cost,
                     "loss_first10": meta.get("loss_first10"), "loss_last10": meta.get("loss_last10")})
    return rows, notes


@register_section("ssl_pretraining", order=27)
def ssl_section(store: Store, study: str) -> Section | None:
    """The ``ssl:`` sources of the study with their pretraining cost."""
    rows, notes = ssl_costs(store, study)
    if not rows and not notes:
        return None

    def fmt(v: Any) -> str:
        return "—" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))

    cells = [[fmt(r.get(k)) for k in ("source", "method", "model", "data", "steps", "batch_size",
                                      "images_seen", "unique_images", "train_images", "seconds",
                                      "device", "loss_first10", "loss_last10")] for r in rows]
    body = ("<p>Self-supervised pretraining on the study's own training images, labels dropped "
            "(never the validation or test split; docs/SSL.md). The arms above named after these "
            "sources load their encoders; their cost comes on top of the runs' own training.</p>"
            + table(["source", "method", "model", "unlabelled data", "steps", "batch",
                     "images seen", "unique images", "training images", "seconds", "device",
                     "loss (first 10 steps)", "loss (last 10)"], cells)
            + "".join(f"<p>{esc(n)}</p>" for n in notes))
    return Section("Self-supervised pretraining", body, anchor="ssl-pretraining")

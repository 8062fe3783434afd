"""The report section on a study's Med3D pretraining: what each ``med3d:`` source cost and scored."""

from __future__ import annotations

from ..store import Store
from .html import Section, esc, register_section, table
from .pretrained import pretrain_records

__all__ = ["med3d_section"]


@register_section("med3d_pretraining", order=26)
def med3d_section(store: Store, study: str) -> Section | None:
    """What each ``med3d:`` source of the study was pretrained on, and how well its heads did."""
    records, notes = pretrain_records(store, study, prefix="med3d")
    if not records and not notes:
        return None
    rows = []
    for src, meta in records:
        for d in meta.get("datasets", []):
            fd = d.get("final_dice")
            rows.append([src, meta.get("encoder", "?"), d.get("name"), d.get("weight"), d.get("steps"),
                         len(d.get("classes") or []), "—" if fd is None else f"{fd:.3f}"])
    body = ("<p>Med3D-style pretraining (Chen et al. 2019): one shared 3D encoder, one "
            "segmentation head per dataset, each step on one dataset drawn by weight. The runs "
            "above load its encoder; its heads are discarded.</p>"
            + table(["source", "encoder", "dataset", "weight", "steps on it", "classes",
                     "final val Dice"], rows)
            + "".join(f"<p>{esc(n)}</p>" for n in notes))
    return Section("Med3D pretraining", body, anchor="med3d-pretraining")

"""Report section: the paired SD of each comparison without and with weight averaging.

Only where the study ran its arms both ways (``train.ema`` / ``train.swa`` as a grid axis); the
numbers are :func:`transfuse.decide.averaging.averaging_rows`', the same the report JSON
(``averaging``) and ``study plan`` give.
"""

from __future__ import annotations

from ..store import Store
from ..decide.averaging import averaging_rows
from ..decide.results import load_results
from .html import Section, esc, register_section, table

__all__ = ["averaging_section"]


def _f(x: float | None, fmt: str) -> str:
    return "–" if x is None else format(x, fmt)


@register_section("averaging", order=45)
def averaging_section(store: Store, study: str) -> Section | None:
    """The table, or ``None`` when the study varies no averaging."""
    if not store.list_runs(study=study):
        return None
    info = store.get_results("study", study=study).get(study, {})
    reference = (info.get("evaluation") or {}).get("reference", "random")
    res = load_results(store, study, reference=reference)
    rows = averaging_rows(res)
    if not rows:
        return None
    unit = "AUC" if res.metric == "auc" else "Dice"
    body = table(["model", "n_train", "arm vs reference", "averaging", "seeds",
                  "Δ without", "Δ with", "paired SD without", "paired SD with", "ratio",
                  "seeds needed ×"],
                 [[r.model, r.size, f"{r.arm} vs {r.reference}", r.averaging, len(r.seeds),
                   _f(r.mean_plain, "+.4f"), _f(r.mean_averaged, "+.4f"), _f(r.sd_plain, ".4f"),
                   _f(r.sd_averaged, ".4f"), _f(r.ratio, ".2f"), _f(r.seed_factor, ".2f")]
                  for r in rows],
                 cls="data",
                 caption=f"Paired SD over the same seeds of the final-{unit} difference (arm − "
                         "reference) without and with weight averaging; ratio = with / without; "
                         "the seeds a decision needs scale by about ratio²")
    note = ("<p class=\"method\">Both sides use the same seeds; the averaged comparison pairs the "
            f"averaged arm with the averaged {esc(reference)}.</p>")
    return Section("Weight averaging: paired SD", body + note, "averaging")

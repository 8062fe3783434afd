"""Machine-readable study results: ``transfuse report WS --study S --format json``.

Every cell, comparison (question), verdict, reason, margin, adjusted p-value and interval, in the
documented schema ``transfuse.study-results/2`` (:data:`SCHEMA`, the file
``transfuse/report/results.schema.json``; fields in docs/STUDIES.md). The HTML report's verdict
table is built from the same :class:`~transfuse.decide.decisions.Decisions`, so the two agree.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from functools import cache
from importlib import resources
from typing import Any

from ..decide.decisions import Decisions, Verdict
from ..decide.headline import BestCell, design_numbers
from ..decide.results import StudyResults
from ..decide.verdicts import LABELS, VERDICTS
from .card import cards

__all__ = ["results_dict", "schema", "SCHEMA_ID"]

SCHEMA_ID = "transfuse.study-results/2"


@cache
def schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of :func:`results_dict`."""
    return json.loads(resources.files("transfuse.report").joinpath("results.schema.json").read_text())


def _num(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def unit_of(v: Verdict, metric: str) -> str:
    e = v.question.endpoint
    if e.startswith("speed"):
        return "log(steps_reference / steps_arm)"
    name = "AUC" if metric == "auc" else "Dice"
    return f"test {name}" if e == "final" else f"area under the validation {name} curve"


def _comparison(v: Verdict, res: StudyResults, dec: Decisions) -> dict[str, Any]:
    q, d = v.question, v.decision
    vals = [x for x in q.diffs if x is not None and math.isfinite(x)]
    mean = d.mean if d else (sum(vals) / len(vals) if vals else None)
    comp = res.comparison(q.model, q.arm, q.size)
    delong = []
    if comp is not None and q.endpoint == "final":
        delong = [{"seed": int(s), "diff": float(x.diff), "p": float(x.p)}
                  for s, x in comp.delong.items() if x is not None]
    return {"id": q.id, "model": q.model, "size": q.size, "arm": q.arm, "reference": q.reference,
            "endpoint": q.endpoint, "unit": unit_of(v, res.metric), "margin": float(q.margin),
            "seeds": list(q.seeds), "n": v.n, "mean": _num(mean), "sd": _num(d.sd) if d else None,
            "p_diff": _num(d.p_diff) if d else None, "p_equiv": _num(d.p_equiv) if d else None,
            "p_adjusted": _num(d.p_adjusted) if d else None, "level": _num(d.level) if d else None,
            "ci_low": _num(d.ci_low) if d else None, "ci_high": _num(d.ci_high) if d else None,
            "verdict": v.verdict, "label": v.label, "sentence": v.sentence, "reason": v.reason,
            "look": v.look,
            "seeds_needed": v.seeds_needed, "delong": delong,
            **design_numbers(v, ev=dec.evaluation, family_size=dec.family_size)}


def results_dict(res: StudyResults, dec: Decisions, *, others: Sequence[BestCell] = ()) -> dict[str, Any]:
    """The study's results and decisions as plain JSON-ready data (see :func:`schema`).

    ``others``: cells of the workspace's other studies, for the decision cards' context lines
    (:func:`transfuse.decide.headline.workspace_cells`; default none).
    """
    from .. import __version__

    ev = dec.evaluation
    m_final, m_area, _ = ev.margins(res.metric)
    seq = None
    if dec.sequential is not None:
        seq = {**dec.sequential.to_dict(), "levels": dec.sequential.levels(ev.alpha)}
    comps = [_comparison(v, res, dec) for v in dec.verdicts]
    cells = []
    for c in res.cells:
        f = c.final
        cells.append({"model": c.model, "arm": c.init, "size": c.size,
                      "seeds": [r.seed for r in c.runs], "scores": [_num(r.test) for r in c.runs],
                      "n": f.n if f else 0,
                      "mean": _num(f.mean) if f else None, "sd": _num(f.sd) if f else None,
                      "ci_low": _num(f.ci_low) if f else None, "ci_high": _num(f.ci_high) if f else None,
                      "did_not_learn": dec.did_not_learn.get((c.model, c.init, c.size))})
    return {
        "schema": SCHEMA_ID, "study": res.study, "metric": res.metric, "task": res.task,
        "transfuse_version": __version__,
        "generated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "evaluation": {"margin": m_final, "area_margin": m_area, "speed_margin": ev.speed_margin,
                       "reference": ev.reference, "multiplicity": ev.multiplicity,
                       "alpha": ev.alpha, "power": ev.power, "sequential": seq},
        "pilot": dec.pilot, "family_size": dec.family_size, "families": list(dec.families),
        "runs": {"finished": len(res.rows), "unfinished": dict(res.unfinished),
                 "left_out": [x.to_dict() for x in res.left_out],
                 "missing_files": {k: list(v) for k, v in sorted(res.missing.items())}},
        "cells": cells,
        "comparisons": comps,
        "cards": cards(res, dec, comps, others),
        "verdicts": {code: LABELS[code] for code in VERDICTS},
        "recommendations": [{"model": r.model, "size": r.size, "arm": r.arm, "verdict": r.verdict,
                             "text": r.text} for r in dec.recommendations],
    }

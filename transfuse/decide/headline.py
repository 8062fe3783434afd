"""The numbers behind a decision card: what the data rule out, what more seeds would buy, and
which cells of the workspace do better on the same data (issue 32).

For one question (a :class:`~transfuse.decide.decisions.Verdict`), :func:`design_numbers` gives

- ``plausible_range``: the verdict's own interval ``[ci_low, ci_high]`` — the differences these
  seeds have not ruled out, at the level the verdict was read at;
- ``decidable_margin``: the smallest margin the current seeds already decide as ``equivalent``
  (:func:`transfuse.decide.design.decidable_margin`) at test level ``a = (1 - level) / 2``, where
  ``level`` is the verdict's interval level. That is the TOST level whose ``1 - 2a`` interval *is*
  the verdict's interval (for ``equivalent`` exactly the level the equivalence test was decided
  at; otherwise half the difference test's step level), so the decidable margin is the far end of
  the plausible range from 0 and the card's two numbers agree: "between −0.074 and +0.061 AUC;
  with 6 seeds: equivalent within ±0.075 AUC" (speed-ups: read from the differences alone,
  without the rounding floor their SD is raised to, so it may lie a little inside the interval);
- ``seeds_needed_at_margin`` / ``seeds_needed_at_2x_margin``: the seed count a fixed design would
  need for a decisive verdict with ``evaluation.power`` at the user's margin and at twice it,
  assuming the observed mean and SD (:func:`transfuse.decide.verdicts.seeds_needed`), at the plan
  level :func:`transfuse.decide.decisions.decide` plans with (:func:`plan_level`: Holm's first step,
  ``alpha / K`` over the ``K`` questions read). At the margin this equals the verdict's own
  ``seeds_needed``. Both are ``None`` for a decided question (and beyond 1000 seeds).

:func:`workspace_cells` and :func:`context` find the cells of this and other studies in the
workspace, on the same dataset and training-set size, whose mean final score beats this model's
best by more than the margin — a comparison of means across models or studies, never a verdict.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .design import decidable_margin
from .verdicts import seeds_needed

if TYPE_CHECKING:
    from ..store import Store
    from .decisions import Verdict
    from .evaluation import Evaluation
    from .results import StudyResults

__all__ = ["plan_level", "design_numbers", "BestCell", "study_cells", "workspace_cells", "context",
           "DESIGN_FIELDS", "MAX_CONTEXT"]

#: The per-comparison fields :func:`design_numbers` adds to the JSON.
DESIGN_FIELDS = ("plausible_range", "decidable_margin", "seeds_needed_at_margin",
                 "seeds_needed_at_2x_margin")
MAX_CONTEXT = 4  # context lines per card at most (the highest means first)


def plan_level(ev: Evaluation, family_size: int) -> float:
    """The per-question level seed plans use: ``alpha / K`` (Holm's, or BH's, first step over the
    ``K`` questions read), ``alpha`` without a multiplicity adjustment — as :func:`.decide.decide`."""
    return ev.alpha / max(family_size, 1) if ev.multiplicity != "none" else ev.alpha


def _finite(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def design_numbers(v: Verdict, *, ev: Evaluation, family_size: int) -> dict[str, Any]:
    """:data:`DESIGN_FIELDS` of one question (see the module docstring); ``None`` where the
    question has no interval (a gate decided it before any statistics)."""
    d, q = v.decision, v.question
    out: dict[str, Any] = dict.fromkeys(DESIGN_FIELDS)
    if d is None:
        return out
    lo, hi = _finite(d.ci_low), _finite(d.ci_high)
    out["plausible_range"] = None if lo is None or hi is None else [lo, hi]
    dm = decidable_margin(list(q.diffs), a=(1.0 - d.level) / 2)
    out["decidable_margin"] = _finite(dm)
    if v.verdict == "undecided" and math.isfinite(d.mean) and math.isfinite(d.sd):
        a = plan_level(ev, family_size)
        for key, m in (("seeds_needed_at_margin", q.margin), ("seeds_needed_at_2x_margin", 2 * q.margin)):
            out[key] = seeds_needed(delta=d.mean, sd=d.sd, margin=m, a=a, power=ev.power, at_least=d.n)
    return out


@dataclass(frozen=True)
class BestCell:
    """A cell's mean final score (test AUC or Dice over its seeds), where it was run."""

    study: str
    model: str
    arm: str
    size: str
    dataset: str
    mean: float
    n: int

    def to_dict(self) -> dict[str, Any]:
        return {"study": self.study, "model": self.model, "arm": self.arm, "size": self.size,
                "dataset": self.dataset, "mean": self.mean, "n": self.n}


def _cells(study: str, rows: Iterable[tuple[str, str, str, str, float]]) -> list[BestCell]:
    groups: dict[tuple[str, str, str, str], list[float]] = defaultdict(list)
    for model, arm, size, dataset, score in rows:
        if score is not None and math.isfinite(score):
            groups[(model, arm, size, dataset)].append(score)
    return [BestCell(study, m, a, s, ds, sum(v) / len(v), len(v)) for (m, a, s, ds), v in groups.items()]


def study_cells(res: StudyResults) -> list[BestCell]:
    """Every cell of this study with a final score."""
    return _cells(res.study, ((r.model, r.init, r.size, r.dataset, r.test) for r in res.rows))


def workspace_cells(store: Store, *, exclude: str, metric: str) -> list[BestCell]:
    """The cells of every *other* study in the store, from the runs of their current cells (as
    :func:`~transfuse.decide.results.load_results` selects them), scored by ``metric``."""
    from .results import cell_keys
    from .selection import select_runs

    finished = [r for r in store.list_runs(status="finished") if r.study and r.study != exclude
                and not r.spec.get("parent")]
    by_study: dict[str, list] = defaultdict(list)
    for r in finished:
        by_study[r.study].append(r)
    out: list[BestCell] = []
    for study, records in sorted(by_study.items()):
        info = store.get_results("study", study=study).get(study, {})
        records, _ = select_runs(records, current=info.get("run_ids"),
                                 adaptive=bool(info.get("sequential")))
        records = [r for r in records if r.status == "finished"
                   and ("dice" if r.data_info.get("task") == "segmentation" else "auc") == metric]
        keys = cell_keys([r.spec for r in records])
        out += _cells(study, ((m, a, s, r.spec["data"]["name"], store.final_metrics(r.run_id).get(metric))
                              for r, (m, a, s) in zip(records, keys)))
    return out


def context(*, study: str, model: str, size: str, datasets: Sequence[str], cells: Sequence[BestCell],
            margin: float) -> tuple[BestCell | None, list[tuple[BestCell, float]]]:
    """This model's best cell at ``size``, and the cells that beat it by more than ``margin``.

    Candidates: other models of this study at the same size, and every other study's cells on one
    of ``datasets`` at the same size; one per (study, model) — its best arm — so a study is not
    listed once per arm. Returns ``(best of this model, [(cell, its lead over that best)])``,
    the highest means first, at most :data:`MAX_CONTEXT`.
    """
    mine = [c for c in cells if (c.study, c.model, c.size) == (study, model, size)]
    if not mine:
        return None, []
    best = max(mine, key=lambda c: c.mean)
    top: dict[tuple[str, str], BestCell] = {}
    for c in cells:
        if c.size != size or (c.study, c.model) == (study, model):
            continue
        if c.study != study and c.dataset not in datasets:
            continue
        k = (c.study, c.model)
        if k not in top or c.mean > top[k].mean:
            top[k] = c
    ahead = sorted(((c, c.mean - best.mean) for c in top.values() if c.mean - best.mean > margin),
                   key=lambda t: -t[0].mean)
    return best, ahead[:MAX_CONTEXT]

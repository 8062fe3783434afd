"""From a study's results to decisions: questions, sanity gates, verdicts, seed plans, recommendations.

This is the "numbers → answers" stage between :func:`transfuse.decide.results.load_results` and the
report. For every arm (an init label) compared with the reference arm (``evaluation.reference``,
default ``random``) on the same model and training-set size, paired by seed, three kinds of
*question* are asked, all in one multiplicity family per report:

- ``final``: the test score (AUC, or Dice for segmentation), margin ``evaluation.margin``;
- ``area``: the area under the validation curve (time-averaged score), ``evaluation.area_margin``;
- ``speed@T``: log of steps(reference) / steps(arm) to reach score ``T``, margin
  ``log(evaluation.speed_margin)``; an interval that spans 1× is never a speed-up.

Sanity gates force ``undecided`` before any statistics: a pilot study (``--smoke`` or a single
seed), a cell that did not learn (every run's test score within 0.02 of chance, or a validation
curve that never moved), a threshold some run never reached, fewer than two paired seeds. The
rest get verdicts from :mod:`transfuse.decide.verdicts`, in one look (a fixed design) or replayed
look by look with O'Brien–Fleming-type alpha spending (an adaptive ``--until-decided`` study).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from .results import Cell, RunRow, StudyResults
from .evaluation import DEFAULT_MARGIN, Evaluation, Sequential, default_margin
from .recommend import Recommendation, interval_reason, recommendations, sentence
from .verdicts import LABELS, Decision, decide_family, seeds_needed

__all__ = ["Evaluation", "Sequential", "Question", "Verdict", "Recommendation", "Decisions",
           "decide", "load_decisions", "questions", "frozen_records", "FROZEN", "CHANCE_BAND",
           "default_margin"]

CHANCE = {"auc": 0.5, "dice": 0.0}
CHANCE_BAND = 0.02  # a cell whose every run stays this close to chance did not learn
FLAT = 1e-3  # a validation curve whose range is below this never moved
@dataclass(frozen=True)
class Question:
    """One paired comparison of an arm with the reference.

    Attributes:
        model, size, arm, reference: where and what is compared.
        endpoint: ``final``, ``area`` or ``speed@T``.
        margin: in the units of ``diffs``.
        seeds: the shared seeds, ascending.
        diffs: ``arm - reference`` per shared seed (log speed-up for ``speed@T``); ``None``
            where undefined (a threshold not reached, an undefined score).
        gate: the reason it is ``undecided`` before any statistics, or ``None``.
        sd_floor: the least spread the differences are known to have: for speed-ups, the
            rounding of each step count to its evaluation interval (:func:`_step_rounding`).
    """

    model: str
    size: str
    arm: str
    reference: str
    endpoint: str
    margin: float
    seeds: tuple[int, ...]
    diffs: tuple[float | None, ...]
    gate: str | None = None
    sd_floor: float = 0.0

    @property
    def id(self) -> str:
        return f"{self.model} · n_train={self.size} · {self.arm} vs {self.reference} · {self.endpoint}"


@dataclass(frozen=True)
class Verdict:
    """A question's answer: the verdict, why, the numbers it was read from, and a seed plan.

    ``verdict`` is a code of :data:`~transfuse.decide.verdicts.VERDICTS`; ``sentence`` says it in
    words with its numbers (:func:`~transfuse.decide.recommend.sentence`). ``look`` is the
    (1-based) look whose interval is shown; ``seeds_needed`` is the seed count a fixed design
    would need for a decisive verdict with ``evaluation.power`` at the family's first-step level,
    assuming the observed mean and spread (``None``: over 1000, or unknown).
    """

    question: Question
    verdict: str
    reason: str
    decision: Decision | None = None
    look: int | None = None
    seeds_needed: int | None = None
    sentence: str = ""

    @property
    def label(self) -> str:
        """The verdict in words: ``better by less than the margin``."""
        return LABELS[self.verdict]

    @property
    def n(self) -> int:
        return self.decision.n if self.decision else sum(d is not None for d in self.question.diffs)


@dataclass(frozen=True)
class Decisions:
    """Every verdict of a study, the recommendations, and how they were reached."""

    metric: str
    evaluation: Evaluation
    sequential: Sequential | None
    pilot: str | None
    family_size: int
    verdicts: tuple[Verdict, ...]
    recommendations: tuple[Recommendation, ...]
    did_not_learn: dict[tuple[str, str, str], str] = field(default_factory=dict)
    families: tuple[int, ...] = ()  # questions in the multiplicity family at each look read

    def of(self, model: str, size: str, endpoint: str = "final") -> list[Verdict]:
        return [v for v in self.verdicts if (v.question.model, v.question.size,
                                             v.question.endpoint) == (model, size, endpoint)]


# ---- questions ----------------------------------------------------------------------------------

def _first(runs: tuple[RunRow, ...], n_seeds: int | None) -> tuple[RunRow, ...]:
    """The runs of a cell's first ``n_seeds`` seeds (all with ``None``): what a look saw."""
    return runs if n_seeds is None else tuple(sorted(runs, key=lambda r: r.seed)[:n_seeds])


def _did_not_learn(cell: Cell, metric: str, n_seeds: int | None = None) -> str | None:
    chance = CHANCE.get(metric, 0.5)
    name = "AUC" if metric == "auc" else "Dice"
    runs = _first(cell.runs, n_seeds)
    tests = [r.test for r in runs if r.test is not None and math.isfinite(r.test)]
    if tests and all(abs(t - chance) <= CHANCE_BAND for t in tests):
        return (f"{cell.init} did not learn: every run's test {name} is within {CHANCE_BAND:g} "
                f"of chance ({chance:g})")

    def flat(r: RunRow) -> bool:
        v = [x for x in r.curve if x is not None and math.isfinite(x)]
        return len(v) >= 2 and max(v) - min(v) < FLAT

    if runs and all(flat(r) for r in runs):
        return f"{cell.init} did not learn: its validation {name} never moved"
    return None


def _step_rounding(r: RunRow, t: float) -> float:
    """Variance of ``log(steps)`` from rounding: the curve crossed ``t`` somewhere after the
    previous evaluation, so the step count is known to one evaluation interval ``e``; a uniform
    rounding error has variance ``e² / 12`` (on the log scale divided by ``steps²``)."""
    s = r.conv.absolute.get(t)
    before = [x for x in r.curve_steps if x < s] if s else []
    e = s - max(before) if before else 0
    return (e * e / 12.0) / (s * s) if s else 0.0


def _speed(a: RunRow, b: RunRow, t: float) -> float | None:
    x, y = a.conv.absolute.get(t), b.conv.absolute.get(t)
    if not x or not y:  # not reached, or reached at initialisation (step 0): no ratio
        return None
    return math.log(y / x)


def questions(res: StudyResults, ev: Evaluation, *, pilot: str | None = None,
              n_seeds: int | None = None) -> tuple[list[Question], dict[tuple[str, str, str], str]]:
    """Every question of the study and the cells that did not learn (cell → reason).

    ``n_seeds``: ask them of each cell's first ``n_seeds`` seeds only, as an adaptive study's look
    at that seed count saw them — seeds added later (for other questions) change nothing, gates
    included.
    """
    m_final, m_area, m_speed = ev.margins(res.metric)
    name = "AUC" if res.metric == "auc" else "Dice"
    dnl = {(c.model, c.init, c.size): r for c in res.cells
           if (r := _did_not_learn(c, res.metric, n_seeds))}
    out: list[Question] = []
    for cell in res.cells:
        if cell.init == ev.reference:
            continue
        ref = res.cell(cell.model, ev.reference, cell.size)
        if ref is None:
            continue
        a = {r.seed: r for r in _first(cell.runs, n_seeds)}
        b = {r.seed: r for r in _first(ref.runs, n_seeds)}
        seeds = tuple(sorted(set(a) & set(b)))
        gate = pilot or dnl.get((cell.model, ev.reference, cell.size)) or dnl.get(
            (cell.model, cell.init, cell.size))

        def q(endpoint: str, margin: float, diffs: list[float | None], why: str | None = None,
              floor: float = 0.0) -> Question:
            n = sum(d is not None for d in diffs)
            g = gate or why or (f"too few seeds ({n} paired; at least 2 are needed)" if n < 2 else None)
            return Question(cell.model, cell.size, cell.init, ev.reference, endpoint, margin, seeds,
                            tuple(diffs), g, floor)

        def diff(x: float | None, y: float | None) -> float | None:
            ok = x is not None and y is not None and math.isfinite(x) and math.isfinite(y)
            return x - y if ok else None

        out.append(q("final", m_final, [diff(a[s].test, b[s].test) for s in seeds]))
        out.append(q("area", m_area, [diff(a[s].conv.area, b[s].conv.area) for s in seeds]))
        for t in res.thresholds:
            d = [_speed(a[s], b[s], t) for s in seeds]
            why = None
            if any(v is None for v in d):
                miss_a = sum(not a[s].conv.absolute.get(t) for s in seeds)
                miss_b = sum(not b[s].conv.absolute.get(t) for s in seeds)
                parts = [f"{who} in {k} of {len(seeds)} seeds" for who, k in
                         ((cell.init, miss_a), (ev.reference, miss_b)) if k]
                why = f"{name} {t:g} not reached (or reached at step 0): " + ", ".join(parts)
            var = [_step_rounding(a[s], t) + _step_rounding(b[s], t) for s in seeds]
            out.append(q(f"speed@{t:g}", m_speed, d, why, math.sqrt(sum(var) / len(var)) if var else 0.0))
    return out, dnl


# ---- verdicts -----------------------------------------------------------------------------------

FROZEN = "frozen_verdict"  # store results of this kind hold an adaptive study's decided questions


def _values(q: Question) -> list[float]:
    return [x for x in q.diffs if x is not None]


def _fingerprint(ev: Evaluation, sequential: Sequential | None, metric: str) -> dict[str, Any]:
    return {"evaluation": ev.to_dict(), "sequential": sequential.to_dict() if sequential else None,
            "metric": metric}


def _run_ids(res: StudyResults, q: Question) -> list[str]:
    """The runs a question read: its arm's and its reference's, at its seeds."""
    seeds = set(q.seeds)
    return sorted(r.run_id for r in res.rows if r.seed in seeds and r.model == q.model
                  and r.size == q.size and r.init in (q.arm, q.reference))


def frozen_records(dec: Decisions, res: StudyResults | None = None) -> dict[str, dict[str, Any]]:
    """The decided questions of an adaptive study, as the store keeps them (question id → record):
    verdict, reason, interval, the look and the seeds that decided it, and what it was judged by
    (a record only counts for the same evaluation, schedule and metric) and — given ``res`` —
    the run ids it read: a record counts only while those runs are among the study's current
    cells (an edited study file changes run ids, so its old decisions are not reused)."""
    if dec.sequential is None:
        return {}
    out = {}
    for v in dec.verdicts:
        if v.verdict == "undecided" or v.decision is None or v.look is None:
            continue
        q = v.question
        out[q.id] = {"id": q.id, "look": v.look, "verdict": v.verdict, "reason": v.reason,
                     "decision": asdict(v.decision),
                     "question": {"seeds": list(q.seeds), "diffs": list(q.diffs),
                                  "sd_floor": q.sd_floor, "margin": q.margin},
                     **_fingerprint(dec.evaluation, dec.sequential, dec.metric)}
        if res is not None:
            out[q.id]["runs"] = _run_ids(res, q)
    return out


def _from_record(q: Question, rec: Mapping[str, Any]) -> tuple[Question, Decision, str]:
    r = rec["question"]
    fq = replace(q, seeds=tuple(r["seeds"]), diffs=tuple(r["diffs"]), sd_floor=r["sd_floor"],
                 margin=r["margin"], gate=None)
    return fq, Decision(**rec["decision"]), rec["reason"]


def decide(res: StudyResults, *, evaluation: Evaluation | None = None,
           sequential: Sequential | None = None, smoke: bool = False,
           frozen: Mapping[str, Mapping[str, Any]] | None = None) -> Decisions:
    """Verdicts and recommendations for a study's results.

    An adaptive study is replayed look by look: at each look the questions are asked of each
    cell's first ``looks[l]`` seeds (gates included), the questions still open there form the
    look's family, and a question decided at a look keeps that look's verdict, interval, seeds
    and family — seeds added later for other questions of the same arm are not read for it.

    Args:
        res: the study's results (:func:`~transfuse.decide.results.load_results`).
        evaluation: margins, reference, multiplicity (default :class:`Evaluation`).
        sequential: the look schedule of an adaptive study; ``None`` for a fixed design.
        smoke: the study ran with ``--smoke`` (pilot only).
        frozen: decided questions recorded by the adaptive run (:func:`frozen_records`, question
            id → record); a record judged by the same evaluation and schedule is taken as it
            was, at its look, whatever the runs say now.
    """
    ev = evaluation or Evaluation()
    seeds_per_cell = [len(c.runs) for c in res.cells]
    pilot = None
    if smoke:
        pilot = "pilot only: a --smoke study checks the pipeline, its numbers decide nothing"
    elif seeds_per_cell and max(seeds_per_cell) < 2:
        pilot = ("pilot only: one seed per cell gives no seed-to-seed spread; run at least 3 "
                 "seeds, then `transfuse study plan` gives the count")
    qs, dnl = questions(res, ev, pilot=pilot)
    fp = _fingerprint(ev, sequential, res.metric)
    current = {r.run_id for r in res.rows}
    records = {k: r for k, r in (frozen or {}).items()
               if sequential is not None and all(r.get(f) == v for f, v in fp.items())
               and set(r.get("runs", ())) <= current}
    if sequential is None:
        looks, levels = [None], [ev.alpha]
    else:
        looks, levels = list(sequential.looks), sequential.levels(ev.alpha)
    # per question id: (question as the look saw it, decision or None if gated, reason, look)
    state: dict[str, tuple[Question, Decision | None, str, int]] = {}
    decided: set[str] = set()
    families: list[int] = []
    for li, (n_look, a_look) in enumerate(zip(looks, levels), start=1):
        ql = qs if n_look is None else questions(res, ev, pilot=pilot, n_seeds=n_look)[0]
        open_ = [q for q in ql if q.id not in decided]
        testable = [q for q in open_ if q.gate is None]
        if n_look is not None and any(len(_values(q)) < n_look for q in testable
                                      if records.get(q.id, {}).get("look", li + 1) > li):
            break  # a look still in progress is not read: its family would be too small
        for q in open_:
            rec = records.get(q.id)
            if q.gate is not None and rec is not None and rec["look"] == li:
                fq, fdec, why = _from_record(q, rec)  # decided as recorded, whatever gates it now
                state[q.id] = (fq, fdec, why, li)
                decided.add(q.id)
            elif q.gate is not None:
                state[q.id] = (q, None, q.gate, li)
        if not testable or a_look <= 0:
            continue
        decs = decide_family([_values(q) for q in testable], [q.margin for q in testable],
                             alpha=a_look, method=ev.multiplicity,
                             sd_floors=[q.sd_floor for q in testable])
        families.append(len(testable))
        for q, dec in zip(testable, decs):
            rec = records.get(q.id)
            if rec is not None and rec["look"] == li:
                fq, fdec, why = _from_record(q, rec)
                state[q.id] = (fq, fdec, why, li)
                decided.add(q.id)
                continue
            state[q.id] = (q, dec, interval_reason(dec, q, a_look), li)
            if dec.verdict != "undecided" and (rec is None or rec["look"] < li):
                decided.add(q.id)
    read = [k for k, st in state.items() if st[1] is not None]
    k = len(read)
    plan_a = ev.alpha / max(k, 1) if ev.multiplicity != "none" else ev.alpha
    verdicts = []
    for q in qs:
        if q.id not in state:
            if q.gate is not None:
                verdicts.append(Verdict(q, "undecided", q.gate))
            else:  # an adaptive study whose first look is not complete yet
                n = len(_values(q))
                verdicts.append(Verdict(q, "undecided", f"waiting for seeds ({n} of {looks[0]} at look 1)"))
            continue
        lq, dec, why, li = state[q.id]
        if dec is None:
            verdicts.append(Verdict(lq, "undecided", why))
            continue
        need = None
        if dec.verdict == "undecided":
            need = seeds_needed(delta=dec.mean, sd=dec.sd, margin=q.margin, a=plan_a,
                                power=ev.power, at_least=dec.n)
        verdicts.append(Verdict(lq, dec.verdict, why, dec, li if sequential else None, need))
    unit = "AUC" if res.metric == "auc" else "Dice"
    verdicts = [replace(v, sentence=sentence(v, unit)) for v in verdicts]
    recs = recommendations(res, ev, verdicts, pilot, dnl)
    return Decisions(res.metric, ev, sequential, pilot, k, tuple(verdicts), tuple(recs), dnl,
                     tuple(families))


def load_decisions(store: Any, study: str, *, evaluation: Evaluation | None = None,
                   study_spec: Any = None, current_specs: dict[str, dict[str, Any]] | None = None,
                   ) -> tuple[StudyResults, Decisions, dict[str, Any]]:
    """A stored study's results and decisions, judged as the study recorded (or ``evaluation``).

    Args:
        study_spec: a :class:`~transfuse.study.spec.StudySpec` to judge instead of what the last
            ``study run`` recorded: its cells, thresholds and evaluation (another version of the
            study file, ``transfuse report --study-file``).
        current_specs: with ``study_spec``, its cells as ``{run id: spec dict}`` (the study
            package expands a study file; the statistics never read one).

    Returns:
        ``(results, decisions, study_info)``; ``study_info`` is what ``study run`` recorded.

    Raises:
        TransfuseError: no runs of ``study`` in ``store``.
    """
    from .results import load_results

    info = store.get_results("study", study=study).get(study, {})
    current = None
    if study_spec is not None:
        if current_specs is None:
            raise ValueError("load_decisions: give the study file's cells (current_specs) with study_spec")
        current = dict(current_specs)
        info = {**info, "auc_thresholds": list(study_spec.auc_thresholds),
                "relative_thresholds": list(study_spec.relative_thresholds),
                "evaluation": study_spec.evaluation.to_dict(), "path": study_spec.path}
    ev = evaluation or Evaluation.from_dict(info.get("evaluation"))
    res = load_results(store, study, thresholds=tuple(info.get("auc_thresholds", (0.8, 0.9))),
                       relative=tuple(info.get("relative_thresholds", (0.9, 0.95))),
                       reference=ev.reference, run_ids=None if current is None else list(current),
                       current_specs=current)
    frozen = {r["id"]: r for r in store.get_results(FROZEN, study=study).values() if "id" in r}
    dec = decide(res, evaluation=ev, sequential=Sequential.from_dict(info.get("sequential")),
                 smoke=bool(info.get("smoke")), frozen=frozen)
    return res, dec, info

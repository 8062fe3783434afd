"""Seed plans: ``transfuse study plan FILE`` with the study's own runs, or before its first run.

With finished runs of the study, the plan is read from its verdicts (:func:`verdict_plan`): per
question the paired SD, the verdict and the seeds a fixed design needs. Before the first run
(:func:`plan_study`) the paired SD each question will have comes from, in this order:

1. ``--sd X``: a paired SD the user gives (the final-score questions; explicit, so it wins);
2. ``--pilot N``: N seeds of every cell of the study are run through the normal study runner —
   real runs in the store, of exactly the cells ``study run`` with the same ``--smoke``/``--set``
   would run, so they count later — and each question's paired SD is read from them;
3. finished studies in the same workspace on the same data (``data.name`` and
   ``data.image_size``) and model (``model.name``): each question of the new study takes the paired
   SD of the most alike comparisons there (:func:`match`): the same arm pair at the same
   ``n_train``; else the same arm pair at other sizes (pooled); else every comparison at this size
   (pooled); else every comparison (pooled) — always of the same question kind (``final``,
   ``area``, ``speed@T``), and of runs with the same weight averaging (``train.ema``/``train.swa``
   or none) when there are any. Pooled: ``√(Σ (n_i − 1) s_i² / Σ (n_i − 1))``.

With none of them the command fails with one line naming ``--pilot`` and ``--sd``. A plan assumes
no true difference (δ = 0, the equivalence a plan hopes to show) and gives per question the seeds
needed at the margin and at twice it (:func:`~transfuse.decide.verdicts.seeds_needed`) and the
margin ``--max-seeds`` seeds decide (:func:`~transfuse.decide.design.margin_for_seeds`), all at
``alpha / K`` (Holm's first step over the ``K`` questions of the study). The cost and the design
advice (weight averaging, the validation split) are in :mod:`.plan_advice`.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scipy import stats

from ..config import RunSpec, run_id
from ..errors import ConfigError, TransfuseError
from ..store import Store
from ..decide.averaging import averaging_lines
from ..decide.decisions import Evaluation, load_decisions, questions
from ..decide.design import margin_for_seeds
from ..decide.results import cell_keys, load_results
from ..decide.verdicts import seeds_needed
from .spec import StudySpec, expand

__all__ = ["PlanQuestion", "Observed", "Sd", "PlanRow", "Plan", "plan_study", "verdict_plan",
           "study_questions", "observed", "match", "pilot_seeds", "averaging", "data_key",
           "sd_range", "table"]

Cell = tuple[str, str, str]  # (model, arm, size) as the report labels cells


def data_key(spec: dict[str, Any]) -> tuple[str, int | None]:
    """``(data.name, data.image_size)`` of a run spec (as a dict): what "the same data" means."""
    d = spec.get("data", {})
    return str(d.get("name")), d.get("image_size")


def averaging(spec: dict[str, Any]) -> str:
    """``ema``, ``swa`` or ``plain``: the weight averaging a run spec (as a dict) sets."""
    t = spec.get("train") or {}
    if t.get("ema") is not None:
        return "ema"
    if t.get("swa") is not None:
        return "swa"
    return "plain"


def _one(values: set[str]) -> str:
    return next(iter(values)) if len(values) == 1 else "mixed"


@dataclass(frozen=True)
class PlanQuestion:
    """A question the study will ask: ``arm − reference`` of ``endpoint`` on one model and size."""

    model: str
    size: str
    arm: str
    reference: str
    endpoint: str
    margin: float
    data: tuple[str, int | None]
    averaged: str  # "plain", "ema", "swa" or "mixed" over the two cells' runs


@dataclass(frozen=True)
class Observed:
    """A finished comparison in the store: its finite paired differences and where it is from."""

    study: str
    model: str
    size: str
    arm: str
    reference: str
    endpoint: str
    data: tuple[str, int | None]
    averaged: str
    diffs: tuple[float, ...]
    run_ids: tuple[str, ...]

    @property
    def n(self) -> int:
        return len(self.diffs)

    @property
    def sd(self) -> float:
        return statistics.stdev(self.diffs)


@dataclass(frozen=True)
class Sd:
    """A paired SD for a question, its degrees of freedom and where it came from."""

    value: float
    df: int | None  # None: given by the user
    how: str  # short: "same arms", "pooled (3)", "pilot", "given"
    studies: tuple[str, ...] = ()
    of: tuple[Observed, ...] = ()


@dataclass(frozen=True)
class PlanRow:
    question: PlanQuestion
    sd: Sd | None
    need: int | None  # seeds at the margin (None: > 1000 or no SD)
    need2: int | None  # at twice the margin
    margin_at_max: float | None


@dataclass
class Plan:
    """A plan before the study's runs: its questions with an SD each, and what it implies."""

    study: str
    metric: str
    evaluation: Evaluation
    family: int
    a: float
    max_seeds: int
    source: str  # "given", "pilot", "prior"
    source_lines: list[str]
    rows: list[PlanRow]
    cells: dict[Cell, RunSpec]
    observed: list[Observed] = field(default_factory=list)  # read comparisons on its models and data

    @property
    def unit(self) -> str:
        return "AUC" if self.metric == "auc" else "Dice"

    def seeds_per_cell(self) -> dict[Cell, int | None]:
        """Seeds each cell needs for its final-score questions at the margin (an arm: its own
        question; the reference: the most any of its arms needs); ``None`` where unknown."""
        out: dict[Cell, int | None] = {}
        for r in self.rows:
            q = r.question
            if q.endpoint != "final":
                continue
            for c in ((q.model, q.arm, q.size), (q.model, q.reference, q.size)):
                if c in out and out[c] is None:
                    continue
                out[c] = None if r.need is None else max(out.get(c) or 0, r.need)
        return out


# ---- the questions of a study that has not run -------------------------------------------------

def study_questions(study: StudySpec, *, smoke: bool = False, metric: str = "auc",
                    ) -> tuple[list[PlanQuestion], dict[Cell, RunSpec]]:
    """Every question the study will ask (arm vs reference on each model and size: ``final``,
    ``area`` and one ``speed@T`` per threshold) and one spec per cell (its lowest seed)."""
    specs = expand(study, smoke=smoke)
    keys = cell_keys([s.to_dict() for s in specs])
    cells: dict[Cell, RunSpec] = {}
    for spec, key in zip(specs, keys):
        if key not in cells or spec.seed < cells[key].seed:
            cells[key] = spec
    ev = study.evaluation
    m_final, m_area, m_speed = ev.margins(metric)
    out = []
    for (model, arm, size), spec in cells.items():
        ref = cells.get((model, ev.reference, size))
        if arm == ev.reference or ref is None:
            continue
        d = spec.to_dict()
        avg = _one({averaging(d), averaging(ref.to_dict())})
        ends = [("final", m_final), ("area", m_area),
                *((f"speed@{t:g}", m_speed) for t in study.auc_thresholds)]
        out += [PlanQuestion(model, size, arm, ev.reference, e, m, data_key(d), avg) for e, m in ends]
    return out, cells


def observed(store: Store, name: str, *, run_ids: Sequence[str] | None = None) -> list[Observed]:
    """The comparisons of a stored study with at least 2 finite paired differences."""
    info = store.get_results("study", study=name).get(name, {})
    ev = Evaluation.from_dict(info.get("evaluation"))
    res = load_results(store, name, thresholds=tuple(info.get("auc_thresholds", (0.8, 0.9))),
                       relative=tuple(info.get("relative_thresholds", (0.9, 0.95))),
                       reference=ev.reference, run_ids=run_ids)
    specs = {r.run_id: r.spec for r in store.list_runs(study=name)}
    out = []
    for q in questions(res, ev)[0]:
        vals = tuple(x for x in q.diffs if x is not None and math.isfinite(x))
        if len(vals) < 2:
            continue
        seeds = set(q.seeds)
        ids = tuple(r.run_id for r in res.rows if r.model == q.model and r.size == q.size
                    and r.init in (q.arm, q.reference) and r.seed in seeds)
        data = {data_key(specs[i]) for i in ids}
        if len(data) != 1:
            continue  # a cell pooling several datasets: not comparable to one
        avg = _one({averaging(specs[i]) for i in ids})
        out.append(Observed(name, q.model, q.size, q.arm, q.reference, q.endpoint, data.pop(), avg,
                            vals, ids))
    return out


def _prior_studies(store: Store, exclude: set[str]) -> list[str]:
    names = sorted({r.study for r in store.list_runs(status="finished") if r.study} - exclude)
    keep = []
    for n in names:
        info = store.get_results("study", study=n).get(n, {})
        if info.get("smoke") or n.endswith("-smoke"):
            continue  # a --smoke study checks the pipeline: its spread is not a real one
        keep.append(n)
    return keep


def _pooled(obs: Sequence[Observed], how: str) -> Sd:
    df = sum(o.n - 1 for o in obs)
    var = sum((o.n - 1) * o.sd ** 2 for o in obs) / df
    return Sd(math.sqrt(var), df, how, tuple(dict.fromkeys(o.study for o in obs)), tuple(obs))


def match(q: PlanQuestion, pool: Sequence[Observed]) -> Sd | None:
    """The paired SD for ``q`` from the most alike comparisons of ``pool`` (module docstring)."""
    cands = [o for o in pool if (o.model, o.data, o.endpoint) == (q.model, q.data, q.endpoint)]
    alike = [o for o in cands if o.averaged == q.averaged]
    cands = alike or cands
    tiers = (("same arms", lambda o: (o.arm, o.reference, o.size) == (q.arm, q.reference, q.size)),
             ("same arms, other n_train", lambda o: (o.arm, o.reference) == (q.arm, q.reference)),
             ("pooled, same n_train", lambda o: o.size == q.size),
             ("pooled", lambda o: True))
    for how, ok in tiers:
        got = [o for o in cands if ok(o)]
        if got:
            return _pooled(got, f"{how} ({len(got)})" if how.startswith("pooled") or len(got) > 1
                           else how)
    return None


def sd_range(sd: Sd, *, level: float = 0.8) -> tuple[float, float]:
    """The ``level`` chi-square interval of the true SD, as factors of ``sd.value``."""
    lo = math.sqrt(sd.df / stats.chi2.ppf(1 - (1 - level) / 2, sd.df))
    hi = math.sqrt(sd.df / stats.chi2.ppf((1 - level) / 2, sd.df))
    return lo, hi


# ---- the pilot ----------------------------------------------------------------------------------

def pilot_seeds(study: StudySpec, n: int, *, smoke: bool = False) -> list[int]:
    """The first ``n`` seeds of the study's grid, continued past its last (0 … n−1 for a grid
    seeded from 0)."""
    grid = sorted({s.seed for s in expand(study)})
    out = grid[:n]
    nxt = (max(out) + 1) if out else 0
    while len(out) < n:
        out.append(nxt)
        nxt += 1
    return out


def _run_pilot(study: StudySpec, cells: dict[Cell, RunSpec], seeds: list[int], *, workspace: str,
               smoke: bool, device: str | None, progress: bool) -> tuple[Any, list[str]]:
    from .runner import run_study

    specs = [dataclasses.replace(spec, seed=s) for spec in cells.values() for s in seeds]
    ids = {run_id(s) for s in specs}
    ws = Path(workspace)
    if (ws / "transfuse.db").is_file():  # keep the study's finished grid runs recorded as its cells
        done = {r.run_id for r in Store(ws).list_runs(status="finished")}
        specs += [s for s in expand(study, smoke=smoke) if run_id(s) in done and run_id(s) not in ids]
    out = run_study(study, workspace=workspace, workers=None, smoke=smoke, device=device,
                    progress=progress, specs=specs)
    return out, sorted(ids)


# ---- the plan -----------------------------------------------------------------------------------

def _row(q: PlanQuestion, sd: Sd | None, *, a: float, power: float, max_seeds: int) -> PlanRow:
    if sd is None:
        return PlanRow(q, None, None, None, None)
    need = seeds_needed(delta=0.0, sd=sd.value, margin=q.margin, a=a, power=power)
    need2 = seeds_needed(delta=0.0, sd=sd.value, margin=2 * q.margin, a=a, power=power)
    return PlanRow(q, sd, need, need2, margin_for_seeds(n=max_seeds, sd=sd.value, a=a, power=power))


def _metric(store: Store | None, cells: dict[Cell, RunSpec]) -> str | None:
    """``auc`` or ``dice``: the task of finished runs on the study's data (``None``: none)."""
    if store is None:
        return None
    data = {data_key(s.to_dict()) for s in cells.values()}
    for r in store.list_runs(status="finished"):
        if data_key(r.spec) in data and r.data_info.get("task"):
            return "dice" if r.data_info["task"] == "segmentation" else "auc"
    return None


def _no_source(file: str, workspace: str, name: str) -> TransfuseError:
    return TransfuseError(
        f"no runs of study {name} to plan from, and no finished study in {workspace} on the same "
        f"data and model: run `transfuse study plan {file} -w {workspace} --pilot 2` (2 seeds of "
        f"every cell, stored as real runs) or give a paired SD with `--sd 0.03`")


def _pilot_lines(study: StudySpec, out: Any, seeds: list[int], n_cells: int, n_runs: int, *,
                 name: str, ws: Path, file: str, smoke: bool, sets: Sequence[str]) -> list[str]:
    """What a pilot ran, with which settings, and when its runs count."""
    how = " ".join([*(["--smoke"] if smoke else []), *(f"--set {s}" for s in sets)])
    beyond = set(seeds) - {s.seed for s in expand(study, smoke=smoke)}
    lines = [f"pilot: {n_cells} cells × seeds {', '.join(map(str, seeds))} = {n_runs} runs of "
             f"study {name} — {len(out.finished)} trained now, {len(out.skipped)} already "
             f"finished, {len(out.failed)} failed",
             f"  settings: {'the study file with ' + how if how else 'the study file as is'}; "
             f"real runs in {ws / 'transfuse.db'}: they count when `transfuse study run {file}` "
             "runs with the same settings"
             + (f" and grid.seed includes seed(s) {', '.join(map(str, sorted(beyond)))}"
                if beyond else "")]
    return lines + [f"  run {rid} failed: {msg}" for rid, msg in out.failed.items()]


def _prior_line(used: list[Sd], ws: Path) -> str:
    studies = list(dict.fromkeys(s for x in used for s in x.studies))
    comps = {(o.study, o.model, o.size, o.arm, o.reference) for x in used for o in x.of}
    many = "s" if len(comps) != 1 else ""
    return (f"source: paired SDs of finished studies in {ws} on the same data and model: "
            f"{', '.join(studies)} ({len(comps)} comparison{many}; rule: same arms and n_train, "
            "else same arms, else pooled over that model and data)")


def plan_study(study: StudySpec, *, workspace: str | Path, file: str, smoke: bool = False,
               pilot: int | None = None, sd: float | None = None, max_seeds: int = 10,
               sets: Sequence[str] = (), device: str | None = None,
               progress: bool = True) -> tuple[Plan, list[str], bool]:
    """A plan before (or without reading) the study's own verdicts (see the module docstring).

    Returns:
        ``(plan, pilot_lines, ok)``: the plan, what a pilot ran (lines; empty without one) and
        whether every pilot run finished.

    Raises:
        ConfigError: bad ``pilot``/``sd``/``max_seeds``, or both ``pilot`` and ``sd``.
        TransfuseError: no source of a paired SD (one line naming ``--pilot`` and ``--sd``).
    """
    if pilot is not None and sd is not None:
        raise ConfigError("give --pilot N (run N seeds, plan from them) or --sd X (plan from "
                          "your paired SD), not both")
    if pilot is not None and pilot < 2:
        raise ConfigError(f"--pilot {pilot}: at least 2 seeds per cell are needed for a paired SD")
    if sd is not None and not (math.isfinite(sd) and sd > 0):
        raise ConfigError(f"--sd {sd}: the paired SD must be a positive number, e.g. --sd 0.03")
    if max_seeds < 2:
        raise ConfigError(f"--max-seeds {max_seeds} must be at least 2")
    ws = Path(workspace)
    store = Store(ws) if (ws / "transfuse.db").is_file() else None
    _, cells = study_questions(study, smoke=smoke)
    name = next(iter(cells.values())).study or study.name
    metric = _metric(store, cells)
    qs, cells = study_questions(study, smoke=smoke, metric=metric or "auc")
    ev = study.evaluation
    k = len(qs)
    a = ev.alpha / max(k, 1) if ev.multiplicity != "none" else ev.alpha
    pilot_lines: list[str] = []
    ok = True
    pool: list[Observed] = []
    if sd is not None:
        source = "given"
        sds = {q: Sd(sd, None, "given") if q.endpoint == "final" else None for q in qs}
        lines = [f"source: the paired SD you gave, --sd {sd:g} (final-score questions only; "
                 f"area and speed questions need a pilot or earlier studies)"]
    elif pilot is not None:
        source = "pilot"
        seeds = pilot_seeds(study, pilot, smoke=smoke)
        out, ids = _run_pilot(study, cells, seeds, workspace=str(ws), smoke=smoke, device=device,
                              progress=progress)
        ok = out.ok
        pilot_lines = _pilot_lines(study, out, seeds, len(cells), len(ids), name=name, ws=ws,
                                   file=file, smoke=smoke, sets=sets)
        pool = observed(Store(ws), name, run_ids=ids)
        metric = metric or _metric(Store(ws), cells)  # the pilot's runs know their task
        qs, cells = study_questions(study, smoke=smoke, metric=metric or "auc")
        exact = {(o.model, o.size, o.arm, o.reference, o.endpoint): o for o in pool}
        sds = {}
        for q in qs:
            o = exact.get((q.model, q.size, q.arm, q.reference, q.endpoint))
            sds[q] = None if o is None else Sd(o.sd, o.n - 1, f"pilot ({o.n} seeds)", (name,), (o,))
        lines = [f"source: the pilot's own paired SDs ({len(seeds)} seeds per cell)"]
    else:
        source = "prior"
        if store is None:
            raise _no_source(file, str(ws), name)
        for s in _prior_studies(store, {name, study.name}):
            try:
                pool += observed(store, s)
            except TransfuseError:
                continue  # a study this version cannot read as comparisons
        sds = {q: match(q, pool) for q in qs}
        used = [x for x in sds.values() if x is not None]
        if not used:
            raise _no_source(file, str(ws), name)
        lines = [_prior_line(used, ws)]
    rows = [_row(q, sds[q], a=a, power=ev.power, max_seeds=max_seeds) for q in qs]
    alike = {(q.model, q.data) for q in qs}  # what the advice reads: this study's models and data
    pool = [o for o in pool if (o.model, o.data) in alike]
    if metric is None and ev.margin is None:
        lines.append("no finished run on this data says its task: planned as classification (AUC "
                     "margin); a segmentation study sets evaluation.margin (Dice)")
    plan = Plan(name, metric or "auc", ev, k, a, max_seeds, source, lines, rows, cells, pool)
    return plan, pilot_lines, ok


def table(headers: list[str], rows: list[list[str]]) -> list[str]:
    """Left-aligned columns, two spaces apart, each line indented by two."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    return ["  " + "  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip()
            for line in [headers, *rows]]


def plan_lines(plan: Plan) -> list[str]:
    """The plan as printed: header, source, one row per question."""
    ev, m = plan.evaluation, plan.evaluation.margins(plan.metric)[0]
    lines = [f"study {plan.study}: planned before its runs — {len(plan.rows)} questions in the family "
             f"({ev.multiplicity}, α = {ev.alpha:g} → {plan.a:.3g} each, Holm's first step; power "
             f"{ev.power:g}); reference {ev.reference}; margin ±{m:g} {plan.unit}"
             + ("" if ev.margin is not None else f" (the {plan.unit} default)"),
             *(f"  {x}" for x in plan.source_lines)]
    used = [r.sd for r in plan.rows if r.sd is not None and r.sd.df is not None]
    if used:
        least = min(used, key=lambda x: x.df or 0)
        df = least.df
        lo, hi = sd_range(least)
        lines.append(f"  a paired SD from few seeds is rough: with {df} degree(s) of freedom the true "
                     f"SD is ×{lo:.2f}–×{hi:.2f} the one read (80 % interval)")
    lines.append("  assumes no true difference (δ = 0); a real difference near the margin needs more "
                 "seeds, one far beyond it fewer")
    n = plan.max_seeds
    headers = ["model", "n_train", "arm", "question", "paired SD", "from", "seeds ±m", "seeds ±2m",
               f"margin @{n} seeds"]
    rows = []
    for r in plan.rows:
        q = r.question
        if r.sd is None and plan.source == "given":
            continue  # --sd is of the final score: the other questions are not planned
        if r.sd is None:
            rows.append([q.model, q.size, q.arm, q.endpoint, "–",
                         "no comparable comparison" if plan.source == "prior" else
                         "too few paired seeds", "–", "–", "–"])
            continue
        rows.append([q.model, q.size, q.arm, q.endpoint, f"{r.sd.value:.4f}", r.sd.how,
                     str(r.need) if r.need else "> 1000", str(r.need2) if r.need2 else "> 1000",
                     f"±{r.margin_at_max:.4f}" if r.margin_at_max is not None else "–"])
    return lines + table(headers, rows)


# ---- a study with runs: its verdicts ------------------------------------------------------------

def verdict_plan(store: Store, name: str, *, evaluation: Evaluation | None = None,
                 max_seeds: int = 10) -> list[str]:
    """Per question of a study with finished runs: seeds, mean difference, paired SD, verdict and
    the seeds needed (at the observed mean and SD), then at twice the margin and the margin
    ``max_seeds`` seeds decide (δ = 0) — the lines ``study plan`` prints."""
    res, dec, _ = load_decisions(store, name, evaluation=evaluation)
    ev = dec.evaluation
    unit = "AUC" if res.metric == "auc" else "Dice"
    a = ev.alpha / max(dec.family_size, 1) if ev.multiplicity != "none" else ev.alpha
    lines = [f"study {name}: {len(dec.verdicts)} questions, {dec.family_size} in the family "
             f"({ev.multiplicity}, α = {ev.alpha:g}, power {ev.power:g}); reference {ev.reference}; "
             f"margin ±{ev.margins(res.metric)[0]:g} {unit}",
             f"  source: the study's own {len(res.rows)} finished runs (the seeds needed read "
             "their mean and SD; `--sd X` or `--pilot N` plan afresh)"]
    if dec.pilot:
        lines.append(f"  {dec.pilot}")
    headers = ["model", "n_train", "arm", "question", "seeds", "Δ mean", "paired SD", "verdict",
               "seeds needed", "at ±2m", f"margin @{max_seeds}"]
    rows = []
    for v in dec.verdicts:
        q, d = v.question, v.decision
        vals = [x for x in q.diffs if x is not None and math.isfinite(x)]
        mean = d.mean if d else (sum(vals) / len(vals) if vals else math.nan)
        sd = d.sd if d else (statistics.stdev(vals) if len(vals) > 1 else math.nan)
        if v.verdict != "undecided":
            need = f"decided (look {v.look})" if v.look else "decided"
        elif v.seeds_needed is not None:
            need = str(v.seeds_needed)
        elif q.gate:
            need = f"– ({q.gate})"
        else:
            need = "> 1000 (the difference sits near the margin)"
        need2, m_max = "–", "–"
        if d is not None and v.verdict == "undecided" and math.isfinite(sd):
            n2 = seeds_needed(delta=d.mean, sd=sd, margin=2 * q.margin, a=a, power=ev.power,
                              at_least=d.n)
            need2 = str(n2) if n2 else "> 1000"
            mm = margin_for_seeds(n=max_seeds, sd=sd, a=a, power=ev.power)
            m_max = "–" if mm is None else f"±{mm:.4f}"
        rows.append([q.model, q.size, q.arm, q.endpoint, str(v.n),
                     "–" if not math.isfinite(mean) else f"{mean:+.4f}",
                     "–" if not math.isfinite(sd) else f"{sd:.4f}", v.verdict, need, need2, m_max])
    return lines + table(headers, rows) + averaging_lines(res)  # paired SD without / with train.ema/swa


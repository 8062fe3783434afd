"""Adaptive seeds: ``transfuse study run FILE --until-decided [--max-seeds N]``.

The study's grid is run once (look 1, at its own seeds). Then, look by look, only the cells of an
undecided comparison (the arm and its reference) get ``batch`` more seeds, until every
comparison is decided or ``max_seeds`` is reached. The look schedule is fixed before the first run
(``Sequential.plan``: the grid's seed count, then ``+ batch`` … up to ``max_seeds``) and recorded
with the study, so the report replays exactly the same looks (:func:`transfuse.decide.decisions.decide`)
and each look only spends its share of alpha (O'Brien–Fleming-type spending, union bound over
looks; :func:`transfuse.decide.verdicts.look_levels`).

A question decided at a look keeps that look's verdict, interval, seeds and family: the report
replays each look on the seeds it had (gates included), and each decided question is recorded in
the store (results of kind ``frozen_verdict``) when it is decided, so later seeds, added for
other questions of the same arm, never reopen it.

Resumable like any study: every look is recomputed from the store, finished runs are skipped, so
a killed ``--until-decided`` run picks up at the look it was in.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import RunSpec
from ..errors import ConfigError
from ..store import Store
from ..decide.decisions import FROZEN, Decisions, Sequential, decide, frozen_records
from ..decide.results import cell_keys, load_results
from .runner import StudyOutcome, run_study
from .spec import StudySpec, expand

__all__ = ["run_until_decided", "AdaptiveOutcome", "EXTENDABLE"]

# gates that more seeds can lift; "did not learn" and "not reached" are not among them
EXTENDABLE = ("too few seeds", "waiting for seeds")


@dataclass
class AdaptiveOutcome:
    """What an adaptive study did: its schedule, the looks run, seeds per cell, the decisions."""

    study: str
    sequential: Sequential
    looks_run: int = 0
    outcomes: list[StudyOutcome] = field(default_factory=list)
    seeds: dict[tuple[str, str, str], list[int]] = field(default_factory=dict)
    decisions: Decisions | None = None

    @property
    def ok(self) -> bool:
        return all(o.ok for o in self.outcomes)

    @property
    def undecided(self) -> int:
        return sum(v.verdict == "undecided" for v in self.decisions.verdicts) if self.decisions else 0


def _seed_list(initial: list[int], max_seeds: int) -> list[int]:
    out, nxt = list(initial), max(initial) + 1
    while len(out) < max_seeds:
        out.append(nxt)
        nxt += 1
    return out


def _extend(dec: Decisions) -> set[tuple[str, str, str]]:
    """Cells (model, arm, size) that need more seeds: both sides of every undecided comparison
    whose gate, if any, more seeds can lift."""
    out = set()
    for v in dec.verdicts:
        if v.verdict != "undecided":
            continue
        if v.question.gate and not v.question.gate.startswith(EXTENDABLE[0]):
            continue
        q = v.question
        out |= {(q.model, q.arm, q.size), (q.model, q.reference, q.size)}
    return out


def run_until_decided(study: StudySpec, *, workspace: str | Path, max_seeds: int, batch: int = 2,
                      workers: int | None = 1, executor: str = "local", address: str | None = None,
                      device: str | None = None, progress: bool = True,
                      tensorboard: bool = False, placement: Any = None,
                      cohort: str | int | None = "auto") -> AdaptiveOutcome:
    """Run ``study`` adding seeds to undecided cells, look by look (see the module docstring).

    Args:
        study: the parsed study file; its grid's seeds are look 1.
        workspace: run store folder.
        max_seeds: the most seeds any cell gets (the last look).
        batch: seeds added to each undecided cell per look.
        workers, executor, address, device, progress, tensorboard, cohort: as
            :func:`~transfuse.study.runner.run_study`.

    Raises:
        ConfigError: ``max_seeds``/``batch`` invalid, or a schedule different from the one this
            study was started with (the looks must not change once runs exist).
    """
    base = expand(study)
    initial = sorted({s.seed for s in base})
    if batch < 1:
        raise ConfigError(f"--seed-batch {batch} must be >= 1")
    if max_seeds <= len(initial):
        raise ConfigError(f"--max-seeds {max_seeds} must exceed the {len(initial)} seed(s) of the "
                          f"study's grid ({study.path or study.name}: grid.seed)")
    seq = Sequential.plan(initial=len(initial), max_seeds=max_seeds, batch=batch)
    name = base[0].study or study.name
    ws = Path(workspace)
    if (ws / "transfuse.db").is_file():
        before = Store(ws).get_results("study", study=name).get(name, {}).get("sequential")
        if before and Sequential.from_dict(before) != seq:
            old = Sequential.from_dict(before)
            raise ConfigError(f"study {name!r} was started with --max-seeds {old.max_seeds} "
                              f"--seed-batch {old.batch}; rerun with the same values (the looks "
                              "must not change once runs exist) or give the study a new name")
    seeds = _seed_list(initial, max_seeds)
    keys = cell_keys([s.to_dict() for s in base])
    cells: dict[tuple[str, str, str], RunSpec] = {}
    have: dict[tuple[str, str, str], set[int]] = {}
    for spec, key in zip(base, keys):
        cells.setdefault(key, dataclasses.replace(spec, seed=0))
        have.setdefault(key, set()).add(spec.seed)
    out = AdaptiveOutcome(study=name, sequential=seq)
    specs: list[RunSpec] = list(base)
    for look, n_look in enumerate(seq.looks, start=1):
        if look > 1:
            grow = _extend(out.decisions) & set(cells)
            if not grow:
                break
            for key in sorted(grow):
                for s in seeds[:n_look]:
                    if s not in have[key]:
                        have[key].add(s)
                        specs.append(dataclasses.replace(cells[key], seed=s))
        res_run = run_study(study, workspace=workspace, workers=workers, executor=executor,
                            address=address, device=device, progress=progress, specs=specs,
                            tensorboard=tensorboard, placement=placement,
                            sequential=seq.to_dict(), cohort=cohort)
        out.outcomes.append(res_run)
        out.looks_run = look
        store = Store(workspace)
        res = load_results(store, name, thresholds=study.auc_thresholds,
                           relative=study.relative_thresholds, reference=study.evaluation.reference)
        frozen = {r["id"]: r for r in store.get_results(FROZEN, study=name).values() if "id" in r}
        out.decisions = decide(res, evaluation=study.evaluation, sequential=seq, frozen=frozen)
        current = {r.run_id for r in res.rows}
        for qid, rec in frozen_records(out.decisions, res).items():
            old = frozen.get(qid)  # a decided question keeps the record of the look that decided it,
            if old is None or not set(old.get("runs", ())) <= current:  # unless its runs are gone
                store.put_result(FROZEN, f"{name}: {qid}", rec, study=name)
        if not res_run.ok:
            break  # a failed run leaves its cell short of seeds; fix it and rerun
    out.seeds = {k: sorted(v) for k, v in have.items()}
    return out


def describe(out: AdaptiveOutcome) -> list[str]:
    """Lines for the command line: looks, seeds per cell, verdict counts."""
    seq = out.sequential
    lines = [f"adaptive study {out.study}: looks at {', '.join(map(str, seq.looks))} seeds "
             f"(O'Brien–Fleming-type alpha spending); ran {out.looks_run} look(s)"]
    for (model, arm, size), s in sorted(out.seeds.items()):
        lines.append(f"  {model} · {arm} · n_train={size}: {len(s)} seeds")
    if out.decisions:
        counts: dict[str, Any] = {}
        for v in out.decisions.verdicts:
            counts[v.verdict] = counts.get(v.verdict, 0) + 1
        lines.append("  verdicts: " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())))
    return lines

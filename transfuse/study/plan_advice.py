"""What a seed plan costs and what could make it cheaper: the lines after a plan's table.

**Cost** (:func:`cost_lines`): the runs the plan implies — each cell times the seeds its
final-score questions need at the margin (an arm: its own; the reference: the most any of its arms
needs), the runs already finished among them, and the time on each device the store has measured.
Every finished run records its training seconds per step (``summary.step_seconds``, the
optimiser steps only) and its wall time; a cell's run on a device is estimated as its planned
steps (:func:`~transfuse.study.runner.run_steps`) at the median step time of finished runs of the
same model and batch size there (the same data and image size where there are such runs, else any
data), plus their median remaining wall time (setup, evaluation, checkpoints; not rescaled). Runs
trained together as a cohort share their time (divided by the cohort size). One run at a time per
device: parallel workers divide it.

**Design advice** (:func:`advice_lines`): weight averaging — the paired SD of the final score
with ``train.ema``/``train.swa`` against without, where the comparisons the plan read hold both
(measured) — and the validation split, for which no measurement separates the noise of
best-on-validation checkpoint selection (the test score is read at the chosen checkpoint only),
so the line says so.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections import defaultdict

from ..config import RunSpec, run_id
from ..store import RunRecord, Store
from .plan import Cell, Observed, Plan, data_key
from .runner import run_steps
from ..decide.verdicts import seeds_needed

__all__ = ["cost_lines", "advice_lines", "step_times", "Timing", "duration"]


@dataclasses.dataclass(frozen=True)
class Timing:
    """Median seconds per training step and per run besides the steps, from ``runs`` runs."""

    step_seconds: float
    rest_seconds: float
    runs: int
    same_data: bool


def duration(seconds: float) -> str:
    """``42 s``, ``3.5 min``, ``2.1 h``, ``1.5 d``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.1f} min"
    if seconds < 36 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def _device(r: RunRecord) -> str:
    return str(r.env.get("gpu") or r.env.get("device") or "unknown device")


def _measure(r: RunRecord) -> tuple[float, float] | None:
    s = r.summary or {}
    steps, train = s.get("steps"), s.get("train_seconds")
    if not steps or train is None:
        return None
    k = max(1, int(r.env.get("cohort") or 1))
    rest = max(0.0, (r.wall_seconds or 0.0) - train)
    return train / steps / k, rest / k


def step_times(store: Store, cells: dict[Cell, RunSpec]) -> dict[str, dict[Cell, Timing]]:
    """Per device, per cell: the timing of finished runs like the cell's (module docstring)."""
    by: dict[tuple[str, str, int], list[RunRecord]] = defaultdict(list)
    for r in store.list_runs(status="finished"):
        t = r.spec.get("train", {})
        by[(_device(r), r.spec.get("model", {}).get("name"), t.get("batch_size"))].append(r)
    out: dict[str, dict[Cell, Timing]] = defaultdict(dict)
    for (dev, model, batch), runs in by.items():
        for cell, spec in cells.items():
            if (spec.model.name, spec.train.batch_size) != (model, batch):
                continue
            same = [r for r in runs if data_key(r.spec) == data_key(spec.to_dict())]
            use = same or runs
            got = [m for r in use if (m := _measure(r)) is not None]
            if got:
                out[dev][cell] = Timing(statistics.median(g[0] for g in got),
                                        statistics.median(g[1] for g in got), len(got), bool(same))
    return dict(out)


def cost_lines(plan: Plan, store: Store | None) -> list[str]:
    """The runs the plan implies and their estimated time per device."""
    per_cell = plan.seeds_per_cell()
    known = {c: n for c, n in per_cell.items() if n is not None}
    n_cells = len(plan.cells)
    total_max = n_cells * plan.max_seeds
    if not known:
        return [f"cost: not known at ±m (no final-score question has a paired SD, or each needs "
                f"> 1000 seeds); at --max-seeds {plan.max_seeds}: {n_cells} cells × "
                f"{plan.max_seeds} = {total_max} runs"]
    finished = ({r.run_id for r in store.list_runs(status="finished")} if store is not None else set())
    todo: dict[Cell, int] = {}
    runs = done = 0
    for c, n in known.items():
        spec = plan.cells[c]
        ids = [run_id(dataclasses.replace(spec, seed=spec.seed + i)) for i in range(n)]
        d = sum(i in finished for i in ids)
        runs, done = runs + n, done + d
        todo[c] = n - d
    seeds = sorted(set(known.values()))
    each = f"{seeds[0]} seeds each" if len(seeds) == 1 else f"{seeds[0]}–{seeds[-1]} seeds per cell"
    lines = [f"cost at ±m: {runs} runs ({len(known)} cells × {each}) — {done} already finished, "
             f"{runs - done} to run; at --max-seeds {plan.max_seeds}: {n_cells} cells × "
             f"{plan.max_seeds} = {total_max} runs"]
    if len(known) < n_cells:
        lines[0] += f"; {n_cells - len(known)} cell(s) not costed (no paired SD, or > 1000 seeds)"
    timings = step_times(store, plan.cells) if store is not None else {}
    if not timings:
        lines.append("time: no measured step time for these models and batch sizes in this "
                     "workspace (every finished run records one: `--pilot 2` measures them)")
        return lines
    for dev, cells in sorted(timings.items()):
        secs, timed, n_runs, other = 0.0, 0, 0, False
        for c, n in todo.items():
            t, steps = cells.get(c), run_steps(plan.cells[c])
            if t is None or steps is None:
                continue
            secs += n * (steps * t.step_seconds + t.rest_seconds)
            timed, n_runs, other = timed + 1, max(n_runs, t.runs), other or not t.same_data
            step = t.step_seconds
        if not timed:
            continue
        part = "" if timed == len(todo) else f" (the {timed} of {len(todo)} cells timed there)"
        lines.append(f"time on {dev}: ≈ {duration(secs)} for the runs to do{part}, one at a time "
                     f"(≈ {step:.3g} s per training step, median of up to {n_runs} finished "
                     f"runs{', some on other data' if other else ''}; setup and evaluation as "
                     f"measured)")
    return lines


def _pooled_sd(obs: list[Observed]) -> float:
    df = sum(o.n - 1 for o in obs)
    return math.sqrt(sum((o.n - 1) * o.sd ** 2 for o in obs) / df)


def advice_lines(plan: Plan, store: Store | None) -> list[str]:
    """Whether weight averaging or a larger validation split would change the plan."""
    lines = []
    ev = plan.evaluation
    groups: dict[tuple[str, tuple[str, int | None]], list] = defaultdict(list)
    for r in plan.rows:
        if r.question.endpoint == "final" and r.sd is not None:
            groups[(r.question.model, r.question.data)].append(r)
    for (model, data), rows in groups.items():
        obs = [o for o in plan.observed
               if (o.model, o.data, o.endpoint) == (model, data, "final")]
        avg = [o for o in obs if o.averaged in ("ema", "swa")]
        plain = [o for o in obs if o.averaged == "plain"]
        where = f"{model} on {data[0]}" + (f"@{data[1]}" if data[1] else "")
        if avg and plain:
            s_avg, s_plain = _pooled_sd(avg), _pooled_sd(plain)
            ratio = s_avg / s_plain if s_plain > 0 else math.nan
            sd = statistics.median(r.sd.value for r in rows)
            planned_avg = rows[0].question.averaged in ("ema", "swa")
            other = sd / ratio if planned_avg else sd * ratio
            m = rows[0].question.margin
            n_now = seeds_needed(delta=0.0, sd=sd, margin=m, a=plan.a, power=ev.power)
            n_other = seeds_needed(delta=0.0, sd=other, margin=m, a=plan.a, power=ev.power)
            studies = ", ".join(dict.fromkeys(o.study for o in avg + plain))
            fmt = (lambda n: str(n) if n else "> 1000")
            with_, without = (n_now, n_other) if planned_avg else (n_other, n_now)
            lines.append(f"averaging on {where} (measured, {studies}): paired SD of the final "
                         f"score {s_avg:.4f} with train.ema/swa vs {s_plain:.4f} without "
                         f"(×{ratio:.2f}); at ±{m:g} about {fmt(with_)} seeds per question with "
                         f"averaging vs {fmt(without)} without")
        else:
            lines.append(f"averaging (train.ema / train.swa) on {where}: not measured in this "
                         "workspace; seeds grow with the paired SD squared, so an average that cut "
                         "it by 30 % would need about half the seeds — measure it with an arm or a "
                         "grid axis that sets train.ema")
    lines += _validation_lines(plan, store)
    return lines


def _validation_lines(plan: Plan, store: Store | None) -> list[str]:
    fractions = sorted({s.data.val_fraction for s in plan.cells.values()})
    data = {data_key(s.to_dict()) for s in plan.cells.values()}
    n_val: set[int] = set()
    early = total = 0
    read = {i for o in plan.observed for i in o.run_ids}
    if store is not None:
        for r in store.list_runs(status="finished"):
            if data_key(r.spec) in data and r.spec["data"].get("val_fraction", 0.1) in fractions:
                v = (r.data_info.get("split_sizes") or {}).get("val")
                if v:
                    n_val.add(int(v))
            if r.run_id in read and r.summary.get("best_step") is not None:
                total += 1
                early += r.summary["best_step"] < r.summary.get("steps", 0)
    size = ("the validation split" if not n_val else f"{min(n_val)} validation images"
            if len(n_val) == 1 else f"{min(n_val)}–{max(n_val)} validation images")
    vf = ", ".join(f"{f:g}" for f in fractions)
    picked = (f"; in {early} of {total} runs read the checkpoint chosen was before the last step"
              if total else "")
    return [f"validation split (a rule of thumb, not measured): checkpoints are chosen on {size} "
            f"(data.val_fraction {vf}){picked}; choosing on a small split adds "
            "seed-to-seed noise to the test score, so a larger split may lower the paired SD — "
            "its share is not separable from these runs (the test score is read at the chosen "
            "checkpoint only): try a grid axis over data.val_fraction on a few seeds first"]


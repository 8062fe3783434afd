"""Run a study: compute run ids, skip finished runs, run the rest — in local worker processes or
on a Ray cluster — with one progress bar for the whole study.

Resumable by construction: every run is stored transactionally by
:func:`transfuse.run.train_run`, a finished run is final, and a run left ``running`` by a killed
process is restarted from scratch the next time (a run another live process is running is
skipped, so two runners never duplicate work).
"""

from __future__ import annotations

import os
import traceback
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from ..config import RunSpec, run_id, spec_from_dict
from ..errors import ConfigError, TransfuseError
from ..store import Store
from .spec import StudySpec, expand, med3d_pretrains, pretrain_specs

__all__ = ["run_study", "study_status", "study_progress", "StudyOutcome", "RunTask"]

EXECUTORS = ("local", "ray")


@dataclass(frozen=True)
class RunTask:
    """What one worker runs: a spec, where to store it, and how many CPU threads to use."""

    spec: dict[str, Any]
    workspace: str
    device: str | None
    threads: int


@dataclass
class StudyOutcome:
    """What happened: run ids by result, and error messages of failed runs."""

    study: str
    total: int
    finished: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    busy: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.failed


def execute(task: RunTask) -> tuple[str, str, str]:
    """Run one task in this process; returns ``(run_id, outcome, message)``.

    ``outcome`` is ``finished``, ``skipped`` (already finished), ``busy`` (another process runs
    it) or ``failed``. Never raises, so one bad run cannot stop the study.
    """
    import torch

    from ..run import train_run
    from ..store import RunBusyError

    torch.set_num_threads(max(1, task.threads))
    spec = spec_from_dict(task.spec)
    rid = run_id(spec)
    try:
        out = train_run(spec, workspace=task.workspace, device=task.device, progress=False)
    except RunBusyError as e:
        return rid, "busy", str(e)
    except TransfuseError as e:
        return rid, "failed", str(e)
    except Exception as e:  # a crash in one run is reported, the study goes on
        tb = traceback.format_exception_only(type(e), e)[-1].strip()
        return rid, "failed", tb
    return rid, "skipped" if out.skipped else "finished", ""


def _local(tasks: list[RunTask], workers: int, on_done: Callable[[tuple[str, str, str]], None]) -> None:
    if workers <= 1:
        for t in tasks:
            on_done(execute(t))
        return
    # spawn: fresh interpreters (no forked torch thread pools or open SQLite handles).
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
        pending: set[Future] = {pool.submit(execute, t) for t in tasks}
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for f in done:
                on_done(f.result())


def _ray(tasks: list[RunTask], workers: int, address: str | None,
         on_done: Callable[[tuple[str, str, str]], None]) -> None:
    try:
        import ray
    except ImportError:
        raise ConfigError("--executor ray needs Ray: pip install 'transfuse[ray]'") from None
    started = not ray.is_initialized()
    if started:
        kwargs: dict[str, Any] = {"address": address} if address else {"num_cpus": max(workers, 1)}
        ray.init(ignore_reinit_error=True, log_to_driver=False, include_dashboard=False, **kwargs)
    try:
        remote = ray.remote(num_cpus=1)(execute)
        pending = [remote.remote(t) for t in tasks]
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            for ref in done:
                on_done(ray.get(ref))
    finally:
        if started:
            ray.shutdown()


def _med3d_stage(spec: Any, *, workspace: str | Path, device: str | None, progress: bool) -> None:
    """Run one Med3D pretraining unless its folder already holds it with the same config."""
    import json

    from ..pretrain import default_out_dir, pretrain_med3d

    out = default_out_dir(spec, workspace)
    meta = out / "pretrain.json"
    if (out / "encoder.pt").is_file() and meta.is_file():
        try:
            same = json.loads(meta.read_text()).get("config") == json.loads(json.dumps(spec.to_dict()))
        except (OSError, ValueError):
            same = False
        if same:
            return
    pretrain_med3d(spec, out_dir=out, device=device, progress=progress)


def run_study(study: StudySpec, *, workspace: str | Path, workers: int = 1, executor: str = "local",
              address: str | None = None, smoke: bool = False, device: str | None = None,
              progress: bool = True, specs: list[RunSpec] | None = None,
              sequential: dict[str, Any] | None = None) -> StudyOutcome:
    """Run every missing run of ``study`` and store it.

    Args:
        study: the parsed study file.
        workspace: run store folder (shared by all workers; on Ray, a path every node can reach).
        workers: local processes (``executor="local"``) or Ray CPUs when starting a local Ray.
        executor: ``local`` or ``ray``.
        address: Ray cluster address (``ray://host:10001`` or ``auto``); ``None`` starts a local Ray.
        smoke: run the shrunk study (see :mod:`transfuse.study.spec`).
        device: device for every run (``None``: auto).
        progress: one progress bar for the whole study.
        specs: the grid runs to do instead of ``expand(study)`` (adaptive studies add seeds).
        sequential: an adaptive study's look schedule, recorded with the study (see
            :mod:`transfuse.study.adaptive`); an earlier record is kept when ``None``.

    Returns:
        :class:`StudyOutcome`.
    """
    if executor not in EXECUTORS:
        raise ConfigError(f"executor {executor!r} is not valid; choose one of {', '.join(EXECUTORS)}")
    if workers < 1:
        raise ConfigError(f"workers={workers} must be >= 1")
    pre = list(pretrain_specs(study, smoke=smoke).values())
    specs = expand(study, smoke=smoke) if specs is None else specs
    store = Store(workspace)
    name = specs[0].study or study.name
    earlier = store.get_results("study", study=name).get(name, {})
    sequential = sequential if sequential is not None else earlier.get("sequential")
    store.put_result("study", name, {
        "name": name, "description": study.description, "path": study.path,
        "auc_thresholds": list(study.auc_thresholds),
        "relative_thresholds": list(study.relative_thresholds),
        "grid": {k: [str(x) for x in v] for k, v in study.grid.items()}, "smoke": smoke,
        "run_ids": [run_id(s) for s in specs], "evaluation": study.evaluation.to_dict(),
        "sequential": sequential}, study=name)
    done = {r.run_id for r in store.list_runs(status="finished")}
    outcome = StudyOutcome(study=name, total=len(specs) + len(pre))
    threads = max(1, (os.cpu_count() or 1) // workers)

    import sys

    from tqdm.auto import tqdm

    bar = tqdm(total=outcome.total, desc=f"study {outcome.study}", unit="run", disable=not progress,
               mininterval=0.5 if sys.stderr.isatty() else 10.0)

    def on_done(res: tuple[str, str, str]) -> None:
        rid, what, msg = res
        if what == "failed":
            outcome.failed[rid] = msg
        else:
            getattr(outcome, what).append(rid)
        bar.update(1)
        bar.set_postfix(failed=len(outcome.failed), refresh=False)

    try:
        # Stage 0: Med3D multi-dataset pretrainings (in this process; skipped when done).
        for spec in med3d_pretrains(study, smoke=smoke).values():
            _med3d_stage(spec, workspace=workspace, device=device, progress=progress)
        # Stage 1: the study's own pretraining runs (sources of stage 2); stage 2: the grid.
        for stage in (pre, specs):
            ids = [run_id(s) for s in stage]
            skipped = [i for i in ids if i in done]
            outcome.skipped += skipped
            bar.update(len(skipped))
            tasks = [RunTask(s.to_dict(), str(workspace), device, threads)
                     for s, i in zip(stage, ids) if i not in done]
            if stage is specs and pre and outcome.failed:
                break  # a failed pretraining run leaves stage 2 without its source
            if not tasks:
                continue
            if executor == "ray":
                _ray(tasks, workers, address, on_done)
            else:
                _local(tasks, workers, on_done)
    finally:
        bar.close()
    return outcome


def study_status(study: StudySpec, *, workspace: str | Path, smoke: bool = False) -> list[tuple[RunSpec, str, str]]:
    """``(spec, run_id, status)`` for every run of the study: ``finished``, ``running``,
    ``stale`` (running, but its process is gone), ``failed`` or ``missing`` (never started)."""
    specs = [*pretrain_specs(study, smoke=smoke).values(), *expand(study, smoke=smoke)]
    ws = Path(workspace)
    statuses = {}
    extra: list[RunSpec] = []
    if (ws / "transfuse.db").is_file():
        store = Store(ws)
        records = {r.run_id: r for r in store.list_runs()}
        statuses = {rid: r.state for rid, r in records.items()}
        # seeds an adaptive study (--until-decided) added beyond the grid, as it recorded them
        name = specs[-1].study if specs else study.name
        ids = {run_id(s) for s in specs}
        for rid in store.get_results("study", study=name).get(name, {}).get("run_ids", []):
            if rid not in ids and rid in records:
                extra.append(spec_from_dict(records[rid].spec))
    return [(s, run_id(s), statuses.get(run_id(s), "missing")) for s in [*specs, *extra]]


def study_progress(*, store: Store, study: str) -> dict[str, int]:
    """How complete a study is in this store: run counts by state.

    The grid's run ids are recorded by the last :func:`run_study` of ``study`` (the ``study``
    result's ``run_ids``), so runs no process has started yet count as ``missing``; runs
    stored under the study but no longer in the grid count by their state as well.

    Returns:
        ``{"finished": n, "running": n, "stale": n, "failed": n, "missing": n}`` (every key
        present); ``running + stale + failed + missing > 0`` means the study is incomplete.
    """
    info = store.get_results("study", study=study).get(study, {})
    states = {r.run_id: r.state for r in store.list_runs(study=study) if not r.spec.get("parent")}
    counts = dict.fromkeys(("finished", "running", "stale", "failed", "missing"), 0)
    for rid in dict.fromkeys([*info.get("run_ids", []), *states]):
        counts[states.get(rid, "missing")] += 1
    return counts

"""Run a study: compute run ids, skip finished runs, run the rest — in local worker processes or
on a Ray cluster — with one progress bar for the whole study.

Resumable by construction: every run is stored transactionally by
:func:`transfuse.run.train_run`, a finished run is final, and a run left ``running`` by a killed
process is restarted from scratch the next time (a run another live process is running is
skipped, so two runners never duplicate work).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, CancelledError, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from .._signals import SigtermGuard, set_flag, share_stop, stop_others, stop_shared
from ..config import RunSpec, run_id, spec_from_dict
from ..errors import ConfigError
from ..decide.selection import study_progress
from ..store import Store
from .cohorts import group_cohorts, parse_cohort, resolve_cohort
from .placement import Placement, local_slots
from .spec import StudySpec, expand, med3d_pretrains, pretrain_specs, ssl_pretrains
from .task import RunTask, execute, execute_any

__all__ = ["run_study", "study_status", "study_progress", "StudyOutcome", "RunTask", "run_steps",
           "progress_total"]

EXECUTORS = ("local", "ray")


@dataclass
class StudyOutcome:
    """What happened: run ids by result, and error messages of failed runs."""

    study: str
    total: int
    finished: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    busy: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    preempted: list[str] = field(default_factory=list)  # stopped by SIGTERM, checkpoint kept

    @property
    def ok(self) -> bool:
        return not self.failed


class _StopOnSigterm(SigtermGuard):
    """While running a study's local runs: SIGTERM or Ctrl-C stops the study instead of killing
    the driver (a second Ctrl-C kills the workers and stops at once; stored runs stay).

    Runs in worker processes get the signal forwarded (each checkpoints and stops, see
    :mod:`transfuse.train.resume`) and the shared :attr:`event` is set, so no worker starts
    another run — not even one the executor had already queued to it. In the driver's own
    process (one worker) a run in progress handles the signal itself; between runs the flag
    stops the next.
    """

    def __init__(self) -> None:
        super().__init__()
        self.pool: ProcessPoolExecutor | None = None
        self.event: Any = None

    def _handle(self, signum: int, frame: Any) -> None:
        if self.event is not None:  # first, so a worker that stops finds it set
            set_flag(self.event)
        procs = list((getattr(self.pool, "_processes", None) or {}).values())
        try:
            super()._handle(signum, frame)
        except KeyboardInterrupt:  # Ctrl-C twice: stop at once; the store keeps what it holds
            for proc in procs:
                try:
                    proc.kill()
                except (OSError, AttributeError):
                    pass
            raise
        for proc in procs:  # each worker checkpoints its run and returns
            try:
                proc.terminate()
            except (OSError, AttributeError):
                pass


UNSTARTED = "unstarted"  #: a worker's outcome for a run it did not start: the study was stopping


def _init_worker(stop: Any, slots: Any) -> None:
    """Worker initializer: share the study's stop flag; take this worker's
    ``CUDA_VISIBLE_DEVICES`` (from ``slots``, a queue, when given) before torch is imported."""
    share_stop(stop)
    if slots is not None:
        value = slots.get(timeout=60)
        if value is not None:
            os.environ["CUDA_VISIBLE_DEVICES"] = value


def _run_task(task: Any) -> list[tuple[str, str, str]]:
    """One run through this module's :func:`execute` (what tests replace), or a whole cohort."""
    if isinstance(task, RunTask):
        return [execute(task)]
    return execute_any(task)


def _execute_unless_stopped(task: RunTask) -> tuple[str, str, str]:
    """:func:`execute` in a worker, unless the study is stopping (then ``unstarted``); a run that
    was preempted stops the other workers' next runs too."""
    if stop_shared():
        stop_others()  # a signal to this worker alone stops the others' next runs too
        specs = getattr(task, "specs", None) or (task.spec,)
        return [(run_id(spec_from_dict(s)), UNSTARTED, "the study was stopping") for s in specs]
    res = _run_task(task)
    if any(r[1] == "preempted" for r in res):
        stop_others()
    return res


def _local(tasks: list[RunTask], workers: int, on_done: Callable[[tuple[str, str, str]], None],
           slots: list[str | None] | None = None) -> bool:
    """Run ``tasks`` in this process or in ``workers`` spawned processes.

    Returns:
        whether SIGTERM stopped the study (its runs in progress checkpointed and stopped).
    """
    from concurrent.futures.process import BrokenProcessPool

    placed = bool(slots) and any(v is not None for v in slots)
    with _StopOnSigterm() as stop:
        if workers <= 1 and not placed:
            for t in tasks:
                if stop.requested:
                    break
                for res in _run_task(t):  # a run, or each member of a cohort
                    on_done(res)
                    if res[1] == "preempted":  # the run in progress caught the signal itself
                        stop.requested = True
            return stop.requested
        # spawn: fresh interpreters (no forked torch thread pools or open SQLite handles), so
        # each can be given its GPU before it imports torch.
        ctx = get_context("spawn")
        stop.event = ctx.Event()
        queue = None
        if placed:
            queue = ctx.Queue()
            for v in slots:
                queue.put(v)
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker,
                                 initargs=(stop.event, queue)) as pool:
            stop.pool = pool
            pending: set[Future] = {pool.submit(_execute_unless_stopped, t) for t in tasks}
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for f in done:
                    try:
                        results = f.result()
                    except (BrokenProcessPool, CancelledError):
                        if not stop.requested:
                            raise
                        continue
                    for res in results:  # a run, or each member of a cohort
                        if res[1] == UNSTARTED:
                            continue
                        on_done(res)
                        if res[1] == "preempted" and not stop.requested:
                            stop._handle(0, None)  # one run was stopped: stop them all
                if stop.requested:
                    for f in pending:
                        f.cancel()
                    pending = {f for f in pending if not f.cancelled()}
        return stop.requested


def run_steps(spec: RunSpec) -> int | None:
    """Optimiser steps ``spec`` will take: ``train.steps``, or for an epoch-based spec
    ``epochs × (n_train // batch_size)`` when ``data.n_train`` is set (an estimate: the loader
    drops the last partial batch, and a smoke cap may exceed the data); ``None`` when unknown."""
    t = spec.train
    if t.steps:
        return t.steps
    if t.epochs and spec.data.n_train:
        return t.epochs * max(1, spec.data.n_train // max(1, t.batch_size))
    return None


def progress_total(specs: list[RunSpec]) -> tuple[list[int], str]:
    """Per-run weights of the study progress bar and its unit: each run's :func:`run_steps`
    (unit ``step``), or 1 per run (unit ``run``) when some run's step count is unknown."""
    steps = [run_steps(s) for s in specs]
    if all(n is not None for n in steps):
        return [int(n) for n in steps], "step"  # type: ignore[arg-type]
    return [1] * len(specs), "run"


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


def run_study(study: StudySpec, *, workspace: str | Path, workers: int | None = 1,
              executor: str = "local", address: str | None = None, smoke: bool = False,
              device: str | None = None, progress: bool = True, specs: list[RunSpec] | None = None,
              sequential: dict[str, Any] | None = None, tensorboard: bool = False,
              placement: Placement | None = None, cohort: str | int | None = "auto") -> StudyOutcome:
    """Run every missing run of ``study`` and store it.

    Args:
        study: the parsed study file.
        workspace: run store folder (local workers share it; on Ray only the driver opens it,
            see :mod:`transfuse.study.remote`).
        workers: local processes (``executor="local"``) or Ray CPUs when starting a local Ray;
            ``None``: one per GPU slot of ``placement`` (``GPUs × runs_per_device``), else 1.
        executor: ``local`` or ``ray``.
        address: Ray cluster address (``ray://host:10001`` or ``auto``); ``None`` starts a local Ray.
        smoke: run the shrunk study (see :mod:`transfuse.study.spec`).
        device: one device for every run (``None``: by ``placement``).
        placement: which GPU each local worker gets, what each Ray task requests
            (:mod:`transfuse.study.placement`; default ``auto``: one GPU per worker where there
            are GPUs). Ignored for local workers when ``device`` is given.
        progress: one progress bar for the whole study: optimiser steps of the finished runs
            against the steps of all runs (:func:`progress_total`), with an ETA.
        specs: the grid runs to do instead of ``expand(study)`` (adaptive studies add seeds).
        sequential: an adaptive study's look schedule, recorded with the study (see
            :mod:`transfuse.study.adaptive`); an earlier record is kept when ``None``.
        tensorboard: every run also writes TensorBoard events (see :mod:`transfuse.live`).
        cohort: ``auto`` (on CUDA: fuse runs that differ only in seed and init into cohorts
            that fit the GPU; on the CPU: off; on Ray: up to 8 where tasks get GPUs), ``off``,
            or the largest cohort size (:mod:`transfuse.study.cohorts`); on Ray a cohort is one
            task (:func:`~transfuse.study.remote.cohort_in_scratch`).

    Returns:
        :class:`StudyOutcome`.

    Raises:
        StudyCheckError: a cell cannot run (:func:`~transfuse.study.check.check_study`, every
            problem listed); nothing is trained or stored.
    """
    if executor not in EXECUTORS:
        raise ConfigError(f"executor {executor!r} is not valid; choose one of {', '.join(EXECUTORS)}")
    if workers is not None and workers < 1:
        raise ConfigError(f"workers={workers} must be >= 1")
    parse_cohort(cohort)  # a bad --cohort fails before anything is stored
    placement = placement or Placement()
    slots: list[str | None] | None = None
    if executor == "local" and device is None:
        workers, slots = local_slots(placement, workers=workers)
    workers = workers or 1
    from .check import check_study  # every cell built, sourced and sized; all problems at once

    check_study(study, workspace=workspace, smoke=smoke).raise_if_invalid()  # before the store
    if tensorboard:
        from ..live import check_tensorboard

        check_tensorboard()  # here, not once per run in every worker
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
    gpu_slots = [x for x in slots or [] if x]  # local workers' GPUs: cohorts on one GPU share it
    sharing = max(Counter(gpu_slots).values(), default=1) if device is None else workers
    cohort_size = resolve_cohort(cohort, device=device, executor=executor, specs=specs,
                                 sharing=sharing)
    outcome = StudyOutcome(study=name, total=len(specs) + len(pre))
    threads = max(1, (os.cpu_count() or 1) // workers)

    import sys

    from tqdm.auto import tqdm

    # Runs are separate processes: the bar advances by a run's steps when it ends, so its rate
    # and ETA are in optimiser steps (a short smoke run and a long one weigh what they cost).
    # Finished runs count from the start (tqdm's `initial`), so they do not inflate the rate.
    weights, unit = progress_total([*pre, *specs])
    weight = dict(zip([run_id(s) for s in [*pre, *specs]], weights))
    already = [i for i in weight if i in done]
    bar = tqdm(total=sum(weights), initial=sum(weight[i] for i in already),
               desc=f"study {outcome.study}", unit=unit, disable=not progress,
               postfix=f"runs {len(already)}/{outcome.total}, failed 0",
               mininterval=0.5 if sys.stderr.isatty() else 10.0)

    def postfix() -> None:
        n = len(already) + len(outcome.finished) + len(outcome.busy) + len(outcome.failed)
        bar.set_postfix_str(f"runs {n}/{outcome.total}, failed {len(outcome.failed)}", refresh=False)

    # Step-level progress: runs report their steps (transfuse._progress) — directly in this
    # process, through a queue from worker processes — and the bar moves as they train; when a
    # run ends, the bar gets the rest of its weight (all of it for a run that never reported).
    import threading

    lock, reported, ended = threading.Lock(), {}, set()

    def on_steps(rid: str, n: int) -> None:
        if unit != "step" or rid in ended:  # a late report of a run that ended is counted
            return
        with lock:
            d = min(n, weight.get(rid, 0)) - reported.get(rid, 0)
            if d > 0:
                reported[rid] = reported.get(rid, 0) + d
                bar.update(d)

    def on_done(res: tuple[str, str, str]) -> None:
        rid, what, msg = res
        if what == "failed":
            outcome.failed[rid] = msg
        else:
            getattr(outcome, what).append(rid)
        postfix()
        with lock:
            ended.add(rid)
            bar.update(max(0, weight.get(rid, 1) - reported.pop(rid, 0)))

    step_queue, listener = _listen(on_steps, local=executor == "local" and progress,
                                   workers=workers)

    stopped = False
    try:
        # Stage 0: Med3D multi-dataset and self-supervised pretrainings (in this process;
        # skipped when done with the same config).
        for spec in med3d_pretrains(study, smoke=smoke).values():
            _med3d_stage(spec, workspace=workspace, device=device, progress=progress)
        for spec in ssl_pretrains(study, smoke=smoke).values():
            from ..pretrain.ssl import default_out_dir as ssl_dir, pretrain_ssl

            pretrain_ssl(spec, out_dir=ssl_dir(spec, workspace), device=device, progress=progress)
        # Stage 1: the study's own pretraining runs (sources of stage 2); stage 2: the grid.
        for stage in (pre, specs):
            ids = [run_id(s) for s in stage]
            skipped = [i for i in ids if i in done]
            outcome.skipped += skipped
            tasks = [RunTask(s.to_dict(), str(workspace), device, threads, tensorboard, step_queue)
                     for s, i in zip(stage, ids) if i not in done]
            if stage is specs and pre and outcome.failed:
                break  # a failed pretraining run leaves stage 2 without its source
            if stage is specs and outcome.busy:
                # a pretraining run another process is still training: its cells wait for the
                # next `study run` instead of failing for want of their source
                waiting = {f"run:{i}" for i in outcome.busy}
                blocked = [t for t in tasks if t.spec["init"].get("source") in waiting]
                tasks = [t for t in tasks if t not in blocked]
                outcome.busy += [run_id(spec_from_dict(t.spec)) for t in blocked]
                bar.update(sum(weight.get(r, 1) for r in outcome.busy[-len(blocked):]) if blocked else 0)
            if not tasks:
                continue
            if executor == "ray":  # the driver stores every run; workers never see the workspace
                from .remote import run_on_ray  # it forms the cohorts once it knows the cluster

                run_on_ray(tasks, workspace=workspace, workers=workers, address=address,
                           on_done=on_done, placement=placement, cohort=cohort)
            elif _local(group_cohorts(tasks, cohort_size), workers, on_done, slots):
                stopped = True
                break
    finally:
        listener()
        bar.close()
    if stopped:
        from .._signals import stop_signal
        from ..errors import PreemptedError

        n = len(outcome.preempted)
        raise PreemptedError(f"study {outcome.study} stopped by {stop_signal()}: "
                             f"{len(outcome.finished)} runs finished, {n} checkpointed mid-run; "
                             "run it again to resume")
    return outcome


def _listen(on_steps: Callable[[str, int], None], *, local: bool, workers: int
            ) -> tuple[Any, Callable[[], None]]:
    """Route runs' step reports to ``on_steps``: in this process directly (one worker), from
    worker processes through a queue a thread of this process reads. Returns the queue to give
    each task (``None`` in-process) and the function that stops listening."""
    from .. import _progress

    if not local:
        return None, lambda: None
    if workers <= 1:
        prev = _progress.set_reporter(on_steps, interval=_progress._interval)
        return None, lambda: _progress.set_reporter(prev)
    import threading

    manager = get_context("spawn").Manager()  # its queue can be pickled into each task
    queue, stop = manager.Queue(), threading.Event()

    def drain() -> None:
        import queue as q

        while not stop.is_set():
            try:
                on_steps(*queue.get(timeout=0.5))
            except q.Empty:
                continue
            except (EOFError, OSError):  # the manager is gone: the study is ending
                return

    thread = threading.Thread(target=drain, daemon=True)
    thread.start()

    def close() -> None:
        stop.set()
        thread.join(timeout=2)
        manager.shutdown()

    return queue, close


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



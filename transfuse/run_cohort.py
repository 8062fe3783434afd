"""Train several runs that differ only in seed and init as one cohort and store each as its own run.

Each member is built exactly as :func:`transfuse.run.train_run` builds it (same checks, init and
record), then :func:`transfuse.train.cohort.fit_cohort` trains them together. Every member is
stored under the run id it would have alone; the cohort is an execution detail, recorded in its
environment as ``cohort`` (the number of members trained together). Members that cannot join
(already finished: skipped; run by another live process: busy; their settings or data differ from
the first member's, or a checkpoint at another step) train alone, as today.
"""

from __future__ import annotations

import json
import traceback
from pathlib import Path
from typing import Any

from .config import RunSpec, run_id
from .errors import PreemptedError, TransfuseError

__all__ = ["train_cohort", "cohort_key"]

Outcome = tuple[str, str, str]  # (run id, finished|skipped|busy|preempted|failed, message)


def cohort_key(spec: RunSpec) -> str | None:
    """Runs with the same key can train as one cohort (they differ in seed and init only); ``None``
    for a run that trains alone (derived runs)."""
    if spec.parent is not None:
        return None
    d = spec.to_dict()
    d.pop("seed", None)
    init = d.pop("init", {})
    if spec.data.normalize == "source":  # the source's statistics normalise the data
        d["source"] = init.get("source")
    from .inits import init_model_kwargs

    d["model_kwargs"] = init_model_kwargs(spec.init.name)  # an init may change the architecture
    return json.dumps(d, sort_keys=True, default=str)


def train_cohort(specs: list[RunSpec], *, workspace: str | Path, device: str | None = None,
                 progress: bool = False, tensorboard: bool = False) -> list[Outcome | None]:
    """Train ``specs`` as one cohort (those that can join), store each; never raises for a run.

    Returns:
        per spec, ``(run_id, outcome, message)`` as :func:`transfuse.study.task.execute`, or
        ``None`` for a run that cannot join: the caller trains it alone.
    """
    from .data import load_dataset
    from .run import begin_run, build_run, check_run, record_failure, finish_run, environment
    from .store import RunBusyError, Store
    from .train.cohort import Member, cohort_refusal, fit_cohort
    from .train.device import resolve_device
    from .train.loop import resume_fingerprint
    from .train.resume import load_resume, settle_cohort_resume

    out: dict[str, Outcome | None] = {}
    store = Store(workspace)
    joined: list[tuple[RunSpec, Any]] = []
    solo: list[RunSpec] = []
    data, key0, norm0 = None, None, None
    for spec in specs:
        rid = run_id(spec)
        try:
            source, norm = check_run(spec, workspace, tensorboard)
            if store.status(rid) == "finished":
                out[rid] = (rid, "skipped", "")
                continue
            key = cohort_key(spec)
            if data is None:
                data, key0, norm0 = load_dataset(spec.data, norm=norm), key, norm
            same_norm = (norm is None) == (norm0 is None) and (
                norm is None or all((a == b).all() if hasattr(a, "all") else a == b
                                    for a, b in zip(norm, norm0)))
            if key is None or key != key0 or not same_norm or cohort_refusal(
                    spec.train, task=data.info.task):
                solo.append(spec)
                continue
            joined.append((spec, build_run(spec, data, source=source, workspace=workspace)))
        except TransfuseError as e:
            out[rid] = (rid, "failed", str(e))
        except Exception as e:  # a crash in one run is reported, the study goes on
            out[rid] = (rid, "failed", traceback.format_exception_only(type(e), e)[-1].strip())
    # a cohort checkpoint that a kill cut short is completed or undone first (not while another
    # live process trains these runs), so the members find one step; group them by it
    if joined and not any(_busy(store, run_id(spec)) for spec, _ in joined):
        settle_cohort_resume([store.run_dir(run_id(spec)) for spec, _ in joined])
    groups: dict[int | None, list[tuple[RunSpec, Any]]] = {}
    for spec, built in joined:
        ck = load_resume(store.run_dir(run_id(spec)), resume_fingerprint(spec.train, spec.seed, 1))
        groups.setdefault(None if ck is None else int(ck["step"]), []).append((spec, built))
    dev = resolve_device(device)
    for group in groups.values():
        if len(group) == 1:
            solo.append(group[0][0])
            continue
        out.update(_train_group(group, data, store=store, workspace=workspace, device=device,
                                dev=dev, progress=progress, tensorboard=tensorboard,
                                helpers=(begin_run, record_failure, finish_run, environment, RunBusyError,
                                         Member, fit_cohort)))
    for spec in solo:
        out[run_id(spec)] = None
    return [out[run_id(s)] for s in specs]


def _busy(store: Any, rid: str) -> bool:
    """Is another live process training this run right now?"""
    try:
        return store.get_run(rid).state == "running"
    except TransfuseError:  # not in the store yet
        return False


def _train_group(group: list[tuple[RunSpec, Any]], data: Any, *, store: Any, workspace: str | Path,
                 device: str | None, dev: Any, progress: bool, tensorboard: bool,
                 helpers: tuple) -> dict[str, Outcome]:
    """Start, train and store one cohort; every member's outcome."""
    begin_run, record_failure, finish_run, environment, RunBusyError, Member, fit_cohort = helpers
    out: dict[str, Outcome | None] = {}
    started: list[tuple[RunSpec, Any, Any]] = []  # (spec, built, member)
    env = {**environment(dev), "cohort": len(group)}
    for spec, built in group:
        rid = run_id(spec)
        try:
            store.start_run(spec, env=env)
        except RunBusyError as e:
            out[rid] = (rid, "busy", str(e))
            continue
        except TransfuseError as e:  # e.g. finished meanwhile by another process
            out[rid] = (rid, "skipped" if store.status(rid) == "finished" else "failed", str(e))
            continue
        run_dir = store.run_dir(rid)
        try:
            log = begin_run(store, spec, built, data, run_dir=run_dir, workspace=workspace,
                         tensorboard=tensorboard)
        except Exception as e:
            err = record_failure(store, rid, run_dir, e)
            out[rid] = (rid, "failed", str(err))
            continue

        def on_fail(e: BaseException, rid: str = rid, run_dir: Path = run_dir) -> None:
            err = record_failure(store, rid, run_dir, e)
            out[rid] = (rid, "failed", str(err))

        started.append((spec, built, Member(built.model, spec.seed, run_dir, log, on_fail)))
    members = [m for _, _, m in started]
    try:
        results = fit_cohort(members, data, group[0][0].train, device=device, progress=progress)
    except BaseException as e:
        for spec, _, m in started:
            rid = run_id(spec)
            if rid in out:
                continue
            err = record_failure(store, rid, m.run_dir, e)
            what = "preempted" if isinstance(e, PreemptedError) else "failed"
            out[rid] = (rid, what, str(err) if err is not e else f"{type(e).__name__}: {e}")
        if not isinstance(e, Exception):  # KeyboardInterrupt: the runner stops
            raise
        return out
    finally:
        for _, _, m in started:
            if m.log is not None:
                m.log.close()
    for (spec, _, m), res in zip(started, results):
        rid = run_id(spec)
        if rid in out or isinstance(res, BaseException):
            continue
        try:
            finish_run(store, rid, res)
            out[rid] = (rid, "finished", "")
        except Exception as e:
            err = record_failure(store, rid, m.run_dir, e)
            out[rid] = (rid, "failed", str(err))
    return out

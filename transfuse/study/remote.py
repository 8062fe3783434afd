"""Studies on a Ray cluster without a shared filesystem: the driver owns the store.

Workers never open the driver's workspace. For each run the driver

1. claims it in its store (``running``, owned by the driver: a second driver sees it busy, a
   dead driver leaves it ``stale``) and packs what the run reads from the workspace — the
   ``best.pt`` and record of a ``run:`` source, the encoder of a ``med3d:`` or ``ssl:`` pretraining,
   and the run's own folder (``resume.pt`` with the ``best.pt`` and ``init.pt`` it goes with) if
   an earlier attempt was preempted — into Ray's object store (each source once, however many
   runs use it);
2. submits :func:`run_in_scratch`, which trains the run in a scratch workspace on the worker's
   node (``$TRANSFUSE_SCRATCH`` or the temp folder, ``transfuse-scratch/<run_id>``) with the very
   code of a local run, and returns the finished run as a :class:`~transfuse.store.RunBundle`
   (row, metric history, test metrics, init report, predictions, checkpoints);
3. stores it with :meth:`~transfuse.store.Store.import_run`: files written atomically, then the
   row and metrics in one transaction that marks it finished — the same final step
   (``store._finish``) as a run trained locally. A failed run comes back with its error and is
   stored ``failed``; a preempted one (SIGTERM) comes back with its run folder, which the
   driver keeps and ships with the next attempt, wherever it lands.

A cohort (``study run --executor ray --cohort N|auto``) is one Ray task with the resources of one
run: the driver claims each member (finished members are skipped, busy ones reported busy),
:func:`cohort_in_scratch` trains the rest together in one scratch workspace
(``transfuse-scratch/cohort-<hash>``) exactly as a local cohort, and returns every member as a
run alone returns; the driver stores each under its own run id.

Data (``TRANSFUSE_DATA``, CSV paths, ``file:`` checkpoints) must be readable on every node, as
for any Ray job; ``TRANSFUSE_DATA`` is forwarded to the workers.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..config import spec_from_dict, run_id
from ..errors import ConfigError, check_name
from ..spec.init_names import source_ref
from ..atomic import write_bytes
from ..store import RunBundle, RunBusyError, RunFinishedError, Store
from .placement import Placement, ray_resources
from .task import CohortTask, RunTask, execute

__all__ = ["run_in_scratch", "cohort_in_scratch", "run_folder_files", "run_on_ray", "scratch_root", "SCRATCH_ENV"]

SCRATCH_ENV = "TRANSFUSE_SCRATCH"
RESUME = "resume.pt"  # as transfuse.train.resume.RESUME_FILE (not imported: it pulls in torch)
_FORWARDED_ENV = ("TRANSFUSE_DATA",)
_PRETRAIN_FAMILIES = ("med3d", "ssl")  # sources read from WORKSPACE/pretrain/<name>/


def scratch_root() -> Path:
    """Where workers train: ``$TRANSFUSE_SCRATCH/transfuse-scratch`` (default: the temp folder)."""
    return Path(os.environ.get(SCRATCH_ENV) or tempfile.gettempdir()) / "transfuse-scratch"


def run_in_scratch(task: Any, resume: bytes | dict[str, bytes] | None, files: dict[str, bytes],
                   *sources: RunBundle) -> tuple[str, str, str, RunBundle | None]:
    """Ray task: train one run in a scratch workspace and return it.

    Args:
        task: the :class:`~transfuse.study.task.RunTask` (its ``workspace`` is the driver's,
            unused here).
        resume: what a preempted attempt left in the run folder (``resume.pt``, and the
            ``best.pt``/``init.pt`` it refers to; see :func:`run_folder_files`), or that
            ``resume.pt``'s bytes alone, or ``None``.
        files: workspace-relative files the run's source reads (``pretrain/<name>/encoder.pt``).
        sources: finished ``run:`` sources, each with its ``best.pt``.

    Returns:
        ``(run_id, outcome, message, bundle)``: ``bundle`` is the finished run, or for
        ``preempted`` the files of its run folder (:func:`run_folder_files`); ``None`` when it
        failed.
    """
    rid = run_id(spec_from_dict(task.spec))
    ws = scratch_root() / check_name(rid, field="run_id")
    if isinstance(resume, bytes):
        resume = {RESUME: resume}
    store = _prepare_scratch(ws, [files, *sources], {rid: resume} if resume is not None else {})
    rid, what, msg = execute(replace(task, workspace=str(ws)))
    out = _collect(store, rid, what, msg)
    if out[1] != "preempted":  # a preempted run keeps its scratch: a retry here resumes locally
        shutil.rmtree(ws, ignore_errors=True)
    return out


def cohort_in_scratch(task: Any, resumes: dict[str, dict[str, bytes]],
                      *payload: RunBundle | dict[str, bytes]
                      ) -> list[tuple[str, str, str, RunBundle | None]]:
    """Ray task: train a cohort (:class:`~transfuse.study.task.CohortTask`) in one scratch
    workspace, as :func:`~transfuse.study.task.execute_any` does locally, and return every member.

    Args:
        task: the cohort (its ``workspace`` is the driver's, unused here).
        resumes: by run id, what a preempted attempt of a member left in its run folder
            (:func:`run_folder_files`).
        payload: what the members' sources read: finished ``run:`` sources (each a
            :class:`~transfuse.store.RunBundle` with its ``best.pt``) and dicts of
            workspace-relative files (``pretrain/<name>/encoder.pt``).

    Returns:
        per member, in ``task.specs`` order, ``(run_id, outcome, message, bundle)`` as
        :func:`run_in_scratch` returns for one run.
    """
    from .task import execute_any

    rids = [run_id(spec_from_dict(s)) for s in task.specs]
    name = "cohort-" + hashlib.sha256(" ".join(rids).encode()).hexdigest()[:12]
    ws = scratch_root() / name
    store = _prepare_scratch(ws, list(payload), resumes)
    out = [_collect(store, rid, what, msg)
           for rid, what, msg in execute_any(replace(task, workspace=str(ws)))]
    if not any(o[1] == "preempted" for o in out):  # else a retry here resumes locally
        shutil.rmtree(ws, ignore_errors=True)
    return out


def _prepare_scratch(ws: Path, payload: list[RunBundle | dict[str, bytes]],
                     resumes: dict[str, dict[str, bytes]]) -> Store:
    """The scratch store at ``ws`` with the shipped sources, source files and the run folders
    of preempted attempts."""
    store = Store(ws)
    for item in payload:
        if isinstance(item, RunBundle):
            store.import_run(item)
            continue
        for rel, data in item.items():
            write_bytes(ws.joinpath(*_inside(rel)), data, fsync=True)
    for rid, folder in resumes.items():
        run_dir = store.run_dir(check_name(rid, field="run_id"))
        if not (run_dir / RESUME).is_file():  # a resumption on a node that lacks it
            for rel, data in folder.items():
                write_bytes(run_dir.joinpath(*_inside(rel)), data, fsync=True)
    return store


def _inside(rel: str) -> tuple[str, ...]:
    """The parts of a shipped relative path; ``ValueError`` for one that leaves its folder."""
    parts = Path(rel).parts
    if Path(rel).is_absolute() or any(p == ".." for p in parts):
        raise ValueError(f"source file {rel!r} is outside the workspace")
    return parts


def run_folder_files(run_dir: Path) -> dict[str, bytes]:
    """What a preempted run needs to resume elsewhere: every file of its folder (``resume.pt``,
    ``init.pt``, ``best.pt`` of an evaluation before the stop, ``metrics.csv``), by relative
    path, without unfinished ``*.tmp`` files."""
    return {p.relative_to(run_dir).as_posix(): p.read_bytes() for p in sorted(run_dir.rglob("*"))
            if p.is_file() and not p.name.endswith(".tmp")}


def _collect(store: Store, rid: str, what: str, msg: str
             ) -> tuple[str, str, str, RunBundle | None]:
    """One run's outcome in the scratch store as the driver stores it: a finished (or skipped)
    run as its bundle, a preempted one with the files of its folder, a failed one without."""
    bundle = None
    ckpt = store.run_dir(rid) / RESUME
    if what in ("finished", "skipped"):
        bundle = store.export_run(rid)
        bundle.row["env"] = {**(bundle.row.get("env") or {}), "ray_node": _node_id()}
        what = "finished"
    elif what == "preempted" and ckpt.is_file():
        bundle = RunBundle(rid, {}, [], run_folder_files(store.run_dir(rid)))
    return rid, what, msg, bundle


def _node_id() -> str | None:
    """The Ray node this task runs on (recorded with the run), or ``None`` outside Ray."""
    try:
        import ray

        return ray.get_runtime_context().get_node_id() if ray.is_initialized() else None
    except Exception:
        return None


def _source_payload(store: Store, source: str | None) -> tuple[str | None, RunBundle | None,
                                                                dict[str, bytes]]:
    """What a run's source reads from the workspace: ``(key, run bundle, workspace files)``."""
    ref = source_ref(source) if source else None
    if ref is None:
        return None, None, {}
    family, arg = ref.family, ref.arg
    if family == "run":
        try:
            rec = store.get_run(arg)
        except Exception:  # unknown here: the worker's resolver gives the usual one-line error
            return None, None, {}
        return f"run:{rec.run_id}", store.export_run(rec.run_id, files=("best.pt",)), {}
    if family in _PRETRAIN_FAMILIES:  # WORKSPACE/pretrain/<name>/: encoder and its record
        folder = store.workspace / "pretrain" / check_name(arg, field="source")
        files = {p.relative_to(store.workspace).as_posix(): p.read_bytes()
                 for p in sorted(folder.glob("*")) if p.is_file() and p.suffix in (".pt", ".json")}
        return source, None, files
    return None, None, {}


def run_on_ray(tasks: list[Any], *, workspace: str | Path, workers: int, address: str | None,
               on_done: Callable[[tuple[str, str, str]], None], placement: Placement,
               cohort: str | int | None = "off") -> None:
    """Run ``tasks`` as Ray tasks that never touch ``workspace``; store each run as it returns.

    ``cohort`` (``study run --cohort``): runs that can fuse are grouped
    (:func:`~transfuse.study.cohorts.group_cohorts`) into cohorts, each ONE Ray task with the
    resources of one run (:func:`cohort_in_scratch`); ``auto`` fuses where the tasks get GPUs.
    """
    try:
        import ray
    except ImportError:
        raise ConfigError("--executor ray needs Ray: pip install 'transfuse[ray]'") from None
    from .cohorts import group_cohorts, parse_cohort, resolve_cohort

    started = not ray.is_initialized()
    if started:
        kwargs: dict[str, Any] = {"address": address} if address else {"num_cpus": max(workers, 1)}
        ray.init(ignore_reinit_error=True, log_to_driver=False, include_dashboard=False, **kwargs)
    store = Store(workspace)
    try:
        # Ray reserves each task's CPUs and GPUs and sets its CUDA_VISIBLE_DEVICES; the run uses
        # as many torch threads as it has CPUs. A cohort asks for what one run asks for.
        res = ray_resources(placement, float(ray.cluster_resources().get("GPU", 0)))
        threads = max(1, int(res["num_cpus"]))
        device = next((t.device for t in tasks), None)
        size = resolve_cohort(cohort, device=device, executor="ray", specs=[],
                              task_gpus=res["num_gpus"])
        tasks = group_cohorts(tasks, size, auto=parse_cohort(cohort) == "auto")
        env = {k: os.environ[k] for k in _FORWARDED_ENV if k in os.environ}
        remotes = [ray.remote(**res)(f) for f in (run_in_scratch, cohort_in_scratch)]
        if env:
            remotes = [r.options(runtime_env={"env_vars": env}) for r in remotes]
        shipped: dict[str, Any] = {}  # source → (ObjectRef of its bundle or None, files ref)
        pending: dict[Any, list[str]] = {}
        for t in tasks:
            claimed = []  # (spec, run id, source bundle ref, source files ref, resume.pt)
            for spec in [spec_from_dict(s) for s in getattr(t, "specs", None) or (t.spec,)]:
                rid = run_id(spec)
                try:
                    store.start_run(spec, env={"executor": "ray", "address": address})
                except RunFinishedError:
                    on_done((rid, "skipped", ""))
                    continue
                except RunBusyError as e:
                    on_done((rid, "busy", str(e)))
                    continue
                key, bundle, files = _source_payload(store, spec.init.source)
                if key is not None and key not in shipped:
                    shipped[key] = (ray.put(bundle) if bundle is not None else None, ray.put(files))
                src_ref, files_ref = shipped[key] if key is not None else (None, None)
                run_dir = store.run_dir(rid)  # a preempted attempt's folder goes with the next
                claimed.append((spec, rid, src_ref, files_ref,
                                run_folder_files(run_dir) if (run_dir / RESUME).is_file() else None))
            if len(claimed) == 1:  # one run (alone, or all its cohort's others done or busy)
                spec, rid, src_ref, files_ref, resume = claimed[0]
                one = RunTask(spec.to_dict(), t.workspace, t.device, threads, t.tensorboard)
                args = [one, ray.put(resume) if resume is not None else None,
                        files_ref if files_ref is not None else {}]
                pending[remotes[0].remote(*args, *([src_ref] if src_ref is not None else []))] = [rid]
            elif claimed:  # one Ray task trains them all; each source shipped once
                payload = list(dict.fromkeys(r for c in claimed for r in c[2:4] if r is not None))
                group = CohortTask(tuple(c[0].to_dict() for c in claimed), t.workspace, t.device,
                                   threads, t.tensorboard, auto=getattr(t, "auto", False))
                resumes = {c[1]: c[4] for c in claimed if c[4] is not None}
                pending[remotes[1].remote(group, resumes, *payload)] = [c[1] for c in claimed]
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                for res_ in _store_results(store, pending.pop(ref), ref, ray):
                    on_done(res_)
    finally:
        if started:
            ray.shutdown()


def _store_result(store: Store, rid: str, ref: Any, ray: Any) -> tuple[str, str, str]:
    """Store what a Ray task for one run returned (or its crash) in the driver's store."""
    return _store_results(store, [rid], ref, ray)[0]


def _store_results(store: Store, rids: list[str], ref: Any, ray: Any) -> list[tuple[str, str, str]]:
    """Store what a Ray task returned for its runs ``rids`` (one run, or a cohort's members), or
    its crash (every run failed), in the driver's store."""
    try:
        got = ray.get(ref)
        got = {g[0]: g for g in ([got] if isinstance(got, tuple) else got)}
        back = [got.get(rid) or (rid, "failed", f"run {rid} did not come back from its cohort", None)
                for rid in rids]
    except Exception as e:  # the task itself died (worker or node lost, out of memory)
        why = str(e).strip().splitlines()[-1] if str(e).strip() else e
        back = [(rid, "failed", f"run {rid} failed on the cluster: {type(e).__name__}: {why}", None)
                for rid in rids]
    return [_store_one(store, *b) for b in back]


def _store_one(store: Store, rid: str, what: str, msg: str, bundle: RunBundle | None
               ) -> tuple[str, str, str]:
    """Store one run that came back: finished (its bundle), preempted (its folder kept for
    the next attempt, on any node) or failed."""
    ckpt = store.run_dir(rid) / RESUME
    if what == "finished" and bundle is not None:
        store.import_run(bundle)
        ckpt.unlink(missing_ok=True)
        return rid, "finished", ""
    if what == "preempted":
        if bundle is not None and RESUME in bundle.files:  # the next attempt resumes from it, on any node
            for rel, data in sorted(bundle.files.items(), key=lambda kv: kv[0] == RESUME):
                write_bytes(store.run_dir(rid).joinpath(*_inside(rel)), data, fsync=True)
        store.fail_run(rid, f"run {rid} {msg}; the run is stored as failed and resumes when run again")
        return rid, "preempted", msg
    ckpt.unlink(missing_ok=True)
    store.fail_run(rid, msg or f"run {rid} failed on the cluster")
    return rid, "failed", msg

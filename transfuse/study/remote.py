"""Studies on a Ray cluster without a shared filesystem: the driver owns the store.

Workers never open the driver's workspace. For each run the driver

1. claims it in its store (``running``, owned by the driver: a second driver sees it busy, a
   dead driver leaves it ``stale``) and packs what the run reads from the workspace — the
   ``best.pt`` and record of a ``run:`` source, the encoder of a ``med3d:`` or ``ssl:`` pretraining,
   and the run's own ``resume.pt`` if an earlier attempt was preempted — into Ray's object
   store (each source once, however many runs use it);
2. submits :func:`run_in_scratch`, which trains the run in a scratch workspace on the worker's
   node (``$TRANSFUSE_SCRATCH`` or the temp folder, ``transfuse-scratch/<run_id>``) with the very
   code of a local run, and returns the finished run as a :class:`~transfuse.store.RunBundle`
   (row, metric history, test metrics, init report, predictions, checkpoints);
3. stores it with :meth:`~transfuse.store.Store.import_run`: files written atomically, then the
   row and metrics in one transaction that marks it finished — the same final step
   (``store._finish``) as a run trained locally. A failed run comes back with its error and is
   stored ``failed``; a preempted one (SIGTERM) comes back with its ``resume.pt``, which the
   driver keeps in the run folder and ships with the next attempt, wherever it lands.

Data (``TRANSFUSE_DATA``, CSV paths, ``file:`` checkpoints) must be readable on every node, as
for any Ray job; ``TRANSFUSE_DATA`` is forwarded to the workers.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..config import spec_from_dict, run_id
from ..errors import ConfigError, check_name
from ..atomic import write_bytes
from ..store import RunBundle, RunBusyError, RunFinishedError, Store
from .placement import Placement, ray_resources
from .task import execute

__all__ = ["run_in_scratch", "run_on_ray", "scratch_root", "SCRATCH_ENV"]

SCRATCH_ENV = "TRANSFUSE_SCRATCH"
RESUME = "resume.pt"  # as transfuse.train.resume.RESUME_FILE (not imported: it pulls in torch)
_FORWARDED_ENV = ("TRANSFUSE_DATA",)
_PRETRAIN_FAMILIES = ("med3d", "ssl")  # sources read from WORKSPACE/pretrain/<name>/


def scratch_root() -> Path:
    """Where workers train: ``$TRANSFUSE_SCRATCH/transfuse-scratch`` (default: the temp folder)."""
    return Path(os.environ.get(SCRATCH_ENV) or tempfile.gettempdir()) / "transfuse-scratch"


def run_in_scratch(task: Any, resume: bytes | None, files: dict[str, bytes],
                   *sources: RunBundle) -> tuple[str, str, str, RunBundle | None]:
    """Ray task: train one run in a scratch workspace and return it.

    Args:
        task: the :class:`~transfuse.study.task.RunTask` (its ``workspace`` is the driver's,
            unused here).
        resume: the run's ``resume.pt`` from a preempted attempt, or ``None``.
        files: workspace-relative files the run's source reads (``pretrain/<name>/encoder.pt``).
        sources: finished ``run:`` sources, each with its ``best.pt``.

    Returns:
        ``(run_id, outcome, message, bundle)``: ``bundle`` is the finished run, or for
        ``preempted`` only its ``resume.pt``; ``None`` when it failed.
    """
    rid = run_id(spec_from_dict(task.spec))
    ws = scratch_root() / check_name(rid, field="run_id")
    store = Store(ws)
    for src in sources:
        store.import_run(src)
    for rel, data in files.items():
        parts = Path(rel).parts
        if Path(rel).is_absolute() or any(p == ".." for p in parts):
            raise ValueError(f"source file {rel!r} is outside the workspace")
        write_bytes(ws.joinpath(*parts), data, fsync=True)
    ckpt = store.run_dir(rid) / RESUME
    if resume is not None and not ckpt.is_file():  # a resumption on a node that lacks it
        write_bytes(ckpt, resume, fsync=True)
    rid, what, msg = execute(replace(task, workspace=str(ws)))
    bundle = None
    if what in ("finished", "skipped"):
        bundle = store.export_run(rid)
        bundle.row["env"] = {**(bundle.row.get("env") or {}), "ray_node": _node_id()}
        what = "finished"
    elif what == "preempted" and ckpt.is_file():
        bundle = RunBundle(rid, {}, [], {RESUME: ckpt.read_bytes()})
    if what != "preempted":  # a preempted run keeps its scratch: a retry here resumes locally
        shutil.rmtree(ws, ignore_errors=True)
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
    if not source or ":" not in source:
        return None, None, {}
    family, arg = source.split(":", 1)
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
               on_done: Callable[[tuple[str, str, str]], None], placement: Placement) -> None:
    """Run ``tasks`` as Ray tasks that never touch ``workspace``; store each as it returns."""
    try:
        import ray
    except ImportError:
        raise ConfigError("--executor ray needs Ray: pip install 'transfuse[ray]'") from None
    started = not ray.is_initialized()
    if started:
        kwargs: dict[str, Any] = {"address": address} if address else {"num_cpus": max(workers, 1)}
        ray.init(ignore_reinit_error=True, log_to_driver=False, include_dashboard=False, **kwargs)
    store = Store(workspace)
    try:
        # Ray reserves each task's CPUs and GPUs and sets its CUDA_VISIBLE_DEVICES; the run uses
        # as many torch threads as it has CPUs.
        res = ray_resources(placement, float(ray.cluster_resources().get("GPU", 0)))
        threads = max(1, int(res["num_cpus"]))
        env = {k: os.environ[k] for k in _FORWARDED_ENV if k in os.environ}
        remote = ray.remote(**res)(run_in_scratch)
        if env:
            remote = remote.options(runtime_env={"env_vars": env})
        shipped: dict[str, Any] = {}  # source → (ObjectRef of its bundle or None, files ref)
        pending: dict[Any, str] = {}
        for t in tasks:
            spec = spec_from_dict(t.spec)
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
            src_ref, files_ref = shipped.get(key, (None, None)) if key else (None, None)
            ckpt = store.run_dir(rid) / RESUME
            resume = ray.put(ckpt.read_bytes()) if ckpt.is_file() else None
            args = [replace(t, threads=threads), resume, files_ref if files_ref is not None else {}]
            if src_ref is not None:
                args.append(src_ref)
            pending[remote.remote(*args)] = rid
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                rid = pending.pop(ref)
                on_done(_store_result(store, rid, ref, ray))
    finally:
        if started:
            ray.shutdown()


def _store_result(store: Store, rid: str, ref: Any, ray: Any) -> tuple[str, str, str]:
    """Store what a Ray task returned (or its crash) in the driver's store."""
    ckpt = store.run_dir(rid) / RESUME
    try:
        rid, what, msg, bundle = ray.get(ref)
    except Exception as e:  # the task itself died (worker or node lost, out of memory)
        what, msg, bundle = "failed", f"run {rid} failed on the cluster: {type(e).__name__}: " \
                                      f"{str(e).strip().splitlines()[-1] if str(e).strip() else e}", None
    if what == "finished" and bundle is not None:
        store.import_run(bundle)
        ckpt.unlink(missing_ok=True)
        return rid, "finished", ""
    if what == "preempted":
        if bundle is not None and RESUME in bundle.files:
            write_bytes(ckpt, bundle.files[RESUME], fsync=True)  # the next attempt resumes from it, on any node
        store.fail_run(rid, f"run {rid} {msg}; the run is stored as failed and resumes when run again")
        return rid, "preempted", msg
    ckpt.unlink(missing_ok=True)
    store.fail_run(rid, msg or f"run {rid} failed on the cluster")
    return rid, "failed", msg

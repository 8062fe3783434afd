"""One run of a study as a task a worker process (or a Ray worker) executes."""

from __future__ import annotations

import traceback
from dataclasses import dataclass
from typing import Any

from ..config import run_id, spec_from_dict
from ..errors import TransfuseError

__all__ = ["RunTask", "CohortTask", "execute", "execute_any"]


@dataclass(frozen=True)
class RunTask:
    """What one worker runs: a spec, where to store it, how many CPU threads to use, and whether
    to write TensorBoard events."""

    spec: dict[str, Any]
    workspace: str
    device: str | None
    threads: int
    tensorboard: bool = False
    progress: Any = None  # a queue for (run_id, step) reports to the driver's bar, or None


def execute(task: RunTask) -> tuple[str, str, str]:
    """Run one task in this process; returns ``(run_id, outcome, message)``.

    ``outcome`` is ``finished``, ``skipped`` (already finished), ``busy`` (another process runs
    it), ``preempted`` (SIGTERM: it checkpointed and stopped) or ``failed``. Never raises, so one
    bad run cannot stop the study.
    """
    import torch

    from ..errors import PreemptedError
    from ..run import train_run
    from ..store import RunBusyError

    from .. import _progress

    torch.set_num_threads(max(1, task.threads))
    spec = spec_from_dict(task.spec)
    rid = run_id(spec)
    if task.progress is not None:  # a worker process: steps go to the driver through the queue
        _progress.set_reporter(lambda r, n: task.progress.put((r, n)))
    _progress.begin(rid)
    try:
        out = train_run(spec, workspace=task.workspace, device=task.device, progress=False,
                        tensorboard=task.tensorboard)
    except RunBusyError as e:
        return rid, "busy", str(e)
    except PreemptedError as e:
        return rid, "preempted", str(e)
    except TransfuseError as e:
        return rid, "failed", str(e)
    except Exception as e:  # a crash in one run is reported, the study goes on
        tb = traceback.format_exception_only(type(e), e)[-1].strip()
        return rid, "failed", tb
    return rid, "skipped" if out.skipped else "finished", ""


@dataclass(frozen=True)
class CohortTask:
    """Runs that train together as one cohort (see :mod:`transfuse.run_cohort`): their specs,
    and the rest as :class:`RunTask`."""

    specs: tuple[dict[str, Any], ...]
    workspace: str
    device: str | None
    threads: int
    tensorboard: bool = False
    auto: bool = False  # formed by `--cohort auto`: fuse only where the device is CUDA


def execute_any(task: RunTask | CohortTask) -> list[tuple[str, str, str]]:
    """:func:`execute` for a run, or every member's outcome for a cohort; never raises for a run.
    A cohort formed by ``--cohort auto`` that lands on a device other than CUDA (where fusing
    does not pay) runs its members one after another instead."""
    if isinstance(task, RunTask):
        return [execute(task)]
    import torch

    from ..run_cohort import train_cohort

    torch.set_num_threads(max(1, task.threads))
    from ..train.device import resolve_device

    if task.auto and resolve_device(task.device).type != "cuda":  # e.g. a Ray task without a GPU
        return [execute(RunTask(s, task.workspace, task.device, task.threads, task.tensorboard))
                for s in task.specs]
    specs = [spec_from_dict(s) for s in task.specs]
    try:
        res = train_cohort(specs, workspace=task.workspace, device=task.device, progress=False,
                           tensorboard=task.tensorboard)
    except Exception as e:  # e.g. the store: every member is reported, the study goes on
        msg = traceback.format_exception_only(type(e), e)[-1].strip()
        return [(run_id(s), "failed", msg) for s in specs]
    return [r if r is not None else  # a run that could not join trains alone
            execute(RunTask(s, task.workspace, task.device, task.threads, task.tensorboard))
            for r, s in zip(res, task.specs)]

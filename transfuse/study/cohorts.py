"""Which runs of a study train together as cohorts (``study run --cohort auto|off|N``).

Runs that differ only in seed and init (:func:`transfuse.run_cohort.cohort_key`) are grouped, in
study order, into cohorts of at most the resolved size; a group of one is an ordinary
:class:`~transfuse.study.task.RunTask`. ``auto`` fuses on CUDA only (on two CPU cores fusing was
measured at 0.55–0.75× of training the runs one after another), up to a size estimated to fit
the GPU's free memory; ``off`` (and ``auto`` on the CPU) runs every run alone, exactly as before.
"""

from __future__ import annotations

import math
from typing import Any

from ..config import RunSpec, spec_from_dict
from ..errors import ConfigError
from .task import CohortTask, RunTask

__all__ = ["resolve_cohort", "group_cohorts", "AUTO_MAX", "RAY_AUTO"]

AUTO_MAX = 64  #: the largest cohort ``auto`` forms
RAY_AUTO = 8  #: the cohort ``auto`` forms on a Ray cluster's GPUs (give N for more)


def parse_cohort(value: str | int | None) -> str | int:
    """``auto``, ``off`` or a size ≥ 1 (``1`` is ``off``)."""
    if value is None or value in ("auto", "off"):
        return value or "auto"
    try:
        n = int(value)
    except (TypeError, ValueError):
        n = 0
    if n < 1:
        raise ConfigError(f"--cohort {value!r} is not valid; use auto, off or a size >= 1")
    return n


def _saved_bytes(model: Any, shape: tuple[int, ...]) -> int:
    """What autograd keeps for the backward pass of one training batch of ``shape`` (bytes,
    fp32), counted on the meta device: the forward runs on sizes alone, nothing is allocated."""
    import torch

    model = model.to("meta").train()
    params = {id(p) for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if id(t) not in params:  # the weights an op keeps are counted once, as parameters
            saved[id(t)] = t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(torch.empty(shape, device="meta"))
    return sum(saved.values()) + out.numel() * out.element_size()


def _member_bytes(spec: RunSpec) -> int:
    """An upper estimate of one member's device memory: weights, gradients, optimiser state and
    best weights (×5 the parameters), plus twice what autograd saves for the backward pass of a
    batch (:func:`_saved_bytes`; the backward's temporaries and the allocator's slack take the
    second copy). Where the model cannot run on the meta device, a generous bound for small
    convnets stands in for the saved tensors (×64 floats per input value per four modules)."""
    from ..models import create_model

    dims = spec.model.spatial_dims or 2
    model = create_model(spec.model.name, spatial_dims=dims, in_channels=3, num_classes=10)
    params = sum(p.numel() for p in model.parameters())
    side = spec.data.image_size or 28
    shape = (spec.train.batch_size, 3) + (side,) * dims
    try:
        acts = 2 * _saved_bytes(model, shape)
    except Exception:  # an operation without a meta kernel: the old bound
        acts = math.prod(shape) * 4 * 64 * max(1, len(list(model.modules())) // 4)
    return params * 4 * 5 + acts


def resolve_cohort(value: str | int | None, *, device: str | None, executor: str,
                   specs: list[RunSpec], task_gpus: float | None = None, sharing: int = 1) -> int:
    """The largest cohort to form (``1``: none).

    ``auto`` on a local GPU: 60 % of its free memory, split between the ``sharing`` workers that
    train on it at once (``--runs-per-device``), over the largest member need of the study.

    On Ray (``executor="ray"``, resolved by the driver once the cluster is known) ``auto`` forms
    cohorts of up to :data:`RAY_AUTO` where each task gets a GPU (``task_gpus > 0``), since the
    driver cannot see the workers' free memory; a size ``N`` is taken as given.
    """
    v = parse_cohort(value)
    if v == "off":
        return 1
    if isinstance(v, int):
        return v
    cpu = device is not None and device.startswith("cpu")
    if executor != "local":
        return RAY_AUTO if task_gpus and not cpu else 1
    import torch

    if cpu or not torch.cuda.is_available():
        return 1
    try:
        free, _ = torch.cuda.mem_get_info()
        shapes = {(s.model.name, s.model.spatial_dims, s.data.image_size, s.train.batch_size): s
                  for s in specs}  # each architecture once; the largest need sets the size
        need = max((_member_bytes(s) for s in shapes.values()), default=1)
    except Exception:  # no estimate: a moderate cohort
        return 8
    return max(1, min(AUTO_MAX, int(free * 0.6 / max(1, sharing) // max(need, 1))))


def group_cohorts(tasks: list[Any], size: int, *, auto: bool = False) -> list[Any]:
    """Replace runs that can fuse by :class:`CohortTask`\\ s of at most ``size`` members; the
    rest stay as they are, in order (a cohort takes the place of its first member). ``auto``:
    the size came from ``--cohort auto``, so a cohort that lands off CUDA runs its members alone
    (:func:`~transfuse.study.task.execute_any`)."""
    if size <= 1:
        return tasks
    from ..run_cohort import cohort_key

    out: list[Any] = []
    open_: dict[str, list[RunTask]] = {}
    slots: dict[str, int] = {}
    for t in tasks:
        key = cohort_key(spec_from_dict(t.spec)) if isinstance(t, RunTask) else None
        if key is None:
            out.append(t)
            continue
        if key not in open_ or len(open_[key]) >= size:
            open_[key] = []
            slots[key] = len(out)
            out.append(open_[key])
        open_[key].append(t)
    result = []
    for item in out:
        if isinstance(item, list):
            if len(item) == 1:
                result.append(item[0])
            else:
                t0 = item[0]
                result.append(CohortTask(tuple(t.spec for t in item), t0.workspace, t0.device,
                                         t0.threads, t0.tensorboard, auto=auto))
        else:
            result.append(item)
    return result

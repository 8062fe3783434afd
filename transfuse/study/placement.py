"""Where a study's runs execute: one GPU (or a share of one) per run, locally or on Ray.

Local executor (``study run --devices auto|cpu|0,1,3 --runs-per-device K``): each worker process
is started with ``CUDA_VISIBLE_DEVICES`` set to its one GPU before it imports torch, so inside the
worker that GPU is ``cuda:0`` and no two workers share a device unless ``K > 1`` asks for it.
``auto`` means every GPU this process can see, else the CPU; ``cpu`` hides the GPUs from the
workers. Device numbers are the ones this process sees: under ``CUDA_VISIBLE_DEVICES=4,5,6,7``,
``--devices 0,1`` are the physical GPUs 4 and 5 — the worker is given the physical id.

Ray executor (``--gpus-per-run G``, fractions allowed): every run task requests ``G`` GPUs and
``--cpus-per-run`` CPUs; Ray reserves them and sets the task's ``CUDA_VISIBLE_DEVICES``, and the
run uses ``cpus_per_run`` threads. Without ``--gpus-per-run`` a task asks for one GPU when the
cluster has any (and ``--devices`` is not ``cpu``), else none.

Every run records ``cuda_visible_devices`` and, on CUDA, its ``physical_gpu`` in the stored
environment (``transfuse runs show ID --json``). Nothing here imports torch until GPUs are
counted, and counting does not create a CUDA context.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ..errors import ConfigError

__all__ = ["Placement", "visible_gpus", "local_slots", "ray_resources"]


@dataclass(frozen=True)
class Placement:
    """How runs are put on devices.

    Attributes:
        devices: ``auto`` (every visible GPU, else CPU), ``cpu``, or GPU numbers ``"0,1,3"`` as
            this process sees them.
        runs_per_device: local: concurrent runs per GPU.
        gpus_per_run: Ray: GPUs each run task requests (``None``: 1 where the cluster has GPUs).
        cpus_per_run: Ray: CPUs each run task requests, and the torch threads it uses.
    """

    devices: str = "auto"
    runs_per_device: int = 1
    gpus_per_run: float | None = None
    cpus_per_run: float = 1.0

    def __post_init__(self) -> None:
        if self.runs_per_device < 1:
            raise ConfigError(f"--runs-per-device {self.runs_per_device} must be >= 1")
        if self.gpus_per_run is not None and self.gpus_per_run < 0:
            raise ConfigError(f"--gpus-per-run {self.gpus_per_run:g} must be >= 0")
        if not self.cpus_per_run > 0:
            raise ConfigError(f"--cpus-per-run {self.cpus_per_run:g} must be > 0")
        if self.devices not in ("auto", "cpu"):
            parse_indices(self.devices)


def parse_indices(devices: str) -> list[int]:
    """``"0,1,3"`` → ``[0, 1, 3]``.

    Raises:
        ConfigError: ``"--devices 'gpu0': give auto, cpu or GPU numbers such as 0,1,3"``.
    """
    try:
        out = [int(x) for x in devices.split(",")]
    except ValueError:
        out = []
    if not out or min(out) < 0 or len(set(out)) != len(out):
        raise ConfigError(f"--devices {devices!r}: give auto, cpu or distinct GPU numbers such as "
                          "0,1,3")
    return out


def _cuda_count() -> int:
    import torch

    return torch.cuda.device_count()  # NVML/driver query; no CUDA context is created


def visible_gpus() -> list[str]:
    """Physical ids of the GPUs this process can see (``CUDA_VISIBLE_DEVICES`` entries, or
    ``0 … n-1`` when it is unset); empty without CUDA."""
    n = _cuda_count()
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is None:
        return [str(i) for i in range(n)]
    return [x.strip() for x in env.split(",") if x.strip()][:n]


def local_slots(placement: Placement, *, workers: int | None) -> tuple[int, list[str | None]]:
    """Local worker count and the ``CUDA_VISIBLE_DEVICES`` each worker starts with.

    ``None`` leaves a worker's environment as it is (CPU, or one explicit ``--device``).
    GPU workers are dealt round-robin over the GPUs: ``workers`` defaults to
    ``GPUs × runs_per_device``.

    Raises:
        ConfigError: a GPU number this process cannot see, or GPUs asked for where none is.
    """
    if placement.devices == "cpu":
        n = workers or 1
        return n, [""] * n  # hidden: a CPU study stays on the CPU on a GPU machine
    gpus = visible_gpus()
    if placement.devices == "auto":
        chosen = gpus
    else:
        idx = parse_indices(placement.devices)
        if not gpus:
            raise ConfigError(f"--devices {placement.devices}: no GPU is visible here; use "
                              "--devices cpu (or auto)")
        bad = [i for i in idx if i >= len(gpus)]
        if bad:
            raise ConfigError(f"--devices {placement.devices}: GPU {bad[0]} is not visible here "
                              f"(this process sees {len(gpus)}: 0-{len(gpus) - 1})")
        chosen = [gpus[i] for i in idx]
    if not chosen:
        n = workers or 1
        return n, [None] * n
    n = workers or len(chosen) * placement.runs_per_device
    return n, [chosen[i % len(chosen)] for i in range(n)]


def ray_resources(placement: Placement, cluster_gpus: float) -> dict[str, float]:
    """``num_cpus``/``num_gpus`` of one run task on a cluster with ``cluster_gpus`` GPUs."""
    gpus = placement.gpus_per_run
    if gpus is None:
        gpus = 1.0 if cluster_gpus > 0 and placement.devices != "cpu" else 0.0
    if gpus > cluster_gpus:
        raise ConfigError(f"--gpus-per-run {gpus:g}: the Ray cluster has {cluster_gpus:g} GPUs, so "
                          "no run could ever start; lower it or add GPU nodes")
    return {"num_cpus": placement.cpus_per_run, "num_gpus": gpus}

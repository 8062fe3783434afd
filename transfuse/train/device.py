"""Device, seeding, mixed precision and DDP set-up: the small helpers the loop needs."""

from __future__ import annotations

import contextlib
import os
import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

__all__ = ["seed_everything", "resolve_device", "autocast", "DistInfo", "init_distributed"]


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(device: str | None = None) -> torch.device:
    """``None``/``"auto"`` → CUDA if available (this process's ``LOCAL_RANK``), else CPU."""
    if device in (None, "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        return torch.device("cpu")
    return torch.device(device)


def autocast(device: torch.device, enabled: bool, *, cache: bool = True) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA when ``enabled`` (no loss scaling needed); a no-op on CPU.
    ``cache=False`` inside a CUDA graph capture (PyTorch asks for it there)."""
    if enabled and device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype, cache_enabled=cache)
    return contextlib.nullcontext()


@dataclass(frozen=True)
class DistInfo:
    """This process's place in a ``torchrun`` job (``world_size == 1`` when not distributed)."""

    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device) -> DistInfo:
    """Join the process group when launched by ``torchrun`` (gloo on CPU, NCCL on CUDA)."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world <= 1:
        return DistInfo()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return DistInfo(dist.get_rank(), dist.get_world_size())

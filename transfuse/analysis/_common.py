"""Shared pieces of the similarity measures: input checks and the similarity registry.

Every measure takes ``(n_samples, n_features)`` tensors (or arrays), computes in float64 and checks
its inputs *before* any arithmetic, so a bad shape or too few samples is a one-line
:class:`~transfuse.errors.DataError` naming the shapes and the fix — never a silent NaN.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .._registry import Registry
from ..errors import DataError

__all__ = ["SIMILARITIES", "register_similarity", "list_similarities", "as_matrix", "check_pair",
           "check_variance", "raise_not_finite"]

SimilarityFn = Callable[[Tensor, Tensor], float]
SIMILARITIES: Registry[SimilarityFn] = Registry("similarity measure",
                                               list_command="transfuse analyze --help")


def register_similarity(name: str, **meta: Any) -> Callable[[SimilarityFn], SimilarityFn]:
    """Register a scalar measure ``fn(x, y) -> float`` (1 = identical representations)."""
    return SIMILARITIES.register(name, **meta)


def list_similarities(pattern: str = "*") -> list[str]:
    """Registered similarity measures matching the glob ``pattern``."""
    return SIMILARITIES.list(pattern)


def as_matrix(x: Tensor | np.ndarray, *, name: str = "x", check_finite: bool = True) -> Tensor:
    """``x`` as a float64 CPU-or-device tensor of shape ``(n_samples, n_features)``.

    ``check_finite=False`` leaves the NaN/inf check to the caller (e.g. on a Gram matrix, where
    non-finite values propagate, at a fraction of the cost).

    Raises:
        DataError: not 2D, empty, or not finite.
    """
    t = torch.as_tensor(x)
    if t.ndim != 2:
        raise DataError(f"{name} has shape {tuple(t.shape)} but similarity measures take "
                        "(n_samples, n_features); reshape conv maps with "
                        "transfuse.analysis.reshape_activations(a, policy='pool'|'positions')")
    if t.shape[0] == 0 or t.shape[1] == 0:
        raise DataError(f"{name} has shape {tuple(t.shape)}; it needs at least one sample and one feature")
    t = t.to(torch.float64)
    if check_finite and not bool(torch.isfinite(t).all()):
        raise_not_finite(name)
    return t


def raise_not_finite(name: str) -> None:
    raise DataError(f"{name} contains NaN or infinite values; check the activations it came from")


def check_pair(x: Tensor | np.ndarray, y: Tensor | np.ndarray, *, min_samples: int = 2,
               what: str = "this measure") -> tuple[Tensor, Tensor]:
    """Validate a pair: both 2D, the same number of samples, at least ``min_samples`` of them."""
    x, y = as_matrix(x, name="x"), as_matrix(y, name="y")
    if x.shape[0] != y.shape[0]:
        raise DataError(f"x has {x.shape[0]} samples but y has {y.shape[0]}; rows must be the same "
                        "datapoints in both representations")
    if x.shape[0] < min_samples:
        raise DataError(f"{what} needs at least {min_samples} samples but got {x.shape[0]} "
                        f"(x {tuple(x.shape)}, y {tuple(y.shape)}); pass more datapoints")
    if y.device != x.device:
        y = y.to(x.device)
    return x, y


def check_variance(x: Tensor, *, name: str) -> None:
    """Raise when every sample of ``x`` is identical (centred ``x`` is zero)."""
    if not bool((x != x[:1]).any()):
        raise DataError(f"{name} has zero variance (all {x.shape[0]} samples identical); similarity "
                        "is undefined — check that the layer is not dead or the inputs constant")

"""Normalisation layers: 3D twins of timm's (``BatchNormAct3d``, ``LayerNorm3d``), and batch
normalisation that stays finite on a constant or nearly empty batch.

Why: in training mode BatchNorm divides by the batch's standard deviation. Its backward gain per
channel is ``γ / sqrt(σ²_batch + ε)``; on an ordinary batch the forward scale cancels it, but when
the batch carries no spread — a segmentation patch of air (constant), or a few voxels of tissue,
seen at a U-Net's bottom, where the map is 1×1 in-plane and a pseudo-3D encoder repeats the same
value over every slice — ``σ²_batch`` is 0 or nearly so and each layer multiplies the gradient by
up to ``γ / sqrt(ε) ≈ 316``. EfficientNet-Lite0 has 15 BatchNorms in a row at stride 32: one
constant batch of two 32³ patches gives a gradient norm of ~1e27 (then inf, then NaN weights).

The fix is at the statistic, not the gradient: a channel whose batch variance is below
:data:`REL_VAR` × its running variance is *degenerate* for this batch (its batch statistics say
nothing about the data), so it is normalised with its running statistics — as in evaluation,
with a bounded gain. Other channels use their batch statistics as usual, and the running
statistics are updated as PyTorch does (a channel whose variance really is that much lower on new
data still adapts, at the usual momentum). When no channel is degenerate the layer runs
PyTorch's (timm's) own forward. State-dict keys are unchanged.

:func:`stabilise_batchnorm` switches every BatchNorm (torch 2D/3D, timm ``BatchNormAct2d``,
transfuse ``BatchNormAct3d``) of a model to its stable twin in place.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["BatchNormAct3d", "LayerNorm3d", "REL_VAR", "StableBatchNorm", "StableBatchNorm2d", "StableBatchNorm3d",
           "StableBatchNormAct2d", "StableBatchNormAct3d", "STABLE_3D", "stabilise_batchnorm",
           "degenerate_channels"]

class BatchNormAct3d(nn.BatchNorm3d):
    """3D twin of timm's ``BatchNormAct2d``: BatchNorm3d → ``drop`` → ``act`` (same keys)."""

    def __init__(self, num_features: int, *, drop: nn.Module, act: nn.Module, **kw: Any) -> None:
        super().__init__(num_features, **kw)
        self.drop = drop
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.drop(super().forward(x)))


class LayerNorm3d(nn.LayerNorm):
    """Layer norm over the channels of ``(N, C, D, H, W)`` (3D twin of timm's ``LayerNorm2d``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 4, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 4, 1, 2, 3)


#: A channel is degenerate when its batch variance is below this fraction of its running variance
#: (batch std < 10 % of the running std). Measured on ``unet_efficientnet_lite0`` 3D, batch 2,
#: 32³ patches of a head MRI: gradient norm of an ordinary / nearly empty / constant batch is
#: 6 / 1e8 / 2e27 with plain BatchNorm, 5 / 1e3 / 3e2 at 1e-4, 3 / 6 / 6 at 1e-2 (random init;
#: ImageNet init: 4 / 1e5 / NaN → 3 / 3 / 3).
REL_VAR = 1e-2


def degenerate_channels(x: torch.Tensor, running_var: torch.Tensor, *,
                        rel_var: float = REL_VAR) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Batch statistics of ``x`` and which channels are degenerate.

    Args:
        x: ``(N, C, *spatial)``.
        running_var: ``(C,)``.
        rel_var: see :data:`REL_VAR`.

    Returns:
        ``(mean, var, bad)``: ``(C,)`` batch mean and biased variance (differentiable), and a
        ``(C,)`` bool mask, true where ``var < rel_var × running_var``.
    """
    dims = [0, *range(2, x.ndim)]
    var, mean = torch.var_mean(x, dim=dims, unbiased=False)
    return mean, var, var.detach() < rel_var * running_var


class StableBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Base of the stable twins: training-mode forward with the degenerate-channel fallback.

    The *Act* twins carry timm's ``drop`` and ``act`` children and apply them after the norm.
    """

    rel_var: float = REL_VAR

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, *spatial)`` → same shape."""
        y = self._normalise(x)
        if hasattr(self, "act"):  # BatchNormAct: BatchNorm → drop → act, as timm's own forward
            y = self.act(self.drop(y))
        return y

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        plain = nn.modules.batchnorm._BatchNorm.forward
        if not (self.training and self.track_running_stats and self.running_var is not None):
            return plain(self, x)
        mean, var, bad = degenerate_channels(x, self.running_var, rel_var=self.rel_var)
        if not bool(bad.any()):  # the common case: one extra reduction, then the fused kernel
            return plain(self, x)
        self._check_input_dim(x)
        with torch.no_grad():  # the running statistics are updated as PyTorch does
            self.num_batches_tracked.add_(1)
            m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
            n = x.numel() / x.shape[1]
            old_mean, old_var = self.running_mean.clone(), self.running_var.clone()
            self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
            self.running_var.mul_(1 - m).add_(var.detach() * (n / max(n - 1, 1)), alpha=m)
        # Degenerate channels: the running statistics as they were before this batch.
        mean, var = torch.where(bad, old_mean, mean), torch.where(bad, old_var, var)
        shape = (1, -1) + (1,) * (x.ndim - 2)
        y = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y


class StableBatchNorm2d(StableBatchNorm, nn.BatchNorm2d):
    """``nn.BatchNorm2d`` with the degenerate-channel fallback (module doc)."""


class StableBatchNorm3d(StableBatchNorm, nn.BatchNorm3d):
    """``nn.BatchNorm3d`` with the degenerate-channel fallback (module doc)."""


class StableBatchNormAct2d(StableBatchNorm, nn.BatchNorm2d):
    """timm's ``BatchNormAct2d`` (BatchNorm2d → ``drop`` → ``act``, same keys) with the fallback."""

    def __init__(self, num_features: int, *, drop: nn.Module, act: nn.Module, **kw: Any) -> None:
        super().__init__(num_features, **kw)
        self.drop = drop
        self.act = act


class StableBatchNormAct3d(StableBatchNorm, BatchNormAct3d):
    """transfuse's ``BatchNormAct3d`` with the degenerate-channel fallback."""


#: stable 2D twin → its 3D twin (what :func:`~transfuse.models.inflate_model` makes of it).
STABLE_3D: dict[type, type] = {StableBatchNorm2d: StableBatchNorm3d,
                               StableBatchNormAct2d: StableBatchNormAct3d}
_STABLE: dict[type, type] = {nn.BatchNorm2d: StableBatchNorm2d, nn.BatchNorm3d: StableBatchNorm3d,
                             BatchNormAct3d: StableBatchNormAct3d}


def _stable_type(m: nn.Module) -> type | None:
    t = type(m)
    if t in _STABLE:
        return _STABLE[t]
    # timm's BatchNormAct2d, matched by name: importing timm here would cost every import.
    if t.__name__ == "BatchNormAct2d" and t.__module__.startswith("timm.") and hasattr(m, "act"):
        return StableBatchNormAct2d
    return None


def stabilise_batchnorm(model: nn.Module) -> int:
    """Switch every BatchNorm of ``model`` to its stable twin, in place (same tensors and keys).

    Covers ``nn.BatchNorm2d``/``3d``, timm's ``BatchNormAct2d`` and :class:`BatchNormAct3d`
    (subclasses of them are left alone: their forward may differ).

    Returns:
        The number of modules switched.
    """
    n = 0
    for m in model.modules():
        cls = _stable_type(m)
        if cls is not None:
            m.__class__ = cls
            n += 1
    return n

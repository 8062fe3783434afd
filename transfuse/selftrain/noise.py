"""The student's noise and training set: strong augmentation, dropout, stochastic depth.

Noisy Student (Xie et al. 2020) noises the *student* only — the teacher labels clean images in
eval mode (see :func:`transfuse.selftrain.chain.teacher_logits`):

- **input noise**, per item: RandAugment (torchvision ``v2.RandAugment``: ``ops`` random ops at
  ``magnitude`` of 0–30) on 2D images; for 3D volumes ``ops`` of MONAI's random flip, affine
  (rotation, scale, translation), Gaussian noise and contrast, their ranges scaled by
  ``magnitude / 30``. Images are un-normalised to 0–1 first and re-normalised after, so the ops
  see the pixel range they expect.
- **dropout** before the classifier (the models' ``drop_rate``);
- **stochastic depth** on residual blocks where the model has them: timm models with
  ``drop_path`` modules (rate growing linearly with depth to ``drop_path``). CBR nets have no
  residual blocks and torchvision ResNets no drop-path hook; for them none is applied, and the
  run records that (``noise_applied``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from ..errors import ConfigError
from ..spec.fields import check_fields, spec_field

__all__ = ["NoiseSpec", "make_augment", "apply_stochastic_depth", "ChainDataset"]

Augment = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class NoiseSpec:
    """The student's noise.

    Attributes:
        augment: apply RandAugment (2D) / MONAI random transforms (3D) to every training item.
        ops: transforms drawn per item.
        magnitude: strength, 0–30 (RandAugment's scale; Noisy Student used 27 for big nets and
            5–15 for small ones).
        dropout: dropout rate before the classifier.
        drop_path: stochastic-depth rate of the last residual block (where supported).
    """

    augment: bool = True
    ops: int = 2
    magnitude: int = 9
    dropout: float = spec_field(0.5, ge=0, lt=1)
    drop_path: float = spec_field(0.2, ge=0, lt=1)

    def __post_init__(self) -> None:
        if isinstance(self.ops, bool) or not isinstance(self.ops, int) or self.ops < 1:
            raise ConfigError(f"student.noise.ops={self.ops!r} must be an integer >= 1")
        if isinstance(self.magnitude, bool) or not isinstance(self.magnitude, int) \
                or not 0 <= self.magnitude <= 30:
            raise ConfigError(f"student.noise.magnitude={self.magnitude!r} must be an integer in 0..30")
        check_fields(self, prefix="student.noise.")  # dropout, drop_path: their metadata

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Renormalised:
    """Run ``op`` on 0–1 pixels of a normalised tensor and normalise the result again."""

    def __init__(self, op: Callable[[torch.Tensor], torch.Tensor], mean: Sequence[float],
                 std: Sequence[float], spatial_dims: int, uint8: bool) -> None:
        shape = (-1,) + (1,) * spatial_dims
        self.op, self.uint8 = op, uint8
        self.mean = torch.tensor(mean, dtype=torch.float32).view(shape)
        self.std = torch.tensor(std, dtype=torch.float32).view(shape)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        px = (x * self.std + self.mean).clamp(0, 1)
        if self.uint8:  # RandAugment's colour ops are defined on 0-255 integers
            out = self.op((px * 255).round().to(torch.uint8)).float() / 255
        else:
            out = torch.as_tensor(self.op(px)).float().clamp(0, 1)
            out = out.as_subclass(torch.Tensor)  # MONAI returns a MetaTensor
        return (out - self.mean) / self.std


class _Monai3D:
    """``ops`` of MONAI's 3D random transforms per call; re-seeded per data-loader worker."""

    def __init__(self, ops: int, magnitude: int, seed: int) -> None:
        from monai.transforms import (RandAdjustContrast, RandAffine, RandFlip,
                                      RandGaussianNoise, SomeOf)

        m = magnitude / 30
        self.seed, self._worker = seed, None
        self.t = SomeOf([
            RandFlip(prob=1.0, spatial_axis=2),
            RandAffine(prob=1.0, rotate_range=(0.5 * m,) * 3, scale_range=(0.3 * m,) * 3,
                       translate_range=(3 * m,) * 3, padding_mode="zeros"),
            RandGaussianNoise(prob=1.0, std=0.1 * m),
            RandAdjustContrast(prob=1.0, gamma=(max(0.1, 1 - m), 1 + m)),
        ], num_transforms=ops)
        self.t.set_random_state(seed)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        info = torch.utils.data.get_worker_info()
        wid = info.id if info is not None else None
        if wid != self._worker:  # each worker its own stream, reproducible from the seed
            self.t.set_random_state(self.seed + 1000 * (wid + 1))
            self._worker = wid
        return self.t(x)


def make_augment(*, spatial_dims: int, mean: Sequence[float], std: Sequence[float], ops: int,
                 magnitude: int, seed: int = 0) -> Augment:
    """Per-item strong augmentation on normalised tensors ``(C, *spatial)`` → same shape.

    Args:
        spatial_dims: 2 (RandAugment) or 3 (MONAI random transforms).
        mean: per-channel normalisation mean the data was normalised with (0–1 pixel scale).
        std: per-channel normalisation std.
        ops: transforms per item.
        magnitude: strength 0–30.
        seed: seeds the 3D transforms (2D RandAugment draws from torch's seeded global RNG).
    """
    if spatial_dims == 2:
        from torchvision.transforms import v2

        op = v2.RandAugment(num_ops=ops, magnitude=magnitude)
        return _Renormalised(op, mean, std, 2, uint8=True)
    return _Renormalised(_Monai3D(ops, magnitude, seed), mean, std, 3, uint8=False)


_DROP_PATH = re.compile(r"drop_path\d*$")


def apply_stochastic_depth(model: nn.Module, rate: float) -> int:
    """Turn on stochastic depth in a model's residual blocks; returns how many blocks got it.

    Every module attribute named ``drop_path`` / ``drop_pathN`` (timm's convention) is replaced by
    ``timm.layers.DropPath(rate × i / n)`` for the ``i``-th of ``n`` blocks (1-based), so the last
    block drops with probability ``rate``. DropPath has no parameters: checkpoints are unchanged,
    and it is a no-op in eval mode. Returns 0 (and changes nothing) for models without such
    modules or for ``rate == 0``.
    """
    if rate <= 0:
        return 0
    sites = [(parent, name) for _, parent in model.named_modules()
             for name, _ in parent.named_children() if _DROP_PATH.fullmatch(name)]
    if not sites:
        return 0
    from timm.layers import DropPath

    blocks: list[int] = []
    for parent, _ in sites:
        if id(parent) not in blocks:
            blocks.append(id(parent))
    for parent, name in sites:
        i = blocks.index(id(parent)) + 1
        setattr(parent, name, DropPath(rate * i / len(blocks)).train(parent.training))
    return len(blocks)


class ChainDataset(Dataset):
    """Images of ``base`` at ``indices`` with given targets and masks, optionally augmented.

    The base dataset's own target is dropped here: pseudo-labelled examples carry only the
    teacher's label.

    Args:
        base: a split yielding ``(image, target, mask)``.
        indices: ``(M,)`` positions in ``base`` (repeats allowed: duplicates).
        targets: ``(M,)`` int64 or ``(M, K)`` float32.
        masks: ``(M,)`` or ``(M, K)`` float32.
        augment: per-item noise, or ``None``.
    """

    def __init__(self, base: Dataset, indices: np.ndarray, targets: torch.Tensor,
                 masks: torch.Tensor, augment: Augment | None = None) -> None:
        if not len(indices) == len(targets) == len(masks):
            raise ValueError(f"{len(indices)} indices, {len(targets)} targets, {len(masks)} masks")
        self.base, self.indices = base, np.asarray(indices, dtype=np.int64)
        self.targets, self.masks, self.augment = targets, masks, augment

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.base[int(self.indices[i])][0]
        if self.augment is not None:
            x = self.augment(x)
        return x, self.targets[i], self.masks[i]

"""Training augmentation (``train.augment``): seeded, per example, never at evaluation.

``none`` (default) leaves the batches as they are. ``basic`` and ``strong`` are small, standard
recipes for medical images:

========================  ==========================================  ============================
                          basic                                       strong
========================  ==========================================  ============================
2D classification         horizontal flip; affine ±10°, ±5 % shift,   horizontal flip; affine ±15°,
(torchvision v2)          ×0.95–1.05 scale; RGB: colour jitter 0.1    ±10 % shift, ×0.85–1.15
                                                                      scale; RGB: colour jitter 0.3
                                                                      (hue 0.05), grayscale:
                                                                      intensity ×0.8–1.2, ±0.2
3D, and segmentation      flip on each axis (p 0.5); affine ±10°,     flip on each axis; affine
in 2D or 3D (MONAI)       ×0.95–1.05 scale; intensity ×0.9–1.1        ±15°, ×0.85–1.15; intensity
                                                                      ×0.8–1.2, shift ±0.2;
                                                                      Gaussian noise σ 0.05 (p 0.3)
========================  ==========================================  ============================

Images arrive normalised (per-channel mean/std). torchvision's colour jitter clamps to [0, 1],
so RGB images are taken back to 0–1 with the data's own mean/std, jittered and normalised again;
MONAI's intensity transforms work in the normalised space directly. Segmentation labels follow
every spatial transform (nearest-neighbour), intensities touch the image only.

Randomness: each batch is augmented under its own seed, drawn from ``(seed, step, rank)``, inside
:func:`torch.random.fork_rng`, so the same run seed gives the same batches whatever else uses the
global generators (dropout, data-loader workers), and a run with ``augment: none`` draws exactly
the random numbers it drew before augmentation existed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from ..config import AUGMENTS
from ..errors import ConfigError

__all__ = ["AUGMENTS", "Augment", "make_augment"]

# (rotation degrees, shift fraction, scale range, colour strength, intensity scale, shift, noise)
_LEVELS: dict[str, dict[str, Any]] = {
    "basic": {"degrees": 10.0, "shift": 0.05, "scale": 0.05, "colour": 0.1, "iscale": 0.1,
              "ishift": 0.0, "noise": 0.0},
    "strong": {"degrees": 15.0, "shift": 0.10, "scale": 0.15, "colour": 0.3, "iscale": 0.2,
               "ishift": 0.2, "noise": 0.05},
}


class Augment:
    """Augments one training batch per call; deterministic in ``(seed, step, rank)``.

    Args:
        level: ``basic`` or ``strong``.
        spatial_dims: 2 or 3.
        channels: input channels (colour jitter is for 3-channel 2D images only).
        task: ``multiclass``, ``multilabel`` or ``segmentation`` (labels move with the image).
        norm_mean, norm_std: the data's normalisation, to undo around colour jitter.
    """

    def __init__(self, level: str, *, spatial_dims: int, channels: int, task: str,
                 norm_mean: tuple[float, ...] = (), norm_std: tuple[float, ...] = ()) -> None:
        if level not in _LEVELS:
            raise ConfigError(f"train.augment={level!r} is not valid; choose one of "
                              f"{', '.join(AUGMENTS)}")
        self.level, self.spatial_dims, self.task = level, spatial_dims, task
        p = _LEVELS[level]
        self._segmentation = task == "segmentation"
        if spatial_dims == 2 and not self._segmentation:
            self._engine = "torchvision"
            self._tv = _torchvision_pipeline(p, channels=channels)
            self._colour = _colour_jitter(p, channels=channels)
            c = channels
            self._mean = torch.tensor(norm_mean or (0.0,) * c, dtype=torch.float32).view(c, 1, 1)
            self._std = torch.tensor(norm_std or (1.0,) * c, dtype=torch.float32).view(c, 1, 1)
        else:
            self._engine = "monai"
            self._monai = _monai_pipeline(p, spatial_dims=spatial_dims,
                                          segmentation=self._segmentation)

    def describe(self) -> dict[str, Any]:
        """The recipe, for the run record: level, library and the transforms' names."""
        if self._engine == "torchvision":
            names = [type(t).__name__ for t in self._tv.transforms]
            names += [type(self._colour).__name__] if self._colour is not None else []
        else:
            names = [type(t).__name__ for t in self._monai.transforms]
        return {"level": self.level, "library": self._engine, "transforms": names}

    def seed_for(self, *, seed: int, step: int, rank: int = 0) -> int:
        """The batch's own seed (a 32-bit mix of the run seed, the step and the process rank)."""
        mixed = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(step), int(rank)])
        return int(mixed.generate_state(1)[0])

    def __call__(self, x: torch.Tensor, y: torch.Tensor, *, seed: int, step: int,
                 rank: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Augmented copies of one batch.

        Args:
            x: ``(N, C, *spatial)`` normalised images.
            y: targets ``(N,)``/``(N, K)`` (unchanged) or label maps ``(N, *spatial)``
                (segmentation: moved with the image).

        Returns:
            ``(x', y')`` with the shapes and dtypes of ``(x, y)``.
        """
        s = self.seed_for(seed=seed, step=step, rank=rank)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(s)
            if self._engine == "torchvision":
                return torch.stack([self._one_2d(xi) for xi in x]), y
            self._monai.set_random_state(seed=s)
            outs = [self._one_monai(xi, yi) for xi, yi in zip(x, y)]
        xs = torch.stack([o[0] for o in outs])
        ys = torch.stack([o[1] for o in outs]) if self._segmentation else y
        return xs, ys

    def _one_2d(self, xi: torch.Tensor) -> torch.Tensor:
        xi = self._tv(xi)
        if self._colour is not None:
            raw = (xi * self._std + self._mean).clamp(0, 1)
            xi = (self._colour(raw) - self._mean) / self._std
        return xi

    def _one_monai(self, xi: torch.Tensor, yi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        d = {"image": xi}
        if self._segmentation:
            d["label"] = yi.unsqueeze(0).float()
        out = self._monai(d)
        img = torch.as_tensor(out["image"]).as_subclass(torch.Tensor).to(xi.dtype)
        if not self._segmentation:
            return img, yi
        lab = torch.as_tensor(out["label"]).as_subclass(torch.Tensor)[0].round().to(yi.dtype)
        return img, lab


def _torchvision_pipeline(p: dict[str, Any], *, channels: int) -> Any:
    from torchvision.transforms import v2

    ts: list[Callable] = [
        v2.RandomHorizontalFlip(0.5),
        v2.RandomAffine(degrees=p["degrees"], translate=(p["shift"], p["shift"]),
                        scale=(1 - p["scale"], 1 + p["scale"]),
                        interpolation=v2.InterpolationMode.BILINEAR),
    ]
    if channels != 3 and p["ishift"]:  # grayscale, strong: intensity in the normalised space
        ts.append(RandGrayIntensity(p["iscale"], p["ishift"]))
    return v2.Compose(ts)


def _colour_jitter(p: dict[str, Any], *, channels: int) -> Any:
    if channels != 3:
        return None
    from torchvision.transforms import v2

    c = p["colour"]
    return v2.ColorJitter(brightness=c, contrast=c, saturation=c, hue=0.05 if c >= 0.3 else 0.0)


class RandGrayIntensity(torch.nn.Module):
    """``x × U(1 ± scale) + U(± shift)`` with torch's generator (v2 has no such transform for
    normalised single-channel tensors; its ColorJitter clamps to [0, 1])."""

    def __init__(self, scale: float, shift: float) -> None:
        super().__init__()
        self.scale, self.shift = scale, shift

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = 1 + (torch.rand(()) * 2 - 1) * self.scale
        b = (torch.rand(()) * 2 - 1) * self.shift
        return x * a + b


def _monai_pipeline(p: dict[str, Any], *, spatial_dims: int, segmentation: bool) -> Any:
    import math

    from monai.transforms import (Compose, RandAffined, RandFlipd, RandGaussianNoised,
                                  RandScaleIntensityd, RandShiftIntensityd)

    keys = ["image", "label"] if segmentation else ["image"]
    mode = ["bilinear", "nearest"] if segmentation else ["bilinear"]
    rad = math.radians(p["degrees"])
    rotate = (rad,) if spatial_dims == 2 else (rad, rad, rad)
    ts: list[Any] = [RandFlipd(keys=keys, prob=0.5, spatial_axis=a) for a in range(spatial_dims)]
    ts.append(RandAffined(keys=keys, prob=0.8, rotate_range=rotate,
                          scale_range=(p["scale"],) * spatial_dims, mode=mode,
                          padding_mode="border"))
    ts.append(RandScaleIntensityd(keys="image", factors=p["iscale"], prob=1.0))
    if p["ishift"]:
        ts.append(RandShiftIntensityd(keys="image", offsets=p["ishift"], prob=1.0))
    if p["noise"]:
        ts.append(RandGaussianNoised(keys="image", prob=0.3, std=p["noise"]))
    return Compose(ts)


def make_augment(level: str, *, spatial_dims: int, channels: int, task: str,
                 norm_mean: tuple[float, ...] = (), norm_std: tuple[float, ...] = ()
                 ) -> Augment | None:
    """The :class:`Augment` for ``train.augment``, or ``None`` for ``none``.

    Raises:
        ConfigError: an unknown level (``"train.augment='x' is not valid; choose one of ..."``).
    """
    if level == "none":
        return None
    return Augment(level, spatial_dims=spatial_dims, channels=channels, task=task,
                   norm_mean=norm_mean, norm_std=norm_std)

"""The views of an SSL pretraining: augmented pairs (SimCLR, BYOL) and corrupted images
(restoration), written with the field's transform libraries, seeded per step.

===============  ==============================================================================
2D simclr/byol   torchvision v2, per image, in the 0–1 pixel scale (the data's mean/std undone):
                 ``RandomResizedCrop`` (scale 0.3–1), horizontal flip, ``ColorJitter`` (p 0.8;
                 brightness/contrast 0.4, RGB also saturation 0.2 and hue 0.1), RGB
                 ``RandomGrayscale`` (p 0.2), ``GaussianBlur`` (kernel ≈ 10 % of the side,
                 σ 0.1–2). SimCLR: blur p 0.5 on both views; BYOL (its asymmetric recipe): blur
                 p 1.0 on the first view, p 0.1 and ``RandomSolarize`` p 0.2 on the second.
3D simclr/byol   MONAI: ``RandSpatialCrop`` (60–100 % of each side) resized back, flips on
                 every axis, ``RandAffine`` (p 0.5, ±15°, ×0.9–1.1), intensity scale and shift
                 (±0.25, p 0.8), ``RandGaussianSmooth`` (p 0.3), ``RandGaussianNoise`` (σ 0.1,
                 p 0.3), in the normalised space; the same recipe for both views.
restoration      MONAI, Models Genesis' four corruptions (Zhou et al. 2019) in its proportions,
(2D or 3D)       on the 0–1 scale: local pixel shuffling ``RandCoarseShuffle`` (p 0.5),
                 non-linear intensity ``RandHistogramShift`` (p 0.9), then with p 0.9 either
                 in-painting (p 0.2: ``RandCoarseDropout`` holes filled with U(0, 1)) or
                 out-painting (p 0.8: ``RandCoarseDropout(dropout_holes=False)``, everything
                 outside a few windows filled with noise). The target is the clean image.
===============  ==============================================================================

lightly's own view transforms (``SimCLRTransform``, ``BYOLView1Transform``...) are not used: they
round-trip every tensor through an 8-bit PIL image (``GaussianBlur``, ``RandomSolarization``)
and draw from NumPy's global generator; the recipes above follow theirs on tensors instead.

Randomness: each step's views come from one seed mixed from ``(seed, step)``, inside
:func:`torch.random.fork_rng` (torchvision) and ``set_random_state`` (MONAI), so a pretraining
is reproducible from its seed whatever else draws random numbers.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

__all__ = ["Views", "view_recipe"]


def _odd(n: float) -> int:
    k = max(3, int(round(n)))
    return k if k % 2 else k + 1


def _torchvision_view(*, size: tuple[int, ...], channels: int, blur: float,
                      solarize: float) -> Callable:
    from torchvision.transforms import v2

    rgb = channels == 3
    jitter = v2.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.2 if rgb else 0.0,
                            hue=0.1 if rgb else 0.0)
    ts: list[Any] = [
        v2.RandomResizedCrop(size=tuple(size), scale=(0.3, 1.0), antialias=True),
        v2.RandomHorizontalFlip(0.5),
        v2.RandomApply([jitter], p=0.8),
    ]
    if rgb:
        ts.append(v2.RandomGrayscale(0.2))
    if blur > 0:
        ts.append(v2.RandomApply([v2.GaussianBlur(_odd(0.1 * min(size)), sigma=(0.1, 2.0))], p=blur))
    if solarize > 0:
        ts.append(v2.RandomSolarize(threshold=0.5, p=solarize))
    return v2.Compose(ts)


def _monai_view(*, size: tuple[int, ...]) -> Any:
    from monai.transforms import (Compose, RandAffine, RandFlip, RandGaussianNoise,
                                  RandGaussianSmooth, RandScaleIntensity, RandShiftIntensity,
                                  RandSpatialCrop, Resize)

    dims = len(size)
    rad = math.radians(15)
    ts: list[Any] = [
        RandSpatialCrop(roi_size=tuple(max(1, int(0.6 * s)) for s in size), max_roi_size=size,
                        random_size=True),
        Resize(spatial_size=size, mode="trilinear" if dims == 3 else "bilinear"),
        *[RandFlip(prob=0.5, spatial_axis=a) for a in range(dims)],
        RandAffine(prob=0.5, rotate_range=(rad,) * (1 if dims == 2 else 3),
                   scale_range=(0.1,) * dims, padding_mode="border"),
        RandScaleIntensity(factors=0.25, prob=0.8),
        RandShiftIntensity(offsets=0.25, prob=0.8),
        RandGaussianSmooth(sigma_x=(0.5, 1.0), sigma_y=(0.5, 1.0), sigma_z=(0.5, 1.0), prob=0.3),
        RandGaussianNoise(prob=0.3, std=0.1),
    ]
    return Compose(ts)


def _genesis(*, size: tuple[int, ...]) -> Any:
    """Models Genesis' corruptions (its rates: local 0.5, non-linear 0.9, paint 0.9, of which
    out-painting 0.8), as MONAI transforms of one image ``(C, *size)`` on the 0–1 scale."""
    from monai.transforms import (Compose, Identity, OneOf, RandCoarseDropout, RandCoarseShuffle,
                                  RandHistogramShift)

    dims, side = len(size), min(size)
    small = max(1, side // 10)
    # enough small blocks to cover about half of the image (they may overlap)
    shuffle = RandCoarseShuffle(holes=max(1, int(0.5 / (0.15 ** dims))), spatial_size=small,
                                max_spatial_size=max(small, side // 5), prob=0.5)
    inpaint = RandCoarseDropout(holes=1, max_holes=5, spatial_size=max(1, side // 6),
                                max_spatial_size=max(1, side // 3), fill_value=(0.0, 1.0),
                                dropout_holes=True, prob=1.0)
    outpaint = RandCoarseDropout(holes=1, max_holes=5, spatial_size=max(1, 3 * side // 7),
                                 max_spatial_size=max(1, 4 * side // 7), fill_value=(0.0, 1.0),
                                 dropout_holes=False, prob=1.0)
    # painting with p 0.9, in-painting 20 % of those: OneOf with "no painting" as a third choice
    paint = OneOf([inpaint, outpaint, Identity()], weights=[0.9 * 0.2, 0.9 * 0.8, 0.1])
    return Compose([shuffle, RandHistogramShift(num_control_points=(5, 10), prob=0.9), paint])


def view_recipe(method: str, spatial_dims: int) -> str:
    """The library that makes ``method``'s views at ``spatial_dims`` (for the record)."""
    if method == "restoration":
        return "monai (Models Genesis corruptions)"
    return "torchvision v2" if spatial_dims == 2 else "monai"


class Views:
    """The views of one batch per call; deterministic in ``(seed, step)``.

    Args:
        method: ``simclr``, ``byol`` (two views) or ``restoration`` (one corrupted view).
        spatial_dims: 2 or 3.
        channels: image channels.
        size: spatial shape of the images (and of every view).
        norm_mean, norm_std: the data's normalisation (views are made on the 0–1 scale where
            the transforms need it, and normalised again).
    """

    def __init__(self, method: str, *, spatial_dims: int, channels: int, size: tuple[int, ...],
                 norm_mean: tuple[float, ...], norm_std: tuple[float, ...]) -> None:
        self.method, self.spatial_dims = method, spatial_dims
        shape = (channels,) + (1,) * spatial_dims
        self._mean = torch.tensor(norm_mean or (0.0,) * channels, dtype=torch.float32).view(shape)
        self._std = torch.tensor(norm_std or (1.0,) * channels, dtype=torch.float32).view(shape)
        self.library = view_recipe(method, spatial_dims)
        if method == "restoration":
            self._pipes = [_genesis(size=tuple(size))]
        elif spatial_dims == 2:
            blur, sol = ((1.0, 0.0), (0.1, 0.2)) if method == "byol" else ((0.5, 0.0), (0.5, 0.0))
            self._pipes = [_torchvision_view(size=tuple(size), channels=channels, blur=b, solarize=s)
                           for b, s in (blur, sol)]
        else:
            self._pipes = [_monai_view(size=tuple(size)), _monai_view(size=tuple(size))]

    def describe(self) -> dict[str, Any]:
        """The recipe for the record: library and each view's transforms."""
        names = [[type(t).__name__ for t in getattr(p, "transforms", [])] for p in self._pipes]
        return {"library": self.library, "views": names}

    @staticmethod
    def seed_for(*, seed: int, step: int) -> int:
        """The step's own 31-bit seed (a mix of the run seed and the step)."""
        return int(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(step)]).generate_state(1)[0]
                   >> 1)

    def _to01(self, x: torch.Tensor) -> torch.Tensor:
        return (x * self._std + self._mean).clamp(0, 1)

    def _norm(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self._mean) / self._std

    def __call__(self, x: torch.Tensor, *, seed: int, step: int) -> list[torch.Tensor]:
        """The views of a CPU batch ``(N, C, *size)`` of normalised images.

        Returns:
            Two ``(N, C, *size)`` views (simclr, byol) or one corrupted copy (restoration),
            normalised like ``x``.
        """
        s = self.seed_for(seed=seed, step=step)
        x = x.float()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(s)
            if self.method == "restoration":
                pipe = self._pipes[0].set_random_state(seed=s)
                raw = self._to01(x)
                return [self._norm(torch.stack([_plain(pipe(xi)) for xi in raw]))]
            if self.spatial_dims == 2:
                raw = self._to01(x)
                return [self._norm(torch.stack([pipe(xi) for xi in raw])) for pipe in self._pipes]
            out = []
            for k, pipe in enumerate(self._pipes):
                pipe.set_random_state(seed=(s + 7919 * k) % 2**31)
                out.append(torch.stack([_plain(pipe(xi)) for xi in x]))
            return out


def _plain(t: Any) -> torch.Tensor:
    """A MONAI output (``MetaTensor`` or array) as a plain float tensor."""
    return torch.as_tensor(t).as_subclass(torch.Tensor).float().contiguous()

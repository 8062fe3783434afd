"""Capturing stage activations with forward hooks, and turning conv maps into datapoints.

Similarity measures take ``(n_samples, n_features)``. A stage's output is ``(N, C)`` (the head),
``(N, T, C)`` (tokens) or a conv map ``(N, C, *spatial)`` with 2 or 3 spatial dims. The reshaping
policy is explicit (the google/svcca conv tutorial's two options):

- ``pool``: global average over space (or tokens) → ``(N, C)``; any two stages are comparable.
- ``positions``: spatial positions become datapoints, ``per_image`` of them per image chosen at
  random → ``(N · per_image, C)``. Positions are drawn from a generator seeded by ``seed`` and the
  map size only, so two stages (or two runs) with maps of the same size get the *same* positions
  and their rows line up (given the same images in the same batches); maps of different sizes
  cannot be compared (:func:`check_comparable`).

Only the reshaped rows are kept (float32), never the full maps.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..errors import ConfigError, DataError, ModelError
from ..models import get_stages, stage_module

__all__ = ["POLICIES", "reshape_activations", "position_index", "Activations", "capture_activations",
           "check_comparable"]

POLICIES = ("pool", "positions")


def _check_policy(policy: str) -> None:
    if policy not in POLICIES:
        raise ConfigError(f"policy={policy!r} is not valid; choose one of {', '.join(POLICIES)}")


def _channels_last(a: Tensor) -> Tensor:
    """``(N, C, *spatial)`` → ``(N, P, C)``; ``(N, T, C)`` tokens stay; ``(N, C)`` → ``(N, 1, C)``."""
    if a.ndim == 2:
        return a[:, None, :]
    if a.ndim == 3:
        return a
    if a.ndim in (4, 5):
        return a.flatten(2).mT
    raise DataError(f"activation of shape {tuple(a.shape)} is not (N, C), (N, T, C), (N, C, H, W) "
                    "or (N, C, D, H, W)")


def spatial_shape(a: Tensor) -> tuple[int, ...]:
    """Spatial size of one activation batch: ``(H, W)``, ``(D, H, W)``, ``(T,)`` or ``()``."""
    if a.ndim == 2:
        return ()
    if a.ndim == 3:
        return (int(a.shape[1]),)
    return tuple(int(v) for v in a.shape[2:])


def position_index(n_images: int, n_positions: int, *, per_image: int, generator: torch.Generator) -> Tensor:
    """``(n_images, k)`` flat position indices, ``k = min(per_image, n_positions)``, no repeats per image."""
    k = min(per_image, n_positions)
    if k == n_positions:
        return torch.arange(n_positions).expand(n_images, -1)
    return torch.rand(n_images, n_positions, generator=generator).argsort(1)[:, :k]


def reshape_activations(a: Tensor, *, policy: str = "pool", per_image: int = 16,
                        generator: torch.Generator | None = None) -> Tensor:
    """Turn one batch of stage outputs into datapoint rows.

    Args:
        a: ``(N, C)``, ``(N, T, C)``, ``(N, C, H, W)`` or ``(N, C, D, H, W)``.
        policy: ``pool`` → ``(N, C)``; ``positions`` → ``(N · k, C)`` with ``k = min(per_image, P)``
            random positions per image (rows image-major). ``(N, C)`` inputs are returned as is.
        generator: draws the positions (pass the same seeded generator for maps that must align).
    """
    _check_policy(policy)
    if a.ndim == 2:
        return a
    x = _channels_last(a)
    if policy == "pool":
        return x.mean(1)
    if per_image < 1:
        raise ConfigError(f"per_image={per_image} must be >= 1")
    idx = position_index(x.shape[0], x.shape[1], per_image=per_image,
                         generator=generator or torch.Generator().manual_seed(0)).to(x.device)
    return torch.gather(x, 1, idx[:, :, None].expand(-1, -1, x.shape[2])).reshape(-1, x.shape[2])


@dataclass(frozen=True, eq=False)
class Activations:
    """Reshaped activations of some stages over the same images.

    Attributes:
        values: stage → ``(n_points, C)`` float32 rows (image-major).
        spatial: stage → spatial size of the stage's map (``()`` for vectors).
        n_images: images passed through the model.
        policy: ``pool`` or ``positions``; per_image: positions per image (``positions``).
    """

    values: dict[str, Tensor]
    spatial: dict[str, tuple[int, ...]]
    n_images: int
    policy: str
    per_image: int

    def comparable(self, a: str, other: Activations, b: str) -> bool:
        """Do stage ``a`` here and stage ``b`` of ``other`` have the same datapoints (rows)?"""
        if self.policy != other.policy or self.n_images != other.n_images:
            return False
        return self.policy == "pool" or self.spatial[a] == other.spatial[b]


def check_comparable(x: Activations, a: str, y: Activations, b: str) -> None:
    """Raise unless stage ``a`` of ``x`` and ``b`` of ``y`` can be compared row by row."""
    if x.policy != y.policy or x.n_images != y.n_images:
        raise DataError(f"activations differ in policy/images ({x.policy}, {x.n_images} vs "
                        f"{y.policy}, {y.n_images}); capture both with the same options")
    if x.policy == "positions" and x.spatial[a] != y.spatial[b]:
        fmt = lambda s: "×".join(map(str, s)) or "a vector"  # noqa: E731
        raise DataError(f"policy 'positions' needs maps of the same size, but {a!r} is {fmt(x.spatial[a])} "
                        f"and {b!r} is {fmt(y.spatial[b])}; use policy='pool' for this pair")


def _images(batch: object) -> Tensor:
    if isinstance(batch, Tensor):
        return batch
    if isinstance(batch, (list, tuple)) and batch and isinstance(batch[0], Tensor):
        return batch[0]  # (image, target, mask) from transfuse datasets
    raise DataError(f"data loader yields {type(batch).__name__}; expected images or (images, ...) tuples")


@torch.no_grad()
def capture_activations(model: nn.Module, batches: Iterable[object], *, stages: Sequence[str] | None = None,
                        policy: str = "pool", per_image: int = 16, seed: int = 0,
                        n_images: int | None = None, min_images: int = 2,
                        device: str | torch.device | None = None) -> Activations:
    """Run ``model`` (eval mode) over ``batches`` and keep each stage's reshaped output.

    Args:
        model: built by :func:`transfuse.models.create_model` (stages addressed by name).
        batches: a data loader (not shuffled) yielding images ``(B, C, *spatial)`` or
            ``(images, ...)`` tuples.
        stages: stage names (default: all, ``stem`` … ``head``).
        policy, per_image: see :func:`reshape_activations`; seed: seeds position sampling.
        n_images: the number of images the loader will yield, when known (``len(dataset)``),
            checked against ``min_images`` *before* any forward pass.
        min_images: fewest images accepted (raise rather than return degenerate statistics).

    Raises:
        ModelError: unknown stage; DataError: too few images, non-finite activations.
    """
    _check_policy(policy)
    names = [s.name for s in get_stages(model)] if stages is None else list(stages)
    if n_images is not None and n_images < min_images:
        raise DataError(f"only {n_images} images to capture activations from; the analysis needs at "
                        f"least {min_images}")
    rows: dict[str, list[Tensor]] = {n: [] for n in names}
    spatial: dict[str, tuple[int, ...]] = {}
    gens: dict[str, torch.Generator] = {}
    current: dict[str, Tensor] = {}
    hooks = []
    for n in names:
        def hook(m: nn.Module, i: object, o: object, n: str = n) -> None:
            if not isinstance(o, Tensor):
                raise ModelError(f"stage {n!r} of {type(model).__name__} returns {type(o).__name__}, not a tensor")
            current[n] = o.detach()
        hooks.append(stage_module(model, n).register_forward_hook(hook))
    was_training = model.training
    model.eval()
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    seen = 0
    try:
        for batch in batches:
            x = _images(batch).to(dev)
            current.clear()
            model(x)
            for n in names:
                a = current[n].float()
                if not bool(torch.isfinite(a).all()):
                    raise DataError(f"activations of stage {n!r} are not finite (NaN/inf) for images "
                                    f"{seen}–{seen + len(x) - 1}; check the checkpoint and inputs")
                shp = spatial.setdefault(n, spatial_shape(a))
                # One generator per stage, seeded by (seed, map size): stages and runs whose maps have
                # the same size draw the same positions batch by batch, so their rows line up.
                g = gens.setdefault(n, torch.Generator().manual_seed(seed * 1_000_003 + math.prod(shp)))
                rows[n].append(reshape_activations(a, policy=policy, per_image=per_image, generator=g).cpu())
            seen += len(x)
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    if seen < min_images:
        raise DataError(f"the data loader yielded {seen} images; the analysis needs at least {min_images}")
    return Activations({n: torch.cat(r) for n, r in rows.items()}, spatial, seen, policy, per_image)

"""Imbalanced training data: ``train.class_weights: balanced`` and ``train.sampler: balanced``.

Both read the training split's targets (``(N,)`` class indices, or ``(N, K)`` 0/1 for
multi-label). The sampler draws from the loop's own generator, exactly as torch's
``WeightedRandomSampler`` does, so a resumed run continues the same draws (see
:mod:`transfuse.train.resume`: the generator's state at the epoch's start and the number of
indices drawn are what ``resume.pt`` keeps).
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import WeightedRandomSampler

from ..errors import ConfigError
from .resume import _Skip

__all__ = ["balanced_class_weights", "balanced_sample_weights", "SkipBalancedSampler",
           "training_targets"]


def training_targets(ds: Any, *, what: str) -> torch.Tensor:
    """The targets of an in-memory training set.

    Raises:
        ConfigError: the set is drawn per example (3D patches, segmentation): ``what`` is the
            setting that needs the targets.
    """
    targets = getattr(ds, "targets", None)
    if not isinstance(targets, torch.Tensor):
        raise ConfigError(f"{what}=balanced needs a classification training set held in memory; "
                          "this one is drawn per example (e.g. segmentation patches): leave it out")
    return targets


def balanced_class_weights(targets: torch.Tensor, *, num_classes: int, task: str) -> torch.Tensor:
    """Loss weights that make each class count as much as every other.

    Args:
        targets: ``(N,)`` class indices (``multiclass``) or ``(N, K)`` 0/1 (``multilabel``).

    Returns:
        multi-class: ``(K,)`` weights ``n / (K × n_c)`` (scikit-learn's
        ``compute_class_weight("balanced")``; an absent class gets 0); multi-label: ``(K,)``
        ``pos_weight`` ``n_negative / n_positive`` per label (1 where a label has no positive).
    """
    if task == "multiclass":
        counts = torch.bincount(targets.long(), minlength=num_classes).double()
        w = torch.where(counts > 0, len(targets) / (num_classes * counts.clamp_min(1)), 0.0)
        return w.float()
    if task == "multilabel":
        pos = (targets > 0.5).double().sum(0)
        neg = len(targets) - pos
        return torch.where(pos > 0, neg / pos.clamp_min(1), 1.0).float()
    raise ConfigError(f"train.class_weights=balanced is for classification, not {task} data")


def balanced_sample_weights(targets: torch.Tensor, *, task: str) -> torch.Tensor:
    """``(N,)`` draw weights ``1 / n_c`` of each example's class: every class is drawn equally.

    Raises:
        ConfigError: multi-label or segmentation data (an example has no single class).
    """
    if task != "multiclass":
        raise ConfigError(f"train.sampler=balanced needs single-label data, not {task}; use "
                          "train.class_weights=balanced instead")
    t = targets.long()
    counts = torch.bincount(t).double()
    return (1.0 / counts[t]).double()


class SkipBalancedSampler(_Skip, WeightedRandomSampler):
    """``WeightedRandomSampler`` (``len(dataset)`` draws with replacement per epoch, from the
    loop's generator) that can skip ahead on resume."""

    def __init__(self, weights: torch.Tensor, *, generator: torch.Generator) -> None:
        super().__init__(weights, num_samples=len(weights), replacement=True, generator=generator)



"""Segmentation loss, Dice metrics and whole-volume evaluation, all from MONAI.

- loss: MONAI ``DiceCELoss`` (softmax Dice + cross-entropy, equal weights) on logits
  ``(N, K, *spatial)`` and label maps ``(N, *spatial)``;
- inference: MONAI ``sliding_window_inference`` over each whole val/test volume with the training
  patch as the window (25 % overlap, Gaussian blending);
- metrics: MONAI ``compute_dice`` per case and class (background excluded; a class absent from a
  case's ground truth gives no score for that case) and per region (a union of labels, e.g. BraTS
  WT = labels 1+2+3). A class's Dice is its mean over cases; ``dice`` — the score that picks the
  best checkpoint — is the mean over foreground classes.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from ..data.base import PreparedData
from .device import autocast

__all__ = ["SW_OVERLAP", "segmentation_loss", "case_dice", "segmentation_metrics",
           "evaluate_segmentation"]

SW_OVERLAP = 0.25  # sliding-window overlap (MONAI's default)
SW_BATCH = 8  # windows per forward pass during inference


@functools.lru_cache(maxsize=1)
def _dice_ce() -> nn.Module:
    from monai.losses import DiceCELoss

    return DiceCELoss(to_onehot_y=True, softmax=True)


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor,
                      mask: torch.Tensor | None = None) -> torch.Tensor:
    """MONAI Dice + cross-entropy loss.

    Args:
        logits: ``(N, K, *spatial)`` float.
        target: ``(N, *spatial)`` int64 class indices.
        mask: ``(N, *spatial)``; transfuse's segmentation data has no ignore region, so it is
            all ones and not used.

    Returns:
        Scalar loss.
    """
    return _dice_ce()(logits, target.unsqueeze(1))


def case_dice(pred: torch.Tensor, target: torch.Tensor, *, num_classes: int,
              regions: dict[str, tuple[int, ...]] | None = None) -> np.ndarray:
    """Dice of one case per foreground class, then per region.

    Args:
        pred: ``(*spatial)`` int64 predicted classes.
        target: ``(*spatial)`` int64 true classes.
        num_classes: ``K`` including background.
        regions: name → labels whose union is the region.

    Returns:
        ``(K - 1 + len(regions),)`` float64; NaN where the ground truth lacks the class / region.
    """
    from monai.metrics import compute_dice
    from monai.networks.utils import one_hot

    p, t = one_hot(pred[None, None], num_classes), one_hot(target[None, None], num_classes)
    out = [compute_dice(p, t, include_background=False, ignore_empty=True)[0]]
    for labels in (regions or {}).values():
        lab = torch.tensor(labels, device=pred.device)
        rp, rt = torch.isin(pred, lab)[None, None].float(), torch.isin(target, lab)[None, None].float()
        out.append(compute_dice(rp, rt, include_background=True, ignore_empty=True)[0])
    return torch.cat(out).double().cpu().numpy()


def segmentation_metrics(per_case: np.ndarray, *, class_names: tuple[str, ...],
                         regions: tuple[str, ...] = ()) -> dict[str, float]:
    """``{"dice": mean over foreground classes, "dice/<class>": ..., "dice/<region>": ...}``.

    Args:
        per_case: ``(cases, K - 1 + R)`` from :func:`case_dice` (NaN = undefined).
        class_names: the ``K`` class names, background first.
        regions: the ``R`` region names.
    """
    names = list(class_names[1:]) + list(regions)
    per = [_nanmean(per_case[:, j]) for j in range(len(names))]
    out = {"dice": _nanmean(np.array(per[:len(class_names) - 1]))}
    out.update({f"dice/{n}": v for n, v in zip(names, per)})
    return out


def _nanmean(x: np.ndarray) -> float:
    x = x[np.isfinite(x)]
    return float(x.mean()) if len(x) else math.nan


@torch.no_grad()
def evaluate_segmentation(model: nn.Module, loader: DataLoader, *, data: PreparedData,
                          device: torch.device, amp: bool = False,
                          sw_batch_size: int = SW_BATCH) -> tuple[dict[str, float], np.ndarray]:
    """Sliding-window inference and Dice on every whole volume of ``loader`` (batch size 1).

    Args:
        model: maps ``(N, C, *patch)`` to logits ``(N, K, *patch)``.
        loader: yields ``(image (1, C, *S), target (1, *S), mask)``.
        data: for the class names, regions and the window (``info.image_shape``).
        device: where to run.
        amp: bf16 autocast on CUDA.
        sw_batch_size: windows per forward pass.

    Returns:
        ``(metrics, per_case)``: ``{"loss", "dice", "dice/<class>", "dice/<region>"}`` and the
        ``(cases, K - 1 + R)`` per-case Dice array.

    Raises:
        FloatingPointError: the model predicts NaN/inf (training diverged).
    """
    from monai.inferers import sliding_window_inference

    info = data.info
    was_training = model.training
    model.eval()

    def predictor(x: torch.Tensor) -> torch.Tensor:
        with autocast(device, amp):
            return model(x).float()

    rows, loss_sum = [], 0.0
    for x, y, m in loader:
        x, y = x.to(device, non_blocking=True), y.to(device)
        logits = sliding_window_inference(x, roi_size=info.image_shape, sw_batch_size=sw_batch_size,
                                          predictor=predictor, overlap=SW_OVERLAP, mode="gaussian")
        if not torch.isfinite(logits).all():
            raise FloatingPointError("the model predicts NaN/inf; training diverged — lower the "
                                     "learning rate or check the inputs for extreme values")
        loss_sum += segmentation_loss(logits, y).item()
        pred = logits.argmax(1)
        for i in range(len(pred)):
            rows.append(case_dice(pred[i], y[i], num_classes=info.num_classes, regions=info.regions))
    model.train(was_training)
    per_case = np.stack(rows)
    metrics = {"loss": loss_sum / max(len(loader), 1), **segmentation_metrics(
        per_case, class_names=info.class_names, regions=tuple(info.regions))}
    return metrics, per_case

"""Classification metrics as pure functions over arrays.

Probabilities ``(N, K)`` (softmax for multi-class, sigmoid for multi-label), targets ``(N,)``
class indices or ``(N, K)`` 0/1, and an optional mask ``(N, K)`` that removes uncertain labels
from the multi-label AUC and accuracy. AUCs are one-vs-rest per class, computed by scikit-learn;
a class with only one label value present has no AUC (NaN) and is left out of the macro mean.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from sklearn.metrics import roc_auc_score

__all__ = ["AUCResult", "auroc", "accuracy", "classification_metrics"]


@dataclass(frozen=True)
class AUCResult:
    """Macro AUC and one AUC per class (NaN where undefined)."""

    macro: float
    per_class: tuple[float, ...]


def _binary_targets(targets: np.ndarray, k: int, task: str) -> np.ndarray:
    if task == "multiclass":
        return (targets[:, None] == np.arange(k)[None, :]).astype(np.int64)
    return targets.astype(np.int64)


def auroc(probs: np.ndarray, targets: np.ndarray, *, task: str,
          mask: np.ndarray | None = None) -> AUCResult:
    """One-vs-rest ROC AUC per class and their mean.

    Args:
        probs: ``(N, K)`` scores.
        targets: ``(N,)`` class indices (``task="multiclass"``) or ``(N, K)`` 0/1 (``"multilabel"``).
        task: ``multiclass`` or ``multilabel``.
        mask: ``(N, K)``, multi-label only: entries with 0 are excluded (uncertain labels).

    Returns:
        :class:`AUCResult`; ``macro`` is the mean over classes with a defined AUC (NaN if none).
        For a 2-class multi-class task both per-class AUCs equal the usual binary AUC.
    """
    probs = np.asarray(probs, dtype=np.float64)
    k = probs.shape[1]
    y = _binary_targets(np.asarray(targets), k, task)
    per = []
    for c in range(k):
        keep = np.ones(len(y), bool) if mask is None or task == "multiclass" else np.asarray(mask)[:, c] > 0
        yc, pc = y[keep, c], probs[keep, c]
        per.append(float(roc_auc_score(yc, pc)) if 0 < yc.sum() < len(yc) else math.nan)
    defined = [a for a in per if not math.isnan(a)]
    return AUCResult(float(np.mean(defined)) if defined else math.nan, tuple(per))


def accuracy(probs: np.ndarray, targets: np.ndarray, *, task: str,
             mask: np.ndarray | None = None) -> float:
    """Top-1 accuracy (multi-class) or mean per-label accuracy at 0.5 over unmasked entries."""
    probs = np.asarray(probs)
    if task == "multiclass":
        return float((probs.argmax(1) == np.asarray(targets)).mean())
    m = np.ones_like(probs) if mask is None else np.asarray(mask)
    hit = ((probs > 0.5) == (np.asarray(targets) > 0.5)) * m
    return float(hit.sum() / max(m.sum(), 1))


def classification_metrics(probs: np.ndarray, targets: np.ndarray, *, task: str,
                           class_names: tuple[str, ...] | list[str],
                           mask: np.ndarray | None = None) -> dict[str, float]:
    """``{"auc": macro, "acc": ..., "auc/<class>": ...}`` for logging."""
    res = auroc(probs, targets, task=task, mask=mask)
    out = {"auc": res.macro, "acc": accuracy(probs, targets, task=task, mask=mask)}
    out.update({f"auc/{n}": a for n, a in zip(class_names, res.per_class)})
    return out

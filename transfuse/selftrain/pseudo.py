"""Pseudo-labels from a teacher's logits: temperature, confidence threshold, class balancing.

Pure NumPy over the teacher's logits ``(N, K)`` on the unlabelled pool. Nothing here reads true
labels: :func:`select_pseudo_labels` sees logits only. :func:`pseudo_label_quality` is the one
place the pool's true labels are compared with the pseudo-labels, for reporting, after selection.

Rules (Xie et al. 2020, Noisy Student ``filter_unlabel.py``; Yalniz et al. 2019):

- **confidence** is the un-tempered teacher probability of its prediction: ``max softmax`` for
  multi-class, ``max(p, 1 - p)`` per label for multi-label. ``threshold`` drops examples (labels)
  below it.
- **hard** targets are the teacher's argmax (multi-class) or ``p >= 0.5`` (multi-label); **soft**
  targets are ``softmax(logits / T)`` (= ``p^(1/T)`` renormalised) or ``sigmoid(logits / T)``.
- **per_class** ``K`` keeps the ``K`` most confident examples of each predicted class; with
  ``balance`` a class with fewer than ``K`` is **duplicated** up to ``K`` (whole copies, then a
  seeded sample without replacement for the remainder). ``balance`` without ``per_class`` uses
  the largest class's count as ``K``. A class with no candidate stays empty (reported).
- multi-label data balance over the labels (an example is ranked by ``p_c`` for each label it is
  predicted positive for, so it may be picked for several labels, as in Yalniz et al.) plus one
  extra group, ``none``, of examples predicted negative for every label.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..spec.fields import check_fields, spec_field

__all__ = ["PseudoSpec", "PseudoLabels", "teacher_probs", "select_pseudo_labels",
           "pseudo_label_quality"]

MODES = ("hard", "soft")


@dataclass(frozen=True)
class PseudoSpec:
    """How the teacher's predictions become training targets.

    Attributes:
        mode: ``hard`` (one-hot / 0-1) or ``soft`` (tempered probabilities).
        temperature: ``T`` of the soft targets (``> 0``; 1 = the teacher's probabilities).
        threshold: minimum teacher confidence to keep an example (a label, for multi-label).
        per_class: ``K`` examples kept per predicted class; ``None`` = no cap.
        balance: duplicate classes with fewer than ``K`` examples up to ``K``.
    """

    mode: str = spec_field("soft", choices=MODES)
    temperature: float = spec_field(1.0, gt=0)
    threshold: float = spec_field(0.0, ge=0, lt=1)
    per_class: int | None = None
    balance: bool = True

    def __post_init__(self) -> None:
        check_fields(self, prefix="pseudo.")  # mode, temperature, threshold: their metadata
        if self.per_class is not None and (isinstance(self.per_class, bool) or self.per_class < 1):
            raise ConfigError(f"pseudo.per_class={self.per_class!r} must be an integer >= 1 or null")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class PseudoLabels:
    """Selected pseudo-labelled examples of the pool.

    Attributes:
        indices: ``(M,)`` int64 positions in the pool; a repeated index is a duplicate.
        targets: ``(M,)`` int64 class (multi-class, hard) or ``(M, K)`` float32.
        masks: ``(M,)`` ones (multi-class) or ``(M, K)`` with 0 for unconfident labels.
        groups: the balancing group of each selected example, ``(M,)`` int64 (class index;
            ``K`` is the multi-label ``none`` group).
        empty_groups: groups that had no candidate at all.
    """

    indices: np.ndarray
    targets: np.ndarray
    masks: np.ndarray
    groups: np.ndarray
    empty_groups: tuple[int, ...] = ()

    def __len__(self) -> int:
        return len(self.indices)


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def teacher_probs(logits: np.ndarray, *, task: str, temperature: float = 1.0) -> np.ndarray:
    """``softmax(logits / T)`` (multi-class) or ``sigmoid(logits / T)`` (multi-label), ``(N, K)``."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    if task == "multiclass":
        return _softmax(z)
    return 1.0 / (1.0 + np.exp(-z))


def _take(cands: np.ndarray, score: np.ndarray, k: int | None, balance: bool,
          rng: np.random.Generator) -> np.ndarray:
    """The ``k`` highest-scoring candidates, duplicated up to ``k`` when ``balance``."""
    order = cands[np.argsort(-score[cands], kind="stable")]
    if k is None:
        return order
    if len(order) >= k or not balance or len(order) == 0:
        return order[:k]
    reps, rest = divmod(k, len(order))
    extra = rng.choice(order, size=rest, replace=False) if rest else order[:0]
    return np.concatenate([np.tile(order, reps), np.sort(extra)])


def _row_mean(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    tot = w.sum(1)
    return np.divide((x * w).sum(1), tot, out=np.full(len(x), np.nan), where=tot > 0)


def select_pseudo_labels(logits: np.ndarray, *, task: str, spec: PseudoSpec,
                         seed: int = 0) -> PseudoLabels:
    """Pick and label examples of the pool from the teacher's logits (see module docstring).

    Args:
        logits: ``(N, K)`` teacher logits on the unlabelled pool (un-noised teacher).
        task: ``multiclass`` or ``multilabel``.
        spec: threshold, hard/soft, temperature and balancing.
        seed: seeds the sampling of fractional duplicates.

    Returns:
        :class:`PseudoLabels`, grouped by class (class 0 first), most confident first.
    """
    logits = np.asarray(logits, dtype=np.float64)
    n, k = logits.shape
    rng = np.random.default_rng(seed)
    p = teacher_probs(logits, task=task)
    if task == "multiclass":
        conf, pred = p.max(1), p.argmax(1)
        keep = conf >= spec.threshold
        groups = [(c, np.flatnonzero(keep & (pred == c)), conf) for c in range(k)]
    else:
        conf_l = np.maximum(p, 1 - p)
        confident = conf_l >= spec.threshold
        pos = (p >= 0.5) & confident
        keep = confident.any(1)
        groups = [(c, np.flatnonzero(keep & pos[:, c]), p[:, c]) for c in range(k)]
        none = keep & ~(p >= 0.5).any(1)
        groups.append((k, np.flatnonzero(none), np.where(confident, conf_l, 0).mean(1)))
    if not spec.balance and spec.per_class is None:  # everything over the threshold, pool order
        idx = np.flatnonzero(keep)
        grp = pred[idx] if task == "multiclass" else np.full(len(idx), -1)
    else:
        quota = spec.per_class or max((len(c) for _, c, _ in groups), default=0)
        picked = [(g, _take(c, s, quota, spec.balance, rng)) for g, c, s in groups]
        idx = np.concatenate([ix for _, ix in picked]).astype(np.int64)
        grp = np.concatenate([np.full(len(ix), g) for g, ix in picked]).astype(np.int64)
    empty = tuple(int(g) for g, c, _ in groups if len(c) == 0)
    if task == "multiclass":
        if spec.mode == "hard":
            targets = p.argmax(1)[idx].astype(np.int64)
        else:
            targets = teacher_probs(logits[idx], task=task, temperature=spec.temperature)
        masks = np.ones(len(idx), dtype=np.float32)
    else:
        if spec.mode == "hard":
            targets = (p[idx] >= 0.5).astype(np.float64)
        else:
            targets = teacher_probs(logits[idx], task=task, temperature=spec.temperature)
        masks = confident[idx].astype(np.float32)
    if targets.dtype != np.int64:
        targets = targets.astype(np.float32)
    return PseudoLabels(idx.astype(np.int64), targets, masks, grp.astype(np.int64), empty)


def pseudo_label_quality(pseudo: PseudoLabels, logits: np.ndarray, *, true_targets: np.ndarray,
                         true_masks: np.ndarray, task: str,
                         class_names: tuple[str, ...] = ()) -> dict[str, Any]:
    """How right the pseudo-labels are, against the pool's true labels (never used to train).

    Args:
        pseudo: the selection.
        logits: ``(N, K)`` teacher logits on the whole pool.
        true_targets: ``(N,)`` int classes or ``(N, K)`` 0/1 of the pool.
        true_masks: ``(N,)`` or ``(N, K)``; 0 where the true label is unknown.
        task: ``multiclass`` or ``multilabel``.
        class_names: names for the per-class counts.

    Returns:
        ``pseudo_acc`` (selected unique examples), ``pseudo_acc_weighted`` (duplicates counted),
        ``pool_acc`` (the teacher on the whole pool), counts per class, coverage.
    """
    p = teacher_probs(np.asarray(logits), task=task)
    n, k = p.shape
    names = list(class_names) or [str(c) for c in range(k)]
    tt, tm = np.asarray(true_targets), np.asarray(true_masks, dtype=float)
    if task == "multiclass":
        right = (p.argmax(1) == tt).astype(float)
        right_sel = right[pseudo.indices]
    else:  # share of known labels the (confident, for the selection) pseudo-labels get right
        agree = ((p >= 0.5) == (tt >= 0.5)).astype(float)
        right = _row_mean(agree, tm)
        right_sel = _row_mean(agree[pseudo.indices], tm[pseudo.indices] * pseudo.masks)
    first = np.unique(pseudo.indices, return_index=True)[1]  # one row per unique example
    counts = np.bincount(pseudo.groups[pseudo.groups >= 0], minlength=k + (task != "multiclass"))

    def mean(x: np.ndarray) -> float | None:
        x = x[np.isfinite(x)]
        return float(np.mean(x)) if len(x) else None

    group_names = names + ([] if task == "multiclass" else ["none"])
    return {
        "n_pool": int(n), "n_selected": int(len(pseudo)), "n_unique": int(len(first)),
        "coverage": float(len(first) / n) if n else 0.0,
        "pseudo_acc": mean(right_sel[first]),
        "pseudo_acc_weighted": mean(right_sel),
        "pool_acc": mean(right),
        "per_class": {group_names[g]: int(c) for g, c in enumerate(counts)},
        "empty_classes": [group_names[g] for g in pseudo.empty_groups],
    }

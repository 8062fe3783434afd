"""Operating points and calibration: what a clinical reader asks of a classifier first.

Pure functions over probabilities ``(N, K)`` and targets ``(N,)``, computed with scikit-learn
where it has the metric (ROC curve, confusion matrix, balanced accuracy, Brier score); the
expected calibration error is the standard binned one (Guo et al. 2017), which scikit-learn
lacks. For a two-class run the *positive* class is class 1 (``pneumonia``, ``malignant`` for
NoduleMNIST3D, ``aneurysm``): the threshold is chosen on the validation split and the test
split is scored at it.
"""

from __future__ import annotations

import math

import numpy as np
from sklearn.metrics import (balanced_accuracy_score, brier_score_loss, confusion_matrix,
                             roc_curve)

from ..config import parse_operating_point

__all__ = ["choose_threshold", "at_threshold", "expected_calibration_error", "brier",
           "clinical_metrics", "CLINICAL_KEYS", "decision_threshold", "operating_point_info"]

CLINICAL_KEYS = ("threshold", "sensitivity", "specificity", "balanced_acc", "ppv", "npv", "ece",
                 "brier")


def choose_threshold(scores: np.ndarray, targets: np.ndarray, *, rule: str = "youden") -> float:
    """The decision threshold on ``scores`` (positive-class probabilities ``(N,)``).

    Args:
        targets: ``(N,)`` 0/1.
        rule: ``youden`` (maximise sensitivity + specificity − 1; the highest such threshold)
            or ``sensitivity=<s>`` (the highest threshold whose sensitivity is at least ``s``).

    Returns:
        the threshold (predict positive when ``score >= threshold``); NaN when ``targets`` has
        one class only.
    """
    kind, target = parse_operating_point(rule)
    y = np.asarray(targets).astype(int)
    if y.min(initial=0) == y.max(initial=0):
        return math.nan
    fpr, tpr, thr = roc_curve(y, np.asarray(scores, dtype=np.float64), drop_intermediate=False)
    thr = np.minimum(thr, 1.0)  # the first threshold is +inf: nothing positive
    if kind == "youden":
        return float(thr[int(np.argmax(tpr - fpr))])
    ok = np.nonzero(tpr >= target - 1e-12)[0]
    return float(thr[ok[0]])


def at_threshold(scores: np.ndarray, targets: np.ndarray, threshold: float) -> dict[str, float]:
    """Sensitivity, specificity, balanced accuracy, PPV and NPV of ``score >= threshold``
    (NaN where a denominator is 0)."""
    y = np.asarray(targets).astype(int)
    pred = (np.asarray(scores) >= threshold).astype(int)
    tn, fp, fn, tp = confusion_matrix(y, pred, labels=[0, 1]).ravel()
    div = lambda a, b: float(a / b) if b else math.nan  # noqa: E731
    return {"sensitivity": div(tp, tp + fn), "specificity": div(tn, tn + fp),
            "balanced_acc": float(balanced_accuracy_score(y, pred)) if 0 < y.sum() < len(y) else math.nan,
            "ppv": div(tp, tp + fp), "npv": div(tn, tn + fn)}


def expected_calibration_error(probs: np.ndarray, targets: np.ndarray, *, n_bins: int = 15) -> float:
    """Top-label ECE: ``Σ_b |B_b|/N · |accuracy(B_b) − confidence(B_b)|`` over ``n_bins``
    equal-width confidence bins ``(lo, hi]`` (torchmetrics' ``MulticlassCalibrationError``).

    Args:
        probs: ``(N, K)`` class probabilities.
        targets: ``(N,)`` class indices.
    """
    p = np.asarray(probs, dtype=np.float64)
    conf, pred = p.max(1), p.argmax(1)
    hit = (pred == np.asarray(targets)).astype(np.float64)
    bins = np.clip(np.ceil(conf * n_bins).astype(int) - 1, 0, n_bins - 1)
    ece = 0.0
    for b in np.unique(bins):
        sel = bins == b
        ece += sel.mean() * abs(hit[sel].mean() - conf[sel].mean())
    return float(ece)


def brier(probs: np.ndarray, targets: np.ndarray) -> float:
    """Brier score: two classes, scikit-learn's ``brier_score_loss`` of class 1's probability;
    more, the mean over examples of ``Σ_k (p_k − 1[y = k])²``."""
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(targets).astype(int)
    if p.shape[1] == 2:
        return float(brier_score_loss(y, p[:, 1], pos_label=1))
    onehot = np.eye(p.shape[1])[y]
    return float(((p - onehot) ** 2).sum(1).mean())


def clinical_metrics(val_probs: np.ndarray, val_targets: np.ndarray, test_probs: np.ndarray,
                     test_targets: np.ndarray, *, rule: str = "youden") -> dict[str, float]:
    """The test split's calibration and, for two classes, its operating point at the threshold
    chosen on validation by ``rule``: ``{"threshold", "sensitivity", "specificity",
    "balanced_acc", "ppv", "npv", "ece", "brier"}`` (the first six for two classes only)."""
    out: dict[str, float] = {}
    if np.asarray(test_probs).shape[1] == 2:
        thr = choose_threshold(val_probs[:, 1], val_targets, rule=rule)
        out["threshold"] = thr
        if math.isfinite(thr):
            out.update(at_threshold(test_probs[:, 1], test_targets, thr))
    out["ece"] = expected_calibration_error(test_probs, test_targets)
    out["brier"] = brier(test_probs, test_targets)
    return out


def decision_threshold(text: str | float, *, stored: float | None, num_classes: int) -> float:
    """The threshold of ``predict --threshold``: ``val`` (the run's own, chosen on validation
    and stored with its test metrics) or a number in (0, 1).

    Raises:
        ConfigError: not a two-class run, no stored threshold, or a bad value.
    """
    from ..errors import ConfigError

    if num_classes != 2:
        raise ConfigError(f"--threshold applies to two-class runs (positive class 1); this run "
                          f"has {num_classes} classes: leave it out")
    if str(text) == "val":
        if stored is None or not math.isfinite(stored):
            raise ConfigError("--threshold val: this run stores no validation threshold (trained "
                              "before transfuse chose one, or its validation split has one class); "
                              "give a number, e.g. --threshold 0.5")
        return float(stored)
    try:
        t = float(text)
    except ValueError:
        t = math.nan
    if not 0 < t < 1:
        raise ConfigError(f"--threshold {text!r} must be val or a number in (0, 1), e.g. 0.4")
    return t


def operating_point_info(test: dict[str, float | None], *, class_names: list[str] | tuple[str, ...],
                         rule: str) -> dict[str, object] | None:
    """The operating point a two-class run's export carries (``model.json``), or ``None``."""
    if len(class_names) != 2 or test.get("threshold") is None:
        return None
    return {"positive_class": class_names[1], "threshold": test["threshold"], "rule": rule,
            "chosen_on": "val", "predict": "positive when probability[1] >= threshold",
            "test": {k: test.get(k) for k in ("sensitivity", "specificity", "balanced_acc", "ppv",
                                               "npv")}}

"""Training: the ``fit`` loop, metrics and device helpers."""

from .loop import FitResult, evaluate, fit
from .metrics import AUCResult, accuracy, auroc, classification_metrics

__all__ = ["fit", "FitResult", "evaluate", "auroc", "accuracy", "AUCResult", "classification_metrics"]

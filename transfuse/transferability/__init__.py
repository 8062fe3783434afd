"""Which source to pick before training: transferability estimators on frozen features, and how
well their rankings predicted a study's real fine-tuned outcomes."""

from .estimators import ESTIMATORS, h_score, h_score_shrunk, leep, logme, nce, probe_auc

__all__ = ["ESTIMATORS", "logme", "leep", "nce", "h_score", "h_score_shrunk", "probe_auc"]

"""Representation analysis: SVCCA, PWCCA and CKA between layers and runs.

Pure tensor functions on ``(n_samples, n_features)`` first (float64 inside, keyword-only options,
typed results), then activation capture by stage name, then the analyses over stored runs that
``transfuse analyze`` runs and the study report shows::

    from transfuse.analysis import linear_cka, svcca, pwcca, capture_activations
    svcca(x, y, keep=0.99).mean
"""

from ._common import SIMILARITIES, list_similarities, register_similarity
from .capture import POLICIES, Activations, capture_activations, check_comparable, reshape_activations
from .canonical import (CCAResult, Factor, PWCCAResult, SimilarityGrid, SVCCAResult, cca, factor, pwcca,
                  similarity_grid, svcca)
from .cka import MinibatchCKA, cka_from_grams, gram_linear, gram_rbf, linear_cka, rbf_cka
from .runs import AnalysisOptions, AnalysisSummary, Pair, analyze_study, default_pairs

__all__ = [
    "SIMILARITIES", "list_similarities", "register_similarity", "POLICIES", "Activations",
    "capture_activations", "check_comparable", "reshape_activations", "CCAResult", "SVCCAResult",
    "PWCCAResult", "Factor", "SimilarityGrid", "cca", "svcca", "pwcca", "factor", "similarity_grid",
    "MinibatchCKA", "linear_cka", "rbf_cka", "gram_linear", "gram_rbf", "cka_from_grams",
    "AnalysisOptions", "AnalysisSummary", "Pair", "analyze_study", "default_pairs",
]

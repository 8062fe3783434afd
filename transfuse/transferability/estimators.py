"""Transferability estimators: how well a source's frozen features (or its head) suit a target task,
computed before any fine-tuning.

Each estimator is a pure function of NumPy arrays, registered in :data:`ESTIMATORS` with what it
needs (``features``: pooled penultimate features ``(N, D)``; ``source_probs``: the source head's
class probabilities ``(N, C_s)``). Higher is better for every estimator.

- **LogME** (You et al., ICML 2021; the fixed-point form of "Ranking and Tuning Pre-trained
  Models", arXiv 2110.10545): the log marginal evidence of a Bayesian linear model from features
  to each one-hot label column, maximised over its prior and noise precisions, averaged over
  classes, per example.
- **LEEP** (Nguyen et al., ICML 2020): the log-likelihood of the target labels under the
  "expected empirical predictor" built from the source head's soft predictions.
- **NCE** (Tran et al., ICCV 2019): minus the conditional entropy H(Y | Z) of the target labels
  given the source head's hard predictions.
- **H-score** (Bao et al., ICIP 2019): ``tr(cov(f)⁺ cov(E[f | y]))``, and its Ledoit–Wolf
  regularised form (Ibrahim et al., NeurIPS 2021), which stays informative when D ≥ N.
- **probe**: the macro AUC of a logistic-regression probe on the frozen features, by stratified
  k-fold cross-validation on the training split (scikit-learn).

No maintained implementation of LogME, LEEP, NCE or H-score is published on the package index
(the authors' code and the Transfer-Learning-Library are GitHub-only and pin numba or torch
versions), so they are written here from the papers; tests/test_transferability.py checks them
against numbers produced by the authors' published code on a fixed feature matrix.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from .._registry import Registry
from ..errors import DataError

__all__ = ["ESTIMATORS", "logme", "leep", "nce", "h_score", "h_score_shrunk", "probe_auc", "Estimator"]

Estimator = Callable[..., float]
ESTIMATORS: Registry[Estimator] = Registry("transferability estimator",
                                           list_command="transfuse rank-sources --help")


def _labels(y: np.ndarray, n: int) -> np.ndarray:
    y = np.asarray(y).reshape(-1)
    if y.shape[0] != n:
        raise DataError(f"{y.shape[0]} labels for {n} examples")
    if not np.issubdtype(y.dtype, np.integer):
        if not np.all(np.isfinite(y)) or np.any(y != np.round(y)):
            raise DataError("labels must be class indices 0..C-1 (integers)")
        y = y.astype(np.int64)
    if y.min() < 0:
        raise DataError("labels must be class indices 0..C-1, not negative")
    return y


def _finite(x: np.ndarray, what: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise DataError(f"{what} must be (N, D), got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise DataError(f"{what} hold NaN or inf")
    return x


@ESTIMATORS.register("logme", needs="features", cost="one SVD of the features")
def logme(features: np.ndarray, labels: np.ndarray, *, max_iter: int = 11, tol: float = 1e-3) -> float:
    """LogME of ``features`` ``(N, D)`` for class labels ``(N,)``: mean log evidence per example.

    For each class c, with y the 0/1 indicator of c and ``F = U S Vᵀ`` (rank k), the evidence of
    ``y = F w + ε``, ``w ~ N(0, α⁻¹ I)``, ``ε ~ N(0, β⁻¹ I)`` is maximised by the fixed-point
    iteration ``γ = Σ σᵢ/(σᵢ + α/β)``, ``α = γ / |m|²``, ``β = (N − γ) / |y − F m|²``
    (σ = s², started at α = β = 1, stopped when α/β moves by ≤ ``tol`` relative, at most
    ``max_iter`` times); the score is the mean over classes of the log evidence divided by N.
    """
    f = _finite(features, "features")
    n, d = f.shape
    y = _labels(labels, n)
    u, s, _ = np.linalg.svd(f, full_matrices=False)
    keep = s > 1e-10 * max(1.0, float(s[0]) if s.size else 1.0)
    u, s = u[:, keep], s[keep]
    sigma = s ** 2
    scores = []
    for c in range(int(y.max()) + 1):
        yc = (y == c).astype(np.float64)
        x2 = (u.T @ yc) ** 2
        rest = float(yc @ yc - x2.sum())  # the part of y outside the features' span
        alpha = beta = 1.0
        for _ in range(max_iter):
            t = alpha / beta
            gamma = float((sigma / (sigma + t)).sum())
            m2 = float((sigma * x2 / (t + sigma) ** 2).sum())
            res2 = float((x2 / (1 + sigma / t) ** 2).sum()) + rest
            alpha = gamma / (m2 + 1e-5)
            beta = (n - gamma) / (res2 + 1e-5)
            if abs(alpha / beta - t) / t <= tol:
                break
        evidence = (d / 2 * math.log(alpha) + n / 2 * math.log(beta)
                    - 0.5 * float(np.log(alpha + beta * sigma).sum())
                    - beta / 2 * res2 - alpha / 2 * m2 - n / 2 * math.log(2 * math.pi))
        scores.append(evidence / n)
    return float(np.mean(scores))


def _joint(source_probs: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Empirical joint P(y, z) ``(C_t, C_s)`` from soft source predictions."""
    n = source_probs.shape[0]
    onehot = np.zeros((n, int(y.max()) + 1))
    onehot[np.arange(n), y] = 1.0
    return onehot.T @ source_probs / n


@ESTIMATORS.register("leep", needs="source_probs", cost="one pass of the source head")
def leep(source_probs: np.ndarray, labels: np.ndarray) -> float:
    """LEEP: ``mean_i log Σ_z P̂(y_i | z) θ(x_i)_z`` with ``P̂(y | z) = P̂(y, z) / P̂(z)``.

    Args:
        source_probs: the source head's class probabilities ``(N, C_s)`` (rows sum to 1).
        labels: target class indices ``(N,)``.
    """
    p = _finite(source_probs, "source probabilities")
    if np.any(p < 0) or not np.allclose(p.sum(1), 1.0, atol=1e-4):
        raise DataError("source probabilities must be non-negative rows summing to 1 (softmax)")
    y = _labels(labels, p.shape[0])
    joint = _joint(p, y)
    pz = joint.sum(0, keepdims=True)
    cond = np.divide(joint, pz, out=np.zeros_like(joint), where=pz > 0)  # P(y | z)
    eep = p @ cond.T  # (N, C_t)
    return float(np.mean(np.log(eep[np.arange(len(y)), y])))


@ESTIMATORS.register("nce", needs="source_probs", cost="one pass of the source head")
def nce(source_probs: np.ndarray, labels: np.ndarray) -> float:
    """NCE: ``−H(Y | Z)`` with Z the source head's argmax, from the empirical joint (nats)."""
    p = _finite(source_probs, "source probabilities")
    y = _labels(labels, p.shape[0])
    z = p.argmax(1)
    n = len(y)
    joint = np.zeros((int(y.max()) + 1, p.shape[1]))
    np.add.at(joint, (y, z), 1.0 / n)
    pz = joint.sum(0)
    h = 0.0
    for j in np.flatnonzero(pz > 0):
        q = joint[:, j] / pz[j]
        q = q[q > 0]
        h += pz[j] * float(-(q * np.log(q)).sum())
    return -h


@ESTIMATORS.register("hscore", needs="features", cost="one D×D pseudo-inverse")
def h_score(features: np.ndarray, labels: np.ndarray) -> float:
    """H-score ``tr(cov(f)⁺ cov(g))``, g the class-conditional mean of f (covariances with N − 1)."""
    f = _finite(features, "features")
    y = _labels(labels, f.shape[0])
    g = np.zeros_like(f)
    for c in np.unique(y):
        g[y == c] = f[y == c].mean(0)
    covf = np.atleast_2d(np.cov(f, rowvar=False))
    covg = np.atleast_2d(np.cov(g, rowvar=False))
    return float(np.trace(np.linalg.pinv(covf, rcond=1e-15) @ covg))


@ESTIMATORS.register("hscore_reg", needs="features", cost="a Ledoit-Wolf covariance and its pseudo-inverse")
def h_score_shrunk(features: np.ndarray, labels: np.ndarray) -> float:
    """Regularised H-score (Ibrahim et al., NeurIPS 2021): ``tr(Σ_α⁺ (1 − α) cov(g))`` with Σ_α the
    Ledoit–Wolf shrinkage estimate of cov(f) (scikit-learn) and α its shrinkage.

    The plain H-score saturates at ``C − 1`` once the features outnumber the examples (cov(f) is
    then singular and its pseudo-inverse whitens every direction); shrinkage keeps it informative.
    """
    from sklearn.covariance import LedoitWolf

    f = _finite(features, "features")
    y = _labels(labels, f.shape[0])
    f = f - f.mean(0, keepdims=True)
    g = np.zeros_like(f)
    for c in np.unique(y):
        g[y == c] = f[y == c].mean(0)
    lw = LedoitWolf(assume_centered=False).fit(f)
    covg = np.atleast_2d(np.cov(g, rowvar=False))
    return float(np.trace(np.linalg.pinv(lw.covariance_, rcond=1e-15) @ ((1 - lw.shrinkage_) * covg)))


@ESTIMATORS.register("probe", needs="features", cost="k logistic-regression fits")
def probe_auc(features: np.ndarray, labels: np.ndarray, *, folds: int = 5, seed: int = 0) -> float:
    """Macro one-vs-rest AUC of a logistic-regression probe, by stratified ``folds``-fold CV.

    Features are standardised inside each fold (a scikit-learn pipeline); the probe's C is 1.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from ..train.metrics import auroc

    f = _finite(features, "features")
    y = _labels(labels, f.shape[0])
    counts = np.bincount(y)
    k = int(min(folds, counts[counts > 0].min()))
    if k < 2:
        raise DataError("the probe needs at least 2 examples of every class")
    cv = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    probs = cross_val_predict(clf, f, y, cv=cv, method="predict_proba")
    full = np.zeros((len(y), int(y.max()) + 1))
    full[:, np.unique(y)] = probs
    return float(auroc(full, y, task="multiclass").macro)

"""Statistics for studies: summaries with confidence intervals, paired tests, DeLong's test.

Methods (stated in the report too):

- **Cell summary**: mean and sample standard deviation over seeds; a two-sided 95 % confidence
  interval for the mean from Student's t distribution with ``n - 1`` degrees of freedom.
- **Paired comparison across seeds**: init A vs ``random`` on the same model, data size and seed;
  the mean difference with a t-interval and the two-sided paired t-test (``scipy.stats.ttest_rel``).
- **DeLong's test** (DeLong, DeLong & Clarke-Pearson 1988, in the fast midrank form of Sun & Xu
  2014): two models scored on the *same* test set; the variance of the AUC difference comes from
  the per-example structural components, so it uses the test set's size rather than the number
  of seeds. For several classes (one-vs-rest macro AUC, or multi-label with masked entries), the
  macro difference's variance is the sum over examples of the squared per-example influence,
  each class's positive/negative components scaled by ``n/(n-1)`` — with one class this is
  exactly DeLong's estimator.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

__all__ = ["Summary", "summarize", "PairedTest", "paired_test", "DeLong", "delong", "midrank"]


@dataclass(frozen=True)
class Summary:
    """Mean ± sd over ``n`` values and a 95 % t confidence interval (``None`` when ``n < 2``)."""

    n: int
    mean: float
    sd: float | None
    ci_low: float | None
    ci_high: float | None


def _clean(values: Sequence[float | None]) -> np.ndarray:
    return np.array([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)


def summarize(values: Sequence[float | None], *, level: float = 0.95) -> Summary | None:
    """Summary of the finite values; ``None`` when there are none."""
    x = _clean(values)
    if len(x) == 0:
        return None
    if len(x) < 2:
        return Summary(1, float(x[0]), None, None, None)
    sd = float(x.std(ddof=1))
    half = float(stats.t.ppf(0.5 + level / 2, len(x) - 1)) * sd / math.sqrt(len(x))
    return Summary(len(x), float(x.mean()), sd, float(x.mean() - half), float(x.mean() + half))


@dataclass(frozen=True)
class PairedTest:
    """Paired comparison of ``a - b`` over ``n`` pairs.

    Attributes:
        n: number of pairs.
        mean_diff: mean of ``a - b``.
        ci_low, ci_high: 95 % t-interval of the mean difference (``None`` when ``n < 2``).
        p: two-sided paired t-test p-value (``None`` when ``n < 2`` or all differences equal).
    """

    n: int
    mean_diff: float
    ci_low: float | None
    ci_high: float | None
    p: float | None


def paired_test(a: Sequence[float], b: Sequence[float], *, level: float = 0.95) -> PairedTest | None:
    """Paired t-test of ``a`` vs ``b`` (same length; pairs with a missing value dropped)."""
    if len(a) != len(b):
        raise ValueError(f"paired_test needs equal lengths, got {len(a)} and {len(b)}")
    pairs = [(x, y) for x, y in zip(a, b) if x is not None and y is not None
             and math.isfinite(x) and math.isfinite(y)]
    if not pairs:
        return None
    d = np.array([x - y for x, y in pairs], dtype=np.float64)
    s = summarize(d.tolist(), level=level)
    p = None
    if len(d) >= 2 and np.ptp(d) > 1e-12 * max(1.0, float(np.abs(d).max())):  # else no variance
        p = float(stats.ttest_rel([x for x, _ in pairs], [y for _, y in pairs]).pvalue)
    return PairedTest(len(d), float(d.mean()), s.ci_low, s.ci_high, p)


def midrank(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n of ``x`` with ties given their average rank, shape ``(n,)``."""
    return stats.rankdata(x, method="average")


@dataclass(frozen=True)
class DeLong:
    """DeLong's test of ``AUC_a - AUC_b`` on one test set.

    Attributes:
        auc_a, auc_b: (macro) AUCs of the two models.
        diff: ``auc_a - auc_b``.
        se: standard error of ``diff``.
        z: ``diff / se``.
        p: two-sided p-value from the normal distribution (1.0 when ``se == 0`` and ``diff == 0``).
        ci_low, ci_high: 95 % normal confidence interval of ``diff``.
        classes: number of classes averaged.
    """

    auc_a: float
    auc_b: float
    diff: float
    se: float
    z: float
    p: float
    ci_low: float
    ci_high: float
    classes: int


def _components(scores: np.ndarray, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Structural components ``V10`` (per positive) and ``V01`` (per negative) of one AUC."""
    x, y = scores[pos], scores[~pos]
    m, n = len(x), len(y)
    r_all = midrank(np.concatenate([x, y]))
    v10 = (r_all[:m] - midrank(x)) / n
    v01 = 1.0 - (r_all[m:] - midrank(y)) / m
    return v10, v01


def delong(probs_a: np.ndarray, probs_b: np.ndarray, targets: np.ndarray, *, task: str,
           mask: np.ndarray | None = None) -> DeLong | None:
    """DeLong's test for the (macro one-vs-rest) AUC difference of two models on the same data.

    Args:
        probs_a, probs_b: ``(N, K)`` scores of the two models for the same ``N`` examples.
        targets: ``(N,)`` class indices (``multiclass``) or ``(N, K)`` 0/1 (``multilabel``).
        task: ``multiclass`` or ``multilabel``.
        mask: ``(N, K)`` multi-label mask; 0 entries are left out of that class's AUC.

    Returns:
        :class:`DeLong`, or ``None`` when no class has both positives and negatives.
        A 2-class multi-class task is tested as one binary AUC (class 1 vs 0).
    """
    pa, pb = np.asarray(probs_a, np.float64), np.asarray(probs_b, np.float64)
    if pa.shape != pb.shape:
        raise ValueError(f"delong: score shapes differ, {pa.shape} vs {pb.shape}")
    n, k = pa.shape
    t = np.asarray(targets)
    y = (t[:, None] == np.arange(k)[None, :]) if task == "multiclass" else t.astype(bool)
    keep = np.ones((n, k), bool) if mask is None or task == "multiclass" else np.asarray(mask) > 0
    classes = [1] if task == "multiclass" and k == 2 else range(k)
    infl = np.zeros(n, dtype=np.float64)  # summed per-example influence on the macro difference
    aucs_a, aucs_b, used = [], [], 0
    for c in classes:
        rows = np.flatnonzero(keep[:, c])
        pos = y[rows, c]
        m_pos, m_neg = int(pos.sum()), int((~pos).sum())
        if m_pos < 2 or m_neg < 2:
            continue
        v10a, v01a = _components(pa[rows, c], pos)
        v10b, v01b = _components(pb[rows, c], pos)
        auc_a, auc_b = v10a.mean(), v10b.mean()
        d = auc_a - auc_b
        contrib = np.empty(len(rows))
        contrib[pos] = (v10a - v10b - d) / m_pos * math.sqrt(m_pos / (m_pos - 1))
        contrib[~pos] = (v01a - v01b - d) / m_neg * math.sqrt(m_neg / (m_neg - 1))
        # Both components of one example add up before squaring: that is what couples classes.
        infl[rows[pos]] += contrib[pos]
        infl[rows[~pos]] += contrib[~pos]
        aucs_a.append(auc_a)
        aucs_b.append(auc_b)
        used += 1
    if not used:
        return None
    infl /= used
    # For one class, sum(infl²) = var(V10 diff)/m + var(V01 diff)/n, DeLong's variance.
    var = float(np.sum(infl**2))
    auc_a, auc_b = float(np.mean(aucs_a)), float(np.mean(aucs_b))
    diff = auc_a - auc_b
    se = math.sqrt(max(var, 0.0))
    if se == 0.0:
        z, p = (0.0, 1.0) if diff == 0 else (math.copysign(math.inf, diff), 0.0)
    else:
        z = diff / se
        p = float(2 * stats.norm.sf(abs(z)))
    return DeLong(auc_a, auc_b, diff, se, z, p, diff - 1.959963984540054 * se,
                  diff + 1.959963984540054 * se, used)

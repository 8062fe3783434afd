"""Decision rules for paired comparisons: five answers, multiplicity control, alpha spending, power.

A *question* is one paired comparison over seeds: the per-seed differences ``d_1 … d_n`` of an arm
against the reference arm (test score, area under the validation curve, or log speed-up) and the
margin ``m`` below which a difference does not matter to the user. Two standard tests are asked
of every question, each family-wise over all questions of a report:

- **equivalence** — two one-sided tests (TOST, Schuirmann 1987) of ``|δ| >= m``: p-value
  ``p_equiv = max(p_lower, p_upper)``; at level ``a`` this is the ``1 - 2a`` t-interval lying
  inside ``(-m, +m)``;
- **difference** — the two-sided paired t-test of ``δ = 0``: ``p_diff``; at level ``a`` the
  ``1 - a`` t-interval excludes 0, and its sign says ``better`` or ``worse``.

Each family of p-values is adjusted on its own (:func:`adjust`: Holm by default), so false
``better``/``worse`` claims and false ``equivalent`` claims are each controlled at ``alpha``; for one
question at most one of the two nulls can be true (``δ = 0`` and ``|δ| >= m`` exclude each other).
The verdict: ``equivalent`` when the equivalence test is rejected after adjustment, else a
difference when the difference test is, else ``undecided``. A difference is split by its interval
(the ``1 - a`` one the difference test was read from): ``better_beyond_margin`` /
``worse_beyond_margin`` when the whole interval lies beyond ``+m`` / ``-m`` (a difference shown to
matter), ``better_within_margin`` / ``worse_within_margin`` otherwise (different from zero, but not
shown to exceed the margin). The interval reported is the one the verdict was read from, at the
level of its adjustment step.

Everything here is numeric and vectorised over questions; nothing reads the store.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import special, stats

from .evaluation import MULTIPLICITY, look_levels, obrien_fleming_spent

__all__ = ["VERDICTS", "LABELS", "BETTER", "WORSE", "DIFFERENT", "MULTIPLICITY", "Decision", "decide_family", "adjust", "interval",
           "decision_p", "obrien_fleming_spent", "look_levels", "sequential_decisions", "power_decisive",
           "seeds_needed"]

#: Every verdict code, best first (the JSON's ``verdict``; :data:`LABELS` in words).
VERDICTS = ("better_beyond_margin", "better_within_margin", "equivalent", "worse_within_margin",
            "worse_beyond_margin", "undecided")
LABELS = {"better_beyond_margin": "better by more than the margin",
          "better_within_margin": "better by less than the margin",
          "equivalent": "equivalent",
          "worse_within_margin": "worse by less than the margin",
          "worse_beyond_margin": "worse by more than the margin",
          "undecided": "undecided"}
BETTER = ("better_beyond_margin", "better_within_margin")
WORSE = ("worse_within_margin", "worse_beyond_margin")
DIFFERENT = BETTER + WORSE  # the difference test decided
MAX_SEEDS_PLANNED = 1000  # seeds_needed reports "more than this" beyond it


def _moments(d: np.ndarray) -> tuple[int, float, float]:
    n = len(d)
    return n, float(d.mean()) if n else math.nan, float(d.std(ddof=1)) if n > 1 else math.nan


def interval(diffs: Sequence[float], *, level: float) -> tuple[float, float, float]:
    """``(mean, low, high)``: the two-sided ``level`` Student-t interval of the mean of ``diffs``.

    Needs at least 2 values; a zero standard deviation gives the point ``(mean, mean, mean)``.
    """
    from .stats import summarize

    s = summarize(list(diffs), level=level)
    if s is None or s.ci_low is None:
        raise ValueError(f"an interval needs at least 2 paired values, got {0 if s is None else s.n}")
    return s.mean, s.ci_low, s.ci_high


def decision_p(diffs: Sequence[float], *, margin: float) -> tuple[float, float]:
    """``(p_diff, p_equiv)`` of one question (see the module docstring).

    With fewer than 2 values both are 1; with no spread the interval is a point, and the p-values
    are 0 or 1.
    """
    d = np.asarray(diffs, dtype=np.float64)
    n, mean, sd = _moments(d)
    if n < 2:
        return 1.0, 1.0
    p_diff, p_eq = _family_ps(np.array([n], float), np.array([mean]), np.array([sd]),
                              np.array([margin], float))
    return float(p_diff[0]), float(p_eq[0])


def adjust(p: Sequence[float], *, alpha: float, method: str) -> tuple[np.ndarray, np.ndarray]:
    """Multiplicity-adjusted p-values and the interval level ``a`` each question is judged at.

    Args:
        p: decision p-values of the family, shape ``(K,)``.
        alpha: family-wise error (``holm``) or false-discovery rate (``bh``) to control.
        method: ``holm`` (step-down, family-wise), ``bh`` (Benjamini–Hochberg step-up, false
            discovery rate; intervals at ``R·alpha/K`` for ``R`` decisions, Benjamini & Yekutieli
            2005) or ``none`` (every question at ``alpha``).

    Returns:
        ``(p_adjusted, a)``, both shape ``(K,)``; a question is decided when
        ``p_adjusted <= alpha``, and its interval is the ``1 - a`` one. Holm: ``a`` is
        ``alpha / (K - rank + 1)`` at the question's rank among the sorted p-values.
    """
    if method not in MULTIPLICITY:
        raise ValueError(f"multiplicity {method!r}; choose one of {', '.join(MULTIPLICITY)}")
    p = np.asarray(p, dtype=np.float64)
    k = len(p)
    if k == 0:
        return p.copy(), p.copy()
    if method == "none":
        return p.copy(), np.full(k, alpha)
    order = np.argsort(p, kind="stable")
    rank = np.empty(k, dtype=np.int64)
    rank[order] = np.arange(1, k + 1)
    if method == "holm":
        # Holm (1979): p_adj(k) = max_{j<=k} min(1, (K - j + 1) p(j)); equal to statsmodels'
        # multipletests(method="holm") (a test checks), which is too slow for simulations.
        stepped = np.minimum(1.0, (k - np.arange(k)) * p[order])
        p_adj = np.empty(k)
        p_adj[order] = np.maximum.accumulate(stepped)
        return p_adj, alpha / (k - rank + 1)
    p_adj = stats.false_discovery_control(p, method="bh")
    decided = int(np.sum(p_adj <= alpha))
    return p_adj, np.full(k, alpha * max(decided, 1) / k)


@dataclass(frozen=True)
class Decision:
    """The verdict of one question.

    Attributes:
        verdict: one of :data:`VERDICTS`.
        n: paired values used.
        mean, sd: mean and sample standard deviation of the differences.
        p_diff, p_equiv: the difference and equivalence (TOST) p-values.
        p_diff_adjusted, p_equiv_adjusted: after the family's multiplicity adjustment.
        level: confidence level of the interval the verdict was read from: ``1 - 2a`` for
            ``equivalent``, ``1 - a`` otherwise, ``a`` the question's adjustment-step level.
        ci_low, ci_high: that interval.
    """

    verdict: str
    n: int
    mean: float
    sd: float
    p_diff: float
    p_equiv: float
    p_diff_adjusted: float
    p_equiv_adjusted: float
    level: float
    ci_low: float
    ci_high: float

    @property
    def p_adjusted(self) -> float:
        """The adjusted p-value of the test that decided (undecided: the smaller one)."""
        if self.verdict == "equivalent":
            return self.p_equiv_adjusted
        if self.verdict in DIFFERENT:
            return self.p_diff_adjusted
        return min(self.p_diff_adjusted, self.p_equiv_adjusted)


def _family_ps(n: np.ndarray, mean: np.ndarray, sd: np.ndarray,
               margin: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Vectorised :func:`decision_p` over questions (arrays of shape ``(K,)``)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        flat = sd <= 1e-12 * np.maximum(1.0, np.abs(mean))
        se = np.where(flat, 1.0, sd / np.sqrt(n))
        df = np.maximum(n - 1, 1)
        p_diff = np.where(flat, np.where(mean == 0, 1.0, 0.0), 2 * stats.t.sf(np.abs(mean) / se, df))
        # TOST: the larger one-sided p-value is the one against the nearer bound
        p_eq = np.where(flat, np.where(np.abs(mean) < margin, 0.0, 1.0),
                        stats.t.sf((margin - np.abs(mean)) / se, df))
    small = n < 2
    return np.where(small, 1.0, p_diff), np.where(small, 1.0, p_eq)


def _half(n: np.ndarray, sd: np.ndarray, two_sided_a: np.ndarray) -> np.ndarray:
    return stats.t.ppf(1 - two_sided_a / 2, n - 1) * sd / np.sqrt(n)


def decide_family(diffs: Sequence[Sequence[float]], margins: Sequence[float], *, alpha: float = 0.05,
                  method: str = "holm", sd_floors: Sequence[float] | None = None) -> list[Decision]:
    """Verdicts for a family of questions under one multiplicity adjustment per test.

    Args:
        diffs: per question, its paired differences (each at least 2 values), ``K`` sequences.
        margins: per question, the margin in the differences' units, shape ``(K,)``.
        alpha: error rate each test family is controlled at (a look's alpha, adaptively).
        method: see :func:`adjust`.
        sd_floors: per question, the smallest standard deviation its differences are known to
            have (e.g. the rounding of step counts to evaluation intervals); the sample SD is
            raised to it, so discrete data with no observed spread is not read as certainty.

    Returns:
        one :class:`Decision` per question, in input order.
    """
    arrs = [np.asarray(d, dtype=np.float64) for d in diffs]
    if any(len(d) < 2 for d in arrs):
        raise ValueError("decide_family: every question needs at least 2 paired values")
    if not arrs:
        return []
    n = np.array([len(d) for d in arrs], dtype=np.float64)
    mean = np.array([d.mean() for d in arrs])
    sd = np.array([d.std(ddof=1) for d in arrs])
    if sd_floors is not None:
        sd = np.maximum(sd, np.asarray(sd_floors, dtype=np.float64))
    m = np.asarray(margins, dtype=np.float64)
    p_diff, p_eq = _family_ps(n, mean, sd, m)
    pd_adj, a_diff = adjust(p_diff, alpha=alpha, method=method)
    pe_adj, a_eq = adjust(p_eq, alpha=alpha, method=method)
    h_diff, h_eq = _half(n, sd, a_diff), _half(n, sd, 2 * a_eq)
    out = []
    for i in range(len(arrs)):
        if pe_adj[i] <= alpha:
            verdict, level, h = "equivalent", 1 - 2 * a_eq[i], h_eq[i]
        else:
            level, h = 1 - a_diff[i], h_diff[i]
            verdict = "undecided"
            if pd_adj[i] <= alpha:  # the interval excludes 0; beyond the margin if it clears ±m
                beyond = mean[i] - h > m[i] if mean[i] > 0 else mean[i] + h < -m[i]
                verdict = ("better" if mean[i] > 0 else "worse") + (
                    "_beyond_margin" if beyond else "_within_margin")
        out.append(Decision(verdict, int(n[i]), float(mean[i]), float(sd[i]), float(p_diff[i]),
                            float(p_eq[i]), float(min(pd_adj[i], 1.0)), float(min(pe_adj[i], 1.0)),
                            float(level), float(mean[i] - h), float(mean[i] + h)))
    return out


# ---- group-sequential looks ---------------------------------------------------------------------

def sequential_decisions(diffs: Sequence[Sequence[float]], margins: Sequence[float], *,
                         looks: Sequence[int | None], levels: Sequence[float], method: str = "holm",
                         sd_floors: Sequence[float] | None = None) -> list[tuple[Decision, int] | None]:
    """Read verdicts look by look; a question decided at a look keeps that verdict.

    Args:
        diffs: per question, its paired differences in seed order (``K`` sequences). A look is
            read only when every question still open has its count of values; the first look
            some lack is in progress, and it and later looks are not read.
        margins: per question, shape ``(K,)``.
        looks: seed counts of the looks; ``[None]`` is one look at every available seed (a
            fixed design).
        levels: alpha of each look (:func:`look_levels`; ``[alpha]`` for a fixed design).
        method: multiplicity adjustment within a look, over the questions still open there.
        sd_floors: see :func:`decide_family`.

    Returns:
        per question ``(decision, look)`` — the look (1-based) it was decided at, or the last look
        it was read at while undecided — or ``None`` if it was never read (fewer than 2 values,
        or fewer than the first look's count).
    """
    latest: list[tuple[Decision, int] | None] = [None] * len(diffs)
    open_ = [i for i, d in enumerate(diffs) if len(d) >= 2]
    for li, (n_look, a_look) in enumerate(zip(looks, levels), start=1):
        ready = [i for i in open_ if n_look is None or len(diffs[i]) >= n_look]
        if len(ready) < len(open_):
            break  # a look still in progress is not read: its family would be too small
        if not ready or a_look <= 0:
            continue
        decs = decide_family([list(diffs[i])[:n_look] if n_look else diffs[i] for i in ready],
                             [margins[i] for i in ready], alpha=a_look, method=method,
                             sd_floors=None if sd_floors is None else [sd_floors[i] for i in ready])
        for i, dec in zip(ready, decs):
            latest[i] = (dec, li)
        open_ = [i for i in open_ if latest[i] is None or latest[i][0].verdict == "undecided"]
    return latest


# ---- power and planning -------------------------------------------------------------------------

_GRID = 96  # quadrature points over the sample standard deviation


@lru_cache(maxsize=4096)
def _chi_grid(df: int) -> np.ndarray:
    """``s / σ`` at :data:`_GRID` equal-probability points of its distribution (``df`` degrees)."""
    u = (np.arange(_GRID) + 0.5) / _GRID
    return np.sqrt(stats.chi2.ppf(u, df) / df)


@lru_cache(maxsize=16384)
def _t_quantile(p: float, df: int) -> float:
    return float(stats.t.ppf(p, df))


def power_decisive(n: int, *, delta: float, sd: float, margin: float, a: float) -> float:
    """Probability that ``n`` paired seeds give a decisive verdict at test level ``a``.

    Decisive: the difference test rejects (two-sided at ``a``: ``|mean| > t_{1-a/2} s/√n``) or
    TOST does (each side at ``a``: ``|mean| + t_{1-a} s/√n < m``) — any verdict but
    ``undecided``, as :func:`decide_family` reads one question. Exact up to quadrature: given the
    sample SD ``s`` the mean is normal, ``N(δ, σ²/n)``, and undecided exactly when
    ``max(0, m - t_{1-a} s/√n) <= |mean| <= t_{1-a/2} s/√n``; that probability is averaged over
    ``s`` (``(n - 1) s²/σ² ~ χ²_{n-1}``) at :data:`_GRID` equal-probability points. Both tests
    count at once: at a difference of about half the margin either may decide, and the larger
    of their separate powers (the rule before issue 28) understated the chance by enough to ask for
    about 1.5× the seeds needed.
    """
    if n < 2:
        return 0.0
    if sd <= 0:
        return 1.0
    df = n - 1
    s = sd * _chi_grid(df)
    se, tau = s / math.sqrt(n), sd / math.sqrt(n)
    hi = _t_quantile(1 - a / 2, df) * se
    lo = np.maximum(0.0, margin - _t_quantile(1 - a, df) * se)
    d = abs(delta)
    cdf = special.ndtr  # the standard normal CDF, without scipy.stats' per-call checks
    und = (cdf((hi - d) / tau) - cdf((lo - d) / tau)) + (cdf((-lo - d) / tau) - cdf((-hi - d) / tau))
    und = np.where(lo < hi, und, 0.0)
    return float(min(1.0, max(0.0, 1.0 - und.mean())))


def seeds_needed(*, delta: float, sd: float, margin: float, a: float, power: float = 0.8,
                 at_least: int = 2) -> int | None:
    """Smallest seed count whose interval is decisive with probability ``power`` if the true mean
    difference is ``delta`` and the paired standard deviation ``sd``; ``None`` beyond
    :data:`MAX_SEEDS_PLANNED` (the difference sits too close to the margin to decide)."""
    if not (math.isfinite(delta) and math.isfinite(sd)):
        return None

    def ok(n: int) -> bool:
        return power_decisive(n, delta=delta, sd=sd, margin=margin, a=a) >= power

    lo, hi = max(2, at_least), MAX_SEEDS_PLANNED
    if ok(lo):
        return lo
    if not ok(hi):
        return None
    while hi - lo > 1:  # ok(hi) and not ok(lo); power grows with n
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if ok(mid) else (mid, hi)
    return hi

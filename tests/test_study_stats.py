"""Convergence metrics and statistics: hand-computed values and reference implementations."""

import math

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import roc_auc_score

from transfuse.decide.convergence import convergence, curve_area, steps_to_threshold
from transfuse.decide.stats import delong, paired_test, summarize


def test_steps_to_threshold_first_crossing_and_never():
    steps, auc = [0, 10, 20, 30], [0.5, 0.79, 0.81, 0.95]
    assert steps_to_threshold(steps, auc, 0.8) == 20
    assert steps_to_threshold(steps, auc, 0.5) == 0
    assert steps_to_threshold(steps, auc, 0.96) is None
    assert steps_to_threshold(steps, [None, math.nan, 0.9, 0.9], 0.85) == 20  # undefined skipped


def test_curve_area_is_time_averaged_score():
    assert curve_area([0, 10], [0.5, 1.0]) == pytest.approx(0.75)
    # trapezoid over unequal spacing: (10*(0.5+0.7)/2 + 30*(0.7+0.9)/2) / 40
    assert curve_area([0, 10, 40], [0.5, 0.7, 0.9]) == pytest.approx((6 + 24) / 40)
    assert curve_area([0], [0.5]) is None
    assert curve_area([0, 10, 20], [0.6, None, 0.8]) == pytest.approx(0.7)


def test_convergence_relative_uses_last_validation_score():
    c = convergence([0, 10, 20, 30], [0.5, 0.8, 0.9, 0.84], absolute=[0.85], relative=[0.95, 1.0])
    assert c.final == 0.84
    assert c.absolute == {0.85: 20}
    assert c.relative == {0.95: 10, 1.0: 20}  # 0.95*0.84=0.798 first reached at 10


def test_summarize_matches_t_interval():
    x = [0.81, 0.84, 0.79, 0.86]
    s = summarize(x)
    m, sd = np.mean(x), np.std(x, ddof=1)
    half = stats.t.ppf(0.975, 3) * sd / 2
    assert (s.n, s.mean, s.sd) == (4, pytest.approx(m), pytest.approx(sd))
    assert (s.ci_low, s.ci_high) == (pytest.approx(m - half), pytest.approx(m + half))
    one = summarize([0.7, None, math.nan])
    assert one.n == 1 and one.sd is None and one.ci_low is None
    assert summarize([]) is None


def test_paired_test_matches_scipy_and_drops_missing_pairs():
    a, b = [0.80, 0.85, 0.83, None], [0.78, 0.80, 0.82, 0.9]
    t = paired_test(a, b)
    assert t.n == 3
    assert t.mean_diff == pytest.approx(np.mean([0.02, 0.05, 0.01]))
    assert t.p == pytest.approx(stats.ttest_rel(a[:3], b[:3]).pvalue)
    assert t.ci_low < t.mean_diff < t.ci_high
    assert paired_test([0.8, 0.9], [0.7, 0.8]).p is None  # identical differences: no test
    with pytest.raises(ValueError, match="equal lengths"):
        paired_test([1.0], [1.0, 2.0])


def _delong_slow(sa, sb, y):
    """DeLong et al. (1988) written from the paper: O(m·n) kernel, sample covariances."""
    def psi(x, z):
        return 1.0 if x > z else 0.5 if x == z else 0.0
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    m, n = len(pos), len(neg)
    v10 = np.array([[np.mean([psi(s[i], s[j]) for j in neg]) for i in pos] for s in (sa, sb)])
    v01 = np.array([[np.mean([psi(s[i], s[j]) for i in pos]) for j in neg] for s in (sa, sb)])
    auc = v10.mean(1)
    s10, s01 = np.cov(v10), np.cov(v01)
    cov = s10 / m + s01 / n
    var = cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]
    z = (auc[0] - auc[1]) / math.sqrt(var)
    return auc, math.sqrt(var), 2 * stats.norm.sf(abs(z))


def test_delong_binary_matches_the_paper_formula_with_ties():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 80)
    sa = np.round(y * 0.8 + rng.normal(0, 0.6, 80), 1)  # rounding makes ties
    sb = np.round(y * 0.4 + rng.normal(0, 0.6, 80), 1)
    auc, se, p = _delong_slow(sa, sb, y)
    probs = lambda s: np.stack([1 - s, s], 1)  # noqa: E731
    d = delong(probs(sa), probs(sb), y, task="multiclass")
    assert d.classes == 1
    assert (d.auc_a, d.auc_b) == (pytest.approx(auc[0]), pytest.approx(auc[1]))
    assert d.auc_a == pytest.approx(roc_auc_score(y, sa))
    assert d.se == pytest.approx(se, rel=1e-10)
    assert d.p == pytest.approx(p, rel=1e-10)
    assert d.ci_low < d.diff < d.ci_high


def test_delong_identical_models_and_macro_auc_matches_sklearn():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 150)
    pa = rng.dirichlet([1, 1, 1], 150) + np.eye(3)[y] * 0.5
    pa /= pa.sum(1, keepdims=True)
    same = delong(pa, pa, y, task="multiclass")
    assert same.diff == 0 and same.p == 1.0
    pb = rng.dirichlet([1, 1, 1], 150)
    d = delong(pa, pb, y, task="multiclass")
    assert d.classes == 3
    assert d.auc_a == pytest.approx(roc_auc_score(y, pa, multi_class="ovr", average="macro"))
    assert d.p < 0.001  # a clearly better model


def test_delong_macro_variance_agrees_with_bootstrap():
    rng = np.random.default_rng(2)
    n = 400
    y = rng.integers(0, 3, n)
    base = np.eye(3)[y]
    pa = base * 0.6 + rng.random((n, 3))
    pb = base * 0.4 + rng.random((n, 3)) + 0.3 * (pa - pa.mean())  # correlated with a
    d = delong(pa, pb, y, task="multiclass")
    diffs = []
    for _ in range(400):
        i = rng.integers(0, n, n)
        diffs.append(roc_auc_score(y[i], pa[i] / pa[i].sum(1, keepdims=True), multi_class="ovr")
                     - roc_auc_score(y[i], pb[i] / pb[i].sum(1, keepdims=True), multi_class="ovr"))
    # rank-based AUCs ignore the row normalisation only per class column; compare on raw scores
    boot_se = np.std(diffs, ddof=1)
    raw = delong(pa / pa.sum(1, keepdims=True), pb / pb.sum(1, keepdims=True), y, task="multiclass")
    assert raw.se == pytest.approx(boot_se, rel=0.2)
    assert d.classes == 3


def test_delong_multilabel_mask_excludes_entries():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, (120, 2))
    pa, pb = y * 0.5 + rng.random((120, 2)), rng.random((120, 2))
    mask = np.ones_like(y)
    mask[:60, 1] = 0
    d = delong(pa, pb, y, task="multilabel", mask=mask)
    expect = np.mean([roc_auc_score(y[:, 0], pa[:, 0]), roc_auc_score(y[60:, 1], pa[60:, 1])])
    assert d.auc_a == pytest.approx(expect)
    assert d.classes == 2

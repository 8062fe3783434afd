"""SVCCA, PWCCA, CCA and CKA against plain float64 NumPy implementations written from the papers.

The ``np_*`` functions below are the reference: the covariance formulation of CCA (Hotelling;
Raghu et al. 2017 §2), SVCCA as the google/svcca tutorial (centre, SVD, keep k directions, CCA,
mean), PWCCA as Morcos et al. 2018 (αᵢ ∝ Σⱼ |⟨hᵢ, zⱼ⟩| with whitened canonical variates hᵢ),
a literal port of google/svcca's ``get_cca_similarity`` core (for the thresholded mean) and the
Kornblith et al. demo's CKA. ``bench/analysis_speed.py`` times transfuse against these same
functions.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from transfuse.analysis import cca, linear_cka, pwcca, rbf_cka, similarity_grid, svcca


# -- the NumPy reference -----------------------------------------------------------------------------
def _inv_sqrt(s: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh(s)
    return (v / np.sqrt(w)) @ v.T


def np_cca(x: np.ndarray, y: np.ndarray):
    """Canonical correlations ρ (descending), canonical weight vectors and Σ^{-1/2} of each side."""
    xc, yc = x - x.mean(0), y - y.mean(0)
    n = len(x)
    sxx, syy, sxy = xc.T @ xc / (n - 1), yc.T @ yc / (n - 1), xc.T @ yc / (n - 1)
    ix, iy = _inv_sqrt(sxx), _inv_sqrt(syy)
    u, rho, vt = np.linalg.svd(ix @ sxy @ iy, full_matrices=False)
    return rho, u, vt.T, ix, iy


def np_svd_reduce(x: np.ndarray, keep: float | int) -> np.ndarray:
    """Centre and project on the top SVD directions (count, or variance fraction of s²)."""
    xc = x - x.mean(0)
    _, s, vt = np.linalg.svd(xc, full_matrices=False)
    if isinstance(keep, int):
        k = keep
    else:
        frac = np.cumsum(s**2) / np.sum(s**2)
        k = int(np.searchsorted(frac, keep - 1e-12)) + 1
    return xc @ vt[:k].T


def np_svcca(x: np.ndarray, y: np.ndarray, keep: float | int = 0.99) -> float:
    return float(np_cca(np_svd_reduce(x, keep), np_svd_reduce(y, keep))[0].mean())


def np_pwcca(x: np.ndarray, y: np.ndarray, side: str = "smaller") -> float:
    """ρ_PW = Σ αᵢ ρᵢ, αᵢ ∝ Σⱼ |⟨hᵢ, zⱼ⟩|, hᵢ unit-norm canonical variates, zⱼ centred neurons."""
    if side == "smaller":
        side = "x" if x.shape[1] <= y.shape[1] else "y"
    rho, a, b, ix, iy = np_cca(x, y)
    k = len(rho)
    z = (x if side == "x" else y)
    z = z - z.mean(0)
    h = z @ (ix @ a[:, :k] if side == "x" else iy @ b[:, :k])
    h = h / np.linalg.norm(h, axis=0)
    alpha = np.abs(h.T @ z).sum(1)
    alpha = alpha / alpha.sum()
    return float(alpha @ rho)


def np_linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Kornblith et al. demo, ``feature_space_linear_cka``."""
    x, y = x - x.mean(0), y - y.mean(0)
    return float(np.linalg.norm(x.T @ y) ** 2 / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)))


def google_cca_mean(acts1: np.ndarray, acts2: np.ndarray, threshold: float = 0.98) -> tuple[np.ndarray, float]:
    """google/svcca ``get_cca_similarity`` (epsilon=0), neurons × datapoints: (coefs, 'mean')."""
    n1 = acts1.shape[0]
    cov = np.cov(acts1, acts2)
    sxx, sxy, syx, syy = cov[:n1, :n1], cov[:n1, n1:], cov[n1:, :n1], cov[n1:, n1:]
    xmax, ymax = np.max(np.abs(sxx)), np.max(np.abs(syy))
    sxx, syy = sxx / xmax, syy / ymax
    sxy, syx = sxy / np.sqrt(xmax * ymax), syx / np.sqrt(xmax * ymax)

    def sqrtm(a):
        w, v = np.linalg.eigh(a)
        return np.dot(v, np.dot(np.diag(np.sqrt(np.maximum(w, 0))), v.T))

    ixx, iyy = sqrtm(np.linalg.pinv(sxx)), sqrtm(np.linalg.pinv(syy))
    s = np.abs(np.linalg.svd(ixx @ sxy @ iyy, compute_uv=False))
    idx = None
    for i in range(len(s)):  # cca_core.sum_threshold
        if np.sum(s[:i]) / np.sum(s) >= threshold:
            idx = i
            break
    return s, float(np.mean(s[:idx]))


def correlated(n: int, p: int, q: int, *, seed: int = 0, shared: int = 8, noise: float = 1.0):
    """Two representations sharing a latent factor, with decaying spectra (like trained layers)."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, shared))
    x = z @ rng.standard_normal((shared, p)) + noise * rng.standard_normal((n, p)) * np.linspace(1, 0.1, p)
    y = np.maximum(z @ rng.standard_normal((shared, q)) + noise * rng.standard_normal((n, q)), 0) + 3.0
    return x, y


# -- tests -------------------------------------------------------------------------------------------
def test_kornblith_demo_reference_values():
    np.random.seed(1337)
    x = np.random.randn(100, 10)
    y = np.random.randn(100, 10) + x
    assert linear_cka(x, y) == pytest.approx(0.55761, abs=5e-6)
    assert rbf_cka(x, y, threshold=0.5) == pytest.approx(0.65483, abs=5e-6)
    assert linear_cka(x, y, debiased=True) == pytest.approx(0.51346, abs=5e-6)
    assert linear_cka(x, y) == pytest.approx(np_linear_cka(x, y), abs=1e-12)


@pytest.mark.parametrize("p, q", [(30, 30), (20, 45), (45, 20)])
def test_cca_coefficients_match_the_covariance_formulation(p, q):
    x, y = correlated(600, p, q, seed=p + q)
    res = cca(x, y)
    rho = np_cca(x, y)[0]
    assert res.coefs.shape == (min(p, q),)
    np.testing.assert_allclose(res.coefs.numpy(), rho, atol=1e-9)
    assert res.mean == pytest.approx(rho.mean(), abs=1e-9)


def test_thresholded_mean_matches_google_svcca():
    x, y = correlated(800, 25, 35, seed=3)
    s, mean98 = google_cca_mean(x.T, y.T)
    res = cca(x, y, threshold=0.98)
    np.testing.assert_allclose(res.coefs.numpy(), s, atol=1e-8)
    assert res.thresholded_mean == pytest.approx(mean98, abs=1e-8)
    assert res.thresholded_mean > res.mean  # the weakest coefficients are cut off
    _, mean50 = google_cca_mean(x.T, y.T, threshold=0.5)
    assert cca(x, y, threshold=0.5).thresholded_mean == pytest.approx(mean50, abs=1e-8)


@pytest.mark.parametrize("keep", [0.99, 0.9, 7])
def test_svcca_matches_numpy_to_1e6(keep):
    x, y = correlated(700, 40, 60, seed=11)
    res = svcca(x, y, keep=keep)
    assert res.mean == pytest.approx(np_svcca(x, y, keep), abs=1e-6)
    if isinstance(keep, int):
        assert (res.dims_x, res.dims_y) == (7, 7)
    else:
        assert res.variance_x >= keep - 1e-12 and res.variance_y >= keep - 1e-12


@pytest.mark.parametrize("p, q", [(30, 30), (20, 45), (45, 20)])
def test_pwcca_matches_the_paper_for_either_order_and_unequal_widths(p, q):
    x, y = correlated(700, p, q, seed=5)
    for side in ("x", "y"):
        assert pwcca(x, y, weighted_by=side).value == pytest.approx(np_pwcca(x, y, side), abs=1e-6)
    assert pwcca(x, y).value == pytest.approx(np_pwcca(x, y), abs=1e-6)
    # weights from the narrower side whichever order the arguments come in
    if p != q:
        assert pwcca(x, y).value == pytest.approx(pwcca(y, x).value, abs=1e-10)
        assert pwcca(x, y).weighted_by == ("x" if p < q else "y")
    assert pwcca(x, y, weighted_by="x").value == pytest.approx(pwcca(y, x, weighted_by="y").value, abs=1e-10)
    w = pwcca(x, y).weights
    assert w.sum().item() == pytest.approx(1.0) and bool((w >= 0).all())


def test_reduced_pwcca_is_pwcca_of_the_svd_reduced_data():
    x, y = correlated(500, 50, 40, seed=8)
    ours = pwcca(x, y, keep=0.95).value
    ref = np_pwcca(np_svd_reduce(x, 0.95), np_svd_reduce(y, 0.95))
    assert ours == pytest.approx(ref, abs=1e-6)


def test_grid_equals_numpy_pair_by_pair():
    rng = np.random.default_rng(0)
    layers = {f"l{i}": correlated(400, 12 + 6 * i, 16, seed=i)[0] for i in range(3)}
    others = {f"m{i}": correlated(400, 12 + 6 * i, 10 + 5 * i, seed=i)[1] + 0.1 * rng.standard_normal((400, 10 + 5 * i))
              for i in range(3)}
    g = similarity_grid({k: torch.tensor(v) for k, v in layers.items()},
                        {k: torch.tensor(v) for k, v in others.items()}, keep=0.99)
    for i, (a, x) in enumerate(layers.items()):
        for j, (b, y) in enumerate(others.items()):
            assert g.values["cca"][i, j] == pytest.approx(np_cca(x, y)[0].mean(), abs=1e-6)
            assert g.values["svcca"][i, j] == pytest.approx(np_svcca(x, y, 0.99), abs=1e-6)
            assert g.values["pwcca"][i, j] == pytest.approx(np_pwcca(x, y), abs=1e-6)
            assert g.values["linear_cka"][i, j] == pytest.approx(np_linear_cka(x, y), abs=1e-6)

"""CCA, SVCCA and PWCCA on ``(n_samples, n_features)`` representations, in float64.

Every measure here is computed from one *factorisation* per representation: the thin SVD of the
centred data, ``x − mean = U diag(s) Vᵀ`` (:func:`factor`). The canonical correlations of ``x``
and ``y`` are the singular values of ``M = Uₓᵀ U_y`` (the cosines of the principal angles between
the two column spaces), so

- CCA needs one small symmetric eigendecomposition (of ``M Mᵀ``: ρ² are its eigenvalues);
- SVCCA (Raghu et al. 2017) keeps the top-``k`` singular directions of each side — the leading
  ``k`` columns of ``U`` — so its coefficients are the singular values of a corner of ``M``;
- PWCCA (Morcos et al. 2018) weights each canonical correlation ρᵢ by αᵢ ∝ Σⱼ |⟨hᵢ, zⱼ⟩|, where
  hᵢ = U A[:, i] are the (unit-norm) canonical variates and zⱼ the centred neurons; with the
  factorisation ``Hᵀ Z = Aᵀ diag(s) Vᵀ`` costs no pass over the samples;
- linear CKA is ``‖diag(sₓ) M diag(s_y)‖²_F / (‖sₓ²‖ ‖s_y²‖)`` from the same ``M``.

:func:`similarity_grid` factors each layer once and compares every pair from the factors, which is
what makes a layer × layer grid cheap. The single-pair functions use the same code.

Differences from google/svcca (see docs/ANALYSIS.md): canonical variates are the whitened ones of
the papers (the reference PWCCA uses un-whitened directions and crashes when ``acts2`` is the
narrower layer); PWCCA weights use centred activations; options are keyword-only.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..errors import ConfigError, DataError
from ._common import as_matrix, check_pair, check_variance, raise_not_finite, register_similarity

__all__ = ["Factor", "factor", "CCAResult", "SVCCAResult", "PWCCAResult", "cca", "svcca", "pwcca",
           "SimilarityGrid", "similarity_grid", "choose_dims", "GRID_MEASURES"]

GRID_MEASURES = ("cca", "svcca", "pwcca", "linear_cka")
Keep = float | int | None


@dataclass(frozen=True, eq=False)
class Factor:
    """Centred thin SVD of one representation: ``x − x.mean(0) = u @ diag(s) @ vt``.

    Attributes:
        u: ``(n_samples, r)`` orthonormal columns, ``r`` = numerical rank.
        s: ``(r,)`` singular values, descending.
        vt: ``(r, n_features)`` right singular vectors (identity for SVD-reduced data).
    """

    u: Tensor
    s: Tensor
    vt: Tensor

    @property
    def n_samples(self) -> int:
        return int(self.u.shape[0])

    @property
    def n_features(self) -> int:
        return int(self.vt.shape[1])

    @property
    def rank(self) -> int:
        return int(self.s.shape[0])

    def reduce(self, k: int) -> Factor:
        """The data projected on its top-``k`` directions, ``u[:, :k] diag(s[:k])`` (k features)."""
        k = min(k, self.rank)
        return Factor(self.u[:, :k], self.s[:k], torch.eye(k, dtype=self.s.dtype, device=self.s.device))


def _gram(a: Tensor) -> Tensor:
    """``aᵀ a``. On CPU through NumPy, whose ``a.T @ a`` is a symmetric rank-k update (half a GEMM)."""
    if a.device.type == "cpu":
        an = a.detach().numpy()
        with np.errstate(invalid="ignore", over="ignore"):  # NaN/inf are reported by the caller
            return torch.from_numpy(an.T @ an)
    return a.mT @ a


def _eigh(g: Tensor, *, vectors: bool = True) -> tuple[Tensor, Tensor | None]:
    """Ascending eigenvalues (and vectors) of a symmetric matrix; on CPU through SciPy's
    divide-and-conquer LAPACK driver, ~1.5× faster than ``torch.linalg.eigh`` for r ≈ 500."""
    if g.device.type == "cpu":
        import scipy.linalg

        out = scipy.linalg.eigh(g.detach().numpy(), eigvals_only=not vectors, driver="evd",
                                overwrite_a=False, check_finite=False)
        if vectors:
            return torch.from_numpy(out[0]), torch.from_numpy(out[1])
        return torch.from_numpy(out), None
    if vectors:
        return torch.linalg.eigh(g)
    return torch.linalg.eigvalsh(g), None


RTOL = 1e-6     # directions with s ≤ RTOL · s_max are null (dead or duplicated neurons)
GRAM_OK = 1e-4  # the Gram route is accurate while every kept s ≥ GRAM_OK · s_max (κ ≤ 1e4)


def factor(x: Tensor | np.ndarray, *, name: str = "x") -> Factor:
    """Centre ``x`` ``(n_samples, n_features)`` and take its thin SVD, dropping null directions.

    Computed from the eigendecomposition of the smaller Gram matrix (the covariance formulation
    of the papers, ~2× faster than an SVD of the data); when the kept spectrum spans more than
    four decades, where squaring the condition number would cost accuracy, the SVD of the data
    is taken instead. Directions with singular value ≤ ``1e-6 · s_max`` are dropped either way, so
    dead or duplicated neurons do not blow up the whitening.

    Raises:
        DataError: bad shape, non-finite values, or zero variance.
    """
    x = as_matrix(x, name=name, check_finite=False)
    xc = x - x.mean(0, keepdim=True)
    n, p = xc.shape
    gram = _gram(xc) if p <= n else _gram(xc.mT)
    if not bool(torch.isfinite(gram).all()):  # NaN/inf in x always reach the Gram matrix
        raise_not_finite(name)
    check_variance(x, name=name)
    lam, vec = _eigh(gram)
    s = lam.flip(0).clamp_min(0).sqrt()
    vec = vec.flip(1)
    keep = s > RTOL * s[0]
    r = max(int(keep.sum()), 1)
    if float(s[r - 1]) >= GRAM_OK * float(s[0]):
        s, vec = s[:r], vec[:, :r]
        if p <= n:
            return Factor(xc @ (vec / s), s, vec.mT)
        return Factor(vec, s, (xc.mT @ vec / s).mT)
    u, s, vt = torch.linalg.svd(xc, full_matrices=False)
    r = max(int((s > RTOL * s[0]).sum()), 1)
    return Factor(u[:, :r], s[:r], vt[:r])


def choose_dims(s: Tensor, *, keep: Keep, max_dims: int | None = None) -> int:
    """How many SVD directions to keep: ``keep`` as a count (int ≥ 1) or a variance fraction.

    A float ``keep`` in (0, 1] keeps the fewest directions whose squared singular values (variance)
    reach that fraction of the total; ``None`` keeps all. ``max_dims`` caps the result.
    """
    r = int(s.shape[0])
    if keep is None:
        k = r
    elif isinstance(keep, bool) or not isinstance(keep, (int, float)):
        raise ConfigError(f"keep={keep!r} must be a count (int >= 1), a variance fraction in (0, 1] or None")
    elif isinstance(keep, int):
        if keep < 1:
            raise ConfigError(f"keep={keep} must be >= 1 directions (or a fraction in (0, 1])")
        k = min(keep, r)
    else:
        if not 0 < keep <= 1:
            raise ConfigError(f"keep={keep} must be a variance fraction in (0, 1] (or an int count)")
        var = s.square()
        frac = torch.cumsum(var, 0) / var.sum()
        k = min(int((frac < keep - 1e-12).sum()) + 1, r)
    if max_dims is not None:
        if max_dims < 1:
            raise ConfigError(f"max_dims={max_dims} must be >= 1")
        k = min(k, max_dims)
    return k


def thresholded_mean(coefs: Tensor, threshold: float) -> float:
    """google/svcca's summary: mean of the leading coefficients holding ``threshold`` of their sum.

    The cut is the smallest ``i`` with ``sum(coefs[:i]) / sum(coefs) ≥ threshold`` (all
    coefficients when no such ``i < len``), exactly as ``cca_core.sum_threshold``.
    """
    if not 0 < threshold <= 1:
        raise ConfigError(f"threshold={threshold} must be in (0, 1]")
    total = float(coefs.sum())
    if total <= 0:
        return 0.0
    prefix = torch.cat([coefs.new_zeros(1), torch.cumsum(coefs, 0)[:-1]]) / total
    hit = torch.nonzero(prefix >= threshold)
    idx = int(hit[0]) if len(hit) else len(coefs)
    return float(coefs[:idx].mean())


@dataclass(frozen=True, eq=False)
class CCAResult:
    """Canonical correlations of two representations.

    Attributes:
        coefs: ``(min(rank_x, rank_y),)`` canonical correlations in [0, 1], descending.
        mean: their plain mean (the usual "mean CCA similarity").
        thresholded_mean: google/svcca's ``mean`` output (see :func:`thresholded_mean`).
        n_samples: datapoints used.
    """

    coefs: Tensor
    mean: float
    thresholded_mean: float
    n_samples: int


@dataclass(frozen=True, eq=False)
class SVCCAResult:
    """SVCCA: CCA after keeping the top SVD directions of each side.

    Attributes:
        coefs: ``(min(dims_x, dims_y),)`` canonical correlations, descending.
        mean: plain mean of ``coefs`` (the SVCCA similarity).
        dims_x, dims_y: directions kept.
        variance_x, variance_y: fraction of each side's variance the kept directions hold.
    """

    coefs: Tensor
    mean: float
    dims_x: int
    dims_y: int
    variance_x: float
    variance_y: float


@dataclass(frozen=True, eq=False)
class PWCCAResult:
    """Projection-weighted CCA.

    Attributes:
        value: Σᵢ αᵢ ρᵢ, the PWCCA similarity.
        coefs: ``(k,)`` canonical correlations ρᵢ, descending.
        weights: ``(k,)`` projection weights αᵢ (sum 1).
        weighted_by: ``"x"`` or ``"y"``: the side whose neurons define the weights.
        dims_x, dims_y: features of each side after any SVD reduction.
    """

    value: float
    coefs: Tensor
    weights: Tensor
    weighted_by: str
    dims_x: int
    dims_y: int


def _need_samples(n: int, px: int, py: int, what: str, fix: str) -> None:
    # Centred data lives in n − 1 dimensions: once px + py > n − 1 the two spans must share
    # directions and some canonical correlations are 1 by construction, whatever the data.
    if n <= px + py:
        raise DataError(f"{what} needs more samples than the two widths together: got n={n} with "
                        f"{px} + {py} features; {fix}")


def _coefs(m: Tensor, *, side: str | None = None) -> tuple[Tensor, Tensor | None]:
    """Canonical correlations from ``M = Uₓᵀ U_y`` (descending) and, for ``side`` ``"x"``/``"y"``,
    that side's canonical directions (``(r_side, k)``), via the eigendecomposition of ``M Mᵀ`` or
    ``Mᵀ M`` (cheaper than an SVD of ``M``; ρ² is accurate to ~1e-16)."""
    k = min(m.shape)
    if side is None:
        g = m @ m.mT if m.shape[0] <= m.shape[1] else m.mT @ m
        lam = _eigh(g, vectors=False)[0].flip(0)[:k]
        return lam.clamp(0.0, 1.0).sqrt(), None
    g = m @ m.mT if side == "x" else m.mT @ m
    lam, vec = _eigh(g)
    lam, vec = lam.flip(0)[:k], vec.flip(1)[:, :k]
    return lam.clamp(0.0, 1.0).sqrt(), vec


def _pw(rho: Tensor, vecs: Tensor, f: Factor) -> tuple[float, Tensor]:
    # |<h_i, z_j>| for canonical variates h = U·vecs and centred neurons Z = U diag(s) Vᵀ.
    w = (vecs.mT * f.s[None, :]) @ f.vt
    w = w.abs().sum(1)
    w = w / w.sum()
    return float((w * rho).sum()), w


def _side(weighted_by: str, px: int, py: int) -> str:
    if weighted_by not in ("smaller", "x", "y"):
        raise ConfigError(f"weighted_by={weighted_by!r} must be 'smaller', 'x' or 'y'")
    if weighted_by == "smaller":
        return "x" if px <= py else "y"
    return weighted_by


def cca(x: Tensor | np.ndarray, y: Tensor | np.ndarray, *, threshold: float = 0.98) -> CCAResult:
    """All canonical correlations between ``x`` ``(n, p)`` and ``y`` ``(n, q)``.

    Invariant to any invertible linear map of either side: ``cca(x, x @ A).mean == 1``.

    Args:
        threshold: cut of :attr:`CCAResult.thresholded_mean` (google/svcca default 0.98).

    Raises:
        DataError: shapes differ in ``n``, ``n ≤ p + q``, zero variance or non-finite values.
    """
    x, y = check_pair(x, y, what="cca")
    _need_samples(x.shape[0], x.shape[1], y.shape[1], "cca",
                  "pass more datapoints (5–10× the features) or use svcca(x, y, keep=k)")
    fx, fy = factor(x, name="x"), factor(y, name="y")
    rho, _ = _coefs(fx.u.mT @ fy.u)
    return CCAResult(rho, float(rho.mean()), thresholded_mean(rho, threshold), x.shape[0])


def svcca(x: Tensor | np.ndarray, y: Tensor | np.ndarray, *, keep: Keep = 0.99,
          max_dims: int | None = None) -> SVCCAResult:
    """SVCCA: keep each side's top SVD directions, then CCA; the similarity is the mean coefficient.

    Args:
        x: ``(n, p)``; y: ``(n, q)``.
        keep: directions to keep per side: an int count, a variance fraction in (0, 1] (default
            0.99) or ``None`` (all).
        max_dims: cap on the directions kept per side (e.g. ``n // 5`` for few datapoints).

    Raises:
        DataError: bad shapes, zero variance, or ``n ≤ dims_x + dims_y`` (lower ``keep``/``max_dims``).
    """
    x, y = check_pair(x, y, min_samples=3, what="svcca")
    fx, fy = factor(x, name="x"), factor(y, name="y")
    kx = choose_dims(fx.s, keep=keep, max_dims=max_dims)
    ky = choose_dims(fy.s, keep=keep, max_dims=max_dims)
    _need_samples(x.shape[0], kx, ky, "svcca", "lower keep or pass max_dims")
    rho, _ = _coefs(fx.u[:, :kx].mT @ fy.u[:, :ky])
    vx = float(fx.s[:kx].square().sum() / fx.s.square().sum())
    vy = float(fy.s[:ky].square().sum() / fy.s.square().sum())
    return SVCCAResult(rho, float(rho.mean()), kx, ky, vx, vy)


def pwcca(x: Tensor | np.ndarray, y: Tensor | np.ndarray, *, keep: Keep = None,
          max_dims: int | None = None, weighted_by: str = "smaller") -> PWCCAResult:
    """Projection-weighted CCA (Morcos et al. 2018), correct for either order and unequal widths.

    Args:
        x: ``(n, p)``; y: ``(n, q)``.
        keep: optionally reduce each side to its top SVD directions first (as :func:`svcca`);
            the reduced data's principal components then play the role of neurons.
        max_dims: cap on the directions kept per side.
        weighted_by: whose neurons weight the coefficients: ``"smaller"`` (the narrower side, x
            on ties, as google/svcca intends), ``"x"`` or ``"y"``. With ``"smaller"`` and unequal
            widths ``pwcca(x, y) == pwcca(y, x)``.

    Raises:
        DataError: bad shapes, zero variance, or too few samples for the widths.
    """
    x, y = check_pair(x, y, min_samples=3, what="pwcca")
    if keep is None and max_dims is None:
        _need_samples(x.shape[0], x.shape[1], y.shape[1], "pwcca",
                      "pass more datapoints or reduce first with keep=/max_dims=")
    fx, fy = factor(x, name="x"), factor(y, name="y")
    if keep is not None or max_dims is not None:
        fx = fx.reduce(choose_dims(fx.s, keep=keep, max_dims=max_dims))
        fy = fy.reduce(choose_dims(fy.s, keep=keep, max_dims=max_dims))
        _need_samples(x.shape[0], fx.rank, fy.rank, "pwcca", "lower keep or max_dims")
    side = _side(weighted_by, fx.n_features, fy.n_features)
    rho, vecs = _coefs(fx.u.mT @ fy.u, side=side)
    value, w = _pw(rho, vecs, fx if side == "x" else fy)
    return PWCCAResult(value, rho, w, side, fx.n_features, fy.n_features)


@register_similarity("cca", grid=True, description="mean canonical correlation (needs n > p + q)")
def _cca_mean(x: Tensor, y: Tensor) -> float:
    return cca(x, y).mean


@register_similarity("svcca", grid=True, description="SVCCA, 99% of variance kept, mean coefficient")
def _svcca_mean(x: Tensor, y: Tensor) -> float:
    return svcca(x, y).mean


@register_similarity("pwcca", grid=True, description="projection-weighted CCA (Morcos et al. 2018)")
def _pwcca_value(x: Tensor, y: Tensor) -> float:
    return pwcca(x, y).value


# -- layer × layer grids ----------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class SimilarityGrid:
    """Similarity of every layer of one set with every layer of another.

    Attributes:
        names_x, names_y: layer names (rows, columns).
        values: measure → ``(len(names_x), len(names_y))`` float64; NaN where a pair was not
            comparable (``comparable`` said no).
        dims_x, dims_y: SVD directions kept per layer for svcca/pwcca (reduced variants).
    """

    names_x: tuple[str, ...]
    names_y: tuple[str, ...]
    values: dict[str, Tensor]
    dims_x: dict[str, int]
    dims_y: dict[str, int]


@dataclass(frozen=True, eq=False)
class _Layer:
    f: Factor          # full factorisation
    k_sv: int          # svcca directions
    k_pw: int | None   # pwcca directions (None: full data)


MaxDims = int | Callable[[int], int] | None


def _prepare(x: Tensor, name: str, keep: Keep, max_dims: MaxDims, pwcca_keep: Keep,
             pwcca_max_dims: MaxDims) -> _Layer:
    f = factor(x, name=name)
    cap = lambda m: m(f.n_samples) if callable(m) else m  # noqa: E731
    k_pw = (None if pwcca_keep is None and pwcca_max_dims is None
            else choose_dims(f.s, keep=pwcca_keep, max_dims=cap(pwcca_max_dims)))
    return _Layer(f, choose_dims(f.s, keep=keep, max_dims=cap(max_dims)), k_pw)


def _pair_values(lx: _Layer, ly: _Layer, measures: Sequence[str], *, m: Tensor,
                 weighted_by: str = "smaller") -> dict[str, float]:
    """Every requested measure of one pair from the factorisations and ``m = Uₓᵀ U_y``."""
    out: dict[str, float] = {}
    full_pw = "pwcca" in measures and lx.k_pw is None
    if "cca" in measures or full_pw:
        side = _side(weighted_by, lx.f.n_features, ly.f.n_features) if full_pw else None
        rho, vecs = _coefs(m, side=side)
        out["cca"] = float(rho.mean())
        if full_pw:
            out["pwcca"] = _pw(rho, vecs, lx.f if side == "x" else ly.f)[0]
    red_pw = "pwcca" in measures and not full_pw
    if "svcca" in measures or red_pw:
        fx, fy = (lx.f.reduce(lx.k_pw), ly.f.reduce(ly.k_pw)) if red_pw else (lx.f, ly.f)
        side = _side(weighted_by, fx.n_features, fy.n_features) if red_pw else None
        same = red_pw and (lx.k_pw, ly.k_pw) == (lx.k_sv, ly.k_sv)
        rho, vecs = _coefs(m[:lx.k_sv, :ly.k_sv], side=side if same else None)
        out["svcca"] = float(rho.mean())
        if red_pw:
            if not same:
                rho, vecs = _coefs(m[:fx.rank, :fy.rank], side=side)
            out["pwcca"] = _pw(rho, vecs, fx if side == "x" else fy)[0]
    if "linear_cka" in measures:
        sx2, sy2 = lx.f.s.square(), ly.f.s.square()
        num = (lx.f.s[:, None] * m * ly.f.s[None, :]).square().sum()
        out["linear_cka"] = float(num / (sx2.norm() * sy2.norm()))
    return {k: out[k] for k in measures}


class _Stacked:
    """The ``U`` of every ``ys`` layer with ``n`` samples side by side, for one GEMM per x layer."""

    def __init__(self, ly: Mapping[str, _Layer], n: int, shuffle_seed: int | None) -> None:
        self.names = [b for b, l in ly.items() if l.f.n_samples == n]
        us = [ly[b].f.u for b in self.names]
        if shuffle_seed is not None:  # the chance level: the same row shuffle for every layer
            perm = torch.randperm(n, generator=torch.Generator().manual_seed(shuffle_seed))
            us = [u[perm.to(u.device)] for u in us]
        self.u = torch.cat(us, 1) if len(us) > 1 else us[0]
        ends = torch.tensor([u.shape[1] for u in us]).cumsum(0).tolist()
        self.spans = dict(zip(self.names, zip([0, *ends[:-1]], ends)))


def _products(a: str, la: _Layer, st: _Stacked, ok: dict) -> list[tuple[str, Tensor]]:
    """``(b, Uₐᵀ U_b)`` for every comparable ``b``, from one product with the stacked ``U``s
    (fewer, larger GEMMs run ~15 % faster than one per pair)."""
    wanted = [b for b in st.names if ok[(a, b)]]
    if len(wanted) < len(st.names):  # e.g. diagonal-only grids: multiply just what is needed
        return [(b, la.f.u.mT @ st.u[:, slice(*st.spans[b])]) for b in wanted]
    row = la.f.u.mT @ st.u
    return [(b, row[:, slice(*st.spans[b])]) for b in wanted]


def _check_grid_pair(nx: str, ny: str, lx: _Layer, ly: _Layer, measures: Sequence[str]) -> None:
    n = lx.f.n_samples
    if ly.f.n_samples != n:
        raise DataError(f"layer {nx!r} has {n} datapoints but {ny!r} has {ly.f.n_samples}; "
                        "rows must be the same datapoints in both")
    if "cca" in measures or ("pwcca" in measures and lx.k_pw is None):
        _need_samples(n, lx.f.n_features, ly.f.n_features, f"cca of {nx!r} vs {ny!r}",
                      "pass more datapoints or compare reduced data (svcca, pwcca_keep=)")
    if "svcca" in measures:
        _need_samples(n, lx.k_sv, ly.k_sv, f"svcca of {nx!r} vs {ny!r}", "lower keep or max_dims")
    if "pwcca" in measures and lx.k_pw is not None:
        _need_samples(n, lx.k_pw, ly.k_pw or 0, f"pwcca of {nx!r} vs {ny!r}", "lower pwcca_keep")


def similarity_grid(xs: Mapping[str, Tensor], ys: Mapping[str, Tensor] | None = None, *,
                    measures: Sequence[str] = GRID_MEASURES, keep: Keep = 0.99,
                    max_dims: MaxDims = None, pwcca_keep: Keep = None,
                    pwcca_max_dims: MaxDims = None, weighted_by: str = "smaller",
                    comparable: Callable[[str, str], bool] | None = None,
                    shuffle_seed: int | None = None) -> SimilarityGrid:
    """Every measure for every (layer of ``xs``, layer of ``ys``) pair, factoring each layer once.

    Args:
        xs: layer name → ``(n, p_layer)`` activations; ys: the other set (default ``xs``).
        measures: any of ``cca`` (mean), ``svcca``, ``pwcca``, ``linear_cka``.
        keep, max_dims: svcca reduction (see :func:`svcca`); ``max_dims`` may be a function of
            the layer's sample count, e.g. ``lambda n: n // 5``.
        pwcca_keep, pwcca_max_dims: reduce before pwcca (``None``: the full data, as Morcos et al.).
        comparable: ``fn(name_x, name_y)``; pairs it rejects get NaN and are not computed.
        shuffle_seed: compare with the rows of ``ys`` randomly permuted (a chance baseline).

    Returns:
        :class:`SimilarityGrid`; each value equals the single-pair function's to rounding.

    Raises:
        DataError: a comparable pair differs in ``n`` or has too few samples (before computing).
    """
    bad = [m for m in measures if m not in GRID_MEASURES]
    if bad or not measures:
        raise ConfigError(f"measures={list(measures)!r}: grids compute {', '.join(GRID_MEASURES)}")
    ys = xs if ys is None else ys
    prep = lambda d: {k: _prepare(v, k, keep, max_dims, pwcca_keep, pwcca_max_dims) for k, v in d.items()}  # noqa: E731
    lx = prep(xs)
    ly = lx if ys is xs else prep(ys)
    ok = {(a, b): comparable is None or comparable(a, b) for a in lx for b in ly}
    for (a, b), c in ok.items():
        if c:
            _check_grid_pair(a, b, lx[a], ly[b], measures)
    vals = {m: torch.full((len(lx), len(ly)), float("nan"), dtype=torch.float64) for m in measures}
    names_y = list(ly)
    stacks: dict[int, _Stacked] = {}
    for i, a in enumerate(lx):
        n = lx[a].f.n_samples
        if n not in stacks:
            stacks[n] = _Stacked(ly, n, shuffle_seed)
        for b, m in _products(a, lx[a], stacks[n], ok):
            for k, v in _pair_values(lx[a], ly[b], measures, m=m, weighted_by=weighted_by).items():
                vals[k][i, names_y.index(b)] = v
    return SimilarityGrid(tuple(lx), tuple(ly), vals, {k: v.k_sv for k, v in lx.items()},
                          {k: v.k_sv for k, v in ly.items()})

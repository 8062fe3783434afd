"""Centred kernel alignment (Kornblith et al. 2019): linear, RBF, debiased, and streaming.

Formulas follow the authors' demo (google-research ``representation_similarity/Demo.ipynb``):

- linear CKA in feature space, ``‖Yᵀ X‖²_F / (‖Xᵀ X‖_F ‖Yᵀ Y‖_F)`` on column-centred data, and its
  debiased form (the unbiased HSIC estimator of Song et al. 2012, n ≥ 4);
- RBF CKA on Gram matrices, bandwidth ``threshold · sqrt(median squared distance)``;
- :class:`MinibatchCKA`: the *exact* linear CKA (biased or debiased) of all samples seen, from
  running sums — memory O(p² + q²), independent of the number of samples.

CKA is invariant to orthogonal transforms and isotropic scaling of either side (not to general
linear maps, unlike CCA). Results are Python floats; 1 means identical up to those transforms.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ..errors import ConfigError, DataError
from ._common import check_pair, check_variance, register_similarity

__all__ = ["linear_cka", "rbf_cka", "gram_linear", "gram_rbf", "center_gram", "cka_from_grams",
           "MinibatchCKA"]


def _min_n(debiased: bool) -> int:
    return 4 if debiased else 2


def _debiased_dot(xty: Tensor, rows_x: Tensor, rows_y: Tensor, nx: Tensor, ny: Tensor, n: int) -> Tensor:
    # Demo's _debiased_dot_product_similarity_helper (unbiased HSIC, up to a constant).
    return xty - n / (n - 2.0) * (rows_x @ rows_y) + nx * ny / ((n - 1) * (n - 2))


def linear_cka(x: Tensor | np.ndarray, y: Tensor | np.ndarray, *, debiased: bool = False) -> float:
    """Linear CKA between ``x`` ``(n, p)`` and ``y`` ``(n, q)``.

    Args:
        debiased: use the unbiased HSIC estimator (needs n ≥ 4); less inflated for few samples.

    Raises:
        DataError: shapes differ in ``n``, too few samples, zero variance, non-finite values.
    """
    x, y = check_pair(x, y, min_samples=_min_n(debiased), what="debiased CKA" if debiased else "CKA")
    check_variance(x, name="x")
    check_variance(y, name="y")
    x = x - x.mean(0, keepdim=True)
    y = y - y.mean(0, keepdim=True)
    xty = (y.mT @ x).square().sum()
    nxx = (x.mT @ x).square().sum()
    nyy = (y.mT @ y).square().sum()
    if not debiased:
        return float(xty / (nxx.sqrt() * nyy.sqrt()))
    n = x.shape[0]
    rx, ry = x.square().sum(1), y.square().sum(1)
    sx, sy = rx.sum(), ry.sum()
    num = _debiased_dot(xty, rx, ry, sx, sy, n)
    den = (_debiased_dot(nxx, rx, rx, sx, sx, n) * _debiased_dot(nyy, ry, ry, sy, sy, n)).sqrt()
    return float(num / den)


def gram_linear(x: Tensor) -> Tensor:
    """``x xᵀ`` for ``x`` ``(n, p)`` → ``(n, n)``."""
    return x @ x.mT


def gram_rbf(x: Tensor, *, threshold: float = 1.0) -> Tensor:
    """RBF Gram ``exp(−d² / (2 · threshold² · median(d²)))`` for ``x`` ``(n, p)`` → ``(n, n)``.

    The median runs over all n² squared distances (diagonal zeros included), as in the demo.
    """
    if threshold <= 0:
        raise ConfigError(f"threshold={threshold} must be > 0 (bandwidth as a fraction of the median distance)")
    dots = x @ x.mT
    sq = dots.diagonal()
    d2 = (sq[:, None] + sq[None, :] - 2 * dots).clamp_min(0)
    flat = d2.flatten()
    m = flat.numel()
    lo = flat.kthvalue((m + 1) // 2).values
    hi = flat.kthvalue(m // 2 + 1).values
    med = (lo + hi) / 2  # NumPy's median: the mean of the two middle values for even counts
    if float(med) <= 0:
        raise DataError(f"RBF CKA: the median squared distance between the {x.shape[0]} samples is 0 "
                        "(most samples identical); use linear_cka or more varied inputs")
    return torch.exp(-d2 / (2 * threshold**2 * med))


def center_gram(g: Tensor, *, unbiased: bool = False) -> Tensor:
    """Double-centre a symmetric Gram matrix ``(n, n)``; ``unbiased`` as Székely & Rizzo (2014)."""
    g = g.clone()
    n = g.shape[0]
    if unbiased:
        g.fill_diagonal_(0)
        means = g.sum(0) / (n - 2)
        means = means - means.sum() / (2 * (n - 1))
        g = g - means[:, None] - means[None, :]
        g.fill_diagonal_(0)
    else:
        means = g.mean(0)
        means = means - means.mean() / 2
        g = g - means[:, None] - means[None, :]
    return g


def cka_from_grams(gx: Tensor, gy: Tensor, *, debiased: bool = False) -> float:
    """CKA of two ``(n, n)`` Gram matrices: ⟨Gx_c, Gy_c⟩ / (‖Gx_c‖ ‖Gy_c‖)."""
    if gx.shape != gy.shape or gx.ndim != 2 or gx.shape[0] != gx.shape[1]:
        raise DataError(f"Gram matrices must be the same (n, n); got {tuple(gx.shape)} and {tuple(gy.shape)}")
    if gx.shape[0] < _min_n(debiased):
        raise DataError(f"{'debiased ' if debiased else ''}CKA needs at least {_min_n(debiased)} samples; "
                        f"got {gx.shape[0]}")
    gx, gy = center_gram(gx.double(), unbiased=debiased), center_gram(gy.double(), unbiased=debiased)
    den = gx.norm() * gy.norm()
    if float(den) == 0:
        raise DataError("a centred Gram matrix is zero (no variance across samples); CKA is undefined")
    return float((gx * gy).sum() / den)


def rbf_cka(x: Tensor | np.ndarray, y: Tensor | np.ndarray, *, threshold: float = 1.0,
            debiased: bool = False) -> float:
    """RBF-kernel CKA between ``x`` ``(n, p)`` and ``y`` ``(n, q)``; O(n²) memory.

    Args:
        threshold: bandwidth as a fraction of the median distance (demo: 0.5 and 1.0).
        debiased: centre the Grams with the unbiased estimator (n ≥ 4).
    """
    x, y = check_pair(x, y, min_samples=_min_n(debiased), what="RBF CKA")
    return cka_from_grams(gram_rbf(x, threshold=threshold), gram_rbf(y, threshold=threshold),
                          debiased=debiased)


@register_similarity("linear_cka", grid=True, description="linear CKA (Kornblith et al. 2019)")
def _linear(x: Tensor, y: Tensor) -> float:
    return linear_cka(x, y)


@register_similarity("linear_cka_debiased", grid=False, description="linear CKA, unbiased HSIC (n >= 4)")
def _linear_debiased(x: Tensor, y: Tensor) -> float:
    return linear_cka(x, y, debiased=True)


@register_similarity("rbf_cka", grid=False, description="RBF CKA, bandwidth = median distance")
def _rbf(x: Tensor, y: Tensor) -> float:
    return rbf_cka(x, y)


class MinibatchCKA:
    """Exact linear CKA over a stream of minibatches, in memory independent of the sample count.

    Keeps running sums (Xᵀ X, Yᵀ Y, Xᵀ Y, column sums and the row-norm terms the debiased estimator
    needs) in float64, shifted by the first batch's means for numerical stability. The result
    equals :func:`linear_cka` on all samples concatenated, to rounding. Memory: three matrices of
    ``p²``, ``q²`` and ``p·q`` float64 values plus one batch.

    >>> acc = MinibatchCKA()
    >>> for xb, yb in batches:   # (b, p), (b, q)
    ...     acc.update(xb, yb)
    >>> acc.compute(debiased=True)
    """

    def __init__(self) -> None:
        self.n = 0
        self._s: dict[str, Tensor] = {}

    def update(self, x: Tensor | np.ndarray, y: Tensor | np.ndarray) -> None:
        """Add a batch: ``x`` ``(b, p)`` and ``y`` ``(b, q)`` with the same ``b`` (and p, q as before)."""
        x, y = check_pair(x, y, min_samples=1, what="MinibatchCKA.update")
        s = self._s
        if not s:
            p, q = x.shape[1], y.shape[1]
            s["cx"], s["cy"] = x.mean(0), y.mean(0)
            z = lambda *shape: x.new_zeros(shape)  # noqa: E731
            s.update(sx=z(p), sy=z(q), xx=z(p, p), yy=z(q, q), xy=z(p, q), ax=z(p), cx_=z(p),
                     ay=z(q), cy_=z(q), a=z(), c=z(), aa=z(), cc=z(), ac=z())
        elif x.shape[1] != s["cx"].shape[0] or y.shape[1] != s["cy"].shape[0]:
            raise DataError(f"batch widths ({x.shape[1]}, {y.shape[1]}) differ from the first batch's "
                            f"({s['cx'].shape[0]}, {s['cy'].shape[0]})")
        x, y = x - s["cx"], y - s["cy"]
        a, c = x.square().sum(1), y.square().sum(1)
        # In place: no batch-sized or p²-sized temporaries beyond the batch itself.
        s["xx"].addmm_(x.mT, x)
        s["yy"].addmm_(y.mT, y)
        s["xy"].addmm_(x.mT, y)
        s["sx"] += x.sum(0)
        s["sy"] += y.sum(0)
        s["ax"].addmv_(x.mT, a)
        s["cx_"].addmv_(x.mT, c)
        s["ay"].addmv_(y.mT, a)
        s["cy_"].addmv_(y.mT, c)
        for k, v in (("a", a.sum()), ("c", c.sum()), ("aa", a @ a), ("cc", c @ c), ("ac", a @ c)):
            s[k] += v
        self.n += x.shape[0]

    def compute(self, *, debiased: bool = False) -> float:
        """Linear CKA of everything seen so far.

        Raises:
            DataError: fewer than 2 (4 if ``debiased``) samples, or zero variance.
        """
        n = self.n
        if n < _min_n(debiased):
            raise DataError(f"MinibatchCKA has seen {n} samples; {'debiased ' if debiased else ''}CKA "
                            f"needs at least {_min_n(debiased)}")
        s = self._s
        mx, my = s["sx"] / n, s["sy"] / n
        xx = s["xx"] - n * torch.outer(mx, mx)
        yy = s["yy"] - n * torch.outer(my, my)
        xy = s["xy"] - n * torch.outer(mx, my)
        if float(xx.trace()) <= 0 or float(yy.trace()) <= 0:
            raise DataError("MinibatchCKA: x or y has zero variance over the samples seen")
        num, nxx, nyy = xy.square().sum(), xx.square().sum(), yy.square().sum()
        if not debiased:
            return float(num / (nxx.sqrt() * nyy.sqrt()))
        # Row norms of the centred data, r_i = ‖x_i − μ‖² = a_i − 2 x_i·μ + ‖μ‖², summed in pairs.
        qx, qy = mx @ mx, my @ my
        rx = s["a"] - 2 * (mx @ s["sx"]) + n * qx          # Σ r^x = ‖X_c‖²_F
        ry = s["c"] - 2 * (my @ s["sy"]) + n * qy
        rxry = (s["ac"] - 2 * (my @ s["ay"]) + qy * s["a"] - 2 * (mx @ s["cx_"]) + 4 * (mx @ s["xy"] @ my)
                - 2 * qy * (mx @ s["sx"]) + qx * s["c"] - 2 * qx * (my @ s["sy"]) + n * qx * qy)
        rxrx = (s["aa"] - 4 * (mx @ s["ax"]) + 2 * qx * s["a"] + 4 * (mx @ s["xx"] @ mx)
                - 4 * qx * (mx @ s["sx"]) + n * qx * qx)
        ryry = (s["cc"] - 4 * (my @ s["cy_"]) + 2 * qy * s["c"] + 4 * (my @ s["yy"] @ my)
                - 4 * qy * (my @ s["sy"]) + n * qy * qy)
        d = lambda dot, rr, p, q: dot - n / (n - 2.0) * rr + p * q / ((n - 1) * (n - 2))  # noqa: E731
        return float(d(num, rxry, rx, ry) / (d(nxx, rxrx, rx, rx) * d(nyy, ryry, ry, ry)).sqrt())

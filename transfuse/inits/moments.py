"""``moments`` and ``covariance``: two controls beyond the paper, between Mean-Var and transfer.

Mean-Var (``meanvar``, Raghu et al. 2019, shared/reference/papers.md §1.8) keeps the first two
moments of each pretrained tensor and nothing else. These two strategies keep more statistics of
the pretrained weights while still destroying the learned features, to ask *which* statistics
carry the feature-independent benefit:

- ``moments``: every conv/linear weight is a **random permutation of the matching pretrained
  tensor's values** (sampling its empirical distribution without replacement). The multiset of
  values is unchanged, so every marginal moment (mean, variance, skew, kurtosis, sparsity, the
  exact histogram) matches exactly; which value sits where — filters, channels, spatial
  structure — is destroyed.
- ``covariance``: for each conv weight ``(O, I, *k)`` the ``O·I`` filters are treated as samples of
  a ``D = ∏k``-dimensional vector; their mean ``μ`` and covariance ``Σ`` (float64, divisor
  ``N - 1``) are fitted and ``O·I`` new filters drawn from ``N(μ, Σ)``:
  ``Σ = V diag(λ) Vᵀ`` (eigendecomposition, ``λ`` clipped at 0, so it is safe for the
  rank-deficient ``Σ`` of a layer with fewer filters than ``D``), ``f = μ + V diag(√λ) z`` with
  ``z ~ N(0, I_D)`` from the seeded generator. This keeps the *spatial* statistics of a filter
  (smoothness, centre-surround, the mix of orientations on average) but not which filter goes
  with which channel, nor any non-Gaussian shape. 1×1 convs and linear weights have no spatial
  dimension (``D = 1``), so they fall back to Mean-Var (``N(mean, var)`` of the tensor).
  Because the mean filter ``μ`` is kept, the raw elementwise correlation with the source equals
  the share of the mean filter in the tensor's variance; after removing ``μ`` from both, the
  correlation is ~0 (no filter corresponds to its source filter).

Both: norm affine parameters and biases keep their defaults, BatchNorm running statistics are
never touched, and the classifier (the ``head`` stage) keeps its default, as in ``meanvar``.
"""

from __future__ import annotations

import torch

from .adapt import Aligned, require
from .base import Action, InitContext, register_init
from .strategies import WEIGHT_KINDS, _no_arg, meanvar_tensor

__all__ = ["permute_tensor", "covariance_tensor", "filter_moments"]

StateDict = dict[str, torch.Tensor]


def permute_tensor(ref: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The values of ``ref`` in a uniformly random order (same shape and dtype)."""
    flat = ref.detach().reshape(-1)
    perm = torch.randperm(flat.numel(), generator=generator)
    return flat[perm].reshape(ref.shape).clone()


def filter_moments(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean vector ``(D,)`` and covariance ``(D, D)`` (float64, divisor ``N - 1``) of the
    ``N = O·I`` filters of a conv weight ``(O, I, *k)``, ``D = ∏k``."""
    x = w.detach().double().reshape(w.shape[0] * w.shape[1], -1)
    mu = x.mean(0)
    xc = x - mu
    cov = xc.T @ xc / max(x.shape[0] - 1, 1)
    return mu, cov


def covariance_tensor(like: torch.Tensor, ref: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """New filters from ``N(μ, Σ)`` fitted to the filters of the conv weight ``ref``.

    Args:
        like: the target tensor (gives shape and dtype; same shape as ``ref``).
        ref: pretrained conv weight ``(O, I, *k)``.
        generator: seeded RNG.

    Returns:
        Tensor shaped like ``like``; ``O·I`` independent draws of a ``∏k``-vector.
    """
    mu, cov = filter_moments(ref)
    evals, evecs = torch.linalg.eigh(cov)
    root = evecs * evals.clamp_min(0).sqrt()  # V diag(√λ)
    n, d = ref.shape[0] * ref.shape[1], mu.numel()
    z = torch.randn(n, d, generator=generator).double()  # float32 draw: 5× faster than float64
    out = mu + z @ root.T
    return out.reshape(like.shape).to(like.dtype)


def _keys(state: StateDict, ctx: InitContext) -> list[str]:
    return [k for k in state if k in ctx.eligible and ctx.key_kind[k] in WEIGHT_KINDS
            and k not in ctx.classifier]


@register_init("moments", needs_source=True,
               description="conv/linear weights = a random permutation of the matching pretrained "
               "tensor's values (every marginal moment exact, structure destroyed)")
def moments_init(state: StateDict, source: Aligned | None, ctx: InitContext) -> dict[str, Action]:
    _no_arg("moments", ctx)
    assert source is not None
    out = {}
    for k in require(source, _keys(state, ctx), what="moments", partial=ctx.partial):
        ref = source.state[k]
        state[k] = permute_tensor(ref, ctx.generator).to(state[k].dtype)
        out[k] = Action("redrawn", f"permutation of the source's {ref.numel()} values")
    return out


@register_init("covariance", needs_source=True,
               description="conv filters drawn from N(mean, covariance) of the matching pretrained "
               "filters (spatial statistics kept, features destroyed); 1x1 conv/linear: Mean-Var")
def covariance_init(state: StateDict, source: Aligned | None, ctx: InitContext) -> dict[str, Action]:
    _no_arg("covariance", ctx)
    assert source is not None
    out = {}
    for k in require(source, _keys(state, ctx), what="covariance", partial=ctx.partial):
        ref = source.state[k]
        d = ref[0, 0].numel() if ref.ndim > 2 else 1
        if ctx.key_kind[k] == "conv" and d > 1:
            state[k] = covariance_tensor(state[k], ref, ctx.generator)
            shape = "×".join(map(str, ref.shape[2:]))
            out[k] = Action("redrawn", f"N(μ, Σ) of {ref.shape[0] * ref.shape[1]} source {shape} "
                                       "filters")
        else:
            state[k] = meanvar_tensor(state[k], ref, ctx.generator)
            out[k] = Action("redrawn", "Mean-Var fallback (no spatial extent): "
                            f"N({float(ref.double().mean()):.3g}, {float(ref.double().std()):.3g}²)"
                            if ref.numel() > 1 else "N(source value, 0)")
    return out

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

import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from .adapt import Aligned, require
from .base import Action, InitContext, register_init
from .stats import mean_std
from .strategies import WEIGHT_KINDS, _no_arg, meanvar_note, meanvar_tensor

__all__ = ["permute_tensor", "covariance_tensor", "filter_moments", "FY_MAX", "BUCKET"]

StateDict = dict[str, torch.Tensor]


FY_MAX = 1 << 20  # up to this many values: one Fisher–Yates shuffle
BUCKET = 1 << 19  # larger tensors: Rao–Sandelius buckets of at most about this many values


def _shuffle(flat: torch.Tensor, generator: torch.Generator,
             out: torch.Tensor | None = None) -> torch.Tensor:
    """``flat`` in a uniformly random order: ``torch.randperm`` (Fisher–Yates) with int32
    indices, then ``index_select`` (≈ 6× faster than ``flat[perm]``'s advanced indexing)."""
    perm = torch.randperm(flat.numel(), generator=generator, dtype=torch.int32)
    if out is None:
        return torch.index_select(flat, 0, perm)
    return torch.index_select(flat, 0, perm, out=out)


#: Use the compiled in-place shuffle (:mod:`transfuse.inits._shuffle`, Numba) for CPU tensors;
#: ``False`` (or Numba missing) falls back to the torch implementation below.
USE_NUMBA = True
_INT_OF_SIZE = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


@functools.cache
def _compiled_shuffle():
    try:
        from ._shuffle import shuffle_inplace
    except ImportError:  # Numba not installed: the torch path
        return None
    return shuffle_inplace


def permute_tensor(ref: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The values of ``ref`` in a uniformly random order (a new tensor, same shape and dtype).

    CPU tensors (with Numba, a dependency): a copy of the values, viewed as same-width integers
    (any dtype, bit-exact), shuffled in place by a compiled Fisher–Yates with SplitMix64 and
    Lemire's unbiased bounded draws (:mod:`transfuse.inits._shuffle`; one 63-bit seed drawn from
    ``generator``) — ≈ 5× faster than ``torch.randperm`` plus a gather.

    Otherwise (``USE_NUMBA = False``, Numba missing, or a GPU tensor), torch only. Up to
    ``FY_MAX`` values: one Fisher–Yates shuffle (``torch.randperm``). Above, Fisher–Yates
    jumps across an index array larger than the L2 cache and stalls on misses (≈ 2× slower per
    value at 2.4 M values, and erratic when other processes share the L3), so the shuffle is
    split the Rao–Sandelius way, which is exactly uniform too:
    every value gets an independent uniform bucket label (``k`` buckets of ≈ ``BUCKET`` values),
    the values are grouped by label (a stable radix argsort of the uint8 labels), and each bucket
    is shuffled by Fisher–Yates in cache. Any permutation has probability ``1/n!``: the labels
    make every assignment of values to bucket slots equally likely given the bucket sizes, and the
    in-bucket shuffles every order within them.
    """
    flat = ref.detach().reshape(-1)
    n = flat.numel()
    kernel = _compiled_shuffle() if USE_NUMBA else None
    if kernel is not None and flat.device.type == "cpu" and flat.element_size() in _INT_OF_SIZE:
        seed = int(torch.randint(0, 2**63 - 1, (1,), generator=generator))
        out = flat.clone()
        kernel(out.view(_INT_OF_SIZE[out.element_size()]).numpy(), seed)
        return out.view(ref.shape)
    if n <= FY_MAX or flat.device.type != "cpu":
        return _shuffle(flat, generator).view(ref.shape)
    k = 2
    while k < 128 and k * BUCKET < n:
        k *= 2
    # 8 uniform random bytes per int64 draw; random_() samples [0, 2^63), so the top byte is
    # uniform on [0, 128) and every byte's low 7 bits are uniform: label = byte & (k - 1).
    words = torch.empty((n + 7) // 8, dtype=torch.int64).random_(generator=generator)
    labels = words.view(torch.uint8)[:n] & (k - 1)
    order = torch.from_numpy(np.argsort(labels.numpy(), kind="stable"))  # radix sort: O(n)
    grouped = torch.index_select(flat, 0, order)
    out = torch.empty_like(grouped)
    start = 0
    for size in torch.bincount(labels, minlength=k).tolist():
        if size:
            _shuffle(grouped[start:start + size], generator, out=out[start:start + size])
        start += size
    return out.view(ref.shape)


_FIT_CHUNK = 1 << 14  # filters converted to float64 at a time in filter_moments


def filter_moments(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean vector ``(D,)`` and covariance ``(D, D)`` (float64, divisor ``N - 1``) of the
    ``N = O·I`` filters of a conv weight ``(O, I, *k)``, ``D = ∏k``.

    From the float64 Gram matrix, ``Σ = (XᵀX − N·μμᵀ) / (N − 1)``, accumulated over chunks of
    ``_FIT_CHUNK`` filters converted to float64 in cache: no centred or whole float64 copy of
    ``X`` (≈ 3× faster than centring a float64 copy). The fit stays float64: with float32
    products, a rank-deficient ``Σ`` (fewer filters than ``D``) gets spurious eigenvalues
    ≈ 1e-7 of its scale, and draws leave the span of the source filters.
    """
    x = w.detach().reshape(w.shape[0] * w.shape[1], -1)
    n, d = x.shape
    gram = torch.zeros(d, d, dtype=torch.float64)
    s = torch.zeros(d, dtype=torch.float64)
    for c in x.split(_FIT_CHUNK):
        c = c.double()
        gram.addmm_(c.T, c)
        s += c.sum(0)
    mu = s / n
    cov = (gram - torch.outer(s, mu)) / max(n - 1, 1)
    return mu, cov


def covariance_tensor(like: torch.Tensor, ref: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """New filters from ``N(μ, Σ)`` fitted to the filters of the conv weight ``ref``.

    The fit (``μ``, ``Σ``, its eigendecomposition) is float64; the draw and ``μ + V diag(√λ) z``
    are float32 (sampling noise, ≈ 1/√(O·I), dwarfs float32 rounding), computed as one
    ``(D, D) @ (D, O·I)`` product — a short, wide GEMM is ≈ 5× faster than the tall, skinny
    ``(O·I, D) @ (D, D)``.

    Args:
        like: the target tensor (gives shape and dtype; same shape as ``ref``).
        ref: pretrained conv weight ``(O, I, *k)``.
        generator: seeded RNG.

    Returns:
        Tensor shaped like ``like``; ``O·I`` independent draws of a ``∏k``-vector.
    """
    mu, cov = filter_moments(ref)
    evals, evecs = torch.linalg.eigh(cov)
    root = (evecs * evals.clamp_min(0).sqrt()).float()  # V diag(√λ)
    n, d = ref.shape[0] * ref.shape[1], mu.numel()
    buf = torch.empty(d * n, dtype=torch.float32).normal_(generator=generator)
    out = torch.addmm(mu.float()[:, None], root, buf.view(d, n))  # (D, N), column i: filter i
    # (N, D) into z's memory, which is no longer needed: one fresh buffer less to fault in
    return buf.view(n, d).copy_(out.T).view(like.shape).to(like.dtype)


def _keys(state: StateDict, ctx: InitContext) -> list[str]:
    return [k for k in state if k in ctx.eligible and ctx.key_kind[k] in WEIGHT_KINDS
            and k not in ctx.classifier]


def _redraw_parallel(state: StateDict, keys: list[str], source: StateDict,
                     draw: Callable[[str, torch.Generator], tuple[torch.Tensor, str]],
                     generator: torch.Generator) -> dict[str, Action]:
    """``state[key], note = draw(key, own_generator)`` for every key, on all intra-op threads at
    once; returns the ``redrawn`` actions.

    One seed per tensor is drawn from ``generator`` in key order, so the result does not depend
    on the thread count. The heavy ops (the compiled shuffle, ``normal_``, GEMMs, reductions)
    release the GIL, and each one is sequential on its own tensor; tensors go largest first (LPT
    scheduling, by the size of ``source[key]``), so the few multi-million-value tensors of the
    last stage do not end up alone on one thread at the end (≈ 25 % less wall time on ResNet-50
    with 2 threads). The report's mean and std of each new tensor are computed on the same thread.
    """
    seeds = torch.randint(0, 2**62, (len(keys),), generator=generator).tolist()
    order = sorted(range(len(keys)), key=lambda i: -source[keys[i]].numel())

    def one(i: int) -> tuple[torch.Tensor, str, tuple[float, float]]:
        t, note = draw(keys[i], torch.Generator().manual_seed(seeds[i]))
        return t, note, mean_std(t)

    with ThreadPoolExecutor(max_workers=max(1, torch.get_num_threads())) as pool:
        drawn = dict(zip(order, pool.map(one, order)))
    out = {}
    for i, k in enumerate(keys):
        state[k], note, stats = drawn[i]
        out[k] = Action("redrawn", note, stats=stats)
    return out


@register_init("moments", needs_source=True,
               description="conv/linear weights = a random permutation of the matching pretrained "
               "tensor's values (every marginal moment exact, structure destroyed)")
def moments_init(state: StateDict, source: Aligned | None, ctx: InitContext) -> dict[str, Action]:
    _no_arg("moments", ctx)
    assert source is not None
    keys = require(source, _keys(state, ctx), what="moments", partial=ctx.partial)

    def draw(k: str, g: torch.Generator) -> tuple[torch.Tensor, str]:
        t = permute_tensor(source.state[k], g).to(state[k].dtype)
        return t, f"permutation of the source's {t.numel()} values"

    return _redraw_parallel(state, keys, source.state, draw, ctx.generator)


@register_init("covariance", needs_source=True,
               description="conv filters drawn from N(mean, covariance) of the matching pretrained "
               "filters (spatial statistics kept, features destroyed); 1x1 conv/linear: Mean-Var")
def covariance_init(state: StateDict, source: Aligned | None, ctx: InitContext) -> dict[str, Action]:
    _no_arg("covariance", ctx)
    assert source is not None
    keys = require(source, _keys(state, ctx), what="covariance", partial=ctx.partial)

    def draw(k: str, g: torch.Generator) -> tuple[torch.Tensor, str]:
        ref = source.state[k]
        d = ref[0, 0].numel() if ref.ndim > 2 else 1
        if ctx.key_kind[k] == "conv" and d > 1:
            shape = "×".join(map(str, ref.shape[2:]))
            return (covariance_tensor(state[k], ref, g),
                    f"N(μ, Σ) of {ref.shape[0] * ref.shape[1]} source {shape} filters")
        m = mean_std(ref)
        return (meanvar_tensor(state[k], ref, g, m),
                "Mean-Var fallback (no spatial extent): " + meanvar_note(ref, m))

    return _redraw_parallel(state, keys, source.state, draw, ctx.generator)

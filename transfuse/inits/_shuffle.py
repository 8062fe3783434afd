"""A compiled, exactly uniform in-place Fisher–Yates shuffle (Numba), for the ``moments`` init.

``torch.randperm`` draws a 32-bit Mersenne-Twister word and takes a 64-bit modulo per value
(≈ 6 ns per value on the reference CPU, and not exactly uniform: ``r % m`` favours small
residues by up to ``m / 2³²``), then the values need a gather through the index array. Here the
values themselves are swapped in place, and index ``j`` uniform on ``[0, i]`` comes from
SplitMix64 (Steele, Lea, Flood 2014) through Lemire's multiply-shift with rejection (Lemire 2019,
"Fast random integer generation in an interval"), which is exactly uniform given uniform 32-bit
words: ≈ 2–4 ns per value, no index array. ``nogil``: several tensors shuffle on several threads.

Imported lazily by :mod:`transfuse.inits.moments`; the compiled kernel is cached on disk
(``cache=True``), so only the first process pays the ≈ 1 s compilation.
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["shuffle_inplace"]

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_TWO32 = np.uint64(1 << 32)
_LOW32 = np.uint64(0xFFFFFFFF)


@numba.njit(cache=True, nogil=True)
def shuffle_inplace(a: np.ndarray, seed: int) -> None:  # pragma: no cover (compiled)
    """Shuffle the 1-D array ``a`` in place: every one of the ``n!`` orders has probability ``1/n!``
    (given SplitMix64's 32-bit words are uniform). Deterministic in ``seed``."""
    n = a.shape[0]
    s = np.uint64(seed)
    for i in range(n - 1, 0, -1):
        bound = np.uint64(i + 1)
        threshold = (_TWO32 - bound) % bound  # 2^32 mod bound: reject the biased low products
        while True:
            s += _GOLDEN
            z = s
            z = (z ^ (z >> np.uint64(30))) * _M1
            z = (z ^ (z >> np.uint64(27))) * _M2
            z = z ^ (z >> np.uint64(31))
            m = (z >> np.uint64(32)) * bound
            if (m & _LOW32) >= threshold:
                break
        j = np.int64(m >> np.uint64(32))
        t = a[i]
        a[i] = a[j]
        a[j] = t

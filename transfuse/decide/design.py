"""What a number of seeds can decide: the margin the data decide now, and the margin a plan can.

Two questions a researcher asks of an undecided comparison (issue 32), both answered from the same
paired t machinery as :mod:`.verdicts`:

- **now**: the smallest margin ``m`` at which the current seeds would already read ``equivalent``
  (TOST at level ``a``: the ``1 - 2a`` interval inside ``(-m, +m)``, i.e.
  ``m > |mean| + t_{1-a, n-1} s / √n``) — :func:`decidable_margin`;
- **in a plan**: the smallest margin at which ``n`` seeds give a decisive verdict with probability
  ``power`` if the true difference is ``delta`` and the paired SD ``sd`` —
  :func:`margin_for_seeds` (the inverse of :func:`.verdicts.seeds_needed` in the margin).

``a`` is the per-question test level (``alpha / k`` for Holm's first step over ``k`` questions, as
:func:`.decide.decide` plans with). Nothing here reads the store.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import stats

from .verdicts import power_decisive

__all__ = ["decidable_margin", "margin_for_seeds"]


def decidable_margin(diffs: Sequence[float | None], *, a: float) -> float | None:
    """Smallest margin the paired ``diffs`` already decide as ``equivalent`` at test level ``a``.

    ``|mean| + t_{1-a, n-1} · s/√n`` — the farther end of the ``1 - 2a`` interval from 0. ``None``
    with fewer than 2 finite values. Any margin strictly above this is decided by these seeds
    (before the multiplicity adjustment of other questions changes ``a``).
    """
    d = np.asarray([x for x in diffs if x is not None and math.isfinite(x)], dtype=np.float64)
    n = len(d)
    if n < 2:
        return None
    half = float(stats.t.ppf(1 - a, n - 1)) * float(d.std(ddof=1)) / math.sqrt(n)
    return abs(float(d.mean())) + half


def margin_for_seeds(*, n: int, sd: float, a: float, power: float = 0.8, delta: float = 0.0,
                     tol: float = 1e-5) -> float | None:
    """Smallest margin that ``n`` paired seeds decide with probability ``power``.

    Assumes the true mean difference ``delta`` (0: the arms are truly alike, the equivalence a
    plan hopes to show) and paired SD ``sd``. ``None`` when ``n < 2`` or ``sd`` is not finite.
    With ``delta = 0`` the chance of a decisive verdict grows with the margin, so a bisection
    finds it; a ``delta`` away from 0 is decided by the difference test at any margin once ``n`` is
    large enough, which this reports as a margin of 0.
    """
    if n < 2 or not math.isfinite(sd) or sd < 0:
        return None
    if sd == 0:
        return abs(delta)

    def ok(m: float) -> bool:
        return power_decisive(n, delta=delta, sd=sd, margin=m, a=a) >= power

    if ok(0.0):
        return 0.0
    lo, hi = 0.0, abs(delta) + 10.0 * sd
    while not ok(hi):
        hi *= 2
        if hi > 1e6 * (sd + abs(delta)):
            return None
    while hi - lo > tol * max(sd, 1e-12):
        mid = 0.5 * (lo + hi)
        lo, hi = (lo, mid) if ok(mid) else (mid, hi)
    return hi

"""Convergence speed from a run's validation curve: steps to a threshold and area under the curve.

A curve is the run's validation score (AUC for classification, Dice for segmentation) at the
evaluated steps, step 0 (the initialisation) included. The Transfusion paper compares inits by
how many steps they need to reach a given score; the "relative" variant asks for a fraction of the
run's own final score, so slow-but-good and fast-but-poor runs are both visible.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["Convergence", "steps_to_threshold", "curve_area", "convergence"]


def steps_to_threshold(steps: Sequence[int], scores: Sequence[float | None], threshold: float) -> int | None:
    """First evaluated step whose score is ``>= threshold``; ``None`` if never reached.

    Args:
        steps: evaluated steps, increasing, shape ``(T,)``.
        scores: score at each step, shape ``(T,)``; ``None``/NaN entries never count.
        threshold: the score to reach.
    """
    for s, v in zip(steps, scores):
        if v is not None and math.isfinite(v) and v >= threshold:
            return int(s)
    return None


def curve_area(steps: Sequence[int], scores: Sequence[float | None]) -> float | None:
    """Normalised area under the score-vs-step curve (trapezoidal), in score units.

    The area divided by the step span, i.e. the curve's time-averaged score: 1.0 for a run that is
    perfect from step 0, the final score for a run that jumps there at once. Undefined points are
    dropped; ``None`` with fewer than two defined points.
    """
    pts = [(int(s), float(v)) for s, v in zip(steps, scores) if v is not None and math.isfinite(v)]
    if len(pts) < 2 or pts[-1][0] == pts[0][0]:
        return None
    x = np.array([p[0] for p in pts], dtype=np.float64)
    y = np.array([p[1] for p in pts], dtype=np.float64)
    return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2.0) / (x[-1] - x[0]))


@dataclass(frozen=True)
class Convergence:
    """Convergence metrics of one run.

    Attributes:
        final: the score the relative thresholds refer to: the last validation score.
        absolute: ``{threshold: steps or None}`` for each absolute threshold.
        relative: ``{fraction: steps or None}`` — steps to reach ``fraction × final``.
        area: :func:`curve_area` of the validation curve.
    """

    final: float | None
    absolute: dict[float, int | None]
    relative: dict[float, int | None]
    area: float | None


def convergence(steps: Sequence[int], scores: Sequence[float | None], *,
                absolute: Sequence[float] = (), relative: Sequence[float] = ()) -> Convergence:
    """All convergence metrics of one validation curve (see :class:`Convergence`)."""
    defined = [v for v in scores if v is not None and math.isfinite(v)]
    final = defined[-1] if defined else None
    return Convergence(
        final=final,
        absolute={float(t): steps_to_threshold(steps, scores, t) for t in absolute},
        relative={float(f): (steps_to_threshold(steps, scores, f * final) if final is not None else None)
                  for f in relative},
        area=curve_area(steps, scores))

"""How a study is judged — the ``evaluation`` block of a study file — and an adaptive study's look
schedule. Plain dataclasses without numpy or scipy, so reading a study file (``study status``,
``study check``) stays cheap; the statistics that use them are in :mod:`.decide` and
:mod:`.verdicts`."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from statistics import NormalDist
from typing import Any

__all__ = ["Evaluation", "Sequential", "MULTIPLICITY", "DEFAULT_MARGIN", "default_margin",
           "obrien_fleming_spent", "look_levels"]

#: Multiplicity adjustments over one family (``evaluation.multiplicity``).
MULTIPLICITY = ("holm", "bh", "none")
DEFAULT_MARGIN = {"auc": 0.01, "dice": 0.02}


def default_margin(metric: str) -> float:
    """The default ``evaluation.margin``: 0.01 AUC, 0.02 Dice (see docs/STUDIES.md, Methods)."""
    return DEFAULT_MARGIN.get(metric, 0.01)


@dataclass(frozen=True)
class Evaluation:
    """How a study is judged (the ``evaluation`` block of a study file).

    Attributes:
        margin: smallest test-score difference that matters (``None``: 0.01 AUC / 0.02 Dice).
        area_margin: the same for the area under the validation curve (``None``: ``margin``).
        speed_margin: speed-ups within ``[1/m, m]`` are equivalent (default 1.2, i.e. ±20 %).
        reference: the arm every other arm is compared with.
        multiplicity: ``holm`` (family-wise), ``bh`` (false-discovery rate) or ``none``.
        alpha: the family's error rate.
        power: the probability a seed plan aims for.
    """

    margin: float | None = None
    area_margin: float | None = None
    speed_margin: float = 1.2
    reference: str = "random"
    multiplicity: str = "holm"
    alpha: float = 0.05
    power: float = 0.8

    def margins(self, metric: str) -> tuple[float, float, float]:
        """``(final, area, log speed)`` margins in the units of each question."""
        m = self.margin if self.margin is not None else default_margin(metric)
        return m, self.area_margin if self.area_margin is not None else m, math.log(self.speed_margin)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> Evaluation:
        names = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in (d or {}).items() if k in names})

    def check(self, *, where: str) -> None:
        """Raise ``ConfigError`` naming ``where`` (the file) and the key for an invalid value."""
        from ..errors import ConfigError

        for k in ("margin", "area_margin"):
            v = getattr(self, k)
            if v is not None and not (isinstance(v, (int, float)) and 0 < v < 1):
                raise ConfigError(f"{where}: evaluation.{k} must be a number in (0, 1), got {v!r}")
        if not (isinstance(self.speed_margin, (int, float)) and self.speed_margin > 1):
            raise ConfigError(f"{where}: evaluation.speed_margin must be a ratio > 1 (e.g. 1.2), "
                              f"got {self.speed_margin!r}")
        if self.multiplicity not in MULTIPLICITY:
            raise ConfigError(f"{where}: evaluation.multiplicity must be one of "
                              f"{', '.join(MULTIPLICITY)}, got {self.multiplicity!r}")
        for k in ("alpha", "power"):
            v = getattr(self, k)
            if not (isinstance(v, (int, float)) and 0 < v < 1):
                raise ConfigError(f"{where}: evaluation.{k} must be a number in (0, 1), got {v!r}")
        if not isinstance(self.reference, str) or not self.reference:
            raise ConfigError(f"{where}: evaluation.reference must be an init name, e.g. random")


@dataclass(frozen=True)
class Sequential:
    """An adaptive study's look schedule: verdicts are read at these seed counts.

    Attributes:
        looks: seed counts per cell at each look, increasing; the last is ``max_seeds``.
        max_seeds: the most seeds any cell gets.
        batch: seeds added per look.
    """

    looks: tuple[int, ...]
    max_seeds: int
    batch: int

    @classmethod
    def plan(cls, *, initial: int, max_seeds: int, batch: int) -> Sequential:
        looks = [initial]
        while looks[-1] < max_seeds:
            looks.append(min(looks[-1] + batch, max_seeds))
        return cls(tuple(looks), max_seeds, batch)

    def levels(self, alpha: float) -> list[float]:
        return look_levels(self.looks, max_seeds=self.max_seeds, alpha=alpha)

    def to_dict(self) -> dict[str, Any]:
        return {"looks": list(self.looks), "max_seeds": self.max_seeds, "batch": self.batch,
                "spending": "obrien-fleming"}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> Sequential | None:
        if not d:
            return None
        return cls(tuple(int(x) for x in d["looks"]), int(d["max_seeds"]), int(d["batch"]))


def obrien_fleming_spent(t: float, *, alpha: float) -> float:
    """Alpha spent by information fraction ``t`` (Lan & DeMets 1983, O'Brien–Fleming type):
    ``2 - 2 Φ(z_{1-α/2} / √t)``; 0 at ``t = 0`` and ``alpha`` at ``t = 1``."""
    if t <= 0:
        return 0.0
    if t >= 1:
        return alpha
    phi = NormalDist()
    z = phi.inv_cdf(1 - alpha / 2)
    return float(2 - 2 * phi.cdf(z / math.sqrt(t)))


def look_levels(looks: Sequence[int], *, max_seeds: int, alpha: float) -> list[float]:
    """The alpha each look may use: the O'Brien–Fleming-type spending increments.

    ``looks`` are the seed counts at which verdicts are read (increasing, the last at most
    ``max_seeds``); information fraction ``t = seeds / max_seeds``. The increments sum to at most
    ``alpha``, so by the union bound over looks the whole sequence errs with probability at most
    ``alpha`` whatever the correlation between looks (conservative: the exact O'Brien–Fleming
    boundaries would let the last look use more).
    """
    spent, out = 0.0, []
    for n in looks:
        s = obrien_fleming_spent(n / max_seeds, alpha=alpha)
        out.append(max(s - spent, 0.0))
        spent = max(spent, s)
    return out

"""What weight averaging (``train.ema`` / ``train.swa``) does to the paired SD of a comparison.

A study that runs its arms both without and with averaging (e.g. ``grid: {train.ema: [null,
0.99]}``) holds, for every comparison *arm vs reference* of one model and data size, two sets of
paired differences over the same seeds:

- without averaging: ``d_s = score(arm, s) − score(reference, s)``;
- with averaging ``a``: ``d'_s = score(arm · a, s) − score(reference · a, s)``.

The paired SD of each (sample SD over seeds, ``n − 1``) sets the seeds a decision needs (they
grow with SD²), so ``ratio = SD(d') / SD(d)`` says what averaging saves: the seeds needed scale by
about ``ratio²``. Only seeds present in all four cells are used, so both SDs see the same seeds.
Nothing is computed where a study has no such pairs. Used by ``study plan``, the report (HTML
and JSON ``averaging``).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass
from typing import Any

from ..arms import split_averaging
from .results import StudyResults

__all__ = ["AveragingRow", "averaging_rows", "averaging_dicts", "averaging_lines"]


@dataclass(frozen=True)
class AveragingRow:
    """One comparison's paired SD without and with averaging.

    Attributes:
        model, size: the cell's model and data size.
        arm, reference: the comparison (arm labels without their averaging).
        averaging: the averaging, e.g. ``"ema=0.99"``.
        seeds: the seeds all four cells share.
        mean_plain, mean_averaged: mean paired difference (arm − reference) without / with.
        sd_plain, sd_averaged: paired SD of the final-score difference without / with.
        ratio: ``sd_averaged / sd_plain`` (``None`` when ``sd_plain`` is 0 or fewer than 2 seeds).
    """

    model: str
    size: str
    arm: str
    reference: str
    averaging: str
    seeds: tuple[int, ...]
    mean_plain: float | None
    mean_averaged: float | None
    sd_plain: float | None
    sd_averaged: float | None
    ratio: float | None

    @property
    def seed_factor(self) -> float | None:
        """``ratio²``: what averaging multiplies the seeds a decision needs by."""
        return None if self.ratio is None else self.ratio ** 2


def _stats(diffs: list[float]) -> tuple[float | None, float | None]:
    if not diffs:
        return None, None
    return statistics.fmean(diffs), (statistics.stdev(diffs) if len(diffs) > 1 else None)


def averaging_rows(res: StudyResults) -> list[AveragingRow]:
    """Every comparison of ``res`` that was run both without and with an averaging, in the
    order of models, sizes and arms; empty when the study varies no averaging."""
    scores: dict[tuple[str, str, str, str | None], dict[int, float]] = {}
    for r in res.rows:
        if r.test is None or not math.isfinite(r.test):
            continue
        base, avg = split_averaging(r.init)
        scores.setdefault((r.model, r.size, base, avg), {})[r.seed] = r.test
    ref = res.reference
    out = []
    for model in res.models:
        for size in res.sizes:
            avgs = sorted({a for (m, s, _, a) in scores if (m, s) == (model, size) and a})
            arms = list(dict.fromkeys(split_averaging(i)[0] for i in res.inits))
            for avg in avgs:
                for arm in arms:
                    if arm == ref:
                        continue
                    cells = [scores.get((model, size, a, v)) for a in (arm, ref) for v in (None, avg)]
                    if any(c is None for c in cells):
                        continue
                    seeds = tuple(sorted(set.intersection(*(set(c) for c in cells))))  # type: ignore[union-attr]
                    a0, a1, r0, r1 = cells  # arm plain, arm averaged, reference plain, averaged
                    plain = [a0[s] - r0[s] for s in seeds]  # type: ignore[index]
                    averaged = [a1[s] - r1[s] for s in seeds]  # type: ignore[index]
                    m0, sd0 = _stats(plain)
                    m1, sd1 = _stats(averaged)
                    ratio = sd1 / sd0 if sd0 and sd1 is not None else None
                    out.append(AveragingRow(model, size, arm, ref, avg, seeds, m0, m1, sd0, sd1, ratio))
    return out


def averaging_dicts(res: StudyResults) -> list[dict[str, Any]]:
    """:func:`averaging_rows` as JSON-ready dicts (the report JSON's ``averaging``), with
    ``n`` and ``seed_factor`` (ratio²) added."""
    out = []
    for row in averaging_rows(res):
        d = asdict(row)
        d["seeds"] = list(row.seeds)
        d["n"] = len(row.seeds)
        d["seed_factor"] = row.seed_factor
        out.append(d)
    return out


def _f(x: float | None, fmt: str) -> str:
    return "–" if x is None else format(x, fmt)


def averaging_lines(res: StudyResults) -> list[str]:
    """Lines for ``study plan``: per comparison, the paired SD without and with averaging and
    their ratio; no lines when the study varies no averaging."""
    rows = averaging_rows(res)
    if not rows:
        return []
    unit = "AUC" if res.metric == "auc" else "Dice"
    headers = ["model", "n_train", "arm vs reference", "averaging", "seeds", "SD without",
               "SD with", "ratio", "seeds ×"]
    table = [[r.model, r.size, f"{r.arm} vs {r.reference}", r.averaging, str(len(r.seeds)),
              _f(r.sd_plain, ".4f"), _f(r.sd_averaged, ".4f"), _f(r.ratio, ".2f"),
              _f(r.seed_factor, ".2f")] for r in rows]
    widths = [max(len(h), *(len(t[i]) for t in table)) for i, h in enumerate(headers)]
    lines = [f"weight averaging: paired SD of the final-{unit} difference without and with it, "
             "same seeds (seeds needed scale by ratio²)"]
    lines += ["  " + "  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip()
              for line in [headers, *table]]
    return lines

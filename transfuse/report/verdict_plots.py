"""Figures of the decisions: a forest plot per model and test scores with error bars per arm."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from ..decide.decisions import Decisions, Verdict
from ..decide.results import StudyResults
from .html import new_figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["forest_figure", "scores_figure", "VERDICT_COLORS"]

VERDICT_COLORS = {"better_beyond_margin": "#1a9850", "better_within_margin": "#91cf60",
                  "equivalent": "#4575b4", "worse_within_margin": "#fc8d59",
                  "worse_beyond_margin": "#d73027", "undecided": "#888888"}
ENDPOINTS = (("final", "Δ test {unit} vs {ref}"), ("area", "Δ area under the validation curve vs {ref}"))


def _rows(dec: Decisions, model: str, endpoint: str, sizes: list[str]) -> list[Verdict]:
    vs = [v for v in dec.verdicts if v.question.model == model and v.question.endpoint == endpoint]
    return sorted(vs, key=lambda v: (sizes.index(v.question.size) if v.question.size in sizes else 0,
                                     v.question.arm))


def forest_figure(res: StudyResults, dec: Decisions, *, model: str) -> Figure:
    """Each arm's difference from the reference with the interval its verdict was read from.

    Two panels (final test score, area under the validation curve); one row per arm and
    training-set size; the shaded band is ±margin, the marker colour is the verdict. Rows without
    an interval (undecided before any statistics) show their mean difference as a hollow marker.
    """
    unit = "AUC" if res.metric == "auc" else "Dice"
    m_final, m_area, _ = dec.evaluation.margins(res.metric)
    panels = [(e, t.format(unit=unit, ref=dec.evaluation.reference), m)
              for (e, t), m in zip(ENDPOINTS, (m_final, m_area))]
    n_rows = max([len(_rows(dec, model, e, res.sizes)) for e, _, _ in panels] + [1])
    fig, axes = new_figure(width=11.0, height=1.8 + 0.38 * n_rows, ncols=2)
    for ax, (endpoint, title, margin) in zip(axes[0], panels):
        rows = _rows(dec, model, endpoint, res.sizes)
        ax.axvspan(-margin, margin, color="#4575b4", alpha=0.12, label=f"±margin ({margin:g})")
        ax.axvline(0, color="#333", lw=0.8)
        seen: set[str] = set()
        for y, v in enumerate(rows):
            col = VERDICT_COLORS[v.verdict]
            label = v.label if v.verdict not in seen else None
            seen.add(v.verdict)
            d = v.decision
            if d is not None:
                ax.errorbar([d.mean], [y], xerr=[[d.mean - d.ci_low], [d.ci_high - d.mean]], fmt="o",
                            color=col, capsize=3, ms=5, label=label)
            else:
                vals = [x for x in v.question.diffs if x is not None and math.isfinite(x)]
                if vals:
                    ax.plot([sum(vals) / len(vals)], [y], "o", mfc="none", color=col, label=label)
                else:
                    ax.plot([0], [y], "x", color=col, label=label)
        ax.set_yticks(range(len(rows)), [f"{v.question.arm} · n={v.question.size}" for v in rows],
                      fontsize=7)
        ax.set_ylim(-0.7, max(len(rows), 1) - 0.3)
        ax.invert_yaxis()
        ax.set_xlabel(title, fontsize=8)
        ax.set_title(f"{model}: {endpoint}", fontsize=9)
        ax.grid(alpha=0.3, axis="x")
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.22 - 0.6 / (1 + len(rows))),
                  ncol=5, frameon=False)
    return fig


def scores_figure(res: StudyResults, *, model: str) -> Figure:
    """Test score per arm (mean and 95 % t-interval over seeds), one series per training-set size."""
    from matplotlib import colormaps

    unit = "AUC" if res.metric == "auc" else "Dice"
    arms = [a for a in res.inits if any(c.model == model and c.init == a for c in res.cells)]
    sizes = [s for s in res.sizes if any(c.model == model and c.size == s for c in res.cells)]
    fig, axes = new_figure(width=min(1.2 + 0.9 * len(arms), 11.0), height=3.2)
    ax = axes[0][0]
    cmap = colormaps["tab10"]
    w = 0.7 / max(len(sizes), 1)
    for j, size in enumerate(sizes):
        xs, ms, lo, hi = [], [], [], []
        for i, arm in enumerate(arms):
            c = res.cell(model, arm, size)
            if c is None or c.final is None:
                continue
            f = c.final
            xs.append(i + (j - (len(sizes) - 1) / 2) * w)
            ms.append(f.mean)
            lo.append(f.mean - (f.ci_low if f.ci_low is not None else f.mean))
            hi.append((f.ci_high if f.ci_high is not None else f.mean) - f.mean)
        if xs:
            ax.errorbar(xs, ms, yerr=[lo, hi], fmt="o", capsize=3, color=cmap(j % 10),
                        label=f"n_train={size}")
    ax.set_xticks(range(len(arms)), arms, rotation=30, ha="right", fontsize=7)
    ax.set_ylabel(f"test {unit}")
    ax.set_title(f"{model}: test {unit} per arm (mean, 95 % CI over seeds)", fontsize=9)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=7, loc="best")
    return fig

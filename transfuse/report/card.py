"""The decision card the study report opens with: one per model × training-set size, picture first.

Each card is a forest plot — every arm's difference from the reference on the final score, with
the interval its verdict was read from, a shaded ±margin band and the zero line — then one
sentence per arm built from its verdict (:func:`arm_sentence`): the decided answer (the verdict's
own sentence), or for an undecided arm what the data already say: the plausible range (the
verdict's interval), the smallest margin the current seeds decide, and the seeds a decision needs
at the user's margin and at twice it (numbers: :mod:`transfuse.decide.headline`). Context lines
name cells of this study (other models) and of other studies in the workspace, on the same data
and training-set size, whose mean beats this model's best by more than the margin.

Everything is built from the JSON's data (:func:`cards` gives the ``cards`` list of
``transfuse report --format json``; :func:`card_section` draws and words them from that list and
the JSON's ``comparisons``), so the HTML card and the JSON say the same numbers, and a card can be
rebuilt from a committed results.json alone.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ..decide.headline import BestCell, context
from ..decide.recommend import level_text
from .html import Section, esc, figure_img, new_figure
from .verdict_plots import VERDICT_COLORS

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from ..decide.decisions import Decisions
    from ..decide.results import StudyResults

__all__ = ["cards", "arm_sentence", "context_sentence", "card_section", "card_figure", "signed",
           "margin_text", "CARD_ALT"]

CARD_ALT = "Decision card forest plot"  # every card figure's alt text starts with this
SCORE_RANGE = 1.0  # AUC and Dice lie in [0, 1]: a margin of ±1 or more rules nothing out


def signed(x: float) -> str:
    """``-0.0741`` → ``−0.074`` (a true minus sign), ``0.061`` → ``+0.061``."""
    return f"{x:+.3f}".replace("-", "−")


def margin_text(m: float) -> str:
    """A decidable margin rounded *up* to 3 decimals (the seeds decide any margin above the exact
    one, so the rounded one is decided too): ``0.07412`` → ``±0.075``."""
    return f"±{math.ceil(m * 1000 - 1e-9) / 1000:.3f}"


def _unit(metric: str) -> str:
    return "AUC" if metric == "auc" else "Dice"


def _seeds(k: int | None) -> str:
    return "more than 1000 seeds" if k is None else f"≈ {k} seeds"


def arm_sentence(c: Mapping[str, Any], *, unit: str) -> str:
    """The card's sentence for one final-score comparison (a ``comparisons[]`` entry of the JSON).

    Decided: the verdict's own sentence. Undecided with an interval: ``"meanvar vs random:
    undecided at ±0.01 AUC — the difference lies between −0.074 and +0.061 AUC (98.33 % interval);
    with 6 seeds: equivalent within ±0.075 AUC (larger differences are ruled out); to decide at
    ±0.01 AUC: ≈ 598 seeds, at ±0.02 AUC: ≈ 150 seeds."``; a decidable margin of 1 or more (an
    AUC or Dice difference cannot exceed 1) reads "no margin below ±1 AUC is decided yet".
    Undecided before any statistics: the reason (a gate: did not learn, too few seeds, a pilot).
    """
    if not str(c["verdict"]).startswith("undecided"):
        return c["sentence"]
    who = f"{c['arm']} vs {c['reference']}"
    rng, dm = c.get("plausible_range"), c.get("decidable_margin")
    if rng is None:
        return f"{who}: undecided — {c['reason']}."
    m = float(c["margin"])
    lvl = "" if c.get("level") is None else f" ({level_text(c['level'])} interval)"
    text = (f"{who}: undecided at ±{m:g} {unit} — the difference lies between {signed(rng[0])} and "
            f"{signed(rng[1])} {unit}{lvl}")
    if dm is not None and dm >= SCORE_RANGE and c.get("endpoint") in ("final", "area"):
        text += f"; with {c['n']} seeds no margin below ±{SCORE_RANGE:g} {unit} is decided yet"
    elif dm is not None:
        text += (f"; with {c['n']} seeds: equivalent within {margin_text(dm)} {unit} "
                 "(larger differences are ruled out)")
    return (text + f"; to decide at ±{m:g} {unit}: {_seeds(c.get('seeds_needed_at_margin'))}, "
            f"at ±{2 * m:g} {unit}: {_seeds(c.get('seeds_needed_at_2x_margin'))}.")


def context_sentence(x: Mapping[str, Any], *, unit: str, study: str) -> str:
    """``"cbr_small (study transfusion, arm pretrained) reaches 0.910 AUC on these data (3 seeds),
    0.150 above this model's best (meanvar, 0.760) — means of other runs, not a verdict."``"""
    where = "this study" if x["study"] == study else f"study {x['study']}"
    return (f"{x['model']} ({where}, arm {x['arm']}) reaches {x['mean']:.3f} {unit} on these data "
            f"({x['n']} seed{'s' if x['n'] != 1 else ''}), {x['lead']:.3f} above this model's best "
            f"({x['best_arm']}, {x['best_mean']:.3f}) — means of other runs, not a verdict.")


def cards(res: StudyResults, dec: Decisions, comparisons: Sequence[Mapping[str, Any]],
          others: Sequence[BestCell] = ()) -> list[dict[str, Any]]:
    """One card per model × training-set size with cells, as the JSON's ``cards`` list.

    Args:
        comparisons: the JSON's ``comparisons`` (with the design fields of
            :func:`transfuse.decide.headline.design_numbers`).
        others: cells of other studies in the workspace (:func:`~transfuse.decide.headline.workspace_cells`).

    Each card: ``model``, ``size``, ``reference``, ``margin``, ``unit``, ``best`` (this model's
    best cell at this size: arm, mean, n), ``comparisons`` (the ids of its final-score questions,
    the forest plot's rows), ``lines`` (arm, verdict, text — :func:`arm_sentence`) and ``context``
    (:func:`context_sentence` with its numbers).
    """
    from ..decide.headline import study_cells

    unit = _unit(res.metric)
    margin = dec.evaluation.margins(res.metric)[0]
    mine = study_cells(res)
    pool = mine + list(others)
    out = []
    for model in res.models:
        for size in res.sizes:
            if not any(c.model == model and c.size == size for c in res.cells):
                continue
            datasets = sorted({r.dataset for r in res.rows if r.model == model and r.size == size})
            best, ahead = context(study=res.study, model=model, size=size, datasets=datasets,
                                  cells=pool, margin=margin)
            comps = [c for c in comparisons if (c["model"], c["size"], c["endpoint"]) == (model, size, "final")]
            ctx = []
            for cell, lead in ahead:
                x = {**cell.to_dict(), "lead": lead, "best_arm": best.arm, "best_mean": best.mean}
                ctx.append({**x, "text": context_sentence(x, unit=unit, study=res.study)})
            out.append({"model": model, "size": size, "reference": dec.evaluation.reference,
                        "margin": margin, "unit": unit,
                        "best": None if best is None else {"arm": best.arm, "mean": best.mean, "n": best.n},
                        "comparisons": [c["id"] for c in comps],
                        "lines": [{"arm": c["arm"], "verdict": c["verdict"],
                                   "text": arm_sentence(c, unit=unit)} for c in comps],
                        "context": ctx})
    return out


def card_figure(card: Mapping[str, Any], comparisons: Sequence[Mapping[str, Any]]) -> Figure:
    """The card's forest plot: one row per arm, Δ final score vs the reference with the verdict's
    interval (colour: verdict), the shaded ±margin band and the zero line. An arm without an
    interval shows its mean difference as a hollow marker (``×`` at 0 with no mean either)."""
    by_id = {c["id"]: c for c in comparisons}
    rows = [by_id[i] for i in card["comparisons"] if i in by_id]
    margin, unit = float(card["margin"]), card["unit"]
    fig, axes = new_figure(width=7.5, height=1.5 + 0.42 * max(len(rows), 1))
    ax = axes[0][0]
    ax.axvspan(-margin, margin, color="#4575b4", alpha=0.12, label=f"±margin ({margin:g} {unit})")
    ax.axvline(0, color="#333", lw=0.8, label="no difference")
    seen: set[str] = set()
    for y, c in enumerate(rows):
        col = VERDICT_COLORS.get(c["verdict"], "#888888")
        label = c["label"] if c["verdict"] not in seen else None
        seen.add(c["verdict"])
        if c.get("ci_low") is not None and c.get("mean") is not None:
            ax.errorbar([c["mean"]], [y], xerr=[[c["mean"] - c["ci_low"]], [c["ci_high"] - c["mean"]]],
                        fmt="o", color=col, capsize=4, ms=6, label=label)
        elif c.get("mean") is not None:
            ax.plot([c["mean"]], [y], "o", mfc="none", color=col, label=label)
        else:
            ax.plot([0], [y], "x", color=col, label=label)
    ax.set_yticks(range(len(rows)), [c["arm"] for c in rows], fontsize=8)
    ax.set_ylim(-0.7, max(len(rows), 1) - 0.3)
    ax.invert_yaxis()
    ax.set_xlabel(f"Δ test {unit}, arm − {card['reference']} (the verdict's interval)", fontsize=8)
    ax.set_title(f"{card['model']}, n_train={card['size']}: every arm vs {card['reference']}", fontsize=9)
    ax.grid(alpha=0.3, axis="x")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.25 - 0.6 / (1 + len(rows))),
              ncol=4, frameon=False)
    return fig


def card_html(card: Mapping[str, Any], comparisons: Sequence[Mapping[str, Any]]) -> str:
    """One card: heading, forest plot, the arms' sentences and the context lines (all escaped)."""
    best = card.get("best")
    head = f"{card['model']}, n_train={card['size']}"
    if best:
        head += f" — best arm here: {best['arm']} ({best['mean']:.3f} {card['unit']}, {best['n']} seeds)"
    html = f"<h3>{esc(head)}</h3>"
    if card["comparisons"]:
        html += figure_img(card_figure(card, comparisons),
                           alt=f"{CARD_ALT}, {card['model']}, n_train={card['size']}: each arm's "
                               f"difference from {card['reference']} in test {card['unit']} with the "
                               "interval its verdict was read from; shaded: ±margin; colour: verdict")
        items = "".join(f'<li><span class="v-{esc(x["verdict"])}">{esc(x["text"])}</span></li>'
                        for x in card["lines"])
        html += f'<ul class="verdicts">{items}</ul>'
    else:
        html += (f"<p>No arm was compared with {esc(card['reference'])} here (the study needs "
                 "reference-arm runs of the same model and size).</p>")
    if card["context"]:
        items = "".join(f"<li>{esc(x['text'])}</li>" for x in card["context"])
        html += f'<ul class="context">{items}</ul>'
    return f'<div class="card">{html}</div>'


def card_section(data: Mapping[str, Any], *, note: str = "") -> Section:
    """The report's first section, from the JSON's data (``cards`` and ``comparisons``).

    ``note``: escaped HTML shown before the cards (an incomplete study, a pilot).
    """
    body = note + "".join(card_html(c, data["comparisons"]) for c in data["cards"])
    return Section("Decision card", body or "<p>No cells.</p>", "card")

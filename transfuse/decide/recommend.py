"""Verdicts in words: each question's reason and sentence, and the report's recommendations.

Every sentence is built from the verdict it states, so words never claim more than the verdict:
``better_beyond_margin`` reads "better … by more than the margin", ``better_within_margin``
"better … by less than the margin", and so on (:data:`~transfuse.decide.verdicts.LABELS`).
A recommendation is made only on a difference beyond the margin or on equivalence; an arm that is
better by less than the margin is named as such and not recommended.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .verdicts import BETTER, LABELS, Decision

if TYPE_CHECKING:
    from .decisions import Question, Verdict
    from .evaluation import Evaluation
    from .results import StudyResults

__all__ = ["Recommendation", "interval_reason", "sentence", "delta_text", "recommendations",
           "level_text"]


@dataclass(frozen=True)
class Recommendation:
    """The line the report opens with for one (model, size): what to use and on what evidence.

    ``arm`` is ``None`` when nothing is recommended; ``verdict`` is the code the line rests on.
    """

    model: str
    size: str
    arm: str | None
    verdict: str
    text: str


def level_text(level: float) -> str:
    """``0.9929`` → ``"99.29 %"``."""
    return f"{100 * level:.2f}".rstrip("0").rstrip(".") + " %"


def _speed(q: Question) -> bool:
    return q.endpoint.startswith("speed")


def _margin(q: Question, unit: str = "") -> str:
    if _speed(q):
        return f"{math.exp(q.margin):.2f}×"
    return f"{q.margin:g}" + (f" {unit}" if unit else "")


def _bound(q: Question, sign: int) -> str:
    """The margin on one side: ``+0.01`` / ``-0.01``, or ``1.20×`` / ``0.83×`` for speed-ups."""
    if _speed(q):
        return f"{math.exp(sign * q.margin):.2f}×"
    return f"{sign * q.margin:+g}"


def interval_reason(d: Decision, q: Question, alpha: float) -> str:
    """Why ``d`` is what it is, read from its interval (``alpha``: the look's level)."""
    zero = "1×" if _speed(q) else "0"
    lvl = level_text(d.level)
    if d.verdict == "equivalent":
        extra = " (a real but smaller difference)" if d.ci_low > 0 or d.ci_high < 0 else ""
        return f"{lvl} interval inside ±{_margin(q)} (TOST){extra}"
    if d.verdict.endswith("_beyond_margin"):
        return f"{lvl} interval excludes {zero} and lies beyond {_bound(q, 1 if d.mean > 0 else -1)}"
    if d.verdict.endswith("_within_margin"):
        return (f"{lvl} interval excludes {zero} but not the margin "
                f"{_bound(q, 1 if d.mean > 0 else -1)}")
    raw = min(d.p_diff, d.p_equiv)
    if raw <= alpha:
        return (f"decisive only before the multiplicity adjustment (p = {raw:.3g}, adjusted "
                f"{d.p_adjusted:.3g})")
    return f"{lvl} interval spans {zero} and reaches beyond ±{_margin(q)}"


def delta_text(d: Decision, q: Question, unit: str) -> str:
    """``+0.040 AUC [+0.034, +0.047] (99.29 % CI)``; speed-ups as ratios."""
    lvl = level_text(d.level)
    if _speed(q):
        return f"{math.exp(d.mean):.2f}× [{math.exp(d.ci_low):.2f}×, {math.exp(d.ci_high):.2f}×] ({lvl} CI)"
    return f"{d.mean:+.3f} {unit} [{d.ci_low:+.3f}, {d.ci_high:+.3f}] ({lvl} CI)"


def _what(q: Question, unit: str) -> str:
    if q.endpoint == "final":
        return f"the test {unit}"
    if q.endpoint == "area":
        return f"the area under the validation {unit} curve"
    return f"steps to validation {unit} {q.endpoint.split('@', 1)[1]}"


def sentence(v: Verdict, unit: str) -> str:
    """One sentence that says exactly what ``v`` says, with its numbers (``unit``: AUC or Dice).

    ``"meanvar is better than random on the test AUC by more than the margin (0.01 AUC): +0.040
    AUC [+0.034, +0.047] (99.29 % CI), 5 seeds."``; a difference within the margin adds "; the
    interval excludes 0 but not +0.01" (its mean may lie past the margin, its interval does not
    clear it); speed-ups read "faster"/"slower"; undecided questions give their reason and the
    seeds a decision would need.
    """
    q, d = v.question, v.decision
    what, m = _what(q, unit), _margin(q, unit)
    if d is None or v.verdict == "undecided":
        tail = ""
        if v.seeds_needed is not None:
            tail = f"; needs ≈ {v.seeds_needed} seeds"
        elif d is not None and q.gate is None:
            tail = "; needs more than 1000 seeds or a wider margin"
        return f"{q.arm} vs {q.reference} on {what}: undecided — {v.reason}{tail}."
    numbers = f"{delta_text(d, q, unit)}, {d.n} seeds"
    if v.verdict == "equivalent":
        if _speed(q):
            return (f"{q.arm} and {q.reference} take equally many {what} within "
                    f"{_bound(q, -1)}–{_bound(q, 1)}: {numbers}.")
        return f"{q.arm} is equivalent to {q.reference} on {what} within ±{m}: {numbers}."
    beyond = v.verdict.endswith("beyond_margin")
    how = "by more than the margin" if beyond else "by less than the margin"
    better = v.verdict in BETTER
    if not beyond:  # the estimate itself may lie past the margin: say what the interval shows
        numbers += f"; the interval excludes {'1×' if _speed(q) else '0'} but not {_bound(q, 1 if better else -1)}"
    if _speed(q):
        word = "faster" if better else "slower"
        return (f"{q.arm} is {word} than {q.reference} ({what}) {how} ({m}): {numbers}.")
    word = "better" if better else "worse"
    return f"{q.arm} is {word} than {q.reference} on {what} {how} ({m}): {numbers}."


def recommendations(res: StudyResults, ev: Evaluation, verdicts: list[Verdict], pilot: str | None,
                    dnl: dict[tuple[str, str, str], str]) -> list[Recommendation]:
    """One line per model × training-set size: what to use, and the verdict it rests on.

    Recommended: the arm with the largest gain that is better on the final score by more than the
    margin; else, when every final verdict is decided and none is a difference within the margin,
    an arm equivalent on the final score and faster by more than the margin, or the reference.
    No recommendation (``arm`` ``None``): a pilot, missing reference, undecided questions (with
    the seeds they need), or a difference smaller than the margin.
    """
    unit = "AUC" if res.metric == "auc" else "Dice"
    margin = ev.margins(res.metric)[0]
    out = []
    for model in res.models:
        for size in res.sizes:
            if not [c for c in res.cells if c.model == model and c.size == size]:
                continue

            def rec(arm: str | None, verdict: str, text: str) -> None:
                out.append(Recommendation(model, size, arm, verdict, text))

            if pilot:
                rec(None, "undecided", f"{pilot}; no recommendation.")
                continue
            if res.cell(model, ev.reference, size) is None:
                rec(None, "undecided", f"no recommendation: no {ev.reference} runs to compare with "
                                       f"(evaluation.reference).")
                continue
            if (model, ev.reference, size) in dnl:
                rec(None, "undecided", f"undecided: {dnl[(model, ev.reference, size)]}.")
                continue
            mine = [v for v in verdicts if (v.question.model, v.question.size) == (model, size)]
            final = {v.question.arm: v for v in mine if v.question.endpoint == "final"}
            if not final:
                rec(ev.reference, "undecided", f"only {ev.reference} was run here.")
                continue
            by = {code: [a for a, v in final.items() if v.verdict == code] for code in LABELS}
            tail = "".join(f"; {LABELS[code]}" + (f" (±{margin:g} {unit})" if code == "equivalent"
                                                  else "") + f": {', '.join(by[code])}"
                           for code in ("better_within_margin", "equivalent", "worse_within_margin",
                                        "worse_beyond_margin") if by[code])
            beyond = [final[a] for a in by["better_beyond_margin"]]
            if beyond:
                top = max(beyond, key=lambda v: v.decision.mean)
                also = (f"; still undecided against {ev.reference}: {', '.join(by['undecided'])}"
                        if by["undecided"] else "")
                rec(top.question.arm, "better_beyond_margin",
                    f"{top.question.arm}: better than {ev.reference} by more than the margin "
                    f"(±{margin:g} {unit}): {delta_text(top.decision, top.question, unit)}, "
                    f"{top.n} seeds{also}{tail}.")
                continue
            undecided = [final[a] for a in by["undecided"]]
            if undecided:
                needs = [v.seeds_needed for v in undecided]
                how = (f"needs ≈ {max(needs)} seeds" if all(n is not None for n in needs)
                       else "needs more than 1000 seeds or a wider margin")
                rec(None, "undecided", f"undecided: {how} ({', '.join(by['undecided'])} vs "
                                       f"{ev.reference} on the final {unit}; reasons in the verdict "
                                       f"table){tail}.")
                continue
            within = [final[a] for a in by["better_within_margin"] + by["worse_within_margin"]]
            if within:
                v = within[0]
                word = "better" if v.verdict in BETTER else "worse"
                rec(None, v.verdict,
                    f"no recommendation: {v.question.arm} is {word} than {ev.reference} by less "
                    f"than the margin (±{margin:g} {unit}): {delta_text(v.decision, v.question, unit)}"
                    f", {v.n} seeds — a difference not shown to matter{tail}.")
                continue
            fast = [v for v in mine if v.question.arm in by["equivalent"]
                    and v.verdict == "better_beyond_margin" and v.question.endpoint != "final"]
            n = max(v.n for v in final.values())
            if fast:
                top = max(fast, key=lambda v: v.decision.mean)
                what = ("converges faster by more than the margin (area under the validation curve "
                        if top.question.endpoint == "area" else f"is faster by more than the margin "
                        f"to {unit} {top.question.endpoint.split('@')[1]} (")
                rec(top.question.arm, "equivalent",
                    f"{top.question.arm}: equivalent to {ev.reference} within ±{margin:g} {unit} on "
                    f"the final score ({n} seeds) and {what}"
                    f"{delta_text(top.decision, top.question, unit)}){tail}.")
                continue
            rec(ev.reference, "equivalent" if by["equivalent"] else "better_beyond_margin",
                f"{ev.reference}: no other arm is better at this size ({n} seeds){tail}.")
    return out

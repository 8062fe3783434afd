"""The held-out reproduction (issue 32): the decision card of docs/findings/heldout_pneumonia, a
real `--until-decided` study on PneumoniaMNIST, rebuilt from its committed JSON alone.

The headline must show each undecided arm's plausible range and the margin its seeds decide, and
both must be the JSON's numbers as the card formats them (3 decimals with a true minus sign; the
margin rounded up).
"""

from __future__ import annotations

import json
import math
from html import escape
from pathlib import Path

import pytest

from transfuse.report.card import card_section

RESULTS = Path(__file__).resolve().parents[1] / "docs" / "findings" / "heldout_pneumonia" / "results.json"


def _signed(x: float) -> str:
    return f"{x:+.3f}".replace("-", "−")


def _margin(m: float) -> str:
    return f"±{math.ceil(m * 1000 - 1e-9) / 1000:.3f}"


@pytest.fixture(scope="module")
def data() -> dict:
    return json.loads(RESULTS.read_text())


def test_heldout_headline_shows_range_and_decidable_margin_from_the_json(data):
    assert data["study"] == "heldout_pneumonia" and data["cards"]
    body = card_section(data).body
    (card,) = data["cards"]  # one model, one training-set size
    assert body.index(escape(card["model"])) < body.index("<img")  # heading, then the forest plot
    by_id = {c["id"]: c for c in data["comparisons"]}
    finals = [by_id[i] for i in card["comparisons"]]
    assert {c["arm"] for c in finals} == {"pretrained", "meanvar", "pretrained · linear_probe"}
    undecided = [c for c in finals if c["verdict"] == "undecided" and c["plausible_range"]]
    assert undecided, "the held-out study has no undecided arm with an interval: nothing to check"
    for c in undecided:
        lo, hi = c["plausible_range"]
        assert (lo, hi) == (c["ci_low"], c["ci_high"])
        assert c["decidable_margin"] == pytest.approx(max(abs(lo), abs(hi)), rel=1e-9)
        shown = escape(f"between {_signed(lo)} and {_signed(hi)} AUC", quote=True)
        dm = c["decidable_margin"]
        margin = escape(f"with {c['n']} seeds: equivalent within {_margin(dm)} AUC" if dm < 1 else
                        f"with {c['n']} seeds no margin below ±1 AUC is decided yet", quote=True)
        assert shown in body and margin in body, (shown, margin)
        line = next(x["text"] for x in card["lines"] if x["arm"] == c["arm"])
        assert escape(line, quote=True) in body
        need, need2 = c["seeds_needed_at_margin"], c["seeds_needed_at_2x_margin"]
        assert need == c["seeds_needed"]
        m = c["margin"]
        assert (f"to decide at ±{m:g} AUC: " + ("more than 1000 seeds" if need is None else f"≈ {need} seeds")
                + f", at ±{2 * m:g} AUC: " + ("more than 1000 seeds" if need2 is None else f"≈ {need2} seeds")) in line
    for c in finals:  # a decided arm's line is its verdict's own sentence
        if c["verdict"] != "undecided":
            assert next(x["text"] for x in card["lines"] if x["arm"] == c["arm"]) == c["sentence"]

"""The decision card the study report opens with (issue 32): its sentences, numbers and context."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from transfuse.report.card import CARD_ALT, arm_sentence, card_section, margin_text, signed
from transfuse.report.export import schema
from transfuse.report.study import build_report, short_reason
from transfuse.store import Store
from transfuse.decide.decisions import load_decisions
from transfuse.decide.headline import BestCell, context, plan_level
from transfuse.decide.verdicts import seeds_needed

from .test_study_decisions import add, study_info

# ---- sentences from a synthetic comparison (the JSON's structure) -------------------------------

UNDECIDED = {"id": "m · n_train=full · meanvar vs random · final", "model": "m", "size": "full",
             "arm": "meanvar", "reference": "random", "endpoint": "final", "margin": 0.01, "n": 6,
             "mean": -0.0065, "level": 0.98333, "ci_low": -0.0741, "ci_high": 0.0611,
             "verdict": "undecided", "label": "undecided", "reason": "interval spans 0",
             "sentence": "meanvar vs random on the test AUC: undecided — …; needs ≈ 598 seeds.",
             "seeds_needed": 598, "plausible_range": [-0.0741, 0.0611], "decidable_margin": 0.07412,
             "seeds_needed_at_margin": 598, "seeds_needed_at_2x_margin": 151}


def test_undecided_sentence_says_range_decidable_margin_and_seeds():
    s = arm_sentence(UNDECIDED, unit="AUC")
    assert s == ("meanvar vs random: undecided at ±0.01 AUC — the difference lies between −0.074 and "
                 "+0.061 AUC (98.33 % interval); with 6 seeds: equivalent within ±0.075 AUC (larger "
                 "differences are ruled out); to decide at ±0.01 AUC: ≈ 598 seeds, at ±0.02 AUC: "
                 "≈ 151 seeds.")
    # beyond 1000 seeds, and a question gated before any statistics
    far = {**UNDECIDED, "seeds_needed_at_margin": None}
    assert "to decide at ±0.01 AUC: more than 1000 seeds, at ±0.02 AUC: ≈ 151 seeds." in arm_sentence(far, unit="AUC")
    wide = {**UNDECIDED, "plausible_range": [-1.614, 0.954], "decidable_margin": 1.614, "n": 3}
    assert "between −1.614 and +0.954 AUC (98.33 % interval); with 3 seeds no margin below ±1 AUC is " \
           "decided yet; to decide" in arm_sentence(wide, unit="AUC")
    gated = {**UNDECIDED, "plausible_range": None, "decidable_margin": None,
             "reason": "random did not learn: its validation AUC never moved"}
    assert arm_sentence(gated, unit="AUC") == ("meanvar vs random: undecided — random did not learn: "
                                               "its validation AUC never moved.")


def test_decided_sentence_is_the_verdicts_own():
    c = {**UNDECIDED, "verdict": "better_beyond_margin", "sentence": "meanvar is better than random …"}
    assert arm_sentence(c, unit="AUC") == "meanvar is better than random …"


def test_number_formats():
    assert signed(-0.0741) == "−0.074" and signed(0.0611) == "+0.061" and signed(0.0) == "+0.000"
    # rounded up: any margin above the exact one is decided, so the one shown is too
    assert margin_text(0.07412) == "±0.075" and margin_text(0.075) == "±0.075" and margin_text(0.0750001) == "±0.076"


# ---- the context rule ---------------------------------------------------------------------------

def _c(study, model, arm, mean, size="full", dataset="d"):
    return BestCell(study, model, arm, size, dataset, mean, 3)


def test_context_lists_cells_beating_this_models_best_by_more_than_the_margin():
    cells = [_c("s", "lite0", "random", 0.74), _c("s", "lite0", "pretrained", 0.76),
             _c("s", "cbr", "random", 0.80), _c("s", "cbr", "pretrained", 0.90),  # this study: best arm only
             _c("s", "cbr", "pretrained", 0.99, size="100"),                        # another size
             _c("x", "cbr_small", "pretrained", 0.91), _c("x", "cbr_small", "random", 0.85),
             _c("y", "resnet", "random", 0.765),                                     # within the margin
             _c("z", "resnet", "random", 0.99, dataset="other")]                     # other data
    best, ahead = context(study="s", model="lite0", size="full", datasets=["d"], cells=cells, margin=0.01)
    assert (best.arm, best.mean) == ("pretrained", 0.76)
    assert [(c.study, c.model, c.arm) for c, _ in ahead] == [("x", "cbr_small", "pretrained"),
                                                             ("s", "cbr", "pretrained")]
    assert [round(lead, 6) for _, lead in ahead] == [0.15, 0.14]
    # a wider margin: only leads beyond it
    _, ahead = context(study="s", model="lite0", size="full", datasets=["d"], cells=cells, margin=0.145)
    assert [c.model for c, _ in ahead] == ["cbr_small"]
    assert context(study="s", model="none", size="full", datasets=["d"], cells=cells, margin=0.01) == (None, [])


# ---- on a stored study: JSON, HTML, and the report's first figure --------------------------------

@pytest.fixture()
def card_ws(tmp_path):
    rng = np.random.default_rng(3)
    store = Store(tmp_path)
    for seed in range(4):
        r = 0.75 + rng.normal(0, 0.01)
        add(store, init="random", seed=seed, test=r)
        add(store, init="meanvar", seed=seed, test=r + 0.05 + rng.normal(0, 0.003))   # decided
        add(store, init="pretrained", seed=seed, test=r + rng.normal(0, 0.04))       # undecided
        add(store, init="random", seed=seed, test=0.95 + 0.001 * seed, model="cbr_small")
        add(store, init="random", seed=seed, test=0.97, model="cbr_big", study="other")
        add(store, init="random", seed=seed, test=0.81, model="cbr_mid", study="close")
    study_info(store)
    return tmp_path


def test_cards_in_the_json_agree_with_the_verdicts(card_ws):
    import jsonschema

    data = json.loads(build_report(workspace=card_ws, study="syn", out=card_ws / "r.json",
                                   format="json").read_text())
    jsonschema.validate(data, schema())
    _, dec, _ = load_decisions(Store(card_ws), "syn")
    by = {(c["model"], c["arm"], c["endpoint"]): c for c in data["comparisons"]}
    mv, pre = by[("cbr_tiny", "meanvar", "final")], by[("cbr_tiny", "pretrained", "final")]
    assert mv["verdict"] == "better_beyond_margin" and pre["verdict"] == "undecided"
    # the plausible range is the verdict's interval; the decidable margin its far end from 0
    for c in (mv, pre):
        assert c["plausible_range"] == [c["ci_low"], c["ci_high"]]
        assert c["decidable_margin"] == pytest.approx(max(abs(c["ci_low"]), abs(c["ci_high"])), rel=1e-9)
    # seeds needed: at the margin as the verdict's own count, at twice it fewer; none when decided
    a = plan_level(dec.evaluation, dec.family_size)
    assert a == pytest.approx(0.05 / data["family_size"])
    assert pre["seeds_needed_at_margin"] == pre["seeds_needed"] is not None
    assert pre["seeds_needed_at_2x_margin"] == seeds_needed(delta=pre["mean"], sd=pre["sd"], margin=0.02,
                                                            a=a, power=0.8, at_least=pre["n"])
    assert pre["seeds_needed_at_2x_margin"] < pre["seeds_needed_at_margin"]
    assert mv["seeds_needed_at_margin"] is None and mv["seeds_needed_at_2x_margin"] is None
    cards = {c["model"]: c for c in data["cards"]}
    card = cards["cbr_tiny"]
    assert card["comparisons"] == [mv["id"], pre["id"]] or card["comparisons"] == [pre["id"], mv["id"]]
    lines = {x["arm"]: x["text"] for x in card["lines"]}
    assert lines["meanvar"] == mv["sentence"]
    lo, hi = pre["plausible_range"]
    assert f"between {signed(lo)} and {signed(hi)} AUC" in lines["pretrained"]
    assert f"with 4 seeds: equivalent within {margin_text(pre['decidable_margin'])} AUC" in lines["pretrained"]
    assert f"≈ {pre['seeds_needed_at_margin']} seeds, at ±0.02 AUC: ≈ {pre['seeds_needed_at_2x_margin']} seeds" \
        in lines["pretrained"]
    # context: the other model of this study and the other study's better cell; not the close one
    best = card["best"]
    assert best["arm"] == "meanvar"
    ctx = [(x["study"], x["model"]) for x in card["context"]]
    assert ctx == [("other", "cbr_big"), ("syn", "cbr_small")]
    big = card["context"][0]
    assert big["lead"] == pytest.approx(0.97 - best["mean"])
    assert big["text"].startswith(f"cbr_big (study other, arm random) reaches 0.970 AUC on these data "
                                  f"(4 seeds), {0.97 - best['mean']:.3f} above this model's best (meanvar, ")
    assert card["context"][1]["text"].startswith("cbr_small (this study, arm random)")
    # the best model of this study: only the other study's cell, 0.0185 ahead of its 0.9515
    assert [x["model"] for x in cards["cbr_small"]["context"]] == ["cbr_big"]


def test_the_report_opens_with_the_card_and_its_forest_plot(card_ws):
    html = build_report(workspace=card_ws, study="syn", out=card_ws / "r.html").read_text()
    first = re.search(r'<img alt="([^"]*)"', html).group(1)
    assert first.startswith(CARD_ALT + ", cbr_tiny, n_train=full")
    assert html.index('<section id="card">') < html.index('<section id="summary">')
    assert html.index("<h2>Decision card</h2>") < html.index("<h2>Summary</h2>")
    data = json.loads(build_report(workspace=card_ws, study="syn", out=card_ws / "r.json",
                                   format="json").read_text())
    # the card is built from the JSON alone, and every sentence of it is on the page (escaped)
    from html import escape

    sec = card_section(data)
    for card in data["cards"]:
        for x in card["lines"] + card["context"]:
            assert escape(x["text"], quote=True) in html and escape(x["text"], quote=True) in sec.body


def test_short_reasons():
    long = "decisive only before the multiplicity adjustment (p = 0.0123, adjusted 0.0612)"
    s = short_reason(long)
    assert len(s) <= 60 and s.endswith("…") and long.startswith(s[:-1])
    assert short_reason("interval spans 0") == "interval spans 0"
    assert len(short_reason("x" * 100)) == 60 and short_reason("x" * 100).endswith("x…")

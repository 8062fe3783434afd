"""Transferability estimators against the authors' published code and hand-computed cases.

Reference numbers: the authors' code (github.com/thuml/LogME: LogME.py (fixed-point `fit`), LEEP.py,
NCE.py; Transfer-Learning-Library tllib/ranking/hscore.py) run once on the fixed matrices that
:func:`_fixed` builds (numpy's PCG64 stream, stable across releases); not vendored here.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from transfuse.errors import DataError
from transfuse.transferability import (ESTIMATORS, h_score, h_score_shrunk, leep, logme, nce,
                                      probe_auc)


def _fixed():
    rng = np.random.default_rng(20261207)
    n, d, c, cs = 120, 16, 3, 5
    y = np.arange(n) % c
    f = rng.normal(size=(n, d)) + 0.8 * np.eye(c, d)[y]
    logits = rng.normal(size=(n, cs)) + 1.5 * np.eye(c, cs)[y]
    p = np.exp(logits)
    p /= p.sum(1, keepdims=True)
    wide = rng.normal(size=(40, 64)) + np.eye(c, 64)[np.arange(40) % c]
    return f, y, p, wide, np.arange(40) % c


# printed by the authors' code on _fixed()'s arrays
AUTHORS = {"logme": -0.8595997665047183, "logme_wide": 0.9961069893308784,
           "leep": -0.8815344719284656, "nce": -0.7227488422691969, "hscore": 0.43152278768031677,
           "hscore_reg_scaled": 0.17647604905884937}  # regularized_h_score(f * linspace(.2, 3, 16))


def test_logme_leep_nce_hscore_equal_the_authors_code():
    f, y, p, wide, yw = _fixed()
    assert logme(f, y) == pytest.approx(AUTHORS["logme"], abs=1e-6)
    assert logme(wide, yw) == pytest.approx(AUTHORS["logme_wide"], abs=1e-6)  # N < D
    assert leep(p, y) == pytest.approx(AUTHORS["leep"], abs=1e-6)
    assert nce(p, y) == pytest.approx(AUTHORS["nce"], abs=1e-6)
    assert h_score(f, y) == pytest.approx(AUTHORS["hscore"], abs=1e-6)
    scaled = f * np.linspace(0.2, 3.0, f.shape[1])
    assert h_score_shrunk(scaled, y) == pytest.approx(AUTHORS["hscore_reg_scaled"], abs=1e-6)
    assert h_score_shrunk(f, y) == 0.0  # isotropic features: Ledoit-Wolf shrinks fully (authors': 0.0)


def test_nce_and_hscore_equal_their_formulas_on_a_hand_computed_case():
    y = np.array([0, 0, 1, 1])
    # hard source labels z = 0, 0, 0, 1: P(z=0) = 3/4 with P(y | z=0) = (2/3, 1/3); z=1 is pure
    p = np.array([[0.9, 0.1], [0.8, 0.2], [0.6, 0.4], [0.3, 0.7]])
    h = -(2 / 3 * math.log(2 / 3) + 1 / 3 * math.log(1 / 3))
    assert nce(p, y) == pytest.approx(-0.75 * h, abs=1e-12)
    # f = 0, 2, 4, 6: var(f) = 20/3; class means 1, 5: var(g) = 16/3 (N − 1 both) → 0.8
    assert h_score(np.array([[0.0], [2.0], [4.0], [6.0]]), y) == pytest.approx(0.8, abs=1e-12)


def test_leep_is_zero_for_a_perfect_source_and_log_half_for_an_uninformative_one():
    y = np.array([0, 0, 1, 1])
    assert leep(np.eye(2)[y], y) == pytest.approx(0.0, abs=1e-12)
    assert leep(np.full((4, 2), 0.5), y) == pytest.approx(math.log(0.5), abs=1e-12)


def test_every_estimator_ranks_informative_features_above_noise():
    rng = np.random.default_rng(0)
    y = np.arange(200) % 2
    good = rng.normal(size=(200, 8)) + 2.0 * y[:, None]
    noise = rng.normal(size=(200, 8))
    soft_good = np.stack([1 - (0.1 + 0.8 * y), 0.1 + 0.8 * y], 1)
    soft_bad = np.full((200, 2), 0.5)
    for e in ESTIMATORS:
        if e.meta["needs"] == "features":
            assert e.fn(good, y) > e.fn(noise, y), e.name
        else:
            assert e.fn(soft_good, y) > e.fn(soft_bad, y), e.name
    assert probe_auc(good, y) > 0.95 and probe_auc(noise, y) < 0.7


@pytest.mark.parametrize("bad,msg", [
    (np.array([[np.nan, 1.0]] * 4), "NaN or inf"),
    (np.ones(4), "must be (N, D)"),
])
def test_bad_features_are_refused_with_one_line(bad, msg):
    with pytest.raises(DataError, match=msg.replace("(", r"\(").replace(")", r"\)")):
        logme(bad, np.array([0, 1, 0, 1]))


def test_leep_refuses_rows_that_are_not_probabilities():
    with pytest.raises(DataError, match="summing to 1"):
        leep(np.ones((4, 2)), np.array([0, 1, 0, 1]))


def test_plain_hscore_saturates_at_c_minus_1_when_features_outnumber_examples():
    rng = np.random.default_rng(1)
    y = np.arange(30) % 3
    f = rng.normal(size=(30, 64))
    assert h_score(f, y) == pytest.approx(2.0, abs=1e-6)  # why hscore_reg exists
    assert h_score_shrunk(f, y) < 1.0

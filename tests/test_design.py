"""The margins a number of seeds decides (transfuse.decide.design): the boundary where the verdict flips."""

import numpy as np
import pytest

from transfuse.decide.design import decidable_margin, margin_for_seeds
from transfuse.decide.verdicts import decide_family, power_decisive, seeds_needed


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_decidable_margin_is_where_tost_starts_to_decide(seed):
    d = np.random.default_rng(seed).normal(0.003, 0.04, 8)
    m = decidable_margin(list(d), a=0.05)
    below = decide_family([d], [m * 0.999], alpha=0.05, method="none")[0]
    above = decide_family([d], [m * 1.001], alpha=0.05, method="none")[0]
    assert below.verdict == "undecided" and above.verdict == "equivalent"
    assert m == pytest.approx(max(abs(above.ci_low), abs(above.ci_high)), rel=1e-9)


def test_decidable_margin_needs_two_values_and_skips_missing():
    assert decidable_margin([0.1], a=0.05) is None
    assert decidable_margin([0.1, None, float("nan")], a=0.05) is None
    assert decidable_margin([0.01, None, 0.03], a=0.05) == pytest.approx(decidable_margin([0.01, 0.03], a=0.05))


@pytest.mark.parametrize("n,sd", [(6, 0.05), (10, 0.02), (30, 0.03)])
def test_margin_for_seeds_inverts_seeds_needed(n, sd):
    a = 0.05 / 4
    m = margin_for_seeds(n=n, sd=sd, a=a)
    assert power_decisive(n, delta=0.0, sd=sd, margin=m, a=a) >= 0.8
    assert power_decisive(n, delta=0.0, sd=sd, margin=m * 0.99, a=a) < 0.8
    assert seeds_needed(delta=0.0, sd=sd, margin=m, a=a) <= n
    assert seeds_needed(delta=0.0, sd=sd, margin=m * 0.98, a=a) > n


def test_margin_for_seeds_shrinks_with_seeds_and_edge_cases():
    ms = [margin_for_seeds(n=n, sd=0.05, a=0.0125) for n in (4, 8, 16, 64)]
    assert ms == sorted(ms, reverse=True)
    assert margin_for_seeds(n=1, sd=0.05, a=0.05) is None
    assert margin_for_seeds(n=5, sd=float("nan"), a=0.05) is None
    assert margin_for_seeds(n=5, sd=0.0, a=0.05, delta=0.01) == 0.01

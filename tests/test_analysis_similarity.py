"""Similarity measures: invariances, the registry, input errors, the streaming CKA and grids."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from transfuse.analysis import (SIMILARITIES, MinibatchCKA, cca, linear_cka, list_similarities, pwcca,
                                rbf_cka, similarity_grid, svcca)
from transfuse.analysis.canonical import choose_dims, thresholded_mean
from transfuse.errors import ConfigError, DataError

pytestmark = pytest.mark.usefixtures("one_thread_module")


def data(n=200, p=12, q=9, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 4, generator=g, dtype=torch.float64)
    x = z @ torch.randn(4, p, generator=g, dtype=torch.float64) + torch.randn(n, p, generator=g, dtype=torch.float64)
    y = torch.relu(z @ torch.randn(4, q, generator=g, dtype=torch.float64) + torch.randn(n, q, generator=g, dtype=torch.float64))
    return x, y


def orthogonal(p, seed=1):
    q, _ = torch.linalg.qr(torch.randn(p, p, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q


def test_the_registry_lists_every_measure():
    assert list_similarities() == ["cca", "linear_cka", "linear_cka_debiased", "pwcca", "rbf_cka", "svcca"]
    assert {e.name for e in SIMILARITIES if e.meta["grid"]} == {"cca", "svcca", "pwcca", "linear_cka"}
    with pytest.raises(ConfigError, match="did you mean linear_cka"):
        SIMILARITIES.get("linear_ckaa")


@pytest.mark.parametrize("name", list_similarities())
def test_every_measure_is_one_on_itself_symmetric_and_in_range(name):
    fn = SIMILARITIES.get(name).fn
    x, y = data()
    assert fn(x, x) == pytest.approx(1.0, abs=1e-9)
    v = fn(x, y)
    assert 0.0 < v < 1.0
    assert fn(y, x) == pytest.approx(v, abs=1e-10)  # unequal widths: pwcca weights the narrower side


@pytest.mark.parametrize("name", list_similarities())
def test_every_measure_is_invariant_to_rotation_scaling_and_translation(name):
    fn = SIMILARITIES.get(name).fn
    x, y = data(seed=2)
    v = fn(x, y)
    assert fn(3.7 * x + 5.0, 0.01 * y - 2.0) == pytest.approx(v, abs=1e-9)
    if name == "pwcca":  # its weights are defined per neuron, so rotating the weighting side matters
        assert fn(x @ orthogonal(x.shape[1]), y) == pytest.approx(v, abs=1e-9)  # y (narrower) weights
        assert abs(fn(x, y @ orthogonal(y.shape[1], seed=4)) - v) > 1e-4
        return
    assert fn(3.7 * x @ orthogonal(x.shape[1]) + 5.0, y) == pytest.approx(v, abs=1e-9)
    assert fn(x, 0.01 * y @ orthogonal(y.shape[1], seed=4)) == pytest.approx(v, abs=1e-9)


def test_cca_family_is_invariant_to_invertible_linear_maps_and_cka_is_not():
    x, y = data(seed=3)
    a = torch.randn(12, 12, generator=torch.Generator().manual_seed(9), dtype=torch.float64) + 3 * torch.eye(12)
    assert cca(x, x @ a).mean == pytest.approx(1.0, abs=1e-9)
    assert cca(x, x @ a).coefs.min().item() == pytest.approx(1.0, abs=1e-9)
    assert cca(x @ a, y).mean == pytest.approx(cca(x, y).mean, abs=1e-9)
    assert svcca(x @ a, y, keep=None).mean == pytest.approx(svcca(x, y, keep=None).mean, abs=1e-9)
    assert pwcca(x, x @ a).value == pytest.approx(1.0, abs=1e-9)
    assert abs(linear_cka(x @ a, y) - linear_cka(x, y)) > 1e-3


def test_svcca_of_a_toy_transform_is_one():
    # google/svcca's toy check: A vs a random linear map of A
    g = torch.Generator().manual_seed(0)
    a = torch.randn(2000, 40, generator=g, dtype=torch.float64)
    at = a @ torch.randn(40, 40, generator=g, dtype=torch.float64)
    assert cca(a, at).mean == pytest.approx(1.0, abs=1e-9)


def test_independent_data_scores_low_and_near_duplicates_high():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2000, 10, generator=g, dtype=torch.float64)
    y = torch.randn(2000, 10, generator=g, dtype=torch.float64)
    assert linear_cka(x, y) < 0.02 and linear_cka(x, y, debiased=True) < 0.005
    assert cca(x, y).mean < 0.1
    near = x + 0.01 * y
    assert linear_cka(x, near) > 0.999 and cca(x, near).mean > 0.999


def test_rank_deficient_inputs_are_handled():
    x, y = data(seed=6)
    dup = torch.cat([x, x[:, :3], torch.zeros(len(x), 2, dtype=torch.float64)], 1)  # duplicate + dead neurons
    assert cca(dup, y).mean == pytest.approx(cca(x, y).mean, abs=1e-8)
    assert len(cca(dup, y).coefs) == min(x.shape[1], y.shape[1])


@pytest.mark.parametrize("call, needle", [
    (lambda: linear_cka(torch.randn(5, 3), torch.randn(6, 3)), "x has 5 samples but y has 6"),
    (lambda: linear_cka(torch.randn(5, 3, 2), torch.randn(5, 3)), "reshape_activations"),
    (lambda: linear_cka(torch.randn(3, 4), torch.randn(3, 4), debiased=True), "at least 4 samples but got 3"),
    (lambda: linear_cka(torch.randn(1, 4), torch.randn(1, 4)), "at least 2 samples"),
    (lambda: linear_cka(torch.ones(8, 3), torch.randn(8, 3)), "x has zero variance"),
    (lambda: linear_cka(torch.tensor([[float("nan")], [1.0]]), torch.randn(2, 1)), "NaN"),
    (lambda: cca(torch.randn(20, 10), torch.randn(20, 10)), "n=20 with 10 + 10 features"),
    (lambda: svcca(torch.randn(20, 30), torch.randn(20, 30), keep=15), "lower keep or pass max_dims"),
    (lambda: pwcca(torch.randn(30, 10), torch.randn(30, 25)), "more samples"),
    (lambda: rbf_cka(torch.ones(9, 2), torch.randn(9, 2)), "median squared distance"),
])
def test_bad_inputs_raise_one_line_errors_before_any_nan(call, needle):
    with pytest.raises(DataError) as e:
        call()
    assert needle in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("call, needle", [
    (lambda: svcca(torch.randn(50, 5), torch.randn(50, 5), keep=0), "keep=0"),
    (lambda: svcca(torch.randn(50, 5), torch.randn(50, 5), keep=1.5), "keep=1.5"),
    (lambda: pwcca(torch.randn(50, 5), torch.randn(50, 5), weighted_by="z"), "weighted_by"),
    (lambda: cca(torch.randn(50, 5), torch.randn(50, 5), threshold=0), "threshold=0"),
    (lambda: rbf_cka(torch.randn(9, 2), torch.randn(9, 2), threshold=-1), "threshold=-1"),
    (lambda: similarity_grid({"a": torch.randn(30, 2)}, measures=("cka",)), "measures"),
])
def test_bad_options_raise_config_errors(call, needle):
    with pytest.raises(ConfigError, match=needle):
        call()


def test_keyword_only_options():
    x, y = data()
    with pytest.raises(TypeError):
        svcca(x, y, 0.9)  # the google/svcca positional-argument bug cannot happen


def test_choose_dims_and_thresholded_mean():
    s = torch.tensor([3.0, 2.0, 1.0, 0.5], dtype=torch.float64)  # variances 9, 4, 1, .25
    assert choose_dims(s, keep=0.6) == 1 and choose_dims(s, keep=0.9) == 2 and choose_dims(s, keep=1.0) == 4
    assert choose_dims(s, keep=3) == 3 and choose_dims(s, keep=10) == 4 and choose_dims(s, keep=0.99, max_dims=2) == 2
    assert choose_dims(s, keep=None) == 4
    c = torch.tensor([0.9, 0.8, 0.2, 0.1], dtype=torch.float64)  # sum 2.0; prefixes .45 .85 .95
    assert thresholded_mean(c, 0.9) == pytest.approx((0.9 + 0.8 + 0.2) / 3)
    assert thresholded_mean(c, 0.98) == pytest.approx(0.5)  # never reached before the end → all


def test_minibatch_cka_equals_full_cka_for_any_batching():
    x, y = data(n=301, p=7, q=5, seed=7)
    x = x + 100.0  # a large offset: the running sums are shifted for stability
    for sizes in ([301], [1, 300], [64] * 4 + [45]):
        acc = MinibatchCKA()
        i = 0
        for b in sizes:
            acc.update(x[i:i + b], y[i:i + b])
            i += b
        assert acc.n == 301
        assert acc.compute() == pytest.approx(linear_cka(x, y), abs=1e-10)
        assert acc.compute(debiased=True) == pytest.approx(linear_cka(x, y, debiased=True), abs=1e-9)


def test_minibatch_cka_memory_does_not_grow_with_samples():
    acc = MinibatchCKA()
    g = torch.Generator().manual_seed(0)
    sizes = []
    for _ in range(20):
        acc.update(torch.randn(50, 6, generator=g), torch.randn(50, 4, generator=g))
        sizes.append(sum(t.numel() for t in acc._s.values()))
    assert len(set(sizes)) == 1 and sizes[0] < 200  # O(p² + q² + pq), not O(n)
    with pytest.raises(DataError, match="batch widths"):
        acc.update(torch.randn(5, 7), torch.randn(5, 4))
    with pytest.raises(DataError, match="has seen 3 samples"):
        m = MinibatchCKA()
        m.update(torch.randn(3, 2), torch.randn(3, 2))
        m.compute(debiased=True)


def test_grid_matches_single_pair_functions_and_skips_incomparable_pairs():
    x, y = data(n=300, p=10, q=8, seed=1)
    x2, _ = data(n=300, p=6, q=8, seed=2)
    xs, ys = {"a": x, "b": x2}, {"c": y, "d": x}
    g = similarity_grid(xs, ys, keep=0.9, pwcca_keep=0.9, comparable=lambda a, b: (a, b) != ("b", "d"))
    assert g.names_x == ("a", "b") and g.names_y == ("c", "d")
    for i, (a, xa) in enumerate(xs.items()):
        for j, (b, yb) in enumerate(ys.items()):
            if (a, b) == ("b", "d"):
                assert all(torch.isnan(v[i, j]) for v in g.values.values())
                continue
            assert g.values["cca"][i, j] == pytest.approx(cca(xa, yb).mean, abs=1e-10)
            assert g.values["svcca"][i, j] == pytest.approx(svcca(xa, yb, keep=0.9).mean, abs=1e-10)
            assert g.values["pwcca"][i, j] == pytest.approx(pwcca(xa, yb, keep=0.9).value, abs=1e-10)
            assert g.values["linear_cka"][i, j] == pytest.approx(linear_cka(xa, yb), abs=1e-10)
    assert g.values["cca"][0, 1] == pytest.approx(1.0)


def test_grid_shuffled_rows_give_a_chance_level():
    x, y = data(n=400, p=10, q=8, seed=3)
    real = similarity_grid({"a": x}, {"a": y}, measures=("linear_cka", "svcca"))
    chance = similarity_grid({"a": x}, {"a": y}, measures=("linear_cka", "svcca"), shuffle_seed=0)
    assert real.values["linear_cka"][0, 0] > 0.3 > chance.values["linear_cka"][0, 0]
    assert real.values["svcca"][0, 0] > chance.values["svcca"][0, 0]


def test_grid_checks_sample_counts_up_front():
    with pytest.raises(DataError, match="'a' has 30 datapoints but 'b' has 20"):
        similarity_grid({"a": torch.randn(30, 2)}, {"b": torch.randn(20, 2)})
    with pytest.raises(DataError, match="cca of 'a' vs 'a'"):
        similarity_grid({"a": torch.randn(30, 20)}, measures=("cca",))
    bad = torch.randn(30, 3)
    bad[4, 1] = float("inf")
    with pytest.raises(DataError, match="'?a'? contains NaN or infinite"):
        similarity_grid({"a": bad}, measures=("linear_cka",))
    g = similarity_grid({"a": torch.randn(30, 20, dtype=torch.float64)}, measures=("svcca", "pwcca"),
                        max_dims=lambda n: n // 5, pwcca_max_dims=lambda n: n // 5)
    assert g.dims_x == {"a": 6} and g.values["svcca"][0, 0] == pytest.approx(1.0)


def test_numpy_and_float32_inputs_compute_in_float64():
    x, y = data(seed=4)
    assert linear_cka(x.float().numpy(), y.float().numpy()) == pytest.approx(linear_cka(x.float(), y.float()), abs=1e-12)
    assert cca(x.float(), y.float()).coefs.dtype == torch.float64


@pytest.mark.parametrize("case", ["tall", "wide", "ill_conditioned", "dead_neurons"])
def test_factor_reconstructs_the_centred_data_on_every_path(case):
    from transfuse.analysis import factor

    g = torch.Generator().manual_seed(11)
    n, p = (40, 90) if case == "wide" else (300, 20)
    x = torch.randn(n, p, generator=g, dtype=torch.float64) + 2.0
    if case == "ill_conditioned":  # spectrum over 5 decades: the Gram route would lose accuracy
        x = x * torch.logspace(0, -5, p, dtype=torch.float64)
    if case == "dead_neurons":
        x[:, :5] = 0.0
    from unittest import mock

    import transfuse.analysis.canonical as canonical

    with mock.patch.object(canonical.torch.linalg, "svd", wraps=torch.linalg.svd) as svd:
        f = factor(x)
    assert svd.call_count == (case == "ill_conditioned")  # the SVD fallback only when needed
    xc = x - x.mean(0)
    torch.testing.assert_close(f.u @ torch.diag(f.s) @ f.vt, xc, atol=1e-10, rtol=0)
    torch.testing.assert_close(f.u.mT @ f.u, torch.eye(f.rank, dtype=torch.float64), atol=1e-9, rtol=0)
    want = {"tall": p, "wide": n - 1, "ill_conditioned": p, "dead_neurons": p - 5}[case]
    assert f.rank == want
    if case == "ill_conditioned":  # CCA still sees every direction: invariant to the scaling
        assert cca(x, x @ torch.randn(p, p, generator=g, dtype=torch.float64)).mean == pytest.approx(1.0, abs=1e-6)

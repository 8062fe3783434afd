"""Activation capture by stage name and the explicit reshaping policies (2D and 3D)."""

from __future__ import annotations

import pytest
import torch

from transfuse.analysis import capture_activations, check_comparable, reshape_activations
from transfuse.errors import ConfigError, DataError, ModelError
from transfuse.models import create_model, get_stages

pytestmark = pytest.mark.usefixtures("one_thread_module")


def tiny(dims: int, seed: int = 0):
    torch.manual_seed(seed)
    return create_model("cbr_tiny", spatial_dims=dims, in_channels=1, num_classes=3)


def images(n: int, dims: int, size: int = 16, seed: int = 0):
    return torch.randn(n, 1, *([size] * dims), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("shape", [(4, 3, 5, 6), (4, 3, 2, 5, 6)])
def test_pool_is_the_global_average_for_4d_and_5d(shape):
    a = torch.randn(*shape)
    out = reshape_activations(a, policy="pool")
    assert out.shape == (4, 3)
    torch.testing.assert_close(out, a.flatten(2).mean(2))
    assert reshape_activations(torch.randn(4, 7), policy="positions").shape == (4, 7)  # vectors stay
    assert reshape_activations(torch.randn(4, 9, 7), policy="pool").shape == (4, 7)  # tokens (N, T, C)


@pytest.mark.parametrize("spatial", [(5, 6), (2, 5, 6)])
def test_positions_are_real_entries_and_align_across_maps_of_one_size(spatial):
    n, p = 4, 1
    for s in spatial:
        p *= s
    # channel 0 holds the flat position index, channel 1 the image index
    pos = torch.arange(p, dtype=torch.float32).view(1, 1, *spatial).expand(n, 1, *spatial)
    img = torch.arange(n, dtype=torch.float32).view(n, 1, *([1] * len(spatial))).expand(n, 1, *spatial)
    a = torch.cat([pos, img], 1)
    rows = reshape_activations(a, policy="positions", per_image=5, generator=torch.Generator().manual_seed(3))
    assert rows.shape == (n * 5, 2)
    assert rows[:, 1].tolist() == [float(i) for i in range(n) for _ in range(5)]  # image-major
    for i in range(n):
        assert len(set(rows[i * 5:(i + 1) * 5, 0].tolist())) == 5  # no repeats within an image
    other = torch.randn(n, 7, *spatial)
    rows2 = reshape_activations(torch.cat([a, other], 1), policy="positions", per_image=5,
                                generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(rows2[:, :2], rows)  # same seed and size → same positions
    every = reshape_activations(a, policy="positions", per_image=10**6)
    assert every.shape == (n * p, 2)


def test_bad_policy_and_shapes():
    with pytest.raises(ConfigError, match="policy='flatten'"):
        reshape_activations(torch.randn(2, 3, 4, 4), policy="flatten")
    with pytest.raises(DataError, match=r"\(2, 3, 4, 4, 4, 4\)"):
        reshape_activations(torch.randn(2, 3, 4, 4, 4, 4))


@pytest.mark.parametrize("dims", [2, 3])
def test_capture_by_stage_name_pool(dims):
    model = tiny(dims)
    x = images(10, dims, size=16 if dims == 2 else 12)
    acts = capture_activations(model, x.split(4), policy="pool", n_images=10)
    stages = get_stages(model)
    assert list(acts.values) == [s.name for s in stages]
    for s in stages:
        assert acts.values[s.name].shape == (10, s.channels)
    torch.testing.assert_close(acts.values["head"], model.eval()(x))  # head output = logits
    assert acts.spatial["head"] == () and len(acts.spatial["stem"]) == dims
    assert acts.n_images == 10 and acts.policy == "pool"


def test_capture_positions_is_batching_invariant_and_checks_map_sizes():
    model = tiny(2)
    x = images(12, 2)
    a = capture_activations(model, x.split(5), stages=["stem", "block1", "head"], policy="positions", per_image=6, seed=1)
    b = capture_activations(model, x.split(12), stages=["stem", "block1", "head"], policy="positions", per_image=6, seed=1)
    for k in a.values:
        torch.testing.assert_close(a.values[k], b.values[k])
    assert a.values["stem"].shape == (72, get_stages(model)[0].channels)
    assert a.values["head"].shape == (12, 3)
    assert a.comparable("stem", b, "stem") and not a.comparable("stem", b, "block1")
    with pytest.raises(DataError, match="'stem' is .* and 'block1' is .*policy='pool'"):
        check_comparable(a, "stem", b, "block1")
    p = capture_activations(model, x.split(5), stages=["stem", "block1"], policy="pool")
    assert p.comparable("stem", p, "block1")


def test_capture_checks_sample_counts_before_any_forward_pass():
    def never():
        raise AssertionError("the loader must not be touched")
        yield  # pragma: no cover

    with pytest.raises(DataError, match="only 3 images .* at least 16"):
        capture_activations(tiny(2), never(), n_images=3, min_images=16)
    with pytest.raises(DataError, match="yielded 2 images"):
        capture_activations(tiny(2), [images(2, 2)], min_images=4)


def test_capture_restores_the_model_and_reports_bad_stages():
    model = tiny(2).train()
    hooks_before = sum(len(m._forward_hooks) for m in model.modules())
    capture_activations(model, [(images(4, 2), torch.zeros(4))])  # (image, target) tuples
    assert model.training and sum(len(m._forward_hooks) for m in model.modules()) == hooks_before
    with pytest.raises(ModelError, match="unknown stage 'block9'"):
        capture_activations(model, [images(4, 2)], stages=["block9"])
    with torch.no_grad():
        get_stages(model)  # stages are addressable; now poison the stem
        model.get_submodule(get_stages(model)[0].modules[0]).apply(
            lambda m: m.weight.fill_(float("nan")) if isinstance(m, torch.nn.Conv2d) else None)
    with pytest.raises(DataError, match="stage 'stem' are not finite .* images 0–3"):
        capture_activations(model, [images(4, 2)])
    assert sum(len(m._forward_hooks) for m in model.modules()) == hooks_before

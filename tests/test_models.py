"""The model contract: shapes, named stages, parameter ownership and the CBR sizes of the paper.

Every registered model is tested in 2D and 3D (unsupported combinations must raise
``ModelError``), plus two timm models. Inputs are tiny (32 px 2D, 16 px 3D; Inception-v3 needs
75 px and is built once, with one input channel).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from transfuse._registry import Registry
from transfuse.errors import ConfigError, ModelError
from transfuse.models import (
    MODELS,
    create_model,
    get_stages,
    list_models,
    model_info,
    register_model,
    stage_module,
    stage_of,
    stage_parameters,
)

TIMM_MODELS = ["timm:efficientnet_lite0", "timm:resnet18"]
ALL_MODELS = list_models() + TIMM_MODELS
NUM_CLASSES = 3
BATCH = 2


def _supports(name: str, dims: int) -> bool:
    return dims in model_info(name)["spatial_dims"]


def _segmentation(name: str) -> bool:
    return model_info(name)["task"] == "segmentation"


def _input_side(name: str, dims: int) -> int:
    if name == "inception_v3":
        return 75
    side = 32 if dims == 2 else 16
    mult = model_info(name)["size_multiple"]  # segmentation U-Nets: sides multiple of their stride
    return max(side, -(-side // mult) * mult)


def _cases() -> list:
    out = []
    for name in ALL_MODELS:
        for dims in (2, 3):
            if not _supports(name, dims):
                continue
            # Inception-v3 is the slowest build (probe at 299 px): one case, the 1-channel path.
            # Models with > ~30M parameters at these dims (registry meta heavy_dims) are slow.
            marks = [pytest.mark.slow] if dims in model_info(name)["heavy_dims"] else []
            for cin in ((1,) if name == "inception_v3" else (1, 3)):
                out.append(pytest.param((name, dims, cin), id=f"{name}-{dims}d-c{cin}", marks=marks))
    return out


def test_registry_lists_every_model_family():
    names = list_models()
    assert {"cbr_large_t", "cbr_large_w", "cbr_small", "cbr_tiny", "resnet18", "resnet50",
            "inception_v3"} <= set(names)
    assert names == sorted(names)
    assert list_models("cbr*") == ["cbr_large_t", "cbr_large_w", "cbr_small", "cbr_tiny"]


def _forward_with_hooks(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Size]]:
    shapes: dict[str, torch.Size] = {}
    hooks = [stage_module(model, s.name).register_forward_hook(
        lambda m, i, o, name=s.name: shapes.__setitem__(name, o.shape)) for s in get_stages(model)]
    try:
        with torch.no_grad():
            out = model(x)
    finally:
        for h in hooks:
            h.remove()
    return out, shapes


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread_module):
    """Tiny tensors: run this module with one intra-op thread (see conftest)."""


@pytest.fixture(scope="module", params=_cases())
def built(request):
    """One model and one hooked forward pass per case; one model alive at a time (module scope).

    Yields ``(model, name, dims, in_channels, side, logits, stage output shapes)``.
    """
    name, dims, cin = request.param
    torch.manual_seed(0)
    model = create_model(name, spatial_dims=dims, in_channels=cin, num_classes=NUM_CLASSES)
    model.eval()
    side = _input_side(name, dims)
    out, shapes = _forward_with_hooks(model, torch.randn(BATCH, cin, *([side] * dims)))
    yield model, name, dims, cin, side, out, shapes


def test_output_shape(built):
    model, name, dims, cin, side, out, _ = built
    # Segmentation models (meta task="segmentation") return a map at the input size.
    assert out.shape == ((BATCH, NUM_CLASSES, *[side] * dims) if _segmentation(name) else (BATCH, NUM_CLASSES))
    assert torch.isfinite(out).all()
    assert model.spatial_dims == dims and model.model_name == name
    first_conv = next(m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Conv3d)))
    assert first_conv.in_channels == cin
    assert isinstance(first_conv, nn.Conv2d if dims == 2 else nn.Conv3d)


def test_stage_names_in_order(built):
    model = built[0]
    names = [s.name for s in get_stages(model)]
    n_blocks = len(names) - 2
    assert n_blocks >= 1
    assert names == ["stem"] + [f"block{i}" for i in range(1, n_blocks + 1)] + ["head"]


def test_every_state_dict_key_owned_by_exactly_one_stage(built):
    model = built[0]
    stages = get_stages(model)
    keys = list(model.state_dict())
    for k in keys:
        owners = [s.name for s in stages
                  if any(k == p or k.startswith(p + ".") for p in s.modules)]
        assert len(owners) == 1, f"{k} owned by {owners}"
        assert stage_of(model, k) == owners[0]
    # stage_parameters partitions the state dict, in state-dict order, and no stage is empty.
    parts = {s.name: stage_parameters(model, s.name) for s in stages}
    assert all(parts.values()), {k: len(v) for k, v in parts.items()}
    assert sorted(sum(parts.values(), [])) == sorted(keys)
    assert sum(len(v) for v in parts.values()) == len(keys)
    # The classifier weights belong to the head.
    assert all(stage_of(model, k) != "head" for k in parts["stem"])
    head_w = [k for k in parts["head"] if k.endswith("weight")]
    assert head_w and model.state_dict()[head_w[-1]].shape[0] == NUM_CLASSES


def test_stage_channels_and_strides_match_forward(built):
    model, name, dims, cin, side, out, shapes = built
    stages = get_stages(model)
    assert set(shapes) == {s.name for s in stages}
    for s in stages:
        assert shapes[s.name][1] == s.channels, (s.name, shapes[s.name], s.channels)
    head = stages[-1]
    if _segmentation(name):  # the head's output is a map: K channels at some stride
        assert head.channels == NUM_CLASSES and head.stride >= 1
        assert len(shapes["head"]) == 2 + dims and shapes["head"][:2] == (BATCH, NUM_CLASSES)
    else:
        assert head.channels == NUM_CLASSES and head.stride == 0
        assert shapes["head"] == out.shape == (BATCH, NUM_CLASSES)
    strides = [s.stride for s in stages[:-1]]
    for s in strides:
        assert s >= 1 and s & (s - 1) == 0, f"stride {s} is not a power of two"
    assert strides == sorted(strides), strides
    for s in stages[:-1]:
        shp = shapes[s.name]
        assert len(shp) == 2 + dims, (s.name, shp)
        if name != "inception_v3":  # "same" padding: side / stride, rounded up; Inception is unpadded
            assert all(v == math.ceil(side / s.stride) for v in shp[-2:]), (s.name, shp, s.stride)
            if dims == 3:  # depth: downsampled alike, or not at all (pseudo-3D U-Nets)
                assert shp[2] in (math.ceil(side / s.stride), side), (s.name, shp, s.stride)


UNSUPPORTED = [(n, d) for n in ALL_MODELS for d in (2, 3) if not _supports(n, d)]


@pytest.mark.parametrize(("name", "dims"), UNSUPPORTED, ids=[f"{n}-{d}d" for n, d in UNSUPPORTED])
def test_unsupported_spatial_dims_raise(name, dims):
    with pytest.raises(ModelError, match=f"{dims}D"):
        create_model(name, spatial_dims=dims, in_channels=1, num_classes=2)


def test_supported_dims_as_expected():
    med3d = list_models("med3d_*")  # Med3D / MedicalNet: 3D only
    assert len(med3d) == 14 and all(model_info(n)["spatial_dims"] == (3,) for n in med3d)
    # inception_v3 in 3D (its blocks pool with 2D functions); Med3D in 2D
    assert len(UNSUPPORTED) == 1 + len(med3d)
    for n in list_models("cbr*"):
        assert model_info(n)["spatial_dims"] == (2, 3)
    # 2D classifiers build in 3D by inflation (tests/test_inflate_classifiers.py)
    for n in ("resnet18", "resnet34", "resnet50", "timm:resnet18"):
        assert model_info(n)["spatial_dims"] == (2, 3) and model_info(n)["inflated_dims"] == (3,)
    assert model_info("inception_v3")["spatial_dims"] == (2,)


# -- CBR sizes -----------------------------------------------------------------------------------
CBR_CONV_WEIGHTS_2D = {  # Raghu et al. 2019, appendix, 3 input channels, conv weights only
    "cbr_large_t": 8_534_624,
    "cbr_large_w": 8_438_976,
    "cbr_small": 2_112_096,
    "cbr_tiny": 1_077_600,
}
CBR_KERNEL = {"cbr_large_t": 7, "cbr_large_w": 7, "cbr_small": 7, "cbr_tiny": 5}


def _conv_weights(model: nn.Module) -> int:
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Conv3d)))


@pytest.mark.parametrize("name", sorted(CBR_CONV_WEIGHTS_2D))
def test_cbr_conv_weight_counts(name):
    assert set(CBR_CONV_WEIGHTS_2D) == set(list_models("cbr*"))
    with torch.device("meta"):  # shapes only: no memory, no init cost
        m2 = create_model(name, spatial_dims=2, in_channels=3, num_classes=2)
        m3 = create_model(name, spatial_dims=3, in_channels=3, num_classes=2)
    n2, n3 = _conv_weights(m2), _conv_weights(m3)
    assert n2 == CBR_CONV_WEIGHTS_2D[name]
    k = CBR_KERNEL[name]
    convs = [m for m in m2.modules() if isinstance(m, nn.Conv2d)]
    assert all(c.kernel_size == (k, k) and c.bias is None for c in convs)
    assert all(c.kernel_size == (k, k, k) for c in m3.modules() if isinstance(c, nn.Conv3d))
    # k×k → k×k×k: every conv weight grows by a factor k.
    assert n3 == n2 * k
    # Non-conv parameters: BatchNorm (2 per channel) + linear head, identical in 2D and 3D.
    rest2 = sum(p.numel() for p in m2.parameters()) - n2
    rest3 = sum(p.numel() for p in m3.parameters()) - n3
    widths = [c.out_channels for c in convs]
    assert rest2 == rest3 == 2 * sum(widths) + widths[-1] * 2 + 2


def test_cbr_in_channels_changes_only_first_conv():
    with torch.device("meta"):
        m1 = create_model("cbr_small", in_channels=1, num_classes=2)
        m3 = create_model("cbr_small", in_channels=3, num_classes=2)
    assert _conv_weights(m3) - _conv_weights(m1) == 2 * 32 * 7 * 7


# -- names and the registry ----------------------------------------------------------------------
def test_unknown_model_suggests_close_match():
    with pytest.raises(ConfigError, match=r"did you mean.*cbr_small"):
        create_model("cbr_smal", num_classes=2)
    with pytest.raises(ConfigError, match=r"did you mean.*resnet18"):
        create_model("resnet81", num_classes=2)
    with pytest.raises(ConfigError, match="unknown model"):
        create_model("zzzzzzzz", num_classes=2)


def test_unknown_timm_model_suggests_close_match():
    with pytest.raises(ConfigError, match=r"did you mean.*timm:resnet18"):
        create_model("timm:resnet18x", num_classes=2)


def test_bad_channel_and_class_counts():
    with pytest.raises(ModelError):
        create_model("cbr_tiny", in_channels=0, num_classes=2)
    with pytest.raises(ModelError):
        create_model("cbr_tiny", in_channels=1, num_classes=0)


def test_duplicate_registration_raises():
    before = list_models()
    with pytest.raises(ValueError, match="already registered"):
        register_model("cbr_small", spatial_dims=(2,))(lambda **kw: None)
    with pytest.raises(ValueError, match="already registered"):
        MODELS.add("resnet18", lambda **kw: None)
    assert list_models() == before  # the failed registration left nothing behind
    reg: Registry = Registry("thing")
    reg.add("a", len, colour="red")
    with pytest.raises(ValueError):
        reg.add("a", len)
    assert reg.get("a").meta == {"colour": "red"} and len(reg) == 1
    with pytest.raises(ConfigError, match="did you mean a"):
        reg.get("aa")


def test_get_stages_requires_create_model():
    with pytest.raises(ModelError, match="create_model"):
        get_stages(nn.Linear(2, 2))

"""Med3D / MedicalNet 3D ResNets: parameter counts, MedicalNet's key layout, geometry, inits.

The MedicalNet fixture is transcribed independently from MedicalNet's ``models/resnet.py``
(shared/reference/papers.md §2.3) — names and shapes only, not from transfuse's classes — and
loaded strictly after ``clean_keys`` strips DataParallel's ``module.``. Counts are checked on the
meta device (shapes only), forward passes on 16³ volumes.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from transfuse.errors import ConfigError, ModelError
from transfuse.inits import INITS, apply_init, init_model_kwargs, list_inits
from transfuse.models import (
    Med3DEncoder,
    Med3DSeg,
    create_model,
    get_stages,
    list_models,
    model_info,
    stage_of,
)
from transfuse.models.med3d import MED3D_DEPTHS, ShortcutA
from transfuse.weights import SourceWeights
from transfuse.weights.io import clean_keys

# papers.md §2.3, "computed, encoder only" (checked against MedicalNet's README), each depth with
# MedicalNet's shortcut (A for 18 and 34, B otherwise).
ENCODER_PARAMS = {10: 14_355_520, 18: 32_986_176, 34: 63_295_808, 50: 46_155_072,
                  101: 85_201_216, 152: 117_359_936, 200: 126_559_552}


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread_module):
    """Tiny tensors: one intra-op thread (see conftest)."""


# -- MedicalNet's layout, transcribed from models/resnet.py --------------------------------------
def medicalnet_layout(depth: int, shortcut: str, n_seg_classes: int | None = None,
                      in_channels: int = 1) -> dict[str, tuple[int, ...]]:
    """Key → shape of MedicalNet's ``ResNet`` state dict (``conv_seg`` only if ``n_seg_classes``)."""
    bottleneck = depth >= 50
    blocks = {10: [1, 1, 1, 1], 18: [2, 2, 2, 2], 34: [3, 4, 6, 3], 50: [3, 4, 6, 3],
              101: [3, 4, 23, 3], 152: [3, 8, 36, 3], 200: [3, 24, 36, 3]}[depth]
    exp = 4 if bottleneck else 1
    out: dict[str, tuple[int, ...]] = {}

    def bn(prefix: str, n: int) -> None:
        for k in ("weight", "bias", "running_mean", "running_var"):
            out[f"{prefix}.{k}"] = (n,)
        out[f"{prefix}.num_batches_tracked"] = ()

    out["conv1.weight"] = (64, in_channels, 7, 7, 7)
    bn("bn1", 64)
    inplanes = 64
    for li, (planes, n, stride) in enumerate(zip((64, 128, 256, 512), blocks, (1, 2, 1, 1)), 1):
        for b in range(n):
            p = f"layer{li}.{b}"
            if bottleneck:
                out[f"{p}.conv1.weight"] = (planes, inplanes, 1, 1, 1)
                bn(f"{p}.bn1", planes)
                out[f"{p}.conv2.weight"] = (planes, planes, 3, 3, 3)
                bn(f"{p}.bn2", planes)
                out[f"{p}.conv3.weight"] = (planes * 4, planes, 1, 1, 1)
                bn(f"{p}.bn3", planes * 4)
            else:
                out[f"{p}.conv1.weight"] = (planes, inplanes, 3, 3, 3)
                bn(f"{p}.bn1", planes)
                out[f"{p}.conv2.weight"] = (planes, planes, 3, 3, 3)
                bn(f"{p}.bn2", planes)
            if b == 0 and (stride != 1 or inplanes != planes * exp) and shortcut == "B":
                out[f"{p}.downsample.0.weight"] = (planes * exp, inplanes, 1, 1, 1)
                bn(f"{p}.downsample.1", planes * exp)
            inplanes = planes * exp
    if n_seg_classes is not None:
        out["conv_seg.0.weight"] = (512 * exp, 32, 2, 2, 2)  # ConvTranspose3d: (in, out, k, k, k)
        out["conv_seg.0.bias"] = (32,)
        bn("conv_seg.1", 32)
        out["conv_seg.3.weight"] = (32, 32, 3, 3, 3)
        bn("conv_seg.4", 32)
        out["conv_seg.6.weight"] = (n_seg_classes, 32, 1, 1, 1)
    return out


def medicalnet_checkpoint(layout: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors in MedicalNet's layout, saved from DataParallel (``module.`` prefix)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, shape in layout.items():
        if k.endswith("num_batches_tracked"):
            out["module." + k] = torch.tensor(1000)
        elif k.endswith("running_var"):
            out["module." + k] = 0.5 + torch.rand(shape, generator=g)
        else:
            out["module." + k] = 0.05 * torch.randn(shape, generator=g)
    return out


def _shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("depth", sorted(ENCODER_PARAMS))
def test_encoder_parameter_counts_match_the_paper(depth):
    with torch.device("meta"):
        enc = Med3DEncoder(depth=depth)
        clf = create_model(f"med3d_resnet{depth}", spatial_dims=3, in_channels=1, num_classes=2)
    assert enc.shortcut_type == MED3D_DEPTHS[depth][2] == ("A" if depth in (18, 34) else "B")
    assert _n_params(enc) == ENCODER_PARAMS[depth]
    assert _n_params(clf) == ENCODER_PARAMS[depth] + enc.num_features * 2 + 2  # + fc
    # The same count from the transcribed MedicalNet layout (parameters: no BN statistics).
    layout = medicalnet_layout(depth, enc.shortcut_type)
    n = sum(torch.Size(s).numel() for k, s in layout.items()
            if not k.endswith(("running_mean", "running_var", "num_batches_tracked")))
    assert n == ENCODER_PARAMS[depth]


@pytest.mark.parametrize("depth", sorted(MED3D_DEPTHS))
@pytest.mark.parametrize("shortcut", ["A", "B"])
def test_key_layout_is_medicalnets(depth, shortcut):
    """Every key, in order, with its shape, for both shortcuts, encoder and segmentation model."""
    with torch.device("meta"):
        enc = Med3DEncoder(depth=depth, shortcut_type=shortcut)
        seg = Med3DSeg(depth=depth, num_classes=2, shortcut_type=shortcut)
    assert list(_shapes(enc).items()) == list(medicalnet_layout(depth, shortcut).items())
    assert list(_shapes(seg).items()) == list(medicalnet_layout(depth, shortcut, 2).items())
    if shortcut == "A":
        assert not any("downsample" in k for k in _shapes(enc))


def test_released_resnet50_checkpoint_entry_count():
    """The released resnet_50.pth has 318 entries and 46,155,072 parameters (papers.md §2.3)."""
    layout = medicalnet_layout(50, "B")
    assert len(layout) == 318
    with torch.device("meta"):
        assert len(Med3DEncoder(depth=50).state_dict()) == 318


@pytest.mark.parametrize(("depth", "shortcut"), [(10, "B"), (18, "A")])
def test_medicalnet_checkpoint_loads_strictly(depth, shortcut):
    ckpt = medicalnet_checkpoint(medicalnet_layout(depth, shortcut, n_seg_classes=3))
    assert all(k.startswith("module.") for k in ckpt)
    state = clean_keys(ckpt)
    seg = Med3DSeg(depth=depth, num_classes=3)  # MedicalNet's default shortcut for the depth
    seg.load_state_dict(state, strict=True)
    for k, v in seg.state_dict().items():
        assert torch.equal(v, state[k]), k
    enc_state = {k: v for k, v in state.items() if not k.startswith("conv_seg.")}
    Med3DEncoder(depth=depth).load_state_dict(enc_state, strict=True)
    with pytest.raises(RuntimeError, match="Unexpected key"):
        Med3DEncoder(depth=depth).load_state_dict(state, strict=True)


def test_medicalnet_pretrain_file_initialises_the_classifier(tmp_path):
    """A MedicalNet pretraining file (encoder only, ``module.``) as a ``file:`` source:
    ``transfusion:block4`` loads every encoder tensor; the classifier stays default."""
    path = tmp_path / "resnet_10.pth"
    torch.save(medicalnet_checkpoint(medicalnet_layout(10, "B"), seed=4), path)
    model = create_model("med3d_resnet10", spatial_dims=3, in_channels=1, num_classes=2)
    report = apply_init(model, "transfusion:block4", source=f"file:{path}")
    actions = {r.key: r.action for r in report.records}
    assert actions["fc.weight"] == "default" and actions["conv1.weight"] == "loaded"
    loaded = [k for k, a in actions.items() if a == "loaded"]
    assert len(loaded) == len([k for k in actions if not k.endswith("num_batches_tracked")]) - 2
    src = clean_keys(torch.load(path, weights_only=True))
    assert torch.equal(model.state_dict()["layer4.0.conv2.weight"], src["layer4.0.conv2.weight"])


# -- geometry ------------------------------------------------------------------------------------
def test_output_stride_8_with_dilation_2_and_4():
    torch.manual_seed(0)
    enc = Med3DEncoder(depth=18).eval()
    assert enc.layer2[0].conv1.stride == (2, 2, 2)
    for li, dil in ((3, 2), (4, 4)):
        for blk in getattr(enc, f"layer{li}"):
            for conv in (blk.conv1, blk.conv2):
                assert conv.stride == (1, 1, 1) and conv.dilation == (dil,) * 3 and conv.padding == (dil,) * 3
    with torch.no_grad():
        feats = enc(torch.randn(2, 1, 16, 24, 32))
    assert [tuple(f.shape) for f in feats] == [
        (2, info["num_chs"], 16 // info["reduction"], 24 // info["reduction"], 32 // info["reduction"])
        for info in enc.feature_info]
    assert [i["reduction"] for i in enc.feature_info] == [2, 4, 8, 8, 8]


def test_shortcut_a_is_medicalnets_downsample_basic_block():
    x = torch.randn(2, 3, 5, 6, 7)
    out = ShortcutA(8, 2)(x)
    ref = F.avg_pool3d(x, kernel_size=1, stride=2)
    ref = torch.cat([ref, torch.zeros(2, 5, *ref.shape[2:])], 1)
    assert torch.equal(out, ref)
    assert not list(ShortcutA(8, 2).parameters())


def test_classifier_and_segmentation_heads():
    torch.manual_seed(0)
    x = torch.randn(2, 2, 16, 16, 16)
    clf = create_model("med3d_resnet10", spatial_dims=3, in_channels=2, num_classes=4, drop_rate=0.2).eval()
    assert clf(x).shape == (2, 4) and clf.conv1.in_channels == 2
    seg = create_model("med3d_seg_resnet10", spatial_dims=3, in_channels=2, num_classes=3).eval()
    raw = create_model("med3d_seg_resnet10", spatial_dims=3, in_channels=2, num_classes=3, upsample=False).eval()
    raw.load_state_dict(seg.state_dict())
    with torch.no_grad():
        full, quarter = seg(x), raw(x)
    assert full.shape == (2, 3, 16, 16, 16) and quarter.shape == (2, 3, 4, 4, 4)  # MedicalNet: stride 4
    torch.testing.assert_close(full, F.interpolate(quarter, size=(16, 16, 16), mode="trilinear"))
    assert [s.name for s in get_stages(seg)][-1] == "head" and stage_of(seg, "conv_seg.6.weight") == "head"
    assert model_info("med3d_seg_resnet10")["task"] == "segmentation"
    assert model_info("med3d_resnet10")["task"] == "classification"


def test_registry_entries_and_errors():
    depths = sorted(MED3D_DEPTHS)
    assert list_models("med3d_resnet*") == sorted(f"med3d_resnet{d}" for d in depths)
    assert list_models("med3d_seg_resnet*") == sorted(f"med3d_seg_resnet{d}" for d in depths)
    for name in list_models("med3d_*"):
        info = model_info(name)
        assert info["spatial_dims"] == (3,) and info["family"] == "med3d"
        assert info["heavy_dims"] == (() if name.endswith("resnet10") else (3,))
    with pytest.raises(ModelError, match=r"'med3d_resnet50' is 3D only, not 2D"):
        create_model("med3d_resnet50", spatial_dims=2, num_classes=2)
    with pytest.raises(ModelError, match="shortcut_type='C' must be 'A'"):
        create_model("med3d_resnet10", spatial_dims=3, num_classes=2, shortcut_type="C")
    with pytest.raises(ModelError, match="depth 11 is not one of 10, 18"):
        Med3DEncoder(depth=11)
    with pytest.raises(ModelError, match="upsample= applies to med3d_seg"):
        create_model("med3d_resnet10", spatial_dims=3, num_classes=2, upsample=False)
    with pytest.raises(ConfigError, match="unknown model 'med3d_resnet11'.*did you mean"):
        create_model("med3d_resnet11", spatial_dims=3, num_classes=2)


# -- widths (slim) and every init strategy -------------------------------------------------------
def med3d_params(depth: int, in_ch: int, classes: int, mult: dict[str, float], shortcut: str) -> int:
    """Classifier parameters from the block definitions, planes × multiplier per stage."""
    bottleneck = depth >= 50
    exp = 4 if bottleneck else 1
    blocks = MED3D_DEPTHS[depth][1]
    total, inpl = in_ch * 64 * 343 + 128, 64
    for i, (n, planes, stride) in enumerate(zip(blocks, (64, 128, 256, 512), (1, 2, 1, 1)), 1):
        p = max(1, int(planes * mult.get(f"block{i}", 1.0) + 0.5))
        for j in range(n):
            cin = inpl if j == 0 else p * exp
            if bottleneck:
                total += cin * p + 2 * p + p * p * 27 + 2 * p + p * 4 * p + 8 * p
            else:
                total += cin * p * 27 + 2 * p + p * p * 27 + 2 * p
        if (stride != 1 or inpl != p * exp) and (shortcut == "B" or p * exp < inpl):
            total += inpl * p * exp + 2 * p * exp  # projection (A cannot narrow channels)
        inpl = p * exp
    return total + inpl * classes + classes


@pytest.mark.parametrize(("depth", "arg"), [(10, "block2"), (18, "stem,0.25"), (50, "block1,0.5")])
def test_slim_widths(depth, arg):
    with torch.device("meta"):
        m = create_model(f"med3d_resnet{depth}", spatial_dims=3, in_channels=1, num_classes=3,
                         **init_model_kwargs(f"slim:{arg}"))
    stage, _, w = arg.partition(",")
    names = ["stem", "block1", "block2", "block3", "block4"]
    mult = {s: float(w or 0.5) for s in names[names.index(stage) + 1:]}
    assert _n_params(m) == med3d_params(depth, 1, 3, mult, MED3D_DEPTHS[depth][2])
    assert _n_params(m) < ENCODER_PARAMS[depth]


def _spec(init: str) -> str:
    arg = INITS.get(init).meta.get("arg", "")
    return f"{init}:block2" if "stage" in arg else init


@pytest.mark.parametrize("name", ["med3d_resnet10", "med3d_seg_resnet10"])
def test_every_init_strategy_works_on_med3d(name):
    """Each registered strategy (and a combination) on a 3D Med3D model with a same-architecture
    source: a complete report, loaded tensors equal to the source, forward still finite."""
    with torch.device("meta"):
        meta = create_model(name, spatial_dims=3, in_channels=1, num_classes=5)
    g = torch.Generator().manual_seed(1)
    src = {k: (torch.full(v.shape, 7, dtype=v.dtype) if not v.dtype.is_floating_point
               else 0.5 + torch.rand(v.shape, generator=g) if k.endswith("running_var")
               else 0.05 * torch.randn(v.shape, generator=g)) for k, v in meta.state_dict().items()}
    source = SourceWeights(name="test:med3d", arch=name, spatial_dims=3, num_classes=5, in_channels=1,
                           loader=lambda: src)
    specs = [_spec(n) for n in list_inits()] + ["transfusion:block1+meanvar"]
    assert {"pretrained", "meanvar", "transfusion:block2", "slim:block2", "gabor"} <= set(specs)
    x = torch.randn(1, 1, 16, 16, 16)
    for spec in specs:
        torch.manual_seed(0)
        model = create_model(name, spatial_dims=3, in_channels=1, num_classes=3, **init_model_kwargs(spec))
        report = apply_init(model, spec, source=source, seed=0)
        state = model.state_dict()
        assert [r.key for r in report.records] == list(state), spec
        for r in report.records:
            if r.action == "loaded":
                assert torch.equal(state[r.key], src[r.key]), (spec, r.key)
        if spec in ("transfusion:block2", "slim:block2"):
            assert report.by_key()["layer2.0.conv1.weight"].action == "loaded"
            assert report.by_key()["layer4.0.conv1.weight"].action != "loaded"
        with torch.no_grad():
            assert torch.isfinite(model.eval()(x)).all(), spec

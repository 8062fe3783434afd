"""Init strategies on 3D models: a 2D source inflated automatically, Gabor on pseudo-3D convs,
``slim`` with builder options, and the head notes of segmentation models.

A 2D source for a 3D model goes through ``inflate_state_dict`` inside ``apply_init``: kernels of
depth 1 by ``1xkxk``, deeper ones by ``mean`` (I3D, default) or ``center`` (``inflate=``). The
checks are exact: a 1xkxk-inflated U-Net encoder is the 2D ResNet on every slice, a mean-inflated
stem is the 2D stem on a depth-constant volume away from the depth borders, transposed convs keep
the depth-constant response, and Mean-Var draws from the *inflated* tensor's statistics.
Inputs are tiny (32² slices, 16³ volumes); ResNet-18 only where the brief needs it.
"""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from transfuse.errors import ConfigError
from transfuse.inits import apply_init, init_model_kwargs, list_inits
from transfuse.inits.base import tensor_kind
from transfuse.inits.gabor import gabor_bank
from transfuse.models import create_model, stage_of, transposed_strides
from transfuse.weights import SourceWeights

ENCODER = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread_module):
    """Tiny tensors: one intra-op thread (see conftest)."""


def _randomise(model: nn.Module, seed: int = 0) -> dict[str, torch.Tensor]:
    """Give every float tensor of ``model`` distinct random values and return its state dict
    (copies): conv/linear weights He-normal (fan-in, so activations keep their scale through
    ResNet-18), on a 2⁻¹² grid (an RGB sum of them is exact in float32); BN γ ∈ [0.8, 1.2],
    running variances ∈ [0.5, 1.5] (so eval-mode BatchNorm is not the identity); the rest
    N(0, 0.1²)."""
    g = torch.Generator().manual_seed(seed)
    kinds = tensor_kind(model)
    new = {}
    for k, v in model.state_dict().items():
        if not v.dtype.is_floating_point:
            new[k] = v.clone()
        elif kinds[k] in ("conv", "linear"):
            w = torch.randn(v.shape, generator=g) * (2 / v[0].numel()) ** 0.5
            new[k] = (w * 4096).round() / 4096
        elif k.endswith("running_var"):
            new[k] = 0.5 + torch.rand(v.shape, generator=g)
        elif kinds[k] == "norm_weight":
            new[k] = 0.8 + 0.4 * torch.rand(v.shape, generator=g)
        else:
            new[k] = 0.1 * torch.randn(v.shape, generator=g)
    model.load_state_dict(new)
    return {k: v.clone() for k, v in new.items()}


def _source(state: dict[str, torch.Tensor], arch: str) -> SourceWeights:
    return SourceWeights(name=f"test:{arch}", arch=arch, spatial_dims=2, loader=lambda: state)


def _kernels(shape) -> str:
    return "×".join(map(str, shape))


# ----------------------------------------------------------------------------- 2D → 3D sources
def test_1xkxk_unet_encoder_is_the_2d_resnet_on_every_slice():
    """``pretrained`` from a 2D RGB ResNet-18 into a gray pseudo-3D U-Net: every encoder kernel
    inflated 1xkxk (the input conv then summed over RGB), and in eval mode every encoder stage
    output, slice by slice, equals the 2D ResNet's on that slice given as R = G = B."""
    torch.manual_seed(0)
    r2 = create_model("resnet18", in_channels=3, num_classes=7)
    src = _randomise(r2)
    m3 = create_model("unet_resnet18", spatial_dims=3, in_channels=1, num_classes=4)
    report = apply_init(m3, "pretrained", source=_source(src, "resnet18"))

    n_conv = sum(1 for k, v in src.items() if v.ndim == 4)
    assert n_conv == 20
    assert report.notes[0] == "inflated 2D source into 3D: 20 kernels (1xkxk)"
    assert "segmentation head not in the source: decoder, seg re-initialised" in report.notes
    recs = report.by_key()
    assert recs["conv1.weight"].action == "adapted"
    assert recs["conv1.weight"].note == "7×7 → 1×7×7 (1xkxk); input channels 3 → 1"
    for k, v in src.items():
        if k == "conv1.weight":
            continue
        if v.ndim == 4:
            assert (recs[k].action, recs[k].note) == ("adapted", f"{_kernels(v.shape[2:])} → "
                                                      f"1×{_kernels(v.shape[2:])} (1xkxk)"), k
            assert torch.equal(m3.state_dict()[k], v.unsqueeze(2)), k
        elif k in recs and not k.endswith("num_batches_tracked"):
            assert recs[k].action == "loaded" and torch.equal(m3.state_dict()[k], v), k
    assert all(r.action == "default" for r in report.records if stage_of(m3, r.key) == "head")

    r2.eval()
    m3.eval()
    vol = torch.randn(1, 1, 3, 32, 32)  # distinct slices: the pseudo-3D encoder never mixes them
    with torch.no_grad():
        feats = m3.forward_stages(vol)
        for d in range(vol.shape[2]):
            x = vol[:, :, d].expand(-1, 3, -1, -1)  # the gray slice as RGB
            want = []
            for name in ENCODER:
                x = getattr(r2, name)(x)
                if name in ("relu", "layer1", "layer2", "layer3", "layer4"):
                    want.append(x)
            assert len(feats) == len(want) == 5
            for f3, f2 in zip(feats, want):
                torch.testing.assert_close(f3[:, :, d], f2, atol=1e-4, rtol=1e-4)


def test_transfusion_into_pseudo3d_unet_reads_inflated_stages():
    """The brief's example: ``transfusion:block2`` from a 2D ResNet-18 into a 3D U-Net loads the
    inflated stem … block2 and nothing above."""
    torch.manual_seed(0)
    src = _randomise(create_model("resnet18", in_channels=3, num_classes=7), seed=1)
    m3 = create_model("unet_resnet18", spatial_dims=3, in_channels=1, num_classes=4)
    default = {k: v.clone() for k, v in m3.state_dict().items()}
    report = apply_init(m3, "transfusion:block2", source=_source(src, "resnet18"))
    state = m3.state_dict()
    for r in report.records:
        stage = stage_of(m3, r.key)
        if stage in ("stem", "block1", "block2") and not r.key.endswith("num_batches_tracked"):
            want = src[r.key].sum(1, keepdim=True) if r.key == "conv1.weight" else src[r.key]
            want = want.unsqueeze(2) if want.ndim == 4 else want
            assert torch.equal(state[r.key], want), r.key
            assert r.action == ("adapted" if state[r.key].ndim == 5 else "loaded"), r.key
        else:
            assert r.action == "default" and torch.equal(state[r.key], default[r.key]), r.key
    assert report.counts()["adapted"] == 1 + 4 + 5  # conv1, layer1's 4 convs, layer2's 4 + downsample


def test_mean_and_center_inflation_into_full_3d_unet():
    """``kernels="kxkxk"``: k×k kernels become k×k×k by ``mean`` (default; W / k on every slice)
    or ``center`` (``inflate="center"``: W on the centre slice), 1×1 ones 1×1×1. On a
    depth-constant volume the mean-inflated stem gives the 2D stem output away from the depth
    borders (here: output depths 2–5 of 8)."""
    torch.manual_seed(0)
    r2 = create_model("resnet18", in_channels=3, num_classes=7)
    src = _randomise(r2, seed=2)
    m3 = create_model("unet_resnet18", spatial_dims=3, in_channels=1, num_classes=4, kernels="kxkxk")
    report = apply_init(m3, "pretrained", source=_source(src, "resnet18"))
    assert report.notes[0] == "inflated 2D source into 3D: 17 kernels (mean), 3 kernels (1xkxk)"
    recs = report.by_key()
    assert recs["conv1.weight"].note == "7×7 → 7×7×7 (mean); input channels 3 → 1"
    assert recs["layer1.0.conv1.weight"].note == "3×3 → 3×3×3 (mean)"
    assert recs["layer2.0.downsample.0.weight"].note == "1×1 → 1×1×1 (1xkxk)"
    state = m3.state_dict()
    gray = src["conv1.weight"].sum(1, keepdim=True)
    torch.testing.assert_close(state["conv1.weight"], gray.unsqueeze(2).repeat(1, 1, 7, 1, 1) / 7)
    torch.testing.assert_close(state["layer3.1.conv2.weight"],
                               src["layer3.1.conv2.weight"].unsqueeze(2).repeat(1, 1, 3, 1, 1) / 3)

    r2.eval()
    m3.eval()
    plane = torch.randn(1, 1, 32, 32)
    vol = plane.unsqueeze(2).expand(-1, -1, 16, -1, -1).contiguous()
    with torch.no_grad():
        s3 = m3.relu(m3.bn1(m3.conv1(vol)))  # (1, 64, 8, 16, 16)
        s2 = r2.relu(r2.bn1(r2.conv1(plane.expand(-1, 3, -1, -1))))
        for d in range(2, 6):  # taps 2d-3 … 2d+3 all inside the 16 slices
            torch.testing.assert_close(s3[:, :, d], s2, atol=1e-4, rtol=1e-4)
        assert not torch.allclose(s3[:, :, 0], s2, atol=1e-3)  # the zero-padded border differs

    rep_c = apply_init(m3, "pretrained", source=_source(src, "resnet18"), inflate="center")
    assert rep_c.notes[0] == "inflated 2D source into 3D: 17 kernels (center), 3 kernels (1xkxk)"
    assert rep_c.by_key()["layer1.0.conv1.weight"].note == "3×3 → 3×3×3 (center)"
    w = m3.state_dict()["layer1.0.conv1.weight"]
    assert torch.equal(w[:, :, 1], src["layer1.0.conv1.weight"])
    assert not w[:, :, 0].any() and not w[:, :, 2].any()


def test_transposed_convs_of_a_2d_unet_keep_the_depth_constant_response():
    """A 2D U-Net (same classes) into a full-3D one: the head transfers too, and its 2×2 stride-2
    transposed convs are inflated with their stride (``transposed_strides``): ``mean`` then
    copies W into both depth taps (scale s / k_d = 1), not W / 2."""
    torch.manual_seed(0)
    src = _randomise(create_model("unet_cbr_small", spatial_dims=2, in_channels=1, num_classes=3), 3)
    m3 = create_model("unet_cbr_small", spatial_dims=3, in_channels=1, num_classes=3, kernels="kxkxk")
    report = apply_init(m3, "pretrained", source=_source(src, "unet_cbr_small"))
    tr = transposed_strides(m3)
    assert len(tr) == 4 and set(tr.values()) == {2}
    state, recs = m3.state_dict(), report.by_key()
    for k in tr:
        assert recs[k].note == "2×2 → 2×2×2 (mean)"
        assert torch.equal(state[k][:, :, 0], src[k]) and torch.equal(state[k][:, :, 1], src[k])
    assert recs["seg.weight"].note == "1×1 → 1×1×1 (1xkxk)"
    assert not any("head" in n for n in report.notes)  # same classes, nothing missing: all loaded
    n = sum(1 for v in src.values() if v.ndim == 4)
    assert report.notes[0] == f"inflated 2D source into 3D: {n - 1} kernels (mean), 1 kernel (1xkxk)"


def test_every_strategy_reads_the_inflated_source():
    """Every registered strategy on a full-3D ``cbr_tiny`` (5×5×5) from a 2D ``cbr_tiny`` source:
    loaded kernels equal the mean-inflated source and say so; Mean-Var draws with the inflated
    tensor's statistics (std = 2D std / 5) and its note says the source was inflated."""
    torch.manual_seed(0)
    src = _randomise(create_model("cbr_tiny", in_channels=3, num_classes=7), seed=4)
    source = _source(src, "cbr_tiny")
    specs = [f"{n}:block2" if n in ("transfusion", "slim") else n for n in list_inits()]
    for spec in specs + ["transfusion:block1+meanvar"]:
        torch.manual_seed(0)
        model = create_model("cbr_tiny", spatial_dims=3, in_channels=1, num_classes=3,
                             **init_model_kwargs(spec))
        report = apply_init(model, spec, source=source, seed=0)
        state = model.state_dict()
        if spec.startswith(("random", "gabor")):  # read no source: no inflation, no note
            assert not any(n.startswith("inflated") for n in report.notes), spec
            continue
        assert report.notes[0].startswith("inflated 2D source into 3D: "), (spec, report.notes)
        for r in report.records:
            if r.action == "adapted":
                want = src[r.key].sum(1, keepdim=True) if r.key == "stem.0.weight" else src[r.key]
                torch.testing.assert_close(state[r.key], want.unsqueeze(2).repeat(1, 1, 5, 1, 1) / 5)
                assert r.note.startswith("5×5 → 5×5×5 (mean)"), (spec, r.key, r.note)
            elif r.action == "redrawn" and state[r.key].ndim == 5:
                assert "source inflated 5×5 → 5×5×5 (mean)" in r.note, (spec, r.key, r.note)
        if spec == "meanvar":
            r = report.by_key()["block3.0.weight"]
            ref = src["block3.0.weight"].double()
            assert r.std_after == pytest.approx(float(ref.std()) / 5, rel=0.02)
            assert r.mean_after == pytest.approx(float(ref.mean()) / 5,
                                                 abs=4 * float(ref.std()) / 5 / ref.numel() ** 0.5)


def test_kernels_that_cannot_be_inflated_raise_naming_the_tensor():
    torch.manual_seed(0)
    src = _randomise(create_model("cbr_tiny", in_channels=3, num_classes=7), seed=5)
    model = create_model("cbr_tiny", spatial_dims=3, in_channels=1, num_classes=3)
    default = {k: v.clone() for k, v in model.state_dict().items()}
    bad = dict(src, **{"block1.0.weight": torch.randn(64, 32, 3, 3)})  # 3×3 for a 5×5×5 kernel
    with pytest.raises(ConfigError) as e:
        apply_init(model, "pretrained", source=_source(bad, "cbr_tiny"))
    msg = str(e.value)
    assert "\n" not in msg
    assert re.search(r"block1\.0\.weight: the 2D source kernel 3×3 cannot be inflated to the "
                     r"model's 5×5×5 \(model \(64, 32, 5, 5, 5\) vs source \(64, 32, 3, 3\)\)", msg)
    assert all(torch.equal(v, default[k]) for k, v in model.state_dict().items())  # untouched
    # partial: the tensor stays default, the rest is loaded; transfusion below it never reads it.
    rep = apply_init(model, "pretrained", source=_source(bad, "cbr_tiny"), partial=True)
    assert rep.by_key()["block1.0.weight"].action == "default"
    assert rep.by_key()["block2.0.weight"].action == "adapted"
    assert apply_init(model, "transfusion:stem", source=_source(bad, "cbr_tiny")).counts()["adapted"] == 1

    with pytest.raises(ConfigError, match=r"^stem\.0\.weight: the model's kernel is 5×5×5 but "
                       r"inflate='1xkxk' makes depth 1; use inflate='mean'"):
        apply_init(model, "pretrained", source=_source(src, "cbr_tiny"), inflate="1xkxk")
    with pytest.raises(ConfigError, match="inflate='cube' is not one of mean, center, 1xkxk"):
        apply_init(model, "pretrained", source=_source(src, "cbr_tiny"), inflate="cube")


# ----------------------------------------------------------------------------- gabor
def test_gabor_pseudo3d_draws_the_2d_bank_in_the_single_slice():
    model = create_model("unet_cbr_small", spatial_dims=3, in_channels=1, num_classes=3)
    report = apply_init(model, "gabor:high", seed=0)
    w = model.state_dict()["stem.0.weight"]
    assert w.shape == (32, 1, 1, 7, 7)
    want = gabor_bank(out_channels=32, in_channels=1, kernel_size=7, spatial_dims=2, band="high")
    assert torch.equal(w[:, :, 0], want)
    assert torch.equal(gabor_bank(out_channels=32, in_channels=1, kernel_size=(1, 7, 7),
                                  spatial_dims=3, band="high"), want.unsqueeze(2))
    flat = w.flatten(1)
    assert flat.mean(1).abs().max() < 1e-6  # every filter zero-mean
    assert float(w.std()) == pytest.approx((2 / 49) ** 0.5, rel=1e-4)  # Kaiming, fan-in 1·1·7·7
    rec = report.by_key()["stem.0.weight"]
    assert rec.action == "redrawn" and "8 orientations" in rec.note
    assert "single depth slice of the 1×7×7 kernel" in rec.note
    assert report.counts()["redrawn"] == 1

    full = create_model("cbr_tiny", spatial_dims=3, in_channels=1, num_classes=3)  # 5×5×5: 3D bank
    note = apply_init(full, "gabor", seed=0).by_key()["stem.0.weight"].note
    assert "directions" in note and "depth slice" not in note
    assert torch.equal(full.state_dict()["stem.0.weight"],
                       gabor_bank(out_channels=32, in_channels=1, kernel_size=5, spatial_dims=3))


# ----------------------------------------------------------------------------- slim
def test_slim_checks_widths_with_the_models_builder_options():
    """slim rebuilds the expected widths with ``model.model_kwargs`` (here a list option, frozen
    to a tuple); a 2D source is inflated for it as for every strategy."""
    kw = init_model_kwargs("slim:block1")
    model = create_model("unet_cbr_small", spatial_dims=3, in_channels=1, num_classes=3,
                         kernels="kxkxk", decoder_channels=[8, 8, 8, 8], **kw)
    assert model.model_kwargs == {"kernels": "kxkxk", "decoder_channels": [8, 8, 8, 8]}
    src = _randomise(create_model("cbr_small", in_channels=3, num_classes=7), seed=6)
    report = apply_init(model, "slim:block1", source=_source(src, "cbr_small"))
    assert report.notes[0] == "inflated 2D source into 3D: 2 kernels (mean)"
    assert {r.key for r in report.records if r.action == "adapted"} == {"stem.0.weight", "block1.0.weight"}
    # Another width than the model was built for: refused, the message repeats its options.
    with pytest.raises(ConfigError, match=r"widths do not match.*create_model\('unet_cbr_small', "
                       r"\.\.\., decoder_channels=\(8, 8, 8, 8\), kernels='kxkxk', \*\*init_model_kwargs"):
        apply_init(model, "slim:block1,0.25", source=_source(src, "cbr_small"))


# ----------------------------------------------------------------------------- head notes
def test_head_notes_for_segmentation_and_classification():
    torch.manual_seed(0)
    seg_src = _randomise(create_model("seg_unet_tiny", spatial_dims=2, in_channels=3, num_classes=7))
    seg = create_model("seg_unet_tiny", spatial_dims=2, in_channels=1, num_classes=3)
    rep = apply_init(seg, "pretrained", source=_source(seg_src, "seg_unet_tiny"))
    assert rep.notes == ["segmentation head replaced: 7 source classes → 3 classes (decoder, out "
                         "re-initialised; classifier replaced whole)"]
    assert all(r.action == "default" for r in rep.records if stage_of(seg, r.key) == "head")

    # Pseudo-3D from a 2D U-Net with the same classes: the through-plane layers are not in the
    # source, so the whole head (decoder + seg) stays default and the note says why.
    u_src = _randomise(create_model("unet_cbr_small", spatial_dims=2, in_channels=1, num_classes=3))
    u3 = create_model("unet_cbr_small", spatial_dims=3, in_channels=1, num_classes=3)
    rep = apply_init(u3, "pretrained", source=_source(u_src, "unet_cbr_small"))
    assert rep.notes[1] == ("segmentation head replaced: decoder.through.0.conv.weight missing in "
                            "source (decoder, seg re-initialised; classifier replaced whole)")
    assert rep.by_key()["seg.weight"].action == "default"

    clf_src = _randomise(create_model("cbr_tiny", in_channels=3, num_classes=7))
    clf = create_model("cbr_tiny", in_channels=1, num_classes=3)
    rep = apply_init(clf, "meanvar", source=_source(clf_src, "cbr_tiny"))
    assert rep.notes == ["classifier replaced: 7 source classes → 3 classes (re-initialised)"]

"""U-Nets with ResNet / CBR encoders: shapes, keys shared with the classifiers, parameter counts,
pseudo-3D (Wacker et al.) properties, size errors, loading 2D weights, every init strategy, and
that it learns a multi-class segmentation. Inputs: 32² images, 3×32×32 or 16³ volumes.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from transfuse.errors import ModelError
from transfuse.inits import INITS, apply_init, init_model_kwargs, list_inits
from transfuse.models import (
    Med3DEncoder,
    UNet,
    create_model,
    get_stages,
    inflate_state_dict,
    list_models,
    model_info,
    stage_of,
)
from transfuse.weights import SourceWeights

UNETS = ["unet_cbr_small", "unet_resnet18", "unet_resnet34", "unet_resnet50"]
K = 4


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread_module):
    """Tiny tensors: one intra-op thread (see conftest)."""


def _n(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _classifier(name: str) -> str:
    return name[5:]  # unet_resnet18 -> resnet18, unet_cbr_small -> cbr_small


def test_registry_metadata():
    assert set(UNETS) <= set(list_models("unet_*"))
    for name in UNETS:
        info = model_info(name)
        div = 16 if name == "unet_cbr_small" else 32
        assert info["task"] == "segmentation" and info["spatial_dims"] == (2, 3)
        assert info["size_multiple"] == div == info["min_size"] and info["family"] == "unet"


@pytest.mark.parametrize("name", UNETS)
@pytest.mark.parametrize("dims", [2, 3])
def test_forward_shape_stages_and_encoder_keys(name, dims):
    torch.manual_seed(0)
    model = create_model(name, spatial_dims=dims, in_channels=2, num_classes=K).eval()
    shape = (32, 32) if dims == 2 else (3, 32, 32)  # pseudo-3D: any depth
    with torch.no_grad():
        out = model(torch.randn(2, 2, *shape))
    assert out.shape == (2, K, *shape) and torch.isfinite(out).all()
    stages = get_stages(model)
    n_blocks = 3 if name == "unet_cbr_small" else 4
    assert [s.name for s in stages] == ["stem"] + [f"block{i}" for i in range(1, n_blocks + 1)] + ["head"]
    assert stages[-1].channels == K and stages[-1].stride == 1
    # The encoder is the classifier's, key for key (same shapes in 2D).
    with torch.device("meta"):
        clf = create_model(_classifier(name), spatial_dims=2, in_channels=2, num_classes=K)
    head_keys = {k for k in clf.state_dict() if stage_of(clf, k) == "head"}
    enc_keys = [k for k in model.state_dict() if stage_of(model, k) != "head"]
    assert enc_keys == [k for k in clf.state_dict() if k not in head_keys]
    for k in enc_keys:
        assert stage_of(model, k) == stage_of(clf, k), k
        if dims == 2:
            assert model.state_dict()[k].shape == clf.state_dict()[k].shape, k
    assert all(k.startswith(("decoder.", "seg.")) for k in model.state_dict() if stage_of(model, k) == "head")
    assert [s.channels for s in stages[:-1]] == [s.channels for s in get_stages(clf)[:-1]]


def decoder_params(taps: list[tuple[int, int]], channels: list[int], k: int) -> int:
    """MONAI UpCat blocks (deconv 2×2 halving, two bias-free 3×3 conv-BN) + 1×1 ``seg`` conv."""
    skips = {s: c for c, s in taps[:-1]}
    c, s, total = taps[-1][0], taps[-1][1], 0
    for out in channels:
        s //= 2
        up = c // 2
        total += c * up * 4 + up  # ConvTranspose2d(c, c/2, 2, 2) with bias
        total += (skips.get(s, 0) + up) * out * 9 + 2 * out + out * out * 9 + 2 * out
        c = out
    return total + c * k + k


def test_parameter_counts():
    """2D: encoder (the classifier without its head) + the decoder formula; pseudo-3D: + four
    3×1×1 conv-BN layers; full 3D: every k×k conv weight × k."""
    with torch.device("meta"):
        for name, taps in (("unet_resnet18", [(64, 2), (64, 4), (128, 8), (256, 16), (512, 32)]),
                           ("unet_resnet50", [(64, 2), (256, 4), (512, 8), (1024, 16), (2048, 32)]),
                           ("unet_cbr_small", [(32, 2), (64, 4), (128, 8), (256, 16)])):
            chans = [256, 128, 64, 32, 16] if "resnet" in name else [128, 64, 32, 16]
            clf = create_model(_classifier(name), in_channels=1, num_classes=K)
            enc = _n(clf) - sum(p.numel() for n, p in clf.named_parameters() if stage_of(clf, n) == "head")
            m2 = create_model(name, spatial_dims=2, in_channels=1, num_classes=K)
            assert _n(m2) == enc + decoder_params(taps, chans, K), name
            m3 = create_model(name, spatial_dims=3, in_channels=1, num_classes=K)
            through = [taps[-1][0]] + [chans[i] for i in range(len(chans)) if i % 2 == 0 or i == len(chans) - 1]
            assert len(through) == 4
            assert _n(m3) - _n(m2) == sum(3 * c * c + 2 * c for c in through), name
            full = create_model(name, spatial_dims=3, in_channels=1, num_classes=K, kernels="kxkxk")
            conv2d = sum(m.weight.numel() * m.kernel_size[0] for m in m2.modules()
                         if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)))
            rest = _n(m2) - sum(m.weight.numel() for m in m2.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)))
            assert _n(full) == conv2d + rest, name
    assert _n(m2) == 2_870_484  # unet_cbr_small, 1 → 4 (the formula, frozen)


def test_pseudo3d_is_wacker():
    """1×k×k encoder and decoder convs, in-plane strides and pools, four 3×1×1 through-plane
    layers; without them, the pseudo-3D net with inflated 2D weights is the 2D net per slice."""
    torch.manual_seed(0)
    m3 = create_model("unet_resnet18", spatial_dims=3, in_channels=1, num_classes=K)
    convs = [m for n, m in m3.named_modules() if isinstance(m, (nn.Conv3d, nn.ConvTranspose3d))
             and ".through." not in n]
    assert all(c.kernel_size[0] == 1 and c.stride[0] == 1 for c in convs)
    assert m3.maxpool.kernel_size == (1, 3, 3) and m3.maxpool.stride == (1, 2, 2)
    through = [m for n, m in m3.named_modules() if ".through." in n and isinstance(m, nn.Conv3d)]
    assert [t.kernel_size for t in through] == [(3, 1, 1)] * 4
    assert [t.in_channels for t in through] == [512, 256, 64, 16]

    m2 = create_model("unet_resnet18", spatial_dims=2, in_channels=1, num_classes=K).eval()
    flat = create_model("unet_resnet18", spatial_dims=3, in_channels=1, num_classes=K,
                        through_plane=False).eval()
    state, notes = inflate_state_dict(m2.state_dict(), target_state=flat.state_dict(), mode="1xkxk")
    flat.load_state_dict(state, strict=True)
    assert len(notes) == sum(1 for v in flat.state_dict().values() if v.ndim == 5)
    vol = torch.randn(1, 1, 6, 32, 32)  # any depth
    with torch.no_grad():
        out = flat(vol)
        for d in range(6):
            torch.testing.assert_close(out[:, :, d], m2(vol[:, :, d]), atol=1e-4, rtol=1e-4)
        # Four 3×1×1 layers mix slices: changing slice 0 changes slice 1, not slice 5.
        m3.eval()
        a = m3(vol)
        vol2 = vol.clone()
        vol2[:, :, 0] += 1
        b = m3(vol2)
    assert not torch.allclose(a[:, :, 1], b[:, :, 1]) and torch.equal(a[:, :, 5], b[:, :, 5])


def test_full_3d_kernels():
    torch.manual_seed(0)
    m = create_model("unet_cbr_small", spatial_dims=3, in_channels=1, num_classes=K, kernels="kxkxk").eval()
    assert m.stem[0].kernel_size == (7, 7, 7) and m.stem[3].stride == (2, 2, 2)
    assert not any(".through." in n for n, _ in m.named_parameters())
    with torch.no_grad():
        assert m(torch.randn(1, 1, 16, 16, 16)).shape == (1, K, 16, 16, 16)
    with pytest.raises(ModelError, match=r"\(8, 16, 16\) does not fit — 8 \(not a multiple of 16\)"):
        m(torch.randn(1, 1, 8, 16, 16))


def test_size_and_option_errors():
    m = create_model("unet_resnet18", spatial_dims=2, in_channels=1, num_classes=2)
    with pytest.raises(ModelError, match=r"unet_resnet18: input spatial size \(40, 64\).*40 \(not a "
                       r"multiple of 32\).*DivisiblePad\(k=\(32, 32\)\)"):
        m(torch.randn(1, 1, 40, 64))
    p3 = create_model("unet_cbr_small", spatial_dims=3, in_channels=1, num_classes=2)
    with pytest.raises(ModelError, match=r"24 \(not a multiple of 16\)"):
        p3(torch.randn(1, 1, 3, 24, 16))  # depth is free in pseudo-3D, in-plane is not
    with pytest.raises(ModelError, match="through_plane=True needs spatial_dims=3 with kernels='1xkxk'"):
        create_model("unet_resnet18", spatial_dims=2, num_classes=2, through_plane=True)
    with pytest.raises(ModelError, match="through_plane=True needs"):
        create_model("unet_cbr_small", spatial_dims=3, num_classes=2, kernels="kxkxk", through_plane=True)
    with pytest.raises(ModelError, match="kernels='3d' must be one of 1xkxk, kxkxk"):
        create_model("unet_cbr_small", spatial_dims=3, num_classes=2, kernels="3d")
    with pytest.raises(ModelError, match="decoder_channels has 2 entries but the encoder downsamples by 16"):
        create_model("unet_cbr_small", num_classes=2, decoder_channels=(8, 8))


def test_2d_classifier_weights_into_2d_and_3d_unets():
    """``transfusion:block4`` from a resnet18 checkpoint: in 2D as is; in pseudo-3D after
    ``inflate_state_dict`` (the input conv then adapted from RGB to gray)."""
    torch.manual_seed(5)
    src = create_model("resnet18", in_channels=3, num_classes=10).state_dict()
    m2 = create_model("unet_resnet18", spatial_dims=2, in_channels=3, num_classes=K)
    rep = apply_init(m2, "transfusion:block4", source=SourceWeights(name="t", arch="resnet18", loader=lambda: src))
    loaded = {r.key for r in rep.records if r.action == "loaded"}
    assert loaded == {k for k in src if not k.startswith("fc.") and not k.endswith("num_batches_tracked")}
    m3 = create_model("unet_resnet18", spatial_dims=3, in_channels=1, num_classes=K)
    src3, _ = inflate_state_dict(src, target_state=m3.state_dict(), mode="1xkxk")
    rep3 = apply_init(m3, "transfusion:block4", source=SourceWeights(name="t3", arch="resnet18", loader=lambda: src3))
    acts = rep3.by_key()
    assert acts["conv1.weight"].action == "adapted"
    torch.testing.assert_close(m3.state_dict()["conv1.weight"], src["conv1.weight"].sum(1, keepdim=True).unsqueeze(2))
    assert acts["layer4.1.conv2.weight"].action == "loaded"
    assert acts["decoder.through.0.conv.weight"].action == "default"


def _spec(init: str) -> str:
    arg = INITS.get(init).meta.get("arg", "")
    return f"{init}:block2" if "stage" in arg else init


@pytest.mark.parametrize(("name", "kernels"), [
    ("unet_cbr_small", "1xkxk"), ("unet_cbr_small", "kxkxk"),
    pytest.param("unet_resnet18", "1xkxk", marks=pytest.mark.slow)])
def test_every_init_strategy_works_on_3d_unets(name, kernels):
    dims = 3
    with torch.device("meta"):
        meta = create_model(name, spatial_dims=dims, in_channels=1, num_classes=5, kernels=kernels)
    g = torch.Generator().manual_seed(1)
    src = {k: (torch.full(v.shape, 7, dtype=v.dtype) if not v.dtype.is_floating_point
               else 0.5 + torch.rand(v.shape, generator=g) if k.endswith("running_var")
               else 0.05 * torch.randn(v.shape, generator=g)) for k, v in meta.state_dict().items()}
    source = SourceWeights(name="test:unet", arch=name, spatial_dims=dims, in_channels=1, loader=lambda: src)
    specs = [_spec(n) for n in list_inits()] + ["transfusion:block1+meanvar"]
    side = model_info(name)["size_multiple"]
    x = torch.randn(1, 1, 2 if kernels == "1xkxk" else side, side, side)
    full = _n(meta)
    for spec in specs:
        torch.manual_seed(0)
        model = create_model(name, spatial_dims=dims, in_channels=1, num_classes=3, kernels=kernels,
                             **init_model_kwargs(spec))
        report = apply_init(model, spec, source=source, seed=0)
        state = model.state_dict()
        assert [r.key for r in report.records] == list(state), spec
        for r in report.records:
            if r.action == "loaded":
                assert torch.equal(state[r.key], src[r.key]), (spec, r.key)
            if stage_of(model, r.key) == "head" and spec != "random:kaiming":
                assert r.action == "default", (spec, r.key)  # the decoder is the head: re-initialised
        if spec in ("transfusion:block2", "slim:block2"):
            assert {r.action for r in report.records if stage_of(model, r.key) == "block2"
                    and not r.key.endswith("num_batches_tracked")} == {"loaded"}
        if spec == "slim:block2":
            assert _n(model) < full
            assert get_stages(model)[-2].channels == get_stages(meta)[-2].channels // 2
        with torch.no_grad():
            assert torch.isfinite(model.eval()(x)).all(), spec


def test_gabor_on_pseudo3d():
    model = create_model("unet_cbr_small", spatial_dims=3, in_channels=1, num_classes=3)
    report = apply_init(model, "gabor", seed=0)
    assert report.by_key()["stem.0.weight"].action == "redrawn"


def test_slim_with_builder_options():
    model = create_model("unet_cbr_small", spatial_dims=3, in_channels=1, num_classes=3,
                         kernels="kxkxk", **init_model_kwargs("slim:block2"))
    assert model.model_kwargs == {"kernels": "kxkxk"}
    src = {k: v.clone() for k, v in model.state_dict().items()}
    apply_init(model, "slim:block2", source=SourceWeights(name="s", arch="unet_cbr_small", loader=lambda: src))


def test_learns_a_multiclass_segmentation():
    """Four classes (background + three intensity-coded squares): 40 Adam steps bring the
    cross-entropy under a tenth of its start and pixel accuracy above 0.9 (eval mode)."""
    torch.manual_seed(0)
    n, side = 8, 32
    y = torch.zeros(n, side, side, dtype=torch.long)
    x = 0.1 * torch.randn(n, 1, side, side)
    for i in range(n):
        for c in (1, 2, 3):
            r, q = torch.randint(0, side - 8, (2,)).tolist()
            y[i, r:r + 8, q:q + 8] = c
    x = x + y.unsqueeze(1).float() / 3
    model = create_model("unet_cbr_small", spatial_dims=2, in_channels=1, num_classes=K)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(40):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    model.eval()
    with torch.no_grad():
        acc = float((model(x).argmax(1) == y).float().mean())
    assert losses[-1] < losses[0] / 10 and acc > 0.9, (losses[0], losses[-1], acc)


def test_unet_on_a_med3d_encoder():
    """The U-Net class takes any sequential encoder: a Med3D one keeps MedicalNet's keys."""
    torch.manual_seed(0)
    enc = Med3DEncoder(depth=10)
    taps = [(i["module"], i["num_chs"], i["reduction"]) for i in enc.feature_info]
    keys = list(enc.state_dict())
    unet = UNet(encoder=enc, encoder_modules=("conv1", "bn1", "relu", "maxpool", "layer1", "layer2",
                                              "layer3", "layer4"),
                taps=taps, num_classes=3, decoder_channels=(64, 32, 16), spatial_dims=3).eval()
    assert [k for k in unet.state_dict() if not k.startswith(("decoder.", "seg."))] == keys
    with torch.no_grad():
        assert unet(torch.randn(1, 1, 16, 16, 16)).shape == (1, 3, 16, 16, 16)

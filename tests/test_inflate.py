"""Inflation of 2D nets into 3D: the three modes' defining properties, state dicts, the report.

- ``1xkxk``: a volume of identical slices gives, on every slice, the 2D network's output
  (torchvision ResNet-18, timm EfficientNet-Lite0, transfuse CBR-Tiny, a 2D U-Net with
  transposed convs), in eval and in train mode;
- ``center``: a depth-constant volume gives the 2D output (ResNet-18 classifier, exactly);
- ``mean``: a depth-constant volume gives the 2D response away from the depth borders;
- :func:`inflate_state_dict` agrees with :func:`inflate_model` tensor for tensor;
- every 2D module is converted and reported; unsupported modules raise naming themselves.
Inputs are tiny (≤ 32 px in-plane).
"""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn
from torchvision import models as tvm

from transfuse.errors import ConfigError, ModelError
from transfuse.inits import adapt_input_conv
from transfuse.models import (
    create_model,
    inflate_model,
    inflate_state_dict,
    inflate_weight,
    transposed_strides,
)

TOL = {"atol": 2e-5, "rtol": 1e-4}


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread_module):
    """Tiny tensors: one intra-op thread (see conftest)."""


def _stack(x: torch.Tensor, depth: int) -> torch.Tensor:
    """``(N, C, H, W)`` → ``(N, C, depth, H, W)`` of identical slices."""
    return x.unsqueeze(2).repeat(1, 1, depth, 1, 1)


def _randomise_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BatchNorm statistics and affine parameters, so copying them matters."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_var.copy_(0.5 + torch.rand(n, generator=g))
            m.weight.data.copy_(1 + 0.1 * torch.randn(n, generator=g))
            m.bias.data.copy_(0.1 * torch.randn(n, generator=g))
    return model


def _nets() -> dict[str, nn.Module]:
    torch.manual_seed(0)
    return {
        "torchvision_resnet18": tvm.resnet18(num_classes=5),
        "timm_efficientnet_lite0": timm.create_model("efficientnet_lite0", pretrained=False, num_classes=5),
        "transfuse_cbr_tiny": create_model("cbr_tiny", in_channels=3, num_classes=5),
        "transfuse_unet_cbr_small_2d": create_model("unet_cbr_small", in_channels=3, num_classes=5),
    }


NETS = _nets()


# -- the defining properties ---------------------------------------------------------------------
@pytest.mark.parametrize("name", list(NETS))
def test_1xkxk_identical_slices_give_the_2d_output_on_every_slice(name):
    net2d = _randomise_bn(NETS[name]).eval()
    net3d, report = inflate_model(net2d, mode="1xkxk")
    net3d.eval()
    x = torch.randn(2, 3, 32, 32)
    depth = 3
    with torch.no_grad():
        want, got = net2d(x), net3d(_stack(x, depth))
    if want.ndim == 2:  # classifiers pool over depth: the mean of identical slices
        torch.testing.assert_close(got, want, **TOL)
    else:  # fully convolutional: every slice
        assert got.shape == (2, 5, depth, 32, 32)
        for d in range(depth):
            torch.testing.assert_close(got[:, :, d], want, **TOL)
    assert report.converted and report.mode == "1xkxk"
    # Nothing 2D is left behind.
    assert not [n for n, m in net3d.named_modules()
                if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.BatchNorm2d, nn.MaxPool2d,
                                  nn.AvgPool2d, nn.AdaptiveAvgPool2d))]
    kernels = [m.kernel_size[0] for m in net3d.modules() if isinstance(m, (nn.Conv3d, nn.ConvTranspose3d))]
    assert kernels and set(kernels) == {1}


def test_1xkxk_train_mode_batch_statistics_match():
    """In train mode BatchNorm3d over (N, D, H, W) of identical slices has the 2D batch stats."""
    torch.manual_seed(1)
    net2d = create_model("cbr_tiny", in_channels=3, num_classes=4).train()
    net3d, _ = inflate_model(net2d, mode="1xkxk")
    x = torch.randn(4, 3, 16, 16)
    out2d, out3d = net2d(x), net3d(_stack(x, 2))
    torch.testing.assert_close(out3d, out2d, **TOL)
    bn2 = net2d.stem[1]
    bn3 = net3d.stem[1]
    torch.testing.assert_close(bn3.running_mean, bn2.running_mean, **TOL)
    torch.testing.assert_close(bn3.running_var, bn2.running_var, **TOL)


def test_center_depth_constant_volume_gives_the_2d_logits():
    net2d = _randomise_bn(tvm.resnet18(num_classes=4)).eval()
    net3d, _ = inflate_model(net2d, mode="center")
    net3d.eval()
    c1 = net3d.conv1
    assert c1.kernel_size == (7, 7, 7) and c1.stride == (2, 2, 2) and c1.padding == (3, 3, 3)
    assert net3d.maxpool.kernel_size == (3, 3, 3)
    w = c1.weight.detach()
    torch.testing.assert_close(w[:, :, 3], net2d.conv1.weight, rtol=0, atol=0)
    assert float(w[:, :, [0, 1, 2, 4, 5, 6]].abs().max()) == 0.0
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(net3d(_stack(x, 16)), net2d(x), **TOL)


def test_mean_keeps_the_depth_constant_response_away_from_the_borders():
    """ResNet-18 stem + layer1, mean-inflated, on a 64-slice depth-constant volume.

    Contaminated by zero padding: conv1 (7, stride 2) → 32 slices, 2..30 clean; max-pool (3,
    stride 2) → 16 slices, 2..14 clean; layer1's four 3×3×3 convs → 6..10 clean.
    """
    torch.manual_seed(2)
    r = _randomise_bn(tvm.resnet18())
    net2d = nn.Sequential(r.conv1, r.bn1, r.relu, r.maxpool, r.layer1).eval()
    net3d, _ = inflate_model(net2d, mode="mean")
    net3d.eval()
    assert net3d[0].kernel_size == (7, 7, 7)
    torch.testing.assert_close(net3d[0].weight.sum(2), net2d[0].weight, **TOL)
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        want, got = net2d(x), net3d(_stack(x, 64))
    assert got.shape[2] == 16
    for d in range(6, 11):
        torch.testing.assert_close(got[:, :, d], want, atol=1e-4, rtol=1e-4)
    # At the border the zero padding shows: the property is about the interior only.
    assert not torch.allclose(got[:, :, 0], want, atol=1e-3)


@pytest.mark.parametrize("mode", ["center", "mean"])
def test_transposed_conv_keeps_the_depth_constant_response(mode):
    torch.manual_seed(3)
    for k, s in ((2, 2), (4, 2), (3, 1)):
        up2d = nn.ConvTranspose2d(4, 3, k, stride=s, padding=(k - s) // 2)
        up3d, rep = inflate_model(up2d, mode=mode)
        assert isinstance(up3d, nn.ConvTranspose3d) and up3d.kernel_size == (k, k, k)
        assert rep.converted[0].path == ""
        x = torch.randn(1, 4, 5, 5)
        with torch.no_grad():
            want, got = up2d(x), up3d(_stack(x, 8))
        inner = range(2, got.shape[2] - 2)
        for d in inner:
            torch.testing.assert_close(got[:, :, d], want, **TOL)


# -- weights and state dicts ---------------------------------------------------------------------
def test_inflate_weight_formulas():
    w = torch.randn(6, 2, 3, 3)
    assert torch.equal(inflate_weight(w, depth=1, mode="1xkxk")[:, :, 0], w)
    c = inflate_weight(w, depth=3, mode="center")
    assert torch.equal(c[:, :, 1], w) and not c[:, :, [0, 2]].any()
    m = inflate_weight(w, depth=3, mode="mean")
    torch.testing.assert_close(m[:, :, 0], w / 3)
    torch.testing.assert_close(m.sum(2), w)
    # Transposed, depth stride 2, k_d = 4: two taps per output slice.
    t = inflate_weight(w, depth=4, mode="mean", transposed_stride=2)
    torch.testing.assert_close(t[:, :, 0] + t[:, :, 2], w)
    tc = inflate_weight(w, depth=4, mode="center", transposed_stride=2)
    assert torch.equal(tc[:, :, 1], w) and torch.equal(tc[:, :, 2], w) and not tc[:, :, [0, 3]].any()
    with pytest.raises(ModelError, match="1xkxk makes depth 1"):
        inflate_weight(w, depth=3, mode="1xkxk")
    with pytest.raises(ConfigError, match="not one of 1xkxk, center, mean"):
        inflate_weight(w, depth=3, mode="i3d")


@pytest.mark.parametrize("mode", ["1xkxk", "center", "mean"])
def test_state_dict_inflation_equals_model_inflation(mode):
    net2d = NETS["transfuse_unet_cbr_small_2d"]  # convs, transposed convs, BatchNorm
    net3d, _ = inflate_model(net2d, mode=mode)
    target = net3d.state_dict()
    state, notes = inflate_state_dict(net2d.state_dict(), target_state=target, mode=mode,
                                      transposed=transposed_strides(net3d))
    assert list(state) == list(target)
    for k, v in target.items():
        assert torch.equal(state[k], v), k
    convs = [k for k, v in target.items() if v.ndim == 5]
    assert sorted(notes) == sorted(convs)
    k0 = "stem.0.weight"
    assert notes[k0] == ("7×7 → 1×7×7 (1xkxk)" if mode == "1xkxk" else f"7×7 → 7×7×7 ({mode})")
    # target_shapes is the same thing without tensors; untouched tensors are the same objects.
    state2, _ = inflate_state_dict(net2d.state_dict(), mode=mode, transposed=transposed_strides(net3d),
                                   target_shapes={k: v.shape for k, v in target.items()})
    assert all(torch.equal(state2[k], state[k]) for k in state)
    src = net2d.state_dict()
    assert state["stem.1.running_var"] is not None and torch.equal(state["stem.1.running_var"], src["stem.1.running_var"])


def test_state_dict_inflation_keeps_source_channels_and_errors():
    """The input conv keeps the source's channels (adapted afterwards, as for 2D); unknown keys
    pass through; 1xkxk into a k×k×k target and a missing target are refused."""
    src = {"conv.weight": torch.randn(8, 3, 3, 3), "fc.weight": torch.randn(2, 8), "extra": torch.ones(1)}
    out, notes = inflate_state_dict(src, target_shapes={"conv.weight": (8, 1, 1, 3, 3), "fc.weight": (2, 8)})
    assert out["conv.weight"].shape == (8, 3, 1, 3, 3) and out["extra"] is src["extra"]
    assert list(notes) == ["conv.weight"]
    with pytest.raises(ModelError, match=r"conv.weight.*3×3×3.*use mode='center' or 'mean'"):
        inflate_state_dict(src, target_shapes={"conv.weight": (8, 3, 3, 3, 3)}, mode="1xkxk")
    with pytest.raises(ConfigError, match="exactly one of target_state= or target_shapes="):
        inflate_state_dict(src, mode="mean")


# -- input channels, the report, errors ----------------------------------------------------------
def test_input_channels_adapted_in_the_same_pass():
    net2d = _randomise_bn(tvm.resnet18(num_classes=3)).eval()
    net3d, rep = inflate_model(net2d, mode="1xkxk", in_channels=1)
    net3d.eval()
    assert net3d.conv1.in_channels == 1 and rep.input_conv.startswith("conv1: input channels 3 → 1")
    gray = torch.randn(2, 1, 32, 32)
    with torch.no_grad():  # a gray volume = the 2D net on R = G = B
        torch.testing.assert_close(net3d(_stack(gray, 2)), net2d(gray.repeat(1, 3, 1, 1)), **TOL)
    five, rep5 = inflate_model(net2d, mode="center", in_channels=5)
    want = inflate_weight(adapt_input_conv(net2d.conv1.weight.detach(), 5), depth=7, mode="center")
    assert torch.equal(five.conv1.weight, want) and "× 3/5" in rep5.input_conv
    assert net2d.conv1.in_channels == 3 and isinstance(net2d.conv1, nn.Conv2d)  # source unchanged


def test_report_lists_every_converted_module():
    net2d = tvm.resnet18()
    _, rep = inflate_model(net2d, mode="mean")
    two_d = (nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d, nn.AdaptiveAvgPool2d)
    want = [n for n, m in net2d.named_modules() if isinstance(m, two_d)]
    assert [c.path for c in rep.converted] == want
    conv1 = rep.converted[0]
    assert (conv1.path, conv1.before, conv1.after) == ("conv1", "Conv2d 7×7", "Conv3d 7×7×7")
    assert "fc" in rep.kept and "relu" in rep.kept
    d = rep.to_dict()
    assert d["mode"] == "mean" and len(d["converted"]) == len(want) == 42
    assert rep.summary().startswith("inflated (mean): 42 modules converted")


def test_pooling_dropout_upsample_conversions():
    net = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.Dropout2d(0.1), nn.AvgPool2d(2),
                        nn.Upsample(scale_factor=2, mode="bilinear"), nn.AdaptiveAvgPool2d((2, 2)),
                        nn.Flatten(), nn.Linear(16, 3))
    n1, _ = inflate_model(net, mode="1xkxk")
    assert isinstance(n1[1], nn.Dropout3d) and n1[2].kernel_size == (1, 2, 2)
    assert n1[3].scale_factor == (1.0, 2.0, 2.0) and n1[3].mode == "trilinear"
    assert n1[4].output_size == (1, 2, 2)  # depth pooled: the Linear keeps its inputs
    assert n1.eval()(torch.randn(1, 2, 3, 8, 8)).shape == (1, 3)
    n3, _ = inflate_model(net, mode="mean")
    assert n3[2].kernel_size == (2, 2, 2) and n3[3].scale_factor == (2.0, 2.0, 2.0)


class _Custom(nn.Module):
    def forward(self, x):
        return x * 2


@pytest.mark.parametrize(("net", "match"), [
    (nn.Sequential(nn.Conv2d(1, 2, 3), nn.Sequential(nn.ReLU(), nn.Conv1d(2, 2, 1))),
     r"cannot inflate 1\.1 \(torch\.nn\.modules\.conv\.Conv1d\): no 3D counterpart"),
    (nn.Sequential(nn.Conv2d(1, 2, 3), _Custom()), r"cannot inflate 1 \(.*_Custom\).*passthrough"),
    (nn.Sequential(nn.Upsample(size=(4, 4))), r"cannot inflate 0 \(nn.Upsample with a fixed size"),
])
def test_unsupported_module_raises_and_names_itself(net, match):
    with pytest.raises(ModelError, match=match):
        inflate_model(net)


def test_2d_only_containers_and_passthrough():
    eca = nn.Sequential(nn.Conv2d(1, 4, 3), timm.layers.EcaModule(4))  # squeeze-excite inflates
    with pytest.raises(ModelError, match=r"cannot inflate 1 \(.*EcaModule\): its forward is 2D-only"):
        inflate_model(eca)
    net = nn.Sequential(nn.Conv2d(1, 2, 3), _Custom())
    out, rep = inflate_model(net, passthrough=(_Custom,))
    assert rep.kept == ["1"] and isinstance(out[0], nn.Conv3d)
    with pytest.raises(ConfigError, match="inflation mode 'i3d'"):
        inflate_model(net, mode="i3d")

"""``unet_efficientnet_lite0``: a U-Net whose encoder is timm's EfficientNet-Lite0, at timm's keys,
so the real offline ImageNet weights (``imagenet:efficientnet_lite0``) load into it."""

from __future__ import annotations

import pytest
import timm
import torch

from transfuse.errors import ModelError
from transfuse.inits import apply_init
from transfuse.models import create_model, get_stages
from transfuse.weights import resolve_source


@pytest.fixture(scope="module")
def imagenet():
    return resolve_source("imagenet:efficientnet_lite0")


def test_imagenet_weights_load_into_the_encoder_and_give_timms_features(imagenet):
    torch.manual_seed(0)
    unet = create_model("unet_efficientnet_lite0", in_channels=3, num_classes=4)
    report = apply_init(unet, "pretrained", source=imagenet, seed=0)
    src = imagenet.state_dict()
    enc_keys = [k for k in unet.state_dict() if not k.startswith(("decoder.", "seg."))
                and not k.endswith("num_batches_tracked")]
    assert len(enc_keys) == 240
    for k in enc_keys:
        assert torch.equal(unet.state_dict()[k], src[k]), k
    acts = {r.key: r.action for r in report.records}
    assert all(acts[k] == "loaded" for k in enc_keys)
    assert all(a == "default" for k, a in acts.items() if k.startswith(("decoder.", "seg.")))
    # the 8 unused source tensors are timm's conv_head/bn2 and the classifier
    assert any("8 source tensors have no counterpart" in n for n in report.notes), report.notes

    ref = timm.create_model("efficientnet_lite0", pretrained=False, num_classes=1000)
    ref.load_state_dict(src)
    ref.eval(), unet.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        feats = unet.forward_stages(x)
        y = ref.bn1(ref.conv_stem(x))
        want = [y]
        for i, blk in enumerate(ref.blocks):
            y = blk(y)
            if i in (1, 2, 4, 6):
                want.append(y)
    assert [f.shape[1] for f in feats] == [32, 24, 40, 112, 320]
    for f, w in zip(feats, want):
        torch.testing.assert_close(f, w)


def test_stages_shapes_and_pseudo3d():
    m2 = create_model("unet_efficientnet_lite0", in_channels=1, num_classes=3)
    names = [s.name for s in get_stages(m2)]
    assert names == ["stem"] + [f"block{i}" for i in range(1, 8)] + ["head"]
    assert [s.stride for s in get_stages(m2)][:8] == [2, 2, 4, 8, 16, 16, 32, 32]
    assert m2(torch.randn(1, 1, 64, 32)).shape == (1, 3, 64, 32)
    m3 = create_model("unet_efficientnet_lite0", spatial_dims=3, in_channels=1, num_classes=3)
    out = m3(torch.randn(1, 1, 5, 32, 64))  # pseudo-3D: any depth
    assert out.shape == (1, 3, 5, 32, 64)
    k = m3.state_dict()["conv_stem.weight"]
    assert k.shape == (32, 1, 1, 3, 3)  # 3x3 -> 1x3x3


def test_errors():
    with pytest.raises(ModelError, match="no width multipliers"):
        create_model("unet_efficientnet_lite0", num_classes=2, stage_widths={"block3": 0.5})
    m = create_model("unet_efficientnet_lite0", num_classes=2)
    with pytest.raises(ModelError, match=r"48 \(not a multiple of 32\)"):
        m(torch.randn(1, 3, 48, 64))

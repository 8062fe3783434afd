"""ResNet-18/34/50 and Inception-v3, built by torchvision (never re-implemented here).

Parameter names are torchvision's own, so torchvision checkpoints load unchanged. For an input
with other than 3 channels the first convolution is rebuilt with ``in_channels`` inputs (weights
for it are adapted by the init strategies, not here).
"""

from __future__ import annotations

from torch import nn
from torchvision import models as tvm

from .registry import register_model

__all__: list[str] = []


def _replace_first_conv(conv: nn.Conv2d, in_channels: int) -> nn.Conv2d:
    if conv.in_channels == in_channels:
        return conv
    return nn.Conv2d(in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                     conv.padding, bias=conv.bias is not None)


def _resnet(fn):
    def build(*, spatial_dims: int, in_channels: int, num_classes: int, drop_rate: float = 0.0):
        model = fn(weights=None, num_classes=num_classes)
        model.conv1 = _replace_first_conv(model.conv1, in_channels)
        if drop_rate:
            model.fc = nn.Sequential(nn.Dropout(drop_rate), model.fc)
        head = "fc"
        groups = [("stem", ("conv1", "bn1"), "maxpool")]
        groups += [(f"block{i}", (f"layer{i}",), f"layer{i}") for i in range(1, 5)]
        groups.append(("head", (head,), head))
        return model, groups

    return build


for _n, _fn in (("resnet18", tvm.resnet18), ("resnet34", tvm.resnet34), ("resnet50", tvm.resnet50)):
    register_model(_n, spatial_dims=(2,), min_size=16, family="resnet",
                   description=f"torchvision {_n}")(_resnet(_fn))

_INCEPTION_STAGES = {
    "stem": ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "Conv2d_3b_1x1", "Conv2d_4a_3x3"),
    "block1": ("Mixed_5b", "Mixed_5c", "Mixed_5d"),
    "block2": ("Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e"),
    "block3": ("Mixed_7a", "Mixed_7b", "Mixed_7c"),
}


@register_model("inception_v3", spatial_dims=(2,), min_size=75, family="inception", probe_size=299,
                 description="torchvision Inception-v3 (no auxiliary head); inputs >= 75 px")
def _inception(*, spatial_dims: int, in_channels: int, num_classes: int, drop_rate: float = 0.5):
    model = tvm.inception_v3(weights=None, aux_logits=False, init_weights=True,
                             num_classes=num_classes, dropout=drop_rate)
    model.Conv2d_1a_3x3.conv = _replace_first_conv(model.Conv2d_1a_3x3.conv, in_channels)
    groups = [("stem", _INCEPTION_STAGES["stem"], "maxpool2")]
    groups += [(k, v, v[-1]) for k, v in _INCEPTION_STAGES.items() if k != "stem"]
    groups.append(("head", ("fc",), "fc"))
    return model, groups

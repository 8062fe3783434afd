"""CBR networks from the Transfusion study (Raghu et al. 2019, appendix), 2D and 3D.

A CBR block is Conv → BatchNorm → ReLU, optionally followed by a 3×3(×3) max-pool with stride 2;
the network ends in global average pooling and a linear classifier. Widths, kernel sizes and pool
positions follow the appendix (shared/reference/papers.md §1.2):

=========== ====== ======================== ==================
model       kernel widths                    pool after block
=========== ====== ======================== ==================
cbr_large_t 7      32, 64, 128, 256, 512     all but the last
cbr_large_w 7      64, 128, 256, 512         all
cbr_small   7      32, 64, 128, 256          all
cbr_tiny    5      32, 64, 128, 256          all
=========== ====== ======================== ==================

Choices the appendix leaves open, made here and documented:

- **CBR-Tiny** uses widths 32→256 with 5×5 kernels. The appendix text as quoted (64→512) would
  make "Tiny" twice the size of CBR-Small (4.3M vs 2.1M conv weights), contradicting its name; the
  32→256 reading gives 1.08M, the smallest of the family, as its name says.
- Convolutions are padded to keep the size ("same" padding, ``k // 2``) and max-pools use
  padding 1, so the nets run on small inputs (28×28 MedMNIST) as well as 224×224 photos.
- Convolutions have no bias (BatchNorm follows); max-pool is 3×3 stride 2 as in public
  re-implementations.

One code path serves 2D and 3D: layer classes are looked up by ``spatial_dims``.

Width multipliers: ``create_model("cbr_small", stage_widths={"block3": 0.5})`` builds the listed
stages with ``round(width × multiplier)`` channels (the ``slim`` init asks for this); the next
block's convolution and the linear head take the new widths as inputs.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["CBR", "CBR_CONFIGS", "PooledLinearHead"]

# name -> (kernel, widths, pool after each block)
CBR_CONFIGS: dict[str, tuple[int, tuple[int, ...], tuple[bool, ...]]] = {
    "cbr_large_t": (7, (32, 64, 128, 256, 512), (True, True, True, True, False)),
    "cbr_large_w": (7, (64, 128, 256, 512), (True, True, True, True)),
    "cbr_small": (7, (32, 64, 128, 256), (True, True, True, True)),
    "cbr_tiny": (5, (32, 64, 128, 256), (True, True, True, True)),
}

CONV = {2: nn.Conv2d, 3: nn.Conv3d}
BN = {2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
MAXPOOL = {2: nn.MaxPool2d, 3: nn.MaxPool3d}
AVGPOOL = {2: nn.AdaptiveAvgPool2d, 3: nn.AdaptiveAvgPool3d}


class PooledLinearHead:
    """timm's classifier interface for a backbone with ``forward_features``, ``global_pool``,
    ``drop``, ``fc`` and ``num_features`` (CBR, the Med3D classifier): pool → dropout → ``fc``."""

    def forward_head(self, x: torch.Tensor, *, pre_logits: bool = False) -> torch.Tensor:
        """Feature map → pooled features ``(N, num_features)`` or logits ``(N, num_classes)``."""
        x = self.drop(self.global_pool(x).flatten(1))
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int) -> None:
        self.fc = nn.Linear(self.num_features, num_classes)


class CBR(PooledLinearHead, nn.Module):
    """Stacked Conv-BN-ReLU(-MaxPool) blocks + global average pool + linear head.

    Args:
        widths: output channels of each CBR block.
        kernel: convolution kernel size.
        pools: whether a max-pool follows each block.
        spatial_dims: 2 (images ``(N, C, H, W)``) or 3 (volumes ``(N, C, D, H, W)``).
        in_channels: input channels.
        num_classes: outputs of the linear head.
        drop_rate: dropout before the head.

    Stages: ``stem`` is the first CBR block, ``block1`` … the following ones, ``head`` the linear
    layer (module names ``stem``, ``block1`` …, ``fc``).
    """

    def __init__(self, *, widths: tuple[int, ...], kernel: int, pools: tuple[bool, ...],
                 spatial_dims: int = 2, in_channels: int = 3, num_classes: int = 2,
                 drop_rate: float = 0.0) -> None:
        super().__init__()
        self.spatial_dims = spatial_dims
        names = ["stem"] + [f"block{i}" for i in range(1, len(widths))]
        c_in = in_channels
        for name, c_out, pool in zip(names, widths, pools):
            layers: list[nn.Module] = [
                CONV[spatial_dims](c_in, c_out, kernel, padding=kernel // 2, bias=False),
                BN[spatial_dims](c_out),
                nn.ReLU(inplace=True),
            ]
            if pool:
                layers.append(MAXPOOL[spatial_dims](3, stride=2, padding=1))
            self.add_module(name, nn.Sequential(*layers))
            c_in = c_out
        self.block_names = names
        self.num_features = c_in
        self.global_pool = AVGPOOL[spatial_dims](1)
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(c_in, num_classes)
        for m in self.modules():  # He init for ReLU nets; torch's default is tuned for tanh-like.
            if isinstance(m, (nn.Conv2d, nn.Conv3d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, *spatial)`` → last feature map ``(N, num_features, *spatial')``."""
        for name in self.block_names:
            x = getattr(self, name)(x)
        return x

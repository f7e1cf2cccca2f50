"""MMGA attention module: spatial attention x channel attention (Cai et al., CVPRW 2019, Sec. 3.2).

Spatial branch (Fig. 4b): conv1x1 c_in -> c_in/s -> c_in/s^2 -> 1, sigmoid, **+1.0**.
Choices not fixed by the paper, documented here:

* BatchNorm + ReLU follow the first and the second 1x1 conv (not the last): without a
  non-linearity three stacked 1x1 convs collapse to one linear map, and BN keeps the
  branch trainable next to a BN'd backbone. The last conv keeps its bias and feeds the
  sigmoid directly.
* ``pool`` (kernel = stride) average pooling sits between the first and second conv, as
  the paper places it; module 1 uses ``pool=2`` to bring stage2's 48x16 to stage3's 24x8.
* The "+1.0" (residual attention, Wang et al. 2017) makes A >= C: attention can boost a
  location but never erase it, so a bad early map cannot zero the features.

Channel branch (Fig. 4a): GAP over space, Linear c_in -> c_in/r, ReLU, Linear -> c_out,
sigmoid. The ReLU between the two linears is the usual squeeze-excitation choice (again,
two linears without it are one linear map).

Output: ``A = S x C`` broadcast to (N, c_out, h_out, w_out), and the spatial map that the
mask-guided loss uses. The loss min-max normalises every map, so ``sigmoid`` and
``sigmoid + 1`` give the same normalised map; the module returns the sigmoid (in [0, 1],
i.e. S - 1), which is also what one wants to draw as an attention heat map.
"""

from __future__ import annotations

import torch.nn as nn
from torch import Tensor

__all__ = ["MaskGuidedAttention"]


class MaskGuidedAttention(nn.Module):
    """Spatial x channel attention; ``forward`` returns ``(A, spatial_map)``.

    Args:
        in_channels: c_in, channels of the input map.
        out_channels: c_out, channels of the map that A multiplies.
        spatial_reduction: s (paper: 8).
        channel_reduction: r (paper: 8).
        pool: average-pooling kernel/stride between the first and second spatial conv
            (1 = none). The output spatial size is the input size divided by ``pool``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        spatial_reduction: int = 8,
        channel_reduction: int = 8,
        pool: int = 1,
    ) -> None:
        super().__init__()
        mid1 = max(1, in_channels // spatial_reduction)
        mid2 = max(1, in_channels // spatial_reduction**2)
        hidden = max(1, in_channels // channel_reduction)
        self.out_channels = out_channels
        self.pool = pool

        self.spatial_conv1 = nn.Sequential(
            nn.Conv2d(in_channels, mid1, 1, bias=False), nn.BatchNorm2d(mid1), nn.ReLU(inplace=True)
        )
        self.spatial_pool = nn.AvgPool2d(pool, pool) if pool > 1 else nn.Identity()
        self.spatial_conv2 = nn.Sequential(
            nn.Conv2d(mid1, mid2, 1, bias=False), nn.BatchNorm2d(mid2), nn.ReLU(inplace=True)
        )
        self.spatial_conv3 = nn.Conv2d(mid2, 1, 1, bias=True)

        self.channel_fc = nn.Sequential(
            nn.Linear(in_channels, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out_channels)
        )

    def spatial(self, x: Tensor) -> Tensor:
        """Spatial map sigmoid(conv(x)) in [0, 1], shape (N, 1, h/pool, w/pool); S = this + 1."""
        s = self.spatial_conv1(x)
        s = self.spatial_pool(s)
        s = self.spatial_conv2(s)
        return self.spatial_conv3(s).sigmoid()

    def channel(self, x: Tensor) -> Tensor:
        """Channel attention C in [0, 1], shape (N, c_out, 1, 1)."""
        c = self.channel_fc(x.mean(dim=(2, 3)))
        return c.sigmoid()[:, :, None, None]

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Return ``A = (1 + sigmoid_s) * C`` of shape (N, c_out, h_out, w_out) and the spatial map."""
        spatial_map = self.spatial(x)
        attention = (spatial_map + 1.0) * self.channel(x)
        return attention, spatial_map

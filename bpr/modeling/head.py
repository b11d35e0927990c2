"""FCN head over all four HRNet branches (mmsegmentation's FCNHead with resize_concat)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ConvBNReLU(nn.Module):
    """mmcv's ConvModule layout (``conv`` + ``bn``) so the checkpoint keys line up."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 1, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


class FCNHead(nn.Module):
    """Upsample every branch to the finest one, concatenate, 1x1 conv, 1x1 classifier.

    Output: (B, num_classes, S/4, S/4) logits for features at 1/4..1/32 of S.
    """

    def __init__(self, in_channels: tuple[int, ...], num_classes: int = 2, dropout: float = 0.1) -> None:
        super().__init__()
        channels = sum(in_channels)
        self.convs = nn.Sequential(ConvBNReLU(channels, channels))
        self.dropout = nn.Dropout2d(dropout)
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        size = features[0].shape[-2:]
        x = torch.cat(
            [features[0]] + [F.interpolate(f, size=size, mode="bilinear", align_corners=False) for f in features[1:]],
            dim=1,
        )
        return self.conv_seg(self.dropout(self.convs(x)))


class DetailHead(nn.Module):
    """Full-resolution correction of the upsampled logits, from [logits, image, mask].

    HRNet's head predicts at 1/4 of the input: 16x16 cells at input 64, too coarse for thin
    parts (legs, lines, spokes) and for pixel-exact edges. Three small 3x3 convs at the input
    resolution add back what that stride loses, for about a tenth of the backbone's cost.
    The last conv starts at zero, so a refiner fine-tuned with it starts as the refiner
    without it.
    """

    def __init__(self, num_classes: int = 2, width: int = 16) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(num_classes + 4, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)
        self.conv_out = nn.Conv2d(width, num_classes, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)  # type: ignore[arg-type]  # a Conv2d made with bias=True

    def forward(self, logits: torch.Tensor, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = torch.cat([logits, image.to(logits.dtype), mask.to(logits.dtype)], dim=1)
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        return logits + self.conv_out(x)

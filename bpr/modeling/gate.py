"""A learned patch-quality gate: is the refined patch better than the coarse one it replaces?

The refiner alone cannot tell a wrong boundary from a right one that sits on a weaker image
edge than some edge nearby; on masks that are already right it moves them anyway. The gate
looks at what the refiner wants to change (image, coarse mask, refined probability, their
difference) and scores whether the change fixes more pixels than it breaks. Patches it
rejects keep the coarse mask. It is trained after the refiner, on the refiner's frozen
outputs (``bpr-train-gate``, :mod:`bpr.train.gate`), with the pixels each patch's change gains or loses as
the stakes, so the decisions that move many pixels count most.
"""

from __future__ import annotations

import torch
from torch import nn

from bpr.modeling.head import ConvBNReLU


class PatchGate(nn.Module):
    """(image, coarse mask, refined probability) patches -> (B,) logit of "the change helps"."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(6, width, 3, stride=2, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(inplace=True),
            nn.Conv2d(2 * width, 4 * width, 3, stride=2, padding=1),
            nn.BatchNorm2d(4 * width),
            nn.ReLU(inplace=True),
            ConvBNReLU(4 * width, 4 * width),
        )
        self.classifier = nn.Linear(8 * width + 3, 1)

    def forward(self, image: torch.Tensor, mask: torch.Tensor, prob: torch.Tensor) -> torch.Tensor:
        """image (B, 3, S, S) normalised as the refiner's; mask (B, 1, S, S) in {0, 1};
        prob (B, 1, S, S) refined foreground probability."""
        change = prob - mask
        x = self.features(torch.cat([image, mask * 2 - 1, prob * 2 - 1, change], dim=1))
        pooled = torch.cat([x.mean(dim=(2, 3)), x.amax(dim=(2, 3))], dim=1)
        flips = ((prob > 0.5).float() - mask).abs()
        stats = torch.stack(
            [
                flips.mean(dim=(1, 2, 3)),  # share of the patch the change moves
                (flips * (prob - 0.5).abs()).sum(dim=(1, 2, 3))
                / flips.sum(dim=(1, 2, 3)).clamp(min=1),  # its confidence
                mask.mean(dim=(1, 2, 3)),
            ],
            dim=1,
        )
        return self.classifier(torch.cat([pooled, stats], dim=1))[:, 0]

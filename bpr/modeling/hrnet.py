"""HRNetV2 backbone with BPR's mask branch, in plain PyTorch.

Module and parameter names follow mmsegmentation's ``HRNet`` exactly (``conv1``, ``layer1``,
``transition1``, ``stage2.0.branches.0.0.conv1``, ``fuse_layers.i.j``...), so that the
original BPR checkpoints load without any renaming. The one BPR addition is ``conv_mask``:
a 3x3 stride-2 convolution of the coarse-mask patch, added to ``conv1(image)`` before ``bn1``.
That is how the network knows which instance it is refining.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class HRNetSpec:
    """Depth and width of an HRNet: blocks per branch and modules per stage."""

    stem_blocks: int  # bottlenecks in stage 1 (layer1)
    widths: tuple[int, int, int, int]  # channels of the four branches
    stage_modules: tuple[int, int, int]  # HRModules in stages 2, 3, 4
    branch_blocks: int  # basic blocks per branch inside an HRModule


ARCHS: dict[str, HRNetSpec] = {
    # HRNetV2-W18-Small (mmseg fcn_hr18s): BPR's default refiner.
    "hr18s": HRNetSpec(stem_blocks=2, widths=(18, 36, 72, 144), stage_modules=(1, 3, 2), branch_blocks=2),
    "hr18": HRNetSpec(stem_blocks=4, widths=(18, 36, 72, 144), stage_modules=(1, 4, 3), branch_blocks=4),
    # HRNetV2-W48: BPR's large variant (used at 256 px).
    "hr48": HRNetSpec(stem_blocks=4, widths=(48, 96, 192, 384), stage_modules=(1, 4, 3), branch_blocks=4),
}


def conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = conv3x3(channels, channels)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = conv3x3(channels, channels)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + x)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, planes: int) -> None:
        super().__init__()
        cout = planes * self.expansion
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.downsample = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout)) if cin != cout else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(out + identity)


def _down(cin: int, cout: int, relu: bool) -> nn.Sequential:
    """One 3x3 stride-2 conv + BN (+ ReLU): a step of every downsampling path."""
    layers: list[nn.Module] = [conv3x3(cin, cout, stride=2), nn.BatchNorm2d(cout)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class HRModule(nn.Module):
    """Parallel branches of basic blocks, then every branch fused into every other."""

    def __init__(self, widths: tuple[int, ...], num_blocks: int, upsample_mode: str) -> None:
        super().__init__()
        self.upsample_mode = upsample_mode
        self.branches = nn.ModuleList(nn.Sequential(*[BasicBlock(w) for _ in range(num_blocks)]) for w in widths)
        fuse_layers = []
        for i, wi in enumerate(widths):
            row: list[nn.Module | None] = []
            for j, wj in enumerate(widths):
                if j > i:  # lower resolution: 1x1 conv to this width, upsampled in forward
                    row.append(nn.Sequential(nn.Conv2d(wj, wi, 1, bias=False), nn.BatchNorm2d(wi)))
                elif j == i:
                    row.append(None)
                else:  # higher resolution: i - j stride-2 steps, the last without ReLU
                    steps = [_down(wj, wj, relu=True) for _ in range(i - j - 1)]
                    steps.append(_down(wj, wi, relu=False))
                    row.append(nn.Sequential(*steps))
            fuse_layers.append(nn.ModuleList(row))
        self.fuse_layers = nn.ModuleList(fuse_layers)

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        xs = [branch(x) for branch, x in zip(self.branches, xs)]
        fused = []
        for i, row in enumerate(self.fuse_layers):
            y = xs[i]
            for j, layer in enumerate(row):
                if j > i:
                    z = layer(xs[j])
                    if self.upsample_mode == "nearest":
                        z = F.interpolate(z, size=xs[i].shape[-2:], mode="nearest")
                    else:
                        z = F.interpolate(z, size=xs[i].shape[-2:], mode="bilinear", align_corners=False)
                    y = y + z
                elif j < i:
                    y = y + layer(xs[j])
            fused.append(F.relu(y))
        return fused


def _transition(pre: tuple[int, ...], cur: tuple[int, ...]) -> nn.ModuleList:
    """Layers between stages: adapt existing branches, spawn the new lower-resolution one."""
    layers: list[nn.Module | None] = []
    for i, c in enumerate(cur):
        if i < len(pre):
            layers.append(
                None if pre[i] == c else nn.Sequential(conv3x3(pre[i], c), nn.BatchNorm2d(c), nn.ReLU(inplace=True))
            )
        else:
            steps = []
            for k in range(i + 1 - len(pre)):
                cin = pre[-1]
                cout = c if k == i - len(pre) else cin
                steps.append(_down(cin, cout, relu=True))
            layers.append(nn.Sequential(*steps))
    return nn.ModuleList(layers)


class HRNetWithMask(nn.Module):
    """HRNetV2 taking an RGB patch and its coarse-mask patch; returns four feature maps.

    Input: image (B, 3, S, S) normalised with ImageNet mean/std; mask (B, 1, S, S) in [-1, 1].
    Output: features at 1/4, 1/8, 1/16 and 1/32 of S with ``spec.widths`` channels.
    """

    def __init__(self, spec: HRNetSpec, upsample_mode: str = "bilinear") -> None:
        super().__init__()
        if upsample_mode not in ("bilinear", "nearest"):
            raise ValueError(f"upsample_mode must be 'bilinear' or 'nearest', got {upsample_mode!r}")
        self.spec = spec
        self.conv1 = conv3x3(3, 64, stride=2)
        self.conv_mask = conv3x3(1, 64, stride=2)
        self.bn1 = nn.BatchNorm2d(64)
        self.conv2 = conv3x3(64, 64, stride=2)
        self.bn2 = nn.BatchNorm2d(64)
        self.layer1 = nn.Sequential(Bottleneck(64, 64), *[Bottleneck(256, 64) for _ in range(spec.stem_blocks - 1)])
        w = spec.widths
        self.transition1 = _transition((256,), w[:2])
        self.stage2 = nn.Sequential(
            *[HRModule(w[:2], spec.branch_blocks, upsample_mode) for _ in range(spec.stage_modules[0])]
        )
        self.transition2 = _transition(w[:2], w[:3])
        self.stage3 = nn.Sequential(
            *[HRModule(w[:3], spec.branch_blocks, upsample_mode) for _ in range(spec.stage_modules[1])]
        )
        self.transition3 = _transition(w[:3], w)
        self.stage4 = nn.Sequential(
            *[HRModule(w, spec.branch_blocks, upsample_mode) for _ in range(spec.stage_modules[2])]
        )

    @staticmethod
    def _run_transition(transition: nn.ModuleList, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        out = []
        for i, layer in enumerate(transition):
            if layer is None:
                out.append(xs[i])
            else:  # new branches grow from the lowest-resolution existing one
                out.append(layer(xs[i] if i < len(xs) else xs[-1]))
        return out

    def forward(self, image: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
        x = F.relu(self.bn1(self.conv1(image) + self.conv_mask(mask)))  # (B, 64, S/2, S/2)
        x = F.relu(self.bn2(self.conv2(x)))  # (B, 64, S/4, S/4)
        x = self.layer1(x)  # (B, 256, S/4, S/4)
        xs = self._run_transition(self.transition1, [x])
        xs = self.stage2(xs)
        xs = self._run_transition(self.transition2, xs)
        xs = self.stage3(xs)
        xs = self._run_transition(self.transition3, xs)
        return self.stage4(xs)

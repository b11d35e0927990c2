"""The BPR patch refiner and its input preprocessing.

Two architectures behind one interface: BPR's HRNet-with-mask backbone + FCN head (``hr18s``,
``hr18``, ``hr48``; the original checkpoints load as they are), and an ImageNet-pretrainable
EfficientNet-Lite encoder with a mask-fed U-Net decoder (``effl0``; the larger ``effl1`` and
``effl2``; bpr/modeling/efficientnet.py).
Both keep their modules under ``backbone`` and ``decode_head``.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bpr.modeling import efficientnet
from bpr.modeling.efficientnet import EfficientNetLiteWithMask, MaskUNetDecoder
from bpr.modeling.gate import PatchGate
from bpr.modeling.head import DetailHead, FCNHead
from bpr.modeling.hrnet import ARCHS, HRNetWithMask

IMAGENET_MEAN = (123.675, 116.28, 103.53)  # RGB, 0..255 scale, as mmseg normalises
IMAGENET_STD = (58.395, 57.12, 57.375)
ENCODER_ARCHS = tuple(efficientnet.VARIANTS)  # effl0/1/2: decoders that predict at the input resolution
ALL_ARCHS = tuple(sorted(ARCHS)) + ENCODER_ARCHS


@dataclass(frozen=True)
class RefinerConfig:
    """The network's architecture and how to feed it: stored inside every bpr checkpoint.

    ``patch_size`` is the square cut from the image (image pixels); ``input_size`` is what the
    network sees after resizing that square. The BPR paper uses 64 -> 128. How to refine with
    the network (flip TTA, passes, the safety rules) is not architecture: a checkpoint keeps it
    apart, in :attr:`RefinerNet.recommended` (as timm keeps ``pretrained_cfg`` apart from the
    model's arguments).
    """

    arch: str = "hr18s"
    input_size: int = 128
    patch_size: int = 64
    upsample_mode: str = "bilinear"  # HRNet fuse-layer upsampling; "nearest" for mmseg 0.x weights
    detail_head: bool = False  # full-resolution correction after the 1/4-resolution FCN head
    gate: bool = (
        False  # a patch-quality gate (bpr/modeling/gate.py) that keeps the coarse patch where it predicts no gain
    )
    # Image pixels the network sees beyond each side of a patch, at the patch's own scale: it
    # predicts the whole view, and only the patch's pixels are pasted back, so every decision
    # is made with the surroundings in sight (a patch edge is no longer the edge of the world).
    context: int = 0
    gate_width: int = 16  # the gate's first layer's channels (it doubles twice); 16 in checkpoints before it was stored
    # A second refiner (its RefinerConfig as a dict) whose probability is averaged into this
    # one's with weight ``companion_weight``: two networks trained apart make different
    # mistakes, so a change only one of them calls for is damped. It may see context (the
    # views are then cut with its context, and this network gets the patch inside each view);
    # this network's gate judges the average. ``foreground_probability`` stays this network's
    # alone: the pass loop (:func:`bpr.passes.predict_batch`) runs the two and averages them.
    companion: dict | None = None
    companion_weight: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> RefinerConfig:
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        return cls(**known)


# Inference settings a checkpoint may recommend besides the RefineOptions fields marked
# ``recommended``: with flip TTA, patches the gate rejects on the plain forward by more than
# this many logits skip their mirrored forward (None = never); measured per gate.
EXTRA_RECOMMENDATIONS = ("gate_early_reject",)


class RefinerNet(nn.Module):
    """Image patch + coarse-mask patch -> 2-class logits at the input resolution."""

    def __init__(self, config: RefinerConfig = RefinerConfig(), recommended: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.config = config
        # how the checkpoint recommends refining with this network: RefineOptions field values
        # and EXTRA_RECOMMENDATIONS; Refiner starts every call's options from them
        self.recommended: dict[str, Any] = dict(recommended or {})
        self.backbone: nn.Module | None
        self.decode_head: nn.Module | None
        if config.arch in ARCHS:
            spec = ARCHS[config.arch]
            self.backbone = HRNetWithMask(spec, upsample_mode=config.upsample_mode)
            self.decode_head = FCNHead(spec.widths, num_classes=2)
            mean, std = IMAGENET_MEAN, IMAGENET_STD
        elif config.arch in ENCODER_ARCHS:
            if config.input_size % efficientnet.STRIDE:
                raise ValueError(
                    f"{config.arch} needs an input size that is a multiple of {efficientnet.STRIDE}, "
                    f"got {config.input_size}"
                )
            variant = efficientnet.VARIANTS[config.arch]
            self.backbone = EfficientNetLiteWithMask(variant)
            self.decode_head = MaskUNetDecoder(num_classes=2, feature_widths=variant.feature_widths)
            mean, std = efficientnet.PIXEL_MEAN, efficientnet.PIXEL_STD
        else:
            raise ValueError(f"unknown arch {config.arch!r}; choose from {list(ALL_ARCHS)}")
        if config.context < 0:
            raise ValueError(f"context must be at least 0 pixels, got {config.context}")
        view = config.patch_size + 2 * config.context
        if config.arch in ENCODER_ARCHS and self.feed_size(view) % efficientnet.STRIDE:
            raise ValueError(
                f"{config.arch} needs a view fed at a multiple of {efficientnet.STRIDE} pixels; "
                f"context {config.context} feeds it at {self.feed_size(view)}"
            )
        self.detail_head = DetailHead(num_classes=2) if config.detail_head else None
        self.gate = PatchGate(config.gate_width) if config.gate else None
        self.companion = self._build_companion(config)
        self.register_buffer("pixel_mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self.channels_last = False  # set by fused_for_inference: inputs are laid out channels-last too
        self.inference_graph: nn.Module | None = None  # set by fused_for_inference

    @staticmethod
    def _build_companion(config: RefinerConfig) -> RefinerNet | None:
        """The second refiner ``config`` names, checked to fit beside this one; None if it names none."""
        if config.companion is None:
            return None
        companion = RefinerConfig.from_dict(config.companion)
        if companion.companion is not None or companion.gate:
            raise ValueError("a companion refiner has no companion and no gate of its own")
        if companion.patch_size != config.patch_size:
            raise ValueError(
                f"the companion refiner's patch size ({companion.patch_size}) differs from {config.patch_size}"
            )
        if config.context:
            raise ValueError("a refiner with a companion sees no context itself (its companion may)")
        if not 0 < config.companion_weight < 1:
            raise ValueError(f"companion_weight must be in (0, 1), got {config.companion_weight}")
        return RefinerNet(companion)

    @property
    def view_context(self) -> int:
        """Pixels cut around each patch for this network and its companion: the larger context."""
        return max(self.config.context, self.companion.config.context if self.companion is not None else 0)

    def fused_for_inference(self) -> RefinerNet:
        """An inference-only copy that runs about 1.5x faster on a CPU: every BatchNorm folded
        into the convolution before it (torch.fx traces ``forward``) and the weights and
        inputs in channels-last memory, which oneDNN's convolutions prefer.

        Its logits agree with this network's to about 1e-6 (float rounding), so a pixel
        decision can differ only where a probability sits within that of a threshold. The
        copy has no BatchNorm left to train: train the original.
        """
        from torch.fx.experimental.optimization import fuse

        graph = fuse(copy.deepcopy(self).eval()).to(memory_format=torch.channels_last)
        net = copy.deepcopy(self).eval()
        net.backbone = net.decode_head = net.detail_head = None  # the graph holds their folded copies
        net.companion = None  # it runs as a runtime of its own (Refiner.companion_net)
        net.inference_graph = graph
        net.channels_last = True
        return net

    def forward(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """image (B, 3, S, S) normalised; mask (B, 1, S, S) in [-1, 1] -> logits (B, 2, S, S)."""
        if self.inference_graph is not None:
            return self.inference_graph(image, mask)
        if self.config.arch in ENCODER_ARCHS:
            logits = self.decode_head(self.backbone(image, mask), image, mask)  # (B, 2, S, S)
        else:
            logits = self.decode_head(self.backbone(image, mask))  # (B, 2, S/4, S/4)
            logits = F.interpolate(logits, size=image.shape[-2:], mode="bilinear", align_corners=False)
        if self.detail_head is not None:
            logits = self.detail_head(logits, image, mask)
        return logits

    def feed_size(self, crop: int, context: int | None = None) -> int:
        """The input size a ``crop``-pixel square is fed at: a patch at ``input_size``; a view
        holding ``context`` (default: the config's) pixels beyond each side of its patch at the
        same scale, so the patch inside it is still fed at ``input_size``."""
        context = self.config.context if context is None else context
        if context == 0:
            return self.config.input_size
        return round(self.config.input_size * crop / (crop - 2 * context))

    def preprocess(
        self, image_patches: torch.Tensor, mask_patches: torch.Tensor, context: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw patches (or views with ``context``, default the config's) -> network inputs at
        :meth:`feed_size`.

        image_patches: (B, 3, P, P) in 0..255 RGB; mask_patches: (B, 1, P, P) in {0, 1}; any
        dtype (a Job's uint8 / bool crops too), computed in float.
        Image resized bilinearly, mask by nearest neighbour, as in the reference.
        """
        image_patches, mask_patches = image_patches.float(), mask_patches.float()  # no copy when float32
        size = self.feed_size(int(image_patches.shape[-1]), context)
        if image_patches.shape[-1] != size:
            image_patches = F.interpolate(image_patches, size=(size, size), mode="bilinear", align_corners=False)
            mask_patches = F.interpolate(mask_patches, size=(size, size), mode="nearest")
        image = (image_patches - self.pixel_mean) / self.pixel_std
        mask = (mask_patches - 0.5) / 0.5
        if self.channels_last:
            image = image.contiguous(memory_format=torch.channels_last)
            mask = mask.contiguous(memory_format=torch.channels_last)
        return image, mask

    def foreground_probability(self, image_patches: torch.Tensor, mask_patches: torch.Tensor) -> torch.Tensor:
        """Raw patches (see ``preprocess``; views with ``config.context``) -> foreground
        probability (B, P, P) at the size they came in (a view's, with context)."""
        patch = image_patches.shape[-1]
        logits = self(*self.preprocess(image_patches, mask_patches))
        prob = torch.softmax(logits.float(), dim=1)[:, 1:2]
        if prob.shape[-1] != patch:
            prob = F.interpolate(prob, size=(patch, patch), mode="bilinear", align_corners=False)
        return prob[:, 0]

    def change_helps(self, image_patches: torch.Tensor, mask_patches: torch.Tensor, prob: torch.Tensor) -> torch.Tensor:
        """(B,) gate logits for raw patches (see ``preprocess``) and their refined probability
        (B, P, P): above 0 the gate expects the change to fix more pixels than it breaks.
        Needs a gate (``config.gate``)."""
        if self.gate is None:
            raise RuntimeError("this refiner has no patch-quality gate")
        size = self.config.input_size
        image, _ = self.preprocess(image_patches, mask_patches, context=0)
        mask = mask_patches.float()
        p = prob[:, None].float()
        if p.shape[-1] != size:
            mask = F.interpolate(mask, size=(size, size), mode="nearest")
            p = F.interpolate(p, size=(size, size), mode="bilinear", align_corners=False)
        return self.gate(image.float(), mask, p)

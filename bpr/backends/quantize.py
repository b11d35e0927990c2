"""int8: the exported graph statically quantized, calibrated on real boundary patches.

Static quantization needs activation ranges, so it needs real inputs: ``calibration.npz``
beside this file holds 192 boundary patches with 16 px of context around each (96 px views of
image + coarse mask) from the training sets' held-out images (cityscapes-train street scenes
with Mask R-CNN-like masks, DAVIS and ECSSD salient objects), built by ``python -m
bpr.backends.quantize --build PATCH_DIRS... --counts N...`` from context sets. A graph whose
input is smaller than the views (a 64 px patch refiner) is calibrated on their centres, a
context refiner on the views themselves: both at the scale they see at inference. Weights are
quantized per channel, activations per tensor (QDQ format, ONNX Runtime's quantizer), and the
quantized graph is cached beside the float one under its key and the calibration's digest, so
new calibration patches never reuse a graph quantized on the old ones. OpenVINO runs it with
int8 kernels.

Measured with the default pair (docs/benchmarks.md, Speed): the whole dev table within 0.05
points of fp32 torch on every number but cs-maskrcnn28 AP_L / boundary AP_L (-0.06 / -0.07),
about 1.2x the speed of bf16 on this CPU. Opt in with ``--precision int8``; it needs
``onnxruntime`` for the quantization step (the onnx extra).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from bpr.errors import ModelNotAvailableError
from bpr.io.atomic import atomic_path

CALIBRATION = Path(__file__).with_name("calibration.npz")
BATCH = 32
INT8_MARK = "-int8-"  # an int8 graph is named <float graph's stem>-int8-<calibration digest>.onnx


def calibration_digest() -> str:
    """A short digest of the shipped calibration patches: part of every int8 graph's name."""
    return hashlib.sha256(CALIBRATION.read_bytes()).hexdigest()[:12]


def calibration_patches(patch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The shipped calibration patches at ``patch_size`` (a graph's input: a patch, or a patch
    with its context): images (N,3,P,P) 0..255, masks (N,1,P,P). Up to the stored views' size
    they are the views' centres, at the image's own scale as at inference; larger ones are the
    views resized."""
    with np.load(CALIBRATION) as data:
        images = torch.from_numpy(data["images"]).permute(0, 3, 1, 2).float()
        masks = torch.from_numpy(np.unpackbits(data["masks"], axis=-1)[..., : data["images"].shape[2]])[:, None].float()
    view = images.shape[-1]
    if patch_size <= view:
        start = (view - patch_size) // 2
        crop = slice(start, start + patch_size)
        return images[..., crop, crop].contiguous(), masks[..., crop, crop].contiguous()
    size = (patch_size, patch_size)
    images = F.interpolate(images, size=size, mode="bilinear", align_corners=False)
    return images, F.interpolate(masks, size=size, mode="nearest")


def quantized_graph(graph: Path, patch_size: int) -> Path:
    """The int8 version of ``graph`` (cached beside it under the calibration's digest; quantized
    now if missing)."""
    path = graph.with_name(f"{graph.stem}{INT8_MARK}{calibration_digest()}.onnx")
    if path.is_file():
        return path
    if importlib.util.find_spec("onnxruntime") is None:
        raise ModelNotAvailableError("int8 quantization needs ONNX Runtime: pip install onnxruntime")
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    images, masks = calibration_patches(patch_size)

    class Patches(CalibrationDataReader):
        def __init__(self) -> None:
            self.start = 0

        def get_next(self) -> dict[str, np.ndarray] | None:
            if self.start >= len(images):
                return None
            a, self.start = self.start, self.start + BATCH
            return {"image_patches": images[a : a + BATCH].numpy(), "mask_patches": masks[a : a + BATCH].numpy()}

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantizer advises on the root logger (pre-processing, BN axes)
    try:
        with atomic_path(path) as tmp:
            quantize_static(
                str(graph),
                str(tmp),
                Patches(),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
            )
    finally:
        root.setLevel(level)
    return path


def build_calibration(patch_dirs: list[str], per_set: list[int], seed: int = 0) -> None:
    """Write calibration.npz from bpr-build-patches sets (held-out patches where a set has them);
    sets built with ``--context`` give views, which calibrate context refiners at their own size."""
    from bpr.train.patch_store import PatchSet

    rng = np.random.default_rng(seed)
    images, masks = [], []
    for folder, count in zip(patch_dirs, per_set, strict=True):
        data = PatchSet.open([folder])
        pool = data.indices("val") if len(data.indices("val")) >= count else data.indices("train")
        picked = pool[np.sort(rng.choice(len(pool), count, replace=False))]
        im, coarse, _ = data.gather(picked)
        images.append(im)
        masks.append(np.packbits(coarse.astype(bool), axis=-1))
    with atomic_path(CALIBRATION) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, images=np.concatenate(images), masks=np.concatenate(masks))


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="Build the int8 calibration patches from patch sets.")
    ap.add_argument("--build", nargs="+", required=True, help="patch directories (bpr-build-patches --out)")
    ap.add_argument("--counts", nargs="+", type=int, required=True, help="patches taken from each directory")
    args = ap.parse_args()
    build_calibration(args.build, args.counts)

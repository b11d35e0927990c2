"""A Mask R-CNN-style mask head on the pretrained EfficientNet-Lite0, to give the refiners REAL
network errors on street scenes (issue 21's last named lever; method notes 1.4: the reference
trains its refiner on its upstream model's predictions).

No instance-segmentation weights can be installed here, so this trains the part of Mask R-CNN
whose errors a refiner sees: given an object's box (the ground-truth box jittered by about 5% per
side, as a detector's box is off), the image inside the box resampled to 96 x 96 (RoIAlign's
role) -> a 28 x 28 mask, upsampled bilinearly into the box and thresholded at 0.5 (Mask R-CNN's
paste). Detection is taken as perfect: what differs from the ground truth is the mask head's own
mistakes (occluders, thin parts, the 28 x 28 grid) and the box's cut.

Two folds by file name (crc32 parity): a head trained on one fold predicts the other, so every
cityscapes-train instance gets a prediction from a network that never saw its image. The fold-0
head also predicts cityscapes-dev: a dev input with a real mask head's errors.

    python lab/maskhead/mask_head.py train --fold 0 --out work/maskhead/fold0.pt
    python lab/maskhead/mask_head.py predict --checkpoint work/maskhead/fold0.pt \
        --set cityscapes-train --fold 1 --out work/maskhead/pred_train_fold1.json

The whole sequence (both folds, every prediction) is lab/maskhead/run.sh; the fold-0 head's
cityscapes-dev predictions are kept in lab/runs/maskhead/cs_dev_maskhead_fold0.json and scored
beside the dev table with ``bpr-dev-table --extra-input cs-maskhead=<that file>``.
"""

from __future__ import annotations

import argparse
import math
import time
import zlib
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bpr.io.coco import decode_segmentation, encode_mask, load_json, mask_to_bbox, write_json_atomic
from bpr.io.images import read_image
from bpr.modeling.efficientnet import (
    FEATURE_WIDTHS,
    PIXEL_MEAN,
    PIXEL_STD,
    EfficientNetLiteWithMask,
    load_imagenet_weights,
)

ROI = 96  # the box's image, resampled (a multiple of the encoder's stride 32)
GRID = 28  # Mask R-CNN's mask resolution
BOX_JITTER = 0.05  # std of each box side's shift, as a fraction of the box's size
DATA = Path(__file__).resolve().parents[3] / "shared" / "data"


def fold_of(file_name: str) -> int:
    return zlib.crc32(file_name.encode()) % 2


class MaskHead(nn.Module):
    """Encoder features at strides 4-32 merged top-down (FPN-like) at stride 4, then two convs
    and a 1x1 to one logit per pixel, resampled to the 28 x 28 grid."""

    def __init__(self, width: int = 96) -> None:
        super().__init__()
        self.encoder = EfficientNetLiteWithMask()
        self.lateral = nn.ModuleList(nn.Conv2d(c, width, 1) for c in FEATURE_WIDTHS[1:])
        self.head = nn.Sequential(
            nn.Conv2d(width, width, 3, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, 1, 1),
        )

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        mean = image.new_tensor(PIXEL_MEAN).view(1, 3, 1, 1)
        std = image.new_tensor(PIXEL_STD).view(1, 3, 1, 1)
        x = (image - mean) / std
        features = self.encoder(x, torch.zeros_like(x[:, :1]))[1:]  # strides 4, 8, 16, 32
        merged = self.lateral[-1](features[-1])
        for lateral, feature in zip(self.lateral[-2::-1], features[-2::-1]):
            merged = F.interpolate(merged, size=feature.shape[-2:], mode="bilinear", align_corners=False)
            merged = merged + lateral(feature)
        logits = self.head(merged)
        return F.interpolate(logits, size=(GRID, GRID), mode="bilinear", align_corners=False)


def jittered_box(bbox: list[float], h: int, w: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """A detector's box: each side of the ground-truth box moved by about 5% of its size."""
    x, y, bw, bh = bbox
    x0 = x + rng.normal(0, BOX_JITTER) * bw
    x1 = x + bw + rng.normal(0, BOX_JITTER) * bw
    y0 = y + rng.normal(0, BOX_JITTER) * bh
    y1 = y + bh + rng.normal(0, BOX_JITTER) * bh
    x0i, y0i = int(np.clip(math.floor(x0), 0, w - 2)), int(np.clip(math.floor(y0), 0, h - 2))
    x1i, y1i = int(np.clip(math.ceil(x1), x0i + 2, w)), int(np.clip(math.ceil(y1), y0i + 2, h))
    return y0i, y1i, x0i, x1i


def roi(image: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    y0, y1, x0, x1 = box
    return cv2.resize(image[y0:y1, x0:x1], (ROI, ROI), interpolation=cv2.INTER_LINEAR)


def read_set(set_name: str) -> tuple[list[dict], dict[int, list[dict]]]:
    """A data set's image records and its ground-truth annotations by image id."""
    gt = load_json(DATA / set_name / "gt.json")
    by_image: dict[int, list[dict]] = {}
    for ann in gt["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    return gt["images"], by_image


def gather(set_name: str, folds: set[int], draws: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Every instance of the images in ``folds``, ``draws`` jittered boxes each: (rois, 28x28 targets)."""
    records, by_image = read_set(set_name)
    rois, targets = [], []
    for record in records:
        if fold_of(record["file_name"]) not in folds:
            continue
        image = read_image(DATA / set_name / "images" / record["file_name"])
        h, w = image.shape[:2]
        rng = np.random.default_rng([seed, record["id"]])
        for ann in by_image.get(record["id"], []):
            mask = decode_segmentation(ann["segmentation"], h, w).astype(np.float32)
            for _ in range(draws):
                box = jittered_box(ann["bbox"], h, w, rng)
                y0, y1, x0, x1 = box
                rois.append(roi(image, box))
                targets.append(cv2.resize(mask[y0:y1, x0:x1], (GRID, GRID), interpolation=cv2.INTER_AREA))
    return np.stack(rois), np.stack(targets)


def train(args: argparse.Namespace) -> None:
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    start = time.time()
    rois, targets = gather("cityscapes-train", {args.fold}, args.draws, args.seed)
    print(f"fold {args.fold}: {len(rois)} boxes gathered in {time.time() - start:.0f} s", flush=True)
    model = MaskHead()
    load_imagenet_weights(model.encoder)
    encoder_params = list(model.encoder.parameters())
    head_params = [p for n, p in model.named_parameters() if not n.startswith("encoder.")]
    optimizer = torch.optim.AdamW(
        [{"params": encoder_params, "lr": args.lr * 0.5}, {"params": head_params, "lr": args.lr}], weight_decay=1e-4
    )
    base_lrs = [g["lr"] for g in optimizer.param_groups]
    rng = np.random.default_rng(args.seed)
    log = []
    model.train()
    for step in range(args.steps):
        scale = min(1.0, (step + 1) / 50) * 0.5 * (1 + math.cos(math.pi * step / args.steps))
        for group, lr in zip(optimizer.param_groups, base_lrs):
            group["lr"] = lr * scale
        index = rng.integers(0, len(rois), args.batch)
        flip = rng.random(args.batch) < 0.5
        picked_rois, picked_targets = rois[index], targets[index]  # one gather each (fancy indexing copies)
        batch_rois = np.where(flip[:, None, None, None], picked_rois[:, :, ::-1], picked_rois)
        batch_targets = np.where(flip[:, None, None], picked_targets[:, :, ::-1], picked_targets)
        image = torch.from_numpy(np.ascontiguousarray(batch_rois)).permute(0, 3, 1, 2).float()
        target = torch.from_numpy(np.ascontiguousarray(batch_targets))[:, None]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.amp):
            logits = model(image)
        loss = F.binary_cross_entropy_with_logits(logits.float(), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        log.append(float(loss.detach()))
        if (step + 1) % 50 == 0:
            rate = (step + 1) * args.batch / (time.time() - start)
            print(f"step {step + 1} loss {np.mean(log[-50:]):.4f} ({rate:.0f} samples/s)", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": model.state_dict(), "args": vars(args), "loss": log}, args.out + ".tmp")
    Path(args.out + ".tmp").replace(args.out)
    print(f"saved {args.out} after {time.time() - start:.0f} s", flush=True)


@torch.inference_mode()
def predict(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    model = MaskHead()
    model.load_state_dict(torch.load(args.checkpoint, map_location="cpu", weights_only=True)["state_dict"])
    model.eval()
    records, by_image = read_set(args.set)
    results = []
    ious = []
    for record in records:
        if args.fold is not None and fold_of(record["file_name"]) != args.fold:
            continue
        anns = by_image.get(record["id"], [])
        if not anns:
            continue
        image = read_image(DATA / args.set / "images" / record["file_name"])
        h, w = image.shape[:2]
        rng = np.random.default_rng([args.seed, record["id"]])
        boxes = [jittered_box(ann["bbox"], h, w, rng) for ann in anns]
        batch = torch.from_numpy(np.stack([roi(image, b) for b in boxes])).permute(0, 3, 1, 2).float()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.amp):
            probs = torch.sigmoid(model(batch).float())[:, 0].numpy()
        for ann, box, prob in zip(anns, boxes, probs):
            y0, y1, x0, x1 = box
            pasted = cv2.resize(prob, (x1 - x0, y1 - y0), interpolation=cv2.INTER_LINEAR)
            mask = np.zeros((h, w), bool)
            mask[y0:y1, x0:x1] = pasted > 0.5
            if not mask.any():
                continue
            truth = decode_segmentation(ann["segmentation"], h, w)
            ious.append(float((mask & truth).sum() / (mask | truth).sum()))
            results.append(
                {
                    "image_id": record["id"],
                    "category_id": ann["category_id"],
                    "segmentation": encode_mask(mask),
                    "bbox": mask_to_bbox(mask),
                    "score": round(float(pasted[pasted > 0.5].mean()), 4),
                }
            )
    write_json_atomic(args.out, results)
    print(f"{args.out}: {len(results)} masks, mean IoU {np.mean(ious):.4f}, median {np.median(ious):.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train")
    t.add_argument("--fold", type=int, required=True)
    t.add_argument("--out", required=True)
    t.add_argument("--steps", type=int, default=600)
    t.add_argument("--batch", type=int, default=64)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--draws", type=int, default=2)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--threads", type=int, default=2)
    t.add_argument("--amp", action=argparse.BooleanOptionalAction, default=True)
    p = sub.add_parser("predict")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--set", default="cityscapes-train")
    p.add_argument("--fold", type=int, default=None, help="only this fold's images (default: all)")
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=1000)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args()
    train(args) if args.command == "train" else predict(args)


if __name__ == "__main__":
    main()

"""Build a training set: coarse instances matched to ground truth -> boundary patch triples.

The patches are placed and cut by the same code the Refiner runs at inference
(``bpr.patches.extract_patch_corners`` and ``bpr.patches.crop_squares``), so the network
trains on exactly the kind of patch it will see. Coarse masks are real predictions (matched to GT at IoU > 0.5, as in
the reference) and/or synthetic draws from ``bpr.train.synth``.
"""

from __future__ import annotations

import multiprocessing as mp
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from bpr.errors import BprInputError
from bpr.io.coco import decode_segmentation, load_json
from bpr.io.images import read_image
from bpr.patches import crop_squares, extract_patch_corners, pad_to_patch, view_corners
from bpr.signals import worker_defaults
from bpr.train.patch_store import META_DTYPE, SPLITS, ShardWriter
from bpr.train.synth import DEFAULT_MIX, synthesize


@dataclass
class BuildConfig:
    patch_size: int = 64
    context: int = 0  # store each patch's view: this many more image pixels on each side (RefinerConfig.context)
    nms_iou: float = 0.25
    draws: int = 4  # synthetic coarse masks per GT instance (0 = real predictions only)
    mix: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_MIX))
    min_iou: float = 0.5  # coarse masks must overlap their GT this much to be used
    val_fraction: float = 0.05
    held_out_only: bool = False  # build the held-out images only (more draws for a gate, none for training)
    seed: int = 0
    workers: int = 2
    max_images: int | None = None


def crop_training_patches(
    image: np.ndarray, coarse: np.ndarray, gt: np.ndarray, corners: np.ndarray, size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image HxWx3 uint8, coarse HxW, gt HxW) -> (P, S, S, 3) uint8 image, (P, S, S) uint8
    coarse and target patches at ``corners``, cut by the inference crop (``crop_squares``)."""
    image_t = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
    masks_t = torch.from_numpy(np.stack([coarse, gt]).astype(np.uint8))
    layers = np.zeros(len(corners), dtype=np.int64)
    return (
        crop_squares(image_t, corners, size).permute(0, 2, 3, 1).numpy(),
        crop_squares(masks_t, corners, size, layers).numpy(),
        crop_squares(masks_t, corners, size, layers + 1).numpy(),
    )


def is_held_out(file_name: str, val_fraction: float) -> bool:
    """Whether an image is on the held-out (validation) side: decided by its file name alone."""
    return (zlib.crc32(file_name.encode()) % 10000) < val_fraction * 10000


def _mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


def _image_task(task: dict[str, Any]) -> dict[str, Any]:
    """All patches of one image (runs in a worker process)."""
    cfg: BuildConfig = task["config"]
    torch.set_num_threads(1)  # one image per worker process; the crops are small
    image = read_image(task["path"])
    h, w = image.shape[:2]
    rng = np.random.default_rng([cfg.seed, task["image_index"]])
    recipes: list[str] = task["recipes"]
    out: dict[str, list[np.ndarray]] = {"images": [], "coarse": [], "target": [], "meta": []}
    skipped = 0
    s = cfg.patch_size
    gts = [
        decode_segmentation(ann["segmentation"], h, w, what=f"gt annotation {ann.get('id', inst)}")
        for inst, ann in enumerate(task["gt"])
    ]
    scene = np.logical_or.reduce(gts) if len(gts) > 1 else None  # for the recipes that see neighbours
    for inst, gt in enumerate(gts):
        if gt.sum() < 16:
            continue
        coarse_list: list[tuple[np.ndarray, str]] = []
        for pred in task["coarse_by_gt"].get(inst, []):
            coarse_list.append((decode_segmentation(pred, h, w, what="coarse prediction"), "real"))
        for _ in range(cfg.draws):
            for _attempt in range(3):
                coarse, name = synthesize(image, gt, rng, cfg.mix, others=scene)
                if _mask_iou(coarse, gt) > cfg.min_iou:
                    coarse_list.append((coarse, name.split("+")[0]))
                    break
            else:
                skipped += 1
        for draw, (coarse, name) in enumerate(coarse_list):
            corners = extract_patch_corners(
                pad_to_patch(torch.from_numpy(coarse), s).numpy(), s, cfg.nms_iou, cover_all=False
            )
            if len(corners) == 0:
                continue
            meta = np.zeros(len(corners), META_DTYPE)
            meta["image"] = task["image_index"]
            meta["instance"] = inst
            meta["draw"] = draw
            meta["recipe"] = recipes.index(name)
            meta["split"] = task["split"]
            meta["y0"], meta["x0"] = corners[:, 0], corners[:, 1]
            crops = view_corners(corners, s, cfg.context, max(h, s), max(w, s)) if cfg.context else corners
            image_p, coarse_p, target_p = crop_training_patches(image, coarse, gt, crops, s + 2 * cfg.context)
            out["images"].append(image_p)
            out["coarse"].append(coarse_p)
            out["target"].append(target_p)
            out["meta"].append(meta)
    result = {k: (np.concatenate(v) if v else None) for k, v in out.items()}
    result["skipped"] = skipped
    return result


def _match_coarse(gt_anns: list[dict], preds: list[dict], h: int, w: int, min_iou: float) -> dict[int, list[Any]]:
    """Assign each prediction to the GT instance it overlaps most, if IoU > min_iou."""
    if not preds or not gt_anns:
        return {}
    gts = [decode_segmentation(a["segmentation"], h, w, what="gt") for a in gt_anns]
    matched: dict[int, list[Any]] = {}
    for p in preds:
        m = decode_segmentation(p["segmentation"], h, w, what="coarse prediction")
        ious = [_mask_iou(m, g) for g in gts]
        best = int(np.argmax(ious))
        if ious[best] > min_iou:
            matched.setdefault(best, []).append(p["segmentation"])
    return matched


def build_patches(
    gt_path: str | Path,
    images_dir: str | Path,
    out: str | Path,
    config: BuildConfig,
    coarse_path: str | Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Build a patch directory; returns its manifest."""
    gt = load_json(gt_path)
    if (
        not isinstance(gt, dict)
        or not isinstance(gt.get("images"), list)
        or not isinstance(gt.get("annotations"), list)
    ):
        raise BprInputError(f"{gt_path}: expected a COCO json with 'images' and 'annotations'")
    if config.draws == 0 and coarse_path is None:
        raise BprInputError("nothing to build: --draws 0 and no --coarse predictions")
    images_dir = Path(images_dir)
    anns_by_image: dict[Any, list[dict]] = {}
    for a in gt["annotations"]:
        if not a.get("iscrowd", 0):
            anns_by_image.setdefault(a["image_id"], []).append(a)
    preds_by_image: dict[Any, list[dict]] = {}
    if coarse_path is not None:
        preds = load_json(coarse_path)
        if not isinstance(preds, list):
            raise BprInputError(f"{coarse_path}: a COCO results file must be a JSON list")
        for p in preds:
            preds_by_image.setdefault(p.get("image_id"), []).append(p)
    recipes = ["real"] + sorted(config.mix)
    images = [img for img in gt["images"] if img["id"] in anns_by_image]
    if config.max_images:
        images = images[: config.max_images]
    # Split by image name, so every draw of an image lands on the same side, in every set
    # built from the same images whatever the seed, mix or draws.
    held_out = [is_held_out(img["file_name"], config.val_fraction) for img in images]
    if config.held_out_only and not any(held_out):
        raise BprInputError(
            f"--held-out-only: none of the {len(images)} images is held out at --val-fraction {config.val_fraction}"
        )
    to_build = [i for i in range(len(images)) if held_out[i] or not config.held_out_only]

    def tasks() -> Iterator[dict[str, Any]]:
        for index in to_build:  # image numbers as in the full set, so sets of the same images agree
            img, val = images[index], held_out[index]
            path = images_dir / img["file_name"]
            if not path.is_file():
                raise BprInputError(f"image not found: {path}")
            anns = anns_by_image[img["id"]]
            yield {
                "config": config,
                "path": str(path),
                "image_index": index,
                "gt": anns,
                "coarse_by_gt": _match_coarse(
                    anns, preds_by_image.get(img["id"], []), img["height"], img["width"], config.min_iou
                ),
                "split": SPLITS["val" if val else "train"],
                "recipes": recipes,
            }

    if config.context < 0:
        raise BprInputError(f"--context must be at least 0, got {config.context}")
    writer = ShardWriter(Path(out), config.patch_size, context=config.context)
    skipped = 0
    cv2.setNumThreads(1)
    from tqdm import tqdm

    bar = tqdm(total=len(to_build), unit="img", disable=not progress)
    ctx = mp.get_context("fork")
    with ctx.Pool(config.workers, initializer=worker_defaults) if config.workers > 1 else _InlinePool() as pool:
        for result in pool.imap(_image_task, tasks(), chunksize=4):
            skipped += result["skipped"]
            if result["meta"] is not None:
                writer.add(result["images"], result["coarse"], result["target"], result["meta"])
            bar.update(1)
    bar.close()
    return writer.close(
        {
            "sources": [
                {"gt": str(gt_path), "images": str(images_dir), "coarse": str(coarse_path) if coarse_path else None}
            ],
            "image_files": [img["file_name"] for img in images],
            "recipes": recipes,
            "mix": config.mix,
            "draws": config.draws,
            "nms_iou": config.nms_iou,
            "min_iou": config.min_iou,
            "val_fraction": config.val_fraction,
            "held_out_only": config.held_out_only,
            "seed": config.seed,
            "skipped_draws": skipped,
        }
    )


class _InlinePool:
    """Pool stand-in for workers=1 (debuggable, no fork)."""

    def __enter__(self) -> _InlinePool:
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    def imap(self, fn: Any, items: Any, chunksize: int = 1) -> Iterator[Any]:
        return map(fn, items)

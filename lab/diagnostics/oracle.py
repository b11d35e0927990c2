"""Diagnostics on cs-maskrcnn28: what our patches could give (GT pasted), and what the refiner gives per patch.

python lab/diagnostics/oracle.py --checkpoint bpr/models/bpr_default.pt --out work/oracle [--max-images 10]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from dev_images import street_scenes_maskrcnn28

from bpr.evaluate.dev_table import score
from bpr.io.coco import decode_segmentation, write_json_atomic
from bpr.io.datasets import shared_data_root
from bpr.io.images import read_image
from bpr.io.results import entries_to_masks, refined_entry
from bpr.patches import crop_rows, crop_squares, pad_to_patch
from bpr.refiner import Refiner
from bpr.train.gate import refined_probability

DATA = shared_data_root() / "cityscapes-dev"
BATCH = 64


def _iou(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """(P,) IoU of two stacks of boolean patches (0 where both are empty)."""
    inter = (a & b).flatten(1).sum(1).double()
    union = (a | b).flatten(1).sum(1).double()
    return (inter / union.clamp(min=1)).numpy()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--checkpoint", default="bpr/models/bpr_default.pt")
    p.add_argument("--out", type=Path, default=Path("work/oracle"))
    p.add_argument("--min-area", type=int, default=1024)
    p.add_argument("--margin", type=float, default=0.0)
    p.add_argument("--max-images", type=int, default=0)
    a = p.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(2)
    refiner = Refiner.from_checkpoint(
        a.checkpoint, quality_gate=False, change_margin=a.margin, min_area=a.min_area, backend="torch"
    )  # as its recorded numbers were made
    opts = refiner.options
    gt, gts, entries, groups = street_scenes_maskrcnn28()
    info = {i["id"]: i for i in gt["images"]}
    if a.max_images:
        groups = dict(list(groups.items())[:: max(1, len(groups) // a.max_images)][: a.max_images])
    s = refiner.patch_size
    oracle_out: list = [None] * len(entries)
    refined_out: list = [None] * len(entries)
    stats = []  # per patch: instance area, coarse IoU, refined IoU (pixels in patch vs GT crop), changed px
    for image_id, idx in groups.items():
        img = info[image_id]
        h, w = img["height"], img["width"]
        image = read_image(DATA / "images" / img["file_name"])
        coarse = entries_to_masks([entries[k] for k in idx], h, w)
        g = np.stack([decode_segmentation(x["segmentation"], h, w) for x in gts[image_id]])
        inter = (coarse[:, None] & g[None]).reshape(len(coarse), len(g), -1).sum(-1)
        union = (coarse[:, None] | g[None]).reshape(len(coarse), len(g), -1).sum(-1)
        match = g[(inter / np.maximum(union, 1)).argmax(1)]
        areas = coarse.reshape(len(coarse), -1).sum(1)
        active = areas >= a.min_area
        image_t = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
        job = refiner.prepare(image_t, torch.from_numpy(coarse), opts, active)
        gt_p = crop_squares(pad_to_patch(torch.from_numpy(match), s), job.corners, s, job.instance_ids).float()
        with torch.inference_mode():
            probs = []
            for b in range(0, len(job.corners), BATCH):
                im, mk = job.image_patches[b : b + BATCH], job.mask_patches[b : b + BATCH]
                probs.append(refined_probability(refiner, im, mk, flip_tta=True))
            probs = torch.cat(probs) if probs else torch.zeros((0, s, s))
        mask_patches = job.mask_patches
        if job.view_offsets is not None:  # a refiner (or its companion) that sees context: the patch in each view
            probs = crop_rows(probs, job.view_offsets, s)
            mask_patches = crop_rows(mask_patches, job.view_offsets, s)
        cm = mask_patches[:, 0] > 0.5
        gm = gt_p > 0.5
        rm = probs > 0.5
        stats.append(
            np.stack(
                [
                    areas[job.instance_ids],
                    _iou(cm, gm),
                    _iou(rm, gm),
                    (cm ^ gm).flatten(1).sum(1).numpy(),
                    (rm ^ gm).flatten(1).sum(1).numpy(),
                ],
                axis=1,
            )
        )
        job.probs = gt_p
        job.remaining = 0
        oracle = refiner.finish(job).numpy()
        job.probs = probs
        refined = refiner.finish(job).numpy()
        for j, k in enumerate(idx):
            oracle_out[k] = refined_entry(entries[k], oracle[j] if active[j] else coarse[j])
            refined_out[k] = refined_entry(entries[k], refined[j] if active[j] else coarse[j])
    keep = [k for idx in groups.values() for k in idx]
    coarse_path = a.out / "coarse.json"
    write_json_atomic(coarse_path, [entries[k] for k in keep])
    write_json_atomic(a.out / "oracle.json", [oracle_out[k] for k in keep])
    write_json_atomic(a.out / "refined.json", [refined_out[k] for k in keep])
    gt_path = DATA / "gt.json"
    if a.max_images:
        ids = set(groups)
        small = {
            **gt,
            "images": [i for i in gt["images"] if i["id"] in ids],
            "annotations": [x for x in gt["annotations"] if x["image_id"] in ids],
        }
        gt_path = a.out / "gt.json"
        write_json_atomic(gt_path, small)
    st = np.concatenate(stats) if stats else np.zeros((0, 5))
    res = {}
    for name in ("oracle", "refined"):
        r = score(gt_path, coarse_path, a.out / f"{name}.json")
        res[name] = {k: r[k] for k in ("AP", "bAP", "AP_S", "AP_M", "AP_L", "bAP_L", "worse")}
        print(name, json.dumps(res[name]))
    for lo, hi in ((0, 1024), (1024, 9216), (9216, 1e9)):
        sel = (st[:, 0] >= lo) & (st[:, 0] < hi)
        if sel.any():
            print(
                f"area [{lo},{hi}): patches {sel.sum()}, "
                f"patch IoU coarse {st[sel, 1].mean():.4f} refined {st[sel, 2].mean():.4f}, "
                f"wrong px coarse {st[sel, 3].sum():.0f} refined {st[sel, 4].sum():.0f}, "
                f"improved {np.mean(st[sel, 2] > st[sel, 1] + 1e-9):.3f} worse "
                f"{np.mean(st[sel, 2] < st[sel, 1] - 1e-9):.3f}"
            )
    np.save(a.out / "patch_stats.npy", st)


if __name__ == "__main__":
    main()

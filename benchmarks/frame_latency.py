#!/usr/bin/env python
"""Wall time per real frame with each checkpoint's own recommended settings (flip TTA,
passes): what a user of ``bpr-refine --checkpoint X`` waits, per 854x480 DAVIS frame with its
real OSVOS mask. benchmark.py times the stages of one pass; this times the whole thing.

    python benchmarks/frame_latency.py bpr/models/bpr_default.pt models/bpr_hq128.pt [--frames 30] [--threads 2]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from bpr.io.coco import decode_segmentation, load_json
from bpr.io.datasets import shared_data_root
from bpr.io.images import read_image
from bpr.refiner import Refiner

DATA = shared_data_root() / "davis-dev-real"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoints", type=Path, nargs="+")
    p.add_argument("--frames", type=int, default=30)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--data", type=Path, default=DATA)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    images = {im["id"]: im for im in load_json(args.data / "gt.json")["images"]}
    items = []
    for entry in load_json(args.data / "osvos.json")[: args.frames]:
        info = images[entry["image_id"]]
        mask = decode_segmentation(entry["segmentation"], info["height"], info["width"])
        items.append((read_image(args.data / "images" / info["file_name"]), mask[None]))
    for checkpoint in args.checkpoints:
        refiner = Refiner.from_checkpoint(checkpoint)
        list(refiner.refine_many(items[:2]))  # warm-up
        start = time.perf_counter()
        list(refiner.refine_many(items))
        ms = 1000 * (time.perf_counter() - start) / len(items)
        print(
            f"{checkpoint}: {ms:.0f} ms per frame ({len(items)} OSVOS frames, {args.threads} threads, "
            f"flip TTA {refiner.options.flip_tta}, {refiner.options.iterations} passes)"
        )


if __name__ == "__main__":
    main()

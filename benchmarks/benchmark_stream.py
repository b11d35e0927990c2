#!/usr/bin/env python
"""Images per second of a whole-dataset stream, with refine_many's stages overlapped (a worker
thread extracts ahead of the network and reassembles behind it) and on one thread, interleaved
round by round so that the machine's drift cancels; checks that both give the same masks.

Images are decoded before timing: this measures the refinement stream, not JPEG decoding
(bpr-refine decodes on a thread of its own as well).

    python benchmarks/benchmark_stream.py [--set cityscapes-dev] [--images 40] [--rounds 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from bpr.io.coco import decode_segmentation, load_json
from bpr.io.datasets import shared_data_root
from bpr.io.images import read_image
from bpr.refiner import Refiner

SETS = {"cityscapes-dev": "maskrcnn28.json", "davis-dev-real": "osvos.json"}


def load_items(name: str, count: int) -> list[tuple[np.ndarray, np.ndarray]]:
    root = shared_data_root() / name
    images = {im["id"]: im for im in load_json(root / "gt.json")["images"]}
    by_image: dict[int, list[dict]] = {}
    for entry in load_json(root / SETS[name]):
        by_image.setdefault(entry["image_id"], []).append(entry)
    items = []
    for image_id in list(by_image)[:count]:
        info = images[image_id]
        masks = np.stack(
            [decode_segmentation(e["segmentation"], info["height"], info["width"]) for e in by_image[image_id]]
        )
        items.append((read_image(root / "images" / info["file_name"]), masks))
    return items


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default=None, help="default: the bundled model")
    p.add_argument("--set", choices=sorted(SETS), default="cityscapes-dev")
    p.add_argument("--images", type=int, default=40)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--backend", default=None)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    items = load_items(args.set, args.images)
    refiner = Refiner.from_checkpoint(args.checkpoint, backend=args.backend, device=args.device)
    seconds: dict[bool, list[float]] = {False: [], True: []}
    reference = list(refiner.refine_many(items, overlap=False))
    same = True
    for round_ in range(args.rounds):
        for overlap in (False, True) if round_ % 2 == 0 else (True, False):  # alternate who goes first
            start = time.perf_counter()
            out = list(refiner.refine_many(items, overlap=overlap))
            seconds[overlap].append(time.perf_counter() - start)
            same &= len(out) == len(reference) and all(np.array_equal(a, b) for a, b in zip(out, reference))
    print(
        f"{args.set}, {len(items)} images, backend {refiner.backend}/{refiner.precision}, {args.threads} threads, "
        f"{args.device}, median of {args.rounds} interleaved rounds; same masks every run: {'yes' if same else 'NO'}\n"
    )
    print("| stages | s | images/s |\n| --- | ---: | ---: |")
    for overlap, label in ((False, "one thread"), (True, "overlapped")):
        s = statistics.median(seconds[overlap])
        print(f"| {label} | {s:.2f} | {len(items) / s:.2f} |")


if __name__ == "__main__":
    main()

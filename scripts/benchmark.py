#!/usr/bin/env python
"""Per-stage speed of the refinement pipeline (extraction, network, reassembly).

Two workloads, as the core issue asks:
  (a) a real DAVIS frame (854x480) with its real OSVOS mask, from ../shared/data/davis-dev-real;
  (b) a 1024x2048 image with 20 instances giving 100-200 patches: a DAVIS frame upscaled to
      Cityscapes size, with 20 ellipses with wavy outlines of Cityscapes-like object sizes.
Each is timed at network input 64 and 128, median over --repeats runs after a warm-up.
Speed does not depend on the weights, so a random-weight refiner is used unless --checkpoint.

    python scripts/benchmark.py [--device cpu|cuda] [--repeats 5] [--markdown]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from bpr.io.coco import decode_segmentation
from bpr.io.images import read_image
from bpr.modeling import RefinerConfig, RefinerNet
from bpr.modeling.checkpoint import load_refiner
from bpr.refiner import Refiner

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "davis-dev-real"


def davis_frame() -> tuple[np.ndarray, np.ndarray]:
    gt = json.loads((DATA / "gt.json").read_text())
    res = json.loads((DATA / "osvos.json").read_text())
    entry = res[0]
    info = {i["id"]: i for i in gt["images"]}[entry["image_id"]]
    image = read_image(DATA / "images" / info["file_name"])
    return image, decode_segmentation(entry["segmentation"], info["height"], info["width"])[None]


def cityscapes_like(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    image, _ = davis_frame()
    image = cv2.resize(image, (2048, 1024), interpolation=cv2.INTER_LINEAR)
    rng = np.random.default_rng(seed)
    masks = np.zeros((20, 1024, 2048), bool)
    yy, xx = np.mgrid[:1024, :2048].astype(np.float32)
    for i in range(20):
        cy, cx = rng.uniform(150, 874), rng.uniform(150, 1898)
        ry, rx = rng.uniform(25, 70), rng.uniform(20, 60)
        angle = np.arctan2(yy - cy, xx - cx)
        wobble = 1 + 0.12 * np.sin(rng.integers(3, 7) * angle + rng.uniform(0, 6.28))
        masks[i] = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= wobble**2
    return image, masks


def time_workload(refiner: Refiner, image: np.ndarray, masks: np.ndarray, repeats: int) -> dict[str, float]:
    refiner.refine(image, masks)  # warm-up (allocator, oneDNN kernel selection, CUDA context)
    rows = []
    for _ in range(repeats):
        before = dict(refiner.stats.seconds)
        patches = refiner.stats.patches
        t0 = time.perf_counter()
        refiner.refine(image, masks)
        total = time.perf_counter() - t0
        stage = {k: refiner.stats.seconds[k] - before[k] for k in before}
        rows.append({**stage, "total": total, "patches": refiner.stats.patches - patches})
    return {k: statistics.median(r[k] for r in rows) for k in rows[0]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--checkpoint", type=Path)
    p.add_argument("--json", type=Path, help="also write the rows as json")
    p.add_argument("--no-fuse", dest="fuse", action="store_false",
                   help="run the network as trained (BatchNorm not folded, no channels-last): the before of the fusion")
    p.add_argument("--input-sizes", type=int, nargs="+", default=[64, 128])
    args = p.parse_args()
    workloads = {"(a) DAVIS 854x480, 1 OSVOS mask": davis_frame(), "(b) 1024x2048, 20 instances": cityscapes_like()}
    rows = []
    for size in args.input_sizes:
        if args.checkpoint:
            net = load_refiner(args.checkpoint, overrides={"input_size": size})
        else:
            torch.manual_seed(0)
            net = RefinerNet(RefinerConfig(input_size=size))
        refiner = Refiner(net, device=args.device, batch_size=args.batch_size, fuse=args.fuse)  # fused: as a loaded checkpoint runs
        for name, (image, masks) in workloads.items():
            r = time_workload(refiner, image, masks, args.repeats)
            rows.append({"workload": name, "input": size, **r})
    dev = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else f"CPU, {torch.get_num_threads()} threads"
    fused = "BatchNorm folded, channels-last" if args.fuse else "unfused"
    print(f"device: {dev}; batch {args.batch_size}; {fused}; median of {args.repeats} runs; times in ms per image\n")
    print("| workload | input | patches | extraction | network | reassembly | extr.+reas. / network | total |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        ratio = (r["extract"] + r["reassemble"]) / max(r["network"], 1e-9)
        print(f"| {r['workload']} | {r['input']} | {r['patches']:.0f} | {r['extract'] * 1e3:.1f} | {r['network'] * 1e3:.1f} | "
              f"{r['reassemble'] * 1e3:.1f} | {ratio:.1%} | {r['total'] * 1e3:.0f} |")
    if args.json:
        args.json.write_text(json.dumps({"device": dev, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""Per-stage speed of the refinement pipeline (extraction, network, reassembly).

Two workloads, as the core issue asks:
  (a) a real DAVIS frame (854x480) with its real OSVOS mask, from ../shared/data/davis-dev-real;
  (b) a 1024x2048 image with 20 instances giving 100-200 patches: a DAVIS frame upscaled to
      Cityscapes size, with 20 ellipses with wavy outlines of Cityscapes-like object sizes.
Each is timed at network input 64 and 128, median over --repeats runs after a warm-up.
Speed does not depend on the weights, so a random-weight refiner is used unless --checkpoint
(then at the settings the checkpoint recommends: flip TTA, gate). Several --backends /
--precisions are timed interleaved, round by round, so the machine's drift cancels.

    python benchmarks/benchmark.py [--device cpu|cuda] [--repeats 5] [--checkpoint bpr/models/bpr_default.pt]
        [--backends torch openvino onnxruntime] [--precisions auto bf16] [--input-sizes 64]
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

from bpr.backends import BACKENDS
from bpr.io.coco import decode_segmentation
from bpr.io.datasets import shared_data_root
from bpr.io.images import read_image
from bpr.modeling import RefinerConfig, RefinerNet
from bpr.refiner import PRECISIONS, Refiner

DATA = shared_data_root() / "davis-dev-real"


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


def time_once(refiner: Refiner, image: np.ndarray, masks: np.ndarray) -> dict[str, float]:
    before = dict(refiner.stats.seconds)
    patches = refiner.stats.patches
    t0 = time.perf_counter()
    refiner.refine(image, masks)
    total = time.perf_counter() - t0
    stage = {k: refiner.stats.seconds[k] - before.get(k, 0.0) for k in refiner.stats.seconds}
    return {**stage, "total": total, "patches": refiner.stats.patches - patches}


def time_interleaved(
    refiners: dict[str, Refiner], image: np.ndarray, masks: np.ndarray, repeats: int
) -> dict[str, dict]:
    """Median per refiner over ``repeats`` rounds, each round running every refiner once in
    turn, so that the machine's drift falls on all of them alike."""
    for refiner in refiners.values():
        refiner.refine(image, masks)  # warm-up (allocator, kernel selection, CUDA context)
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in refiners}
    for _ in range(repeats):
        for name, refiner in refiners.items():
            runs[name].append(time_once(refiner, image, masks))
    return {name: {k: statistics.median(r[k] for r in rows) for k in rows[0]} for name, rows in runs.items()}


def build_refiners(args: argparse.Namespace, size: int) -> dict[str, Refiner]:
    refiners = {}
    for backend in args.backends:
        for precision in args.precisions:
            if precision == "int8" and backend == "torch":
                continue  # int8 runs only as an exported graph
            if args.checkpoint:
                refiner = Refiner(
                    args.checkpoint,
                    input_size=size,
                    device=args.device,
                    batch_size=args.batch_size,
                    fuse=args.fuse,
                    backend=backend,
                    precision=precision,
                )
            else:
                torch.manual_seed(0)
                net = RefinerNet(RefinerConfig(input_size=size))
                refiner = Refiner(
                    net,
                    device=args.device,
                    batch_size=args.batch_size,
                    fuse=args.fuse,
                    backend=backend,
                    precision=precision,
                )
            refiners[f"{refiner.backend} {refiner.precision}"] = refiner
    return refiners


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument(
        "--checkpoint",
        type=Path,
        help="a checkpoint, run at the settings it recommends (default: random hr18s weights)",
    )
    p.add_argument("--json", type=Path, help="also write the rows as json")
    p.add_argument(
        "--no-fuse",
        dest="fuse",
        action="store_false",
        help="run the torch network as trained (BatchNorm not folded, no channels-last): the before of the fusion",
    )
    p.add_argument("--input-sizes", type=int, nargs="+", default=[64, 128])
    p.add_argument(
        "--backends",
        nargs="+",
        default=["torch"],
        choices=list(BACKENDS),
        help="backends to time, interleaved round by round (default: torch)",
    )
    p.add_argument("--precisions", nargs="+", default=["auto"], choices=list(PRECISIONS))
    args = p.parse_args()
    workloads = {"(a) DAVIS 854x480, 1 OSVOS mask": davis_frame(), "(b) 1024x2048, 20 instances": cityscapes_like()}
    rows = []
    for size in args.input_sizes:
        refiners = build_refiners(args, size)
        for name, (image, masks) in workloads.items():
            for backend, r in time_interleaved(refiners, image, masks, args.repeats).items():
                rows.append({"workload": name, "input": size, "backend": backend, **r})
    dev = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else f"CPU, {torch.get_num_threads()} threads"
    fused = "torch network BatchNorm-folded, channels-last" if args.fuse else "torch network unfused"
    model = args.checkpoint or "random hr18s weights"
    print(
        f"device: {dev}; {model}; batch {args.batch_size}; {fused}; median of {args.repeats} interleaved runs; "
        "times in ms per image\n"
    )
    print("| workload | input | backend | patches | extraction | network | reassembly | extr.+reas. / total | total |")
    print("| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        ratio = (r["extract"] + r["reassemble"]) / max(r["total"], 1e-9)
        print(
            f"| {r['workload']} | {r['input']} | {r['backend']} | {r['patches']:.0f} | {r['extract'] * 1e3:.1f} | "
            f"{r['network'] * 1e3:.1f} | {r['reassemble'] * 1e3:.1f} | {ratio:.1%} | {r['total'] * 1e3:.0f} |"
        )
    if args.json:
        args.json.write_text(json.dumps({"device": dev, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()

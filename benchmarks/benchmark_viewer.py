"""How fast the viewer is on a large frame: a 2048x1024 image with 50 instances.

Builds the frame from a real cityscapes-dev scene (image and its coarse Mask R-CNN-like masks
resized to 2048x1024, the 50 largest instances), starts ``bpr-serve`` with the given
checkpoint, and in headless Chromium measures: the whole round (submit -> drawn), the page's
own "drawn in" time (decoding 100 RLEs, outlines, first frame), and the median time of one
frame while zooming and panning.

    python benchmarks/benchmark_viewer.py --checkpoint bpr/models/bpr_default.pt
"""

from __future__ import annotations

import argparse
import json
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from bpr.io.datasets import shared_data_root

REPO = Path(__file__).resolve().parents[1]
LAUNCH_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


def large_frame(data: Path, out: Path, size: tuple[int, int] = (2048, 1024), instances: int = 50) -> tuple[Path, Path]:
    """Image and results file of a cityscapes-dev scene resized to ``size`` (w, h)."""
    cs = data / "cityscapes-dev"
    gt = json.loads((cs / "gt.json").read_text())
    results = json.loads((cs / "maskrcnn28.json").read_text())
    counts: dict[int, int] = {}
    for e in results:
        counts[e["image_id"]] = counts.get(e["image_id"], 0) + 1
    image_id = max(counts, key=lambda k: (counts[k], -k))
    record = next(i for i in gt["images"] if i["id"] == image_id)
    image = cv2.imread(str(cs / "images" / record["file_name"]))
    cv2.imwrite(str(out / "frame.jpg"), cv2.resize(image, size, interpolation=cv2.INTER_CUBIC))
    entries = []
    for e in results:
        if e["image_id"] != image_id:
            continue
        m = mask_utils.decode(e["segmentation"])
        big = cv2.resize(m, size, interpolation=cv2.INTER_NEAREST)
        rle = mask_utils.encode(np.asfortranarray(big))
        entries.append(
            {
                "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()},
                "category_id": e["category_id"],
                "score": e["score"],
                "area": int(big.sum()),
            }
        )
    entries = sorted(entries, key=lambda e: -e["area"])[:instances]
    (out / "frame.json").write_text(json.dumps(entries))
    return out / "frame.jpg", out / "frame.json"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default=str(REPO / "bpr" / "models" / "bpr_default.pt"))
    ap.add_argument("--data", default=str(shared_data_root()))
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp:
        image, instances = large_frame(Path(args.data), Path(tmp))
        port = free_port()
        serve = Path(sys.executable).with_name("bpr-serve")
        proc = subprocess.Popen(
            [str(serve), "--checkpoint", args.checkpoint, "--port", str(port)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                if "Uvicorn running on" in line:
                    break
            else:
                raise SystemExit("bpr-serve did not start")
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=args.chromium, args=LAUNCH_ARGS)
                page = browser.new_page(viewport={"width": 1600, "height": 1000})
                page.goto(f"http://127.0.0.1:{port}/")
                page.set_input_files("#image-file", str(image))
                page.set_input_files("#instances-file", str(instances))
                rounds, drawn = [], []
                for _ in range(args.repeats):
                    t0 = time.perf_counter()
                    page.click("#run")
                    page.wait_for_function("document.body.dataset.state !== 'busy'", timeout=300_000)
                    page.wait_for_function("['done', 'error'].includes(document.body.dataset.state)")
                    rounds.append(time.perf_counter() - t0)
                    timing = page.inner_text("#timing")
                    drawn.append(float(re.search(r"drawn in (\d+) ms", timing).group(1)))
                frames = page.evaluate(
                    """() => { const v = bprViewer.view, out = [];
                        for (let i = 0; i < 60; i++) {
                            const t = performance.now();
                            bprViewer.setView(1 + i / 6, -7 * i, -3 * i); bprViewer.paint();
                            document.getElementById('canvas').getContext('2d').getImageData(0, 0, 1, 1);
                            out.push(performance.now() - t);
                        }
                        return out; }"""
                )
                browser.close()
        finally:
            proc.terminate()
            proc.wait(30)
    print(f"2048x1024, 50 instances; last timing line: {timing}")
    print(f"submit -> drawn: median {statistics.median(rounds) * 1000:.0f} ms over {args.repeats}")
    print(f"page decode + outlines + first frame: median {statistics.median(drawn):.0f} ms")
    print(f"one frame while zooming/panning: median {statistics.median(frames):.1f} ms, max {max(frames):.1f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

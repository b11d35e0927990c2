"""Does the fused network (BatchNorm folded, channels-last) refine exactly like the trained one?

Refines dev inputs twice with the default model, ``Refiner(fuse=False)`` and the default
(fused) Refiner, and counts the instances and pixels whose refined value differs.

    python scripts/compare_fused.py [--max-images N]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from bpr.io.coco import load_image_records
from bpr.io.results import group_by_image, load_image_masks
from bpr.refiner import Refiner

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
INPUTS = {
    "cs-maskrcnn28": ("cityscapes-dev", "maskrcnn28.json"),
    "davis-osvos": ("davis-dev-real", "osvos.json"),
    "davis-rvos": ("davis-dev-real", "rvos.json"),
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--max-images", type=int, default=None)
    args = ap.parse_args()
    plain, fused = Refiner(fuse=False), Refiner()
    assert fused.infer_net is not fused.net and plain.infer_net is plain.net
    print("| input | images | instances | instances differing | pixels differing | refined pixels | s plain / fused |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | --- |")
    for name, (folder, file) in INPUTS.items():
        root = args.data / folder
        results = json.loads((root / file).read_text())
        names = {r["id"]: r["file_name"] for r in load_image_records(root / "gt.json")}
        groups = list(group_by_image(results).items())[: args.max_images]
        items = [load_image_masks(str(root / "images" / names[k]), [results[i] for i in idx], idx) for k, idx in groups]
        t0 = time.perf_counter()
        a = list(plain.refine_many(items))
        t1 = time.perf_counter()
        b = list(fused.refine_many(items))
        t2 = time.perf_counter()
        inst = sum(int((x != y).reshape(len(x), -1).any(1).sum()) for x, y in zip(a, b))
        pix = sum(int((x != y).sum()) for x, y in zip(a, b))
        total = sum(int(x.sum()) for x in a)
        n = sum(len(x) for x in a)
        print(f"| {name} | {len(items)} | {n} | {inst} | {pix} | {total} | {t1 - t0:.0f} / {t2 - t1:.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Do two ways of running the same network refine alike?

Refines dev inputs twice with one checkpoint (default: the bundled model), once per variant,
and counts the instances and pixels whose refined value differs. A variant is a backend
(``torch``, ``torch-unfused``: BatchNorm not folded, ``openvino``, ``onnxruntime``) with an
optional precision (``openvino/bf16``).

    python benchmarks/compare_backends.py [--a torch-unfused] [--b torch] [--max-images N]
    python benchmarks/compare_backends.py --a torch --b openvino/bf16
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from bpr.io.coco import load_image_records
from bpr.io.datasets import shared_data_root
from bpr.io.results import group_by_image, load_image_masks
from bpr.refiner import Refiner

DATA = shared_data_root()
INPUTS = {
    "cs-maskrcnn28": ("cityscapes-dev", "maskrcnn28.json"),
    "davis-osvos": ("davis-dev-real", "osvos.json"),
    "davis-rvos": ("davis-dev-real", "rvos.json"),
}


def build(variant: str, checkpoint: Path | None) -> Refiner:
    """A Refiner for ``backend[/precision]``; ``torch-unfused`` runs the network as trained."""
    backend, _, precision = variant.partition("/")
    unfused = backend == "torch-unfused"
    refiner = Refiner(
        checkpoint,
        backend="torch" if unfused else backend,
        precision=precision or "auto",
        fuse=False if unfused else None,
    )
    if refiner.backend != backend.removesuffix("-unfused"):
        raise SystemExit(f"{variant}: the Refiner runs {refiner.backend}")
    return refiner


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--checkpoint", type=Path, default=None)
    ap.add_argument("--a", default="torch-unfused", help="first variant (default torch-unfused)")
    ap.add_argument("--b", default="torch", help="second variant (default torch: the fused network)")
    ap.add_argument("--max-images", type=int, default=None)
    args = ap.parse_args()
    plain, fused = build(args.a, args.checkpoint), build(args.b, args.checkpoint)
    print(f"{args.a} against {args.b}\n")
    print(
        f"| input | images | instances | instances differing | pixels differing | refined pixels | s {args.a} / "
        f"{args.b} |"
    )
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
        print(f"| {name} | {len(items)} | {n} | {inst} | {pix} | {total} | {t1 - t0:.0f} / {t2 - t1:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

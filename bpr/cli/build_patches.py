"""bpr-build-patches: turn a COCO dataset (+ optional predictions) into training patches."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bpr.cli.common import command_parser, run_cli
from bpr.errors import BprInputError
from bpr.train.build_patches import BuildConfig, build_patches
from bpr.train.synth import DEFAULT_MIX, NAMED_MIXES, parse_mix


def build_parser() -> argparse.ArgumentParser:
    p = command_parser(prog="bpr-build-patches", description="Build BPR training patches from a COCO dataset.")
    p.add_argument("--gt", type=Path, required=True, help="COCO instances json with ground-truth masks")
    p.add_argument("--images", type=Path, required=True, help="image directory")
    p.add_argument("--coarse", type=Path, help="COCO results json of a real model: matched to GT at IoU > 0.5")
    p.add_argument("--out", type=Path, required=True, help="output patch directory")
    p.add_argument("--draws", type=int, default=4, help="synthetic coarse masks per instance (0: real only; default 4)")
    default_mix = ",".join(f"{k}={v}" for k, v in DEFAULT_MIX.items())
    p.add_argument(
        "--mix",
        default=default_mix,
        help=f"recipe weights, e.g. 'grid=2,warp=1', or a named mix: {', '.join(NAMED_MIXES)} (default {default_mix})",
    )
    p.add_argument("--patch-size", type=int, default=64)
    p.add_argument(
        "--context",
        type=int,
        default=0,
        help="also store this many image pixels around each side of every patch, for a refiner that sees "
        "beyond the patch it predicts (bpr-train then trains one with this context; default 0)",
    )
    p.add_argument("--nms-iou", type=float, default=0.25)
    p.add_argument("--val-fraction", type=float, default=0.05, help="share of images held out for validation")
    p.add_argument(
        "--held-out-only",
        action="store_true",
        help="build the held-out images only (all of them held out): more draws of images a refiner never "
        "trained on, for bpr-train-gate --held-out",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--max-images", type=int, help="only the first N images (quick trials)")
    p.add_argument("--quiet", action="store_true")
    return p


@run_cli("bpr-build-patches")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        mix = parse_mix(args.mix)
    except ValueError as exc:
        raise BprInputError(str(exc)) from None
    if (args.out / "manifest.json").exists():
        raise BprInputError(f"{args.out} already holds a patch set; choose a new --out")
    config = BuildConfig(
        patch_size=args.patch_size,
        context=args.context,
        nms_iou=args.nms_iou,
        draws=args.draws,
        mix=mix,
        val_fraction=args.val_fraction,
        held_out_only=args.held_out_only,
        seed=args.seed,
        workers=args.workers,
        max_images=args.max_images,
    )
    manifest = build_patches(args.gt, args.images, args.out, config, coarse_path=args.coarse, progress=not args.quiet)
    print(
        f"bpr-build-patches: {manifest['total']} patches in {len(manifest['shards'])} shards -> {args.out}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

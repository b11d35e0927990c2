"""bpr-eval: how much better did the masks get? Mask AP, Boundary AP, AF, J / F in one table."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path

from tqdm import tqdm

from bpr.cli.common import command_parser, run_cli
from bpr.errors import BprInputError
from bpr.evaluate.evaluator import evaluate
from bpr.evaluate.report import format_report, report_json
from bpr.evaluate.scoring import DEFAULT_AF_RATIO, DEFAULT_BOUNDARY_RATIO, DEFAULT_F_RATIO, ScoringSettings
from bpr.io.atomic import check_writable
from bpr.io.coco import write_json_atomic


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or value != value or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = command_parser(
        prog="bpr-eval",
        description="Evaluate COCO results files against a ground truth, side by side: mask AP, "
        "Boundary AP, AF, and J / F on single-instance data. The first results file is the "
        "baseline; the others are also shown as deltas against it. Definitions: docs/metrics.md.",
    )
    p.add_argument("--gt", type=Path, required=True, help="COCO ground-truth json (images, annotations, categories)")
    p.add_argument(
        "results", type=Path, nargs="+", help="COCO results json files: [{image_id, category_id, segmentation, score}]"
    )
    p.add_argument(
        "--images",
        type=Path,
        help="image directory (file_name of the ground truth is relative to it); needed by --plots for the gallery",
    )
    p.add_argument(
        "--boundary-ratio",
        type=_positive_float,
        default=DEFAULT_BOUNDARY_RATIO,
        help="Boundary IoU band width as a fraction of the image diagonal, at least 1 px "
        f"(default {DEFAULT_BOUNDARY_RATIO}; 0.005 for Cityscapes-size images)",
    )
    p.add_argument(
        "--af-ratio",
        type=_positive_float,
        default=DEFAULT_AF_RATIO,
        help=f"AF match tolerance as a fraction of the diagonal, rounded up (default {DEFAULT_AF_RATIO})",
    )
    p.add_argument(
        "--f-ratio",
        type=_positive_float,
        default=DEFAULT_F_RATIO,
        help="DAVIS contour accuracy F tolerance as a fraction of the diagonal, rounded up (default "
        f"{DEFAULT_F_RATIO})",
    )
    p.add_argument(
        "--single-instance",
        choices=("auto", "on", "off"),
        default="auto",
        help="per-image J / F (DAVIS-style): auto = when every image has exactly one non-crowd "
        "annotation; on = merge all GT and all predictions of an image into one mask each",
    )
    p.add_argument("--names", nargs="+", help="column names for the results files (default: file stems)")
    p.add_argument("--json", type=Path, help="write every number to this json file")
    p.add_argument("--plots", type=Path, help="write PNG plots to this directory")
    p.add_argument("--gallery", type=int, default=6, help="instances per row of the gallery plot (default 6)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or timing line on stderr")
    return p


def _check_args(args: argparse.Namespace) -> None:
    """Refuse bad arguments before minutes of work, not after."""
    inputs = {p.resolve() for p in [args.gt, *args.results]}
    if args.json is not None and args.json.resolve() in inputs:
        raise BprInputError(f"--json {args.json} would overwrite an input file; choose another path")
    if args.names is not None and len(args.names) != len(args.results):
        raise BprInputError(f"--names has {len(args.names)} names for {len(args.results)} results files")
    if args.gallery < 1:
        raise BprInputError("--gallery must be at least 1")
    if args.plots is not None and len(args.results) > 1 and args.images is None:
        raise BprInputError(
            "--plots draws a gallery of image crops: pass --images DIR (the ground truth's image folder)"
        )
    if args.images is not None and not args.images.is_dir():
        raise BprInputError(f"image directory not found: {args.images}")
    if args.plots is not None and args.plots.exists() and not args.plots.is_dir():
        raise BprInputError(f"--plots {args.plots} exists and is not a directory")
    if args.json is not None:
        check_writable(args.json, "--json report")


def _progress(quiet: bool) -> Callable[[int], Callable[[], None]]:
    def start(total: int) -> Callable[[], None]:
        bar = tqdm(
            total=total, unit="img", desc="bpr-eval", disable=True if quiet else None, file=sys.stderr, leave=False
        )
        return lambda: bar.update(1)

    return start


def _print_report(text: str) -> None:
    """Print the table; a closed pipe (``bpr-eval ... | head``) must not stop --json / --plots."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (lives until exit, so the final flush succeeds)


@run_cli("bpr-eval")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _check_args(args)
    single = {"auto": None, "on": True, "off": False}[args.single_instance]
    settings = ScoringSettings(boundary_ratio=args.boundary_ratio, af_ratio=args.af_ratio, f_ratio=args.f_ratio)
    ev = evaluate(
        args.gt, args.results, settings, single_instance=single, names=args.names, progress=_progress(args.quiet)
    )
    _print_report(format_report(ev))
    if args.json is not None:
        write_json_atomic(args.json, report_json(ev))
        print(f"bpr-eval: wrote {args.json}", file=sys.stderr)
    if args.plots is not None:
        from bpr.evaluate.plots import write_plots  # matplotlib only when asked for

        written = write_plots(ev, args.plots, args.images, per_row=args.gallery)
        print(f"bpr-eval: wrote {len(written)} plots to {args.plots}", file=sys.stderr)
    if not args.quiet:
        print(f"bpr-eval: evaluated in {ev.seconds:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""bpr-dev-table: score a refiner on every dev input at once (the table: bpr/evaluate/dev_table.py)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from bpr.cli.common import add_option_flags, command_parser, run_cli
from bpr.errors import BprInputError
from bpr.evaluate import dev_table
from bpr.io.coco import load_json, write_json_atomic
from bpr.io.datasets import shared_data_root
from bpr.options import option_infos
from bpr.refiner import Refiner


def build_parser() -> argparse.ArgumentParser:
    p = command_parser(
        prog="bpr-dev-table", description=dev_table.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--checkpoint", type=Path, help="refiner checkpoint (default: the bundled model)")
    p.add_argument("--inputs", nargs="+", default=list(dev_table.INPUTS), choices=dev_table.INPUTS)
    p.add_argument(
        "--extra-input",
        action="append",
        default=[],
        metavar="NAME=RESULTS",
        help="also score this COCO results file as an input (NAME starts with cs- or davis-: the set it is on)",
    )
    p.add_argument(
        "--data",
        type=Path,
        default=shared_data_root(),
        help="the shared data sets (default: BPR_SHARED_DATA, else ../shared/data)",
    )
    p.add_argument("--cache", type=Path, default=dev_table.CACHE, help="where derived inputs are kept")
    p.add_argument("--max-images", type=int, help="only N images of each input, spread evenly (quick checks)")
    p.add_argument("--json", type=Path, help="write every number here")
    p.add_argument(
        "--against",
        type=Path,
        help="a reference table (another run's --json): also list every number this run loses against it",
    )
    p.add_argument("--precision", default="auto")
    p.add_argument("--backend", default=None, help="torch, openvino, onnxruntime (default: BPR_BACKEND, else auto)")
    add_option_flags(p)  # every refine option, as bpr-refine has it
    return p


@run_cli("bpr-dev-table")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    reference = read_reference(args.against) if args.against else None  # a bad file fails before any work
    extra = dev_table.parse_extra_inputs(args.extra_input)
    args.cache.mkdir(parents=True, exist_ok=True)
    refiner = Refiner.from_checkpoint(
        args.checkpoint,
        precision=args.precision,
        backend=args.backend,
        **{name: getattr(args, name) for name in option_infos()},
    )
    rows = dev_table.score_inputs(refiner, args.inputs, args.data, args.cache, args.max_images, extra)
    print(f"checkpoint {refiner.checkpoint}; {refiner.backend} backend, {refiner.precision}; {refiner.options}\n")
    dev_table.print_table(rows)
    if args.json:
        write_json_atomic(args.json, dev_table.report(refiner, rows))
    if reference is not None:
        better, worse = dev_table.regressions(reference, rows)
        print(f"\nagainst {args.against}: {better} numbers better, {len(worse)} worse")
        for line in worse:
            print(f"- {line}")
    return 0


def read_reference(path: Path) -> dict[str, dict[str, Any]]:
    """The rows of a ``--json`` dev table; a one-line error for anything else."""
    table = load_json(path)
    if not isinstance(table, dict) or not isinstance(table.get("rows"), dict):
        raise BprInputError(f"--against {path}: not a bpr-dev-table --json file (no 'rows')")
    return table["rows"]


if __name__ == "__main__":
    sys.exit(main())

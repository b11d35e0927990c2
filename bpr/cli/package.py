"""bpr-package: turn a training run's model.pt (or its last.pt) into a shippable checkpoint: fp16 weights, the
inference settings it recommends (every RefineOptions field marked ``recommended`` has a flag;
one not given is left to the library's default), and the evaluation numbers in its meta.

    bpr-package work/runs/default/model.pt bpr/models/bpr_default.pt --flip-tta \\
        [--iterations 1] [--fallback-iou 0.5] [--min-area 1024] [--change-margin 0.2] \\
        [--eval models/bpr_default.eval.json] [--companion second.pt --companion-weight 0.4]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from bpr.cli.common import add_option_flags, command_parser, run_cli
from bpr.errors import BprInputError
from bpr.modeling.checkpoint import (
    build_refiner,
    is_run_state,
    read_checkpoint,
    save_refiner,
    with_companion,
    with_gate_of,
)
from bpr.options import RefineOptions, option_infos


def build_parser() -> argparse.ArgumentParser:
    p = command_parser(prog="bpr-package", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", type=Path)
    p.add_argument("dst", type=Path)
    add_option_flags(p, recommend=True)
    p.add_argument(
        "--gate-from",
        type=Path,
        help="take the quality gate of this checkpoint, with the threshold it has (a fine-tuned refiner keeps "
        "the judge it had; bpr-train-gate trains a new one)",
    )
    p.add_argument(
        "--gate-threshold",
        type=float,
        default=0.0,
        help="raise the quality gate's threshold by this many logits, on top of any threshold the source "
        "already has folded into the gate's bias (meta records the total); a patch is accepted only where "
        "the gate's logit is above the total (chosen on every dev input at once, bpr-dev-table)",
    )
    p.add_argument(
        "--gate-early-reject",
        type=float,
        help="with flip TTA or a companion, patches the gate rejects on the plain forward by more than this "
        "many logits skip their mirrored and companion forwards (measured on the dev inputs: work out how many "
        "rejections the average would have overturned at each margin)",
    )
    p.add_argument(
        "--companion",
        type=Path,
        help="a second refiner checkpoint to ship inside this one: its probability is averaged in "
        "(--companion-weight) and this one's gate judges the average; it may see context, this one may not",
    )
    p.add_argument(
        "--companion-weight", type=float, default=0.5, help="the companion's share of the average (default 0.5)"
    )
    p.add_argument("--eval", type=Path, help="evaluation json (scripts/evaluate_refiner.py --json) to embed")
    return p


@run_cli("bpr-package")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    source = read_checkpoint(args.src)
    net = build_refiner(source, args.src)
    if args.gate_from:
        judge_source = read_checkpoint(args.gate_from)
        net = with_gate_of(net, build_refiner(judge_source, args.gate_from))
    recommended = {name: getattr(args, name) for name, info in option_infos().items() if info.recommended}
    recommended["gate_early_reject"] = args.gate_early_reject
    RefineOptions().updated(**{k: v for k, v in recommended.items() if k in option_infos()})  # bounds checked
    net.recommended = {k: v for k, v in recommended.items() if v is not None}
    second_opinion = args.flip_tta or args.companion or net.companion is not None
    if args.gate_early_reject is not None and (net.gate is None or not second_opinion):
        raise BprInputError("--gate-early-reject needs a quality gate and a second opinion (--flip-tta or --companion)")
    if is_run_state(source):  # a bpr-train last.pt: its step and training time
        meta = {"step": source["step"], "train_seconds": round(source["seconds"], 1)}
    else:
        meta = source.get("meta", {})
    if args.gate_from:
        meta["gate_from"] = str(args.gate_from)
        meta["gate_threshold"] = judge_source.get("meta", {}).get("gate_threshold", 0.0)
    if args.gate_threshold:
        if net.gate is None:
            raise BprInputError(f"{args.src} has no quality gate; --gate-threshold needs one")
        with torch.no_grad():
            net.gate.classifier.bias.sub_(args.gate_threshold)
        meta["gate_threshold"] = meta.get("gate_threshold", 0.0) + args.gate_threshold
    if args.companion:
        companion_source = read_checkpoint(args.companion)
        net = with_companion(net, build_refiner(companion_source, args.companion), args.companion_weight)
        meta["companion"] = {
            "from": str(args.companion),
            "weight": args.companion_weight,
            "meta": companion_source.get("meta", {}),
        }
    if args.eval:
        try:
            meta["evaluation"] = json.loads(args.eval.read_text())
        except json.JSONDecodeError as exc:
            raise BprInputError(f"{args.eval} is not valid JSON: {exc}") from None
    save_refiner(net, args.dst, meta=meta)
    print(f"{args.dst}: {args.dst.stat().st_size / 1e6:.1f} MB, config {net.config}, recommended {net.recommended}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

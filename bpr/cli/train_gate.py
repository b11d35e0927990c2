"""bpr-train-gate: train the patch-quality gate of a trained refiner (the training: bpr/train/gate.py)."""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields
from pathlib import Path

import torch

from bpr.backends import BACKENDS
from bpr.cli.common import command_parser, run_cli
from bpr.train import gate
from bpr.train.gate import GateTrainConfig, train_gate


def build_parser() -> argparse.ArgumentParser:
    p = command_parser(
        prog="bpr-train-gate", description=gate.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("checkpoint", type=Path, help="the trained refiner")
    p.add_argument("--patches", nargs="+", required=True, help="patch directories (bpr-build-patches --out)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--steps", type=int, default=GateTrainConfig.steps)
    p.add_argument("--batch-size", type=int, default=GateTrainConfig.batch_size)
    p.add_argument("--lr", type=float, default=GateTrainConfig.lr)
    p.add_argument(
        "--gate-width",
        type=int,
        default=GateTrainConfig.gate_width,
        help="channels of the gate's first layer (doubled twice after; default %(default)s)",
    )
    p.add_argument("--flip-tta", action="store_true", help="score the change as flip-TTA inference makes it")
    p.add_argument(
        "--change-margin",
        type=float,
        default=GateTrainConfig.change_margin,
        help="score the change with this margin applied",
    )
    p.add_argument(
        "--harm-weight",
        type=float,
        default=GateTrainConfig.harm_weight,
        help="weight of a pixel broken relative to a pixel fixed (> 1: do-no-harm first)",
    )
    p.add_argument(
        "--stake-power",
        type=float,
        default=GateTrainConfig.stake_power,
        help="a patch weighs |pixels fixed - broken| to this power: 1 counts every pixel, under 1 gives the "
        "few pixels nearly right masks stake more say against large fixes",
    )
    p.add_argument(
        "--held-out",
        action="store_true",
        help="train on the patch sets' held-out images only (the refiner never saw them): patches of "
        "even-numbered held-out images train the gate, odd-numbered ones score it",
    )
    p.add_argument(
        "--train-on-scored",
        action="store_true",
        help="with --held-out: train on the odd-numbered images too (the gate to ship, once the recipe "
        "is chosen on the split; its scores are then in-sample)",
    )
    p.add_argument(
        "--backend",
        choices=list(BACKENDS),
        default=GateTrainConfig.backend,
        help="what computes the refiner's output, once per patch (as bpr-refine --backend; default %(default)s)",
    )
    p.add_argument(
        "--max-patches",
        type=int,
        default=GateTrainConfig.max_patches,
        help="training patches kept in memory with the refiner's output, a random subset beyond "
        "(about 64 KB each at 64 px with 16 px of context; default %(default)s)",
    )
    p.add_argument("--eval-every", type=int, default=GateTrainConfig.eval_every)
    p.add_argument("--eval-patches", type=int, default=GateTrainConfig.eval_patches)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--seed", type=int, default=GateTrainConfig.seed)
    return p


@run_cli("bpr-train-gate")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = GateTrainConfig(**{f.name: getattr(args, f.name) for f in fields(GateTrainConfig)})
    train_gate(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())

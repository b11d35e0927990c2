#!/usr/bin/env python
"""Train the patch-quality gate (bpr/modeling/gate.py) of a trained refiner, the refiner frozen.

    python scripts/train_gate.py work/runs/scene1500/model.pt --patches work/p_cs work/p_davis work/p_ecssd \
        --out work/gate/model.pt [--steps 800] [--batch-size 64] [--flip-tta] [--change-margin 0.2] [--threads 2]

For every training patch the frozen refiner's change is applied as inference applies it
(flip TTA and the change margin as given), and the change's stake is counted: pixels it fixes
minus pixels it breaks against the ground truth. The gate learns "fixes more than it breaks"
with each patch weighted by the size of that stake (broken pixels ``--harm-weight`` times a
fixed one), so it is judged by the pixels its decisions win or lose, not by how many patches
it classifies right.

Train it on images the refiner has not learned by heart: a refiner that saw an image many
times knows its true boundary, never harms a near-right mask there, and a gate trained on
such patches learns to accept everything. (The bundled refiner trained for 17k steps on the
DAVIS and ECSSD images; the Cityscapes patches it saw once at most.) Held-out patches
(the patch sets' validation images) are scored every ``--eval-every`` steps: net pixels
fixed by the refiner alone, by the gated refiner, and by an oracle gate; the log goes to
``<out>.log.csv``. The output is the refiner's checkpoint with the gate added (``gate=True``).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from bpr.modeling.checkpoint import load_refiner, save_refiner
from bpr.modeling.refiner_net import RefinerNet
from bpr.reassemble import decide
from bpr.train.augment import random_flip
from bpr.train.patch_store import PatchSet


def refined_probability(net: RefinerNet, images: torch.Tensor, coarse: torch.Tensor, flip_tta: bool) -> torch.Tensor:
    prob = net.foreground_probability(images, coarse)
    if flip_tta:
        prob = 0.5 * (prob + net.foreground_probability(images.flip(-1), coarse.flip(-1)).flip(-1))
    return prob


def change_stakes(prob: torch.Tensor, coarse: torch.Tensor, target: torch.Tensor, margin: float) -> torch.Tensor:
    """(B,) pixels the refined patch fixes minus pixels it breaks (the margin rule applied)."""
    c = coarse[:, 0] > 0.5
    new = decide(c, prob, margin)
    t = target > 0
    return ((c != t).flatten(1).sum(1) - (new != t).flatten(1).sum(1)).float()


def load_batch(data: PatchSet, idx: np.ndarray, rng: np.random.Generator, flip: bool):
    images, coarse, target = data.gather(idx)
    images = torch.from_numpy(images).permute(0, 3, 1, 2).float()
    coarse = torch.from_numpy(coarse)[:, None].float()
    target = torch.from_numpy(target)
    if flip:
        images, coarse, target = random_flip(
            images, coarse, target, torch.Generator().manual_seed(int(rng.integers(2**62)))
        )
    return images, coarse, target


def split_by_image_parity(data: PatchSet, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``idx`` ([shard, row] pairs) split by the parity of each patch's image number: whole
    images on each side, so the gate is scored on images it did not train on either."""
    image = np.array([data.meta[shard]["image"][row] for shard, row in idx], dtype=np.int64)
    return idx[image % 2 == 0], idx[image % 2 == 1]


@torch.no_grad()
def evaluate(net: RefinerNet, data: PatchSet, idx: np.ndarray, args: argparse.Namespace) -> dict[str, float]:
    net.eval()
    alone = gated = oracle = broken_kept = 0.0
    kept = 0
    for start in range(0, len(idx), 256):
        images, coarse, target = load_batch(data, idx[start : start + 256], np.random.default_rng(0), False)
        prob = refined_probability(net, images, coarse, args.flip_tta)
        stake = change_stakes(prob, coarse, target, args.change_margin)
        accept = net.change_helps(images, coarse, prob) > 0
        alone += float(stake.sum())
        gated += float(stake[accept].sum())
        oracle += float(stake.clamp(min=0).sum())
        broken_kept += float(stake[accept].clamp(max=0).sum())
        kept += int(accept.sum())
    net.gate.train()
    return {
        "val_fixed_alone": alone,
        "val_fixed_gated": gated,
        "val_fixed_oracle": oracle,
        "val_broken_kept": broken_kept,
        "val_kept_share": kept / max(1, len(idx)),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", type=Path, help="the trained refiner")
    p.add_argument("--patches", nargs="+", required=True, help="patch directories (bpr-build-patches --out)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--steps", type=int, default=800)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--flip-tta", action="store_true", help="score the change as flip-TTA inference makes it")
    p.add_argument("--change-margin", type=float, default=0.0, help="score the change with this margin applied")
    p.add_argument(
        "--harm-weight",
        type=float,
        default=1.0,
        help="weight of a pixel broken relative to a pixel fixed (> 1: do-no-harm first)",
    )
    p.add_argument(
        "--held-out",
        action="store_true",
        help="train on the patch sets' held-out images only (the refiner never saw them): patches of "
        "even-numbered held-out images train the gate, odd-numbered ones score it",
    )
    p.add_argument("--eval-every", type=int, default=200)
    p.add_argument("--eval-patches", type=int, default=4000)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    base = load_refiner(args.checkpoint)
    net = RefinerNet(dataclasses.replace(base.config, gate=True), base.recommended)
    missing, unexpected = net.load_state_dict(base.state_dict(), strict=False)
    assert not unexpected and all(k.startswith("gate.") for k in missing), (missing, unexpected)
    net.eval()
    net.gate.train()
    for name, param in net.named_parameters():
        param.requires_grad_(name.startswith("gate."))
    opt = torch.optim.AdamW(net.gate.parameters(), lr=args.lr, weight_decay=1e-4)

    data = PatchSet.open(args.patches)
    train_idx, val_idx = data.indices("train"), data.indices("val")
    if args.held_out:
        train_idx, val_idx = split_by_image_parity(data, val_idx)
    rng = np.random.default_rng([args.seed, 1])
    if len(val_idx) > args.eval_patches:
        val_idx = val_idx[np.sort(rng.choice(len(val_idx), args.eval_patches, replace=False))]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    log_path = args.out.with_suffix(".log.csv")
    fields = [
        "step",
        "loss",
        "lr",
        "patches_per_s",
        "val_fixed_alone",
        "val_fixed_gated",
        "val_fixed_oracle",
        "val_broken_kept",
        "val_kept_share",
        "seconds",
    ]
    t_start = time.perf_counter()
    with open(log_path, "w", newline="") as f:
        log = csv.DictWriter(f, fieldnames=fields)
        log.writeheader()
        running = 0.0
        t0 = time.perf_counter()
        for step in range(1, args.steps + 1):
            lr = args.lr * 0.5 * (1 + math.cos(math.pi * (step - 1) / args.steps))
            for group in opt.param_groups:
                group["lr"] = lr
            batch_rng = np.random.default_rng([args.seed, step])
            idx = train_idx[batch_rng.integers(0, len(train_idx), args.batch_size)]
            images, coarse, target = load_batch(data, idx, batch_rng, True)
            with torch.no_grad():
                prob = refined_probability(net, images, coarse, args.flip_tta)
                stake = change_stakes(prob, coarse, target, args.change_margin)
            weight = torch.where(stake < 0, args.harm_weight * stake.abs(), stake.abs())
            logit = net.change_helps(images, coarse, prob)
            loss = (F.binary_cross_entropy_with_logits(logit, (stake > 0).float(), reduction="none") * weight).sum()
            loss = loss / weight.sum().clamp(min=1.0)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            running += loss.item()
            if step % args.eval_every == 0 or step == args.steps:
                row = {
                    "step": step,
                    "loss": f"{running / args.eval_every:.5f}",
                    "lr": f"{lr:.6f}",
                    "patches_per_s": f"{args.eval_every * args.batch_size / (time.perf_counter() - t0):.1f}",
                }
                row.update(
                    {
                        k: f"{v:.4f}" if k == "val_kept_share" else f"{v:.0f}"
                        for k, v in evaluate(net, data, val_idx, args).items()
                    }
                )
                row["seconds"] = f"{time.perf_counter() - t_start:.1f}"
                log.writerow(row)
                f.flush()
                print(row, file=sys.stderr, flush=True)
                running = 0.0
                t0 = time.perf_counter()
    meta = torch.load(args.checkpoint, map_location="cpu", weights_only=True).get("meta", {})
    meta["gate_training"] = {
        "from": str(args.checkpoint),
        "patches": args.patches,
        "steps": args.steps,
        "flip_tta": args.flip_tta,
        "change_margin": args.change_margin,
        "harm_weight": args.harm_weight,
    }
    net.eval()
    save_refiner(net, args.out, meta=meta, half=False)
    print(f"train_gate: {args.steps} steps in {time.perf_counter() - t_start:.0f} s -> {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

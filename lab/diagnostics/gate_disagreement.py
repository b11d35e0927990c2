#!/usr/bin/env python
"""Does the gate judge better when it sees how unsure the refiner is? An experiment (issue 21,
session 10), not in the library.

With flip TTA the refiner runs twice per patch, and where the plain and the mirrored forward
disagree (|p - p_mirror|) it is guessing: a hallucinated chunk on a nearly right mask may be
one of those places. This trains two gates with the same recipe, seed and batches on the same
held-out patches (even-numbered images train, odd-numbered ones score, as
``bpr-train-gate --held-out``): the library's ``PatchGate`` and one with the disagreement map
as a seventh input channel plus its mean over the pixels the change moves as a fourth
statistic. It prints the net pixels fixed on the scored patches at several thresholds, over
all sets and per patch directory.

    python lab/diagnostics/gate_disagreement.py CKPT --patches DIR... --steps 4000 --width 32 \\
        --harm-weight 4 --stake-power 0.5 --change-margin 0.2 --out lab/runs/gate_disagreement.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bpr.modeling.checkpoint import build_refiner, read_checkpoint
from bpr.modeling.gate import PatchGate
from bpr.passes import precision_autocast
from bpr.refiner import Refiner
from bpr.train.gate import GateTrainConfig, change_stakes, patch_parts, patch_weights, split_patches
from bpr.train.patch_store import PatchSet

THRESHOLDS = (-1.0, 0.0, 1.0, 2.0, 3.0)


class DisagreementGate(PatchGate):
    """PatchGate with the flip-TTA disagreement as a seventh channel and a fourth statistic."""

    def __init__(self, width: int) -> None:
        super().__init__(width)
        self.features[0] = nn.Conv2d(7, width, 3, stride=2, padding=1)
        self.classifier = nn.Linear(8 * width + 4, 1)

    def forward(  # type: ignore[override]
        self, image: torch.Tensor, mask: torch.Tensor, prob: torch.Tensor, disagree: torch.Tensor
    ) -> torch.Tensor:
        change = prob - mask
        x = self.features(torch.cat([image, mask * 2 - 1, prob * 2 - 1, change, disagree * 2], dim=1))
        pooled = torch.cat([x.mean(dim=(2, 3)), x.amax(dim=(2, 3))], dim=1)
        flips = ((prob > 0.5).float() - mask).abs()
        moved = flips.sum(dim=(1, 2, 3)).clamp(min=1)
        stats = torch.stack(
            [
                flips.mean(dim=(1, 2, 3)),
                (flips * (prob - 0.5).abs()).sum(dim=(1, 2, 3)) / moved,
                mask.mean(dim=(1, 2, 3)),
                (flips * disagree).sum(dim=(1, 2, 3)) / moved,  # how unsure the moved pixels are
            ],
            dim=1,
        )
        return self.classifier(torch.cat([pooled, stats], dim=1))[:, 0]


@torch.no_grad()
def refine_both_views(refiner: Refiner, data: PatchSet, idx: np.ndarray, batch: int = 256) -> dict:
    """Patches (cut to the patch inside its view) with the flip-TTA average and |p - p_mirror|."""
    images, coarse, target = data.gather(idx)
    ctx, net = data.context, refiner.infer_net
    n, p = len(idx), data.patch_size
    prob = torch.empty((n, p, p), dtype=torch.float16)
    disagree = torch.empty((n, p, p), dtype=torch.float16)
    for start in range(0, n, batch):
        im = torch.from_numpy(images[start : start + batch]).permute(0, 3, 1, 2).float()
        co = torch.from_numpy(coarse[start : start + batch])[:, None].float()
        with precision_autocast(refiner.device, refiner.precision):
            p1 = net.foreground_probability(im, co).float()
            p2 = net.foreground_probability(im.flip(-1), co.flip(-1)).flip(-1).float()
        p1, p2 = patch_parts(ctx, p1, p2) if ctx else (p1, p2)
        prob[start : start + batch] = (0.5 * (p1 + p2)).half()
        disagree[start : start + batch] = (p1 - p2).abs().half()
    images, coarse, target = (torch.from_numpy(a) for a in (images, coarse, target))
    if ctx:
        images, coarse, target = patch_parts(ctx, images.permute(0, 3, 1, 2), coarse, target)
    else:
        images = images.permute(0, 3, 1, 2)
    return {
        "images": images.contiguous(),
        "coarse": coarse.contiguous(),
        "target": target.contiguous(),
        "prob": prob,
        "disagree": disagree,
    }


def take(cached: dict, rows: np.ndarray, mirror: np.ndarray | None) -> tuple[torch.Tensor, ...]:
    index = torch.from_numpy(np.asarray(rows, dtype=np.int64))
    images = cached["images"][index].float()
    coarse = cached["coarse"][index][:, None].float()
    target = cached["target"][index].bool()
    prob = cached["prob"][index].float()
    disagree = cached["disagree"][index].float()
    if mirror is not None and mirror.any():
        m = torch.from_numpy(mirror)
        images[m], coarse[m], target[m] = images[m].flip(-1), coarse[m].flip(-1), target[m].flip(-1)
        prob[m], disagree[m] = prob[m].flip(-1), disagree[m].flip(-1)
    return images, coarse, target, prob, disagree


def logits(gate: PatchGate, base, images, coarse, prob, disagree) -> torch.Tensor:
    """The gate's logits, its image input normalised as ``RefinerNet.change_helps`` does."""
    image, _ = base.preprocess(images, coarse, context=0)
    if isinstance(gate, DisagreementGate):
        return gate(image.float(), coarse, prob[:, None], disagree[:, None])
    return gate(image.float(), coarse, prob[:, None])


@torch.no_grad()
def score(gate: PatchGate, base, scored: dict, labels: np.ndarray, names: list[str], margin: float) -> dict:
    gate.eval()
    stakes, logit = [], []
    n = len(scored["prob"])
    for start in range(0, n, 512):
        images, coarse, target, prob, disagree = take(scored, np.arange(start, min(start + 512, n)), None)
        stakes.append(change_stakes(prob, coarse, target, margin))
        logit.append(logits(gate, base, images, coarse, prob, disagree))
    gate.train()
    stake, logit = torch.cat(stakes).numpy(), torch.cat(logit).numpy()
    out = {"alone": float(stake.sum()), "oracle": float(stake.clip(min=0).sum())}
    for t in THRESHOLDS:
        keep = logit > t
        row = {"all": float(stake[keep].sum()), "kept": float(keep.mean())}
        for i, name in enumerate(names):
            sel = labels == i
            row[name] = float(stake[keep & sel].sum())
        out[f"T{t:g}"] = row
    out["per_set_alone"] = {name: float(stake[labels == i].sum()) for i, name in enumerate(names)}
    out["per_set_oracle"] = {name: float(stake[labels == i].clip(min=0).sum()) for i, name in enumerate(names)}
    return out


def train(kind: str, width: int, base, train_set: dict, cfg: GateTrainConfig) -> PatchGate:
    torch.manual_seed(cfg.seed)
    gate = DisagreementGate(width) if kind == "disagree" else PatchGate(width)
    opt = torch.optim.AdamW(gate.parameters(), lr=cfg.lr, weight_decay=1e-4)
    n = len(train_set["prob"])
    for step in range(1, cfg.steps + 1):
        lr = cfg.lr * 0.5 * (1 + math.cos(math.pi * (step - 1) / cfg.steps))
        for group in opt.param_groups:
            group["lr"] = lr
        rng = np.random.default_rng([cfg.seed, step])
        rows = rng.integers(0, n, cfg.batch_size)
        images, coarse, target, prob, disagree = take(train_set, rows, rng.random(cfg.batch_size) < 0.5)
        stake = change_stakes(prob, coarse, target, cfg.change_margin)
        weight = patch_weights(stake, cfg.harm_weight, cfg.stake_power)
        logit = logits(gate, base, images, coarse, prob, disagree)
        loss = (F.binary_cross_entropy_with_logits(logit, (stake > 0).float(), reduction="none") * weight).sum()
        loss = loss / weight.sum().clamp(min=1.0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return gate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("--patches", nargs="+", required=True)
    ap.add_argument("--steps", type=int, default=4000)
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--harm-weight", type=float, default=4.0)
    ap.add_argument("--stake-power", type=float, default=0.5)
    ap.add_argument("--change-margin", type=float, default=0.2)
    ap.add_argument("--eval-patches", type=int, default=40_000)
    ap.add_argument("--kinds", default="patch,disagree")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    torch.set_num_threads(2)
    cfg = GateTrainConfig(
        checkpoint=args.checkpoint,
        patches=args.patches,
        out=args.out,
        steps=args.steps,
        harm_weight=args.harm_weight,
        stake_power=args.stake_power,
        change_margin=args.change_margin,
        held_out=True,
        flip_tta=True,
        eval_patches=args.eval_patches,
        gate_width=args.width,
    )
    data = PatchSet.open(args.patches)
    shard_label = np.concatenate([np.full(len(m["shards"]), i) for i, m in enumerate(data.manifests)])
    names = [Path(p).name for p in args.patches]
    train_idx, val_idx = split_patches(data, cfg)
    base = build_refiner(read_checkpoint(args.checkpoint), args.checkpoint)
    refiner = Refiner(base, checkpoint=args.checkpoint)
    t0 = time.perf_counter()
    train_set = refine_both_views(refiner, data, train_idx)
    scored = refine_both_views(refiner, data, val_idx)
    print(f"refined {len(train_idx)} + {len(val_idx)} patches in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    del refiner
    labels = shard_label[val_idx[:, 0]]
    results = {"args": {k: str(v) for k, v in vars(args).items()}, "train_patches": len(train_idx), "runs": {}}
    for seed in (int(s) for s in args.seeds.split(",")):
        for kind in args.kinds.split(","):
            t0 = time.perf_counter()
            cfg.seed = seed
            gate = train(kind, args.width, base, train_set, cfg)
            res = score(gate, base, scored, labels, names, args.change_margin)
            res["seconds"] = time.perf_counter() - t0
            results["runs"][f"{kind}_s{seed}"] = res
            line = ", ".join(
                f"{k} {v['all'] / 1e3:.0f}k ({v['kept']:.2f})" for k, v in res.items() if k.startswith("T")
            )
            head = f"alone {res['alone'] / 1e3:.0f}k oracle {res['oracle'] / 1e3:.0f}k"
            print(f"{kind} seed {seed}: {head} | {line}", flush=True)
            args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()

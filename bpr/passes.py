"""The three steps of one refinement pass over a :class:`bpr.feed.Job`.

1. :func:`extract_job`: boundary patches of every instance, cropped from image and masks
   (the geometry is :mod:`bpr.patches`); the Job holds them and room for their probabilities.
2. :func:`predict_batch`: one network forward over a :class:`bpr.feed.PatchBatch`, patches of
   one or many Jobs, with flip TTA and the quality gate; fills in the Jobs' probabilities.
3. :func:`reassemble_job`: once every patch of a Job has run, paste the probabilities back
   (the rules are :mod:`bpr.reassemble`).

The Refiner's ``prepare``, ``run_batch`` and ``finish`` are these steps with its network,
device and counters; :class:`bpr.refinement.Refinement` drives them pass after pass.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch

from bpr.backends import ProbabilityNet
from bpr.errors import BprInputError
from bpr.feed import Job, PatchBatch
from bpr.modeling.refiner_net import RefinerNet
from bpr.options import RefineOptions
from bpr.patches import crop_rows, crop_squares, extract_patch_corners, mask_extents, pad_to_patch, view_corners
from bpr.reassemble import boundary_length, changed_pixels, reassemble


class TooManyPatches(BprInputError):
    """A pass needs more boundary patches than the caller allows (checked before any crop)."""

    def __init__(self, needed: int, limit: int) -> None:
        super().__init__(f"the masks need {needed} boundary patches, over the limit of {limit}")
        self.needed, self.limit = needed, limit


def extract_job(
    image: torch.Tensor,
    masks: torch.Tensor,
    options: RefineOptions,
    patch_size: int,
    device: torch.device,
    active: np.ndarray | None = None,
    max_patches: int | None = None,
    context: int = 0,
) -> Job:
    """Extraction: boundary patches of every (active) instance, cropped from image and masks.

    image: (3, H, W) uint8 or float 0..255 and masks: (N, H, W) bool, both on ``device``; the
        boundary search runs on a CPU view of the masks (a copy only when the device is not the CPU).
    options: this pass's rules (``nms_iou``, ``cover_all`` here; the Job carries them on).
    active: (N,) bool, the instances to patch (None = all); the others get no patches.
    max_patches: raise :class:`TooManyPatches` instead of cropping more than this many.
    context: crop each patch's view, ``context`` more pixels on each side (the network's
        ``config.context``); the patch's place in it goes to ``Job.view_offsets``.
    Returns the Job, its probabilities not yet filled in and its ``extract_seconds`` set.
    """
    t0 = time.perf_counter()
    s = patch_size
    _, height, width = image.shape
    coarse = pad_to_patch(masks, s)  # images smaller than a patch: the edge repeats
    coarse_np = coarse.cpu().numpy()
    extents = mask_extents(coarse_np)  # once a pass: reassembly and the fallback rule reuse them
    per_instance = [
        extract_patch_corners(m, s, options.nms_iou, options.cover_all, tuple(extents[i]))
        if active is None or active[i]
        else np.zeros((0, 2), dtype=np.int64)
        for i, m in enumerate(coarse_np)
    ]
    corners = np.concatenate(per_instance) if per_instance else np.zeros((0, 2), dtype=np.int64)
    instance_ids = np.repeat(np.arange(len(per_instance)), [len(c) for c in per_instance])
    if max_patches is not None and len(corners) > max_patches:
        raise TooManyPatches(len(corners), max_patches)
    crops, view_offsets = corners, None
    if context:
        crops = view_corners(corners, s, context, *coarse.shape[-2:])
        view_offsets = corners - crops
    view = s + 2 * context
    # kept in the inputs' own dtypes (a uint8 image, bool masks: a quarter and a sixteenth of
    # float32) until their batch runs: a request's memory is mostly its waiting patches
    image_patches = crop_squares(image, crops, view)  # (P, 3, V, V)
    mask_patches = crop_squares(coarse, crops, view, instance_ids)[:, None]  # (P, 1, V, V)
    elapsed = time.perf_counter() - t0
    return Job(
        coarse=coarse,
        height=height,
        width=width,
        corners=corners,
        instance_ids=instance_ids,
        image_patches=image_patches,
        mask_patches=mask_patches,
        probs=torch.empty((len(corners), s, s), device=device),
        options=options,
        remaining=len(corners),
        extract_seconds=elapsed,
        extents=extents,
        view_offsets=view_offsets,
    )


def gate_applies(net: RefinerNet, options: RefineOptions) -> bool:
    """Whether ``options`` get the quality gate: asked for, and ``net`` has one."""
    return options.quality_gate and net.gate is not None


def asks_ungated(options: RefineOptions) -> bool:
    """Whether ``options`` ask for the ``ungated_shift`` rule: the gate asked for and the rule on."""
    return options.quality_gate and options.ungated_shift > 0


def ungated_applies(net: RefinerNet, options: RefineOptions) -> bool:
    """Whether ``options`` get the ``ungated_shift`` rule: they ask for it and ``net`` has a gate."""
    return asks_ungated(options) and net.gate is not None


@torch.inference_mode()
def predict_batch(
    batch: PatchBatch,
    net: RefinerNet,
    infer_net: ProbabilityNet,
    device: torch.device,
    precision: str,
    early_reject: float | None,
    companion_net: ProbabilityNet | None = None,
) -> tuple[int, int]:
    """The network: one forward pass over a batch of patches; fills in their Jobs' probabilities.

    net: the checkpoint's module (its gate judges the patches); infer_net: what computes the
    probabilities (the same module, a fused copy or an exported graph: :mod:`bpr.backends`).
    companion_net: the same for ``net.companion``, the checkpoint's second refiner, if it has
    one: its probability on each patch's view is averaged in with ``companion_weight``, and
    ``net`` gets the patch inside the view.
    precision: "fp16" / "bf16" run under autocast on ``device``; anything else in float32.
    Returns (patches the gate rejected, of which rejected before their second opinion).

    With the quality gate and a second opinion to come (flip TTA's mirrored forward, the
    companion's forward, or both), the gate first judges each patch on ``net``'s plain
    forward alone; a patch it rejects by more than ``early_reject`` logits keeps its coarse
    mask without the second opinion: a margin the checkpoint carries, chosen where the
    average turned (almost) none of those rejections into acceptances on the dev inputs.
    Every other patch gets the average and is judged again on it, exactly as without the
    shortcut.
    """
    parts = batch.parts
    view_images = torch.cat([job.image_patches[a:b] for job, a, b in parts]).float()  # (B, 3, V, V)
    view_masks = torch.cat([job.mask_patches[a:b] for job, a, b in parts]).float()  # (B, 1, V, V)
    offsets = _view_offsets(parts)
    patch = parts[0][0].probs.shape[-1]

    def inside(views: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """The patches inside their views (all rows, or the ``rows`` of the batch)."""
        if offsets is None:
            return views
        return crop_rows(views, offsets if rows is None else offsets[rows.cpu().numpy()], patch)

    images, masks = inside(view_images), inside(view_masks)  # (B, 3, S, S), (B, 1, S, S): what the gate sees
    # net sees the views when they carry its own context, else the patches inside them
    net_sees_views = offsets is None or net.config.context > 0

    def probability(runtime: ProbabilityNet, on_views: bool, rows: torch.Tensor | None, mirror: bool) -> torch.Tensor:
        """(rows, S, S) ``runtime``'s probability on the rows' views or patches, of the
        mirrored rows mirrored back when ``mirror``."""
        source = (view_images, view_masks) if on_views else (images, masks)
        im, mk = source if rows is None else (source[0][rows], source[1][rows])
        if mirror:
            prob = runtime.foreground_probability(im.flip(-1), mk.flip(-1)).flip(-1)
        else:
            prob = runtime.foreground_probability(im, mk)
        return inside(prob, rows) if on_views else prob

    def averaged(prob: torch.Tensor, runtime: ProbabilityNet, on_views: bool, rows: torch.Tensor) -> torch.Tensor:
        """``prob`` with the ``rows``' mirrored forward of ``runtime`` averaged in."""
        every = bool(rows.all())  # no index copies in the common case
        mirrored = probability(runtime, on_views, None if every else rows, mirror=True)
        if every:
            return 0.5 * (prob + mirrored)
        prob[rows] = 0.5 * (prob[rows] + mirrored)
        return prob

    wants_tta = _row_mask(parts, lambda options: options.flip_tta, device)
    wants_gate = _row_mask(parts, lambda options: gate_applies(net, options), device)
    # rows whose instance may get the ungated answer (the ungated_shift rule): their probabilities
    # before the gate are kept; an early-rejected row's is net's plain forward, without its second
    # opinion (measured: the rule keeps most of its gain so, and costs no network time)
    wants_ungated = _row_mask(parts, lambda options: ungated_applies(net, options), device)
    reject = torch.zeros(len(images), dtype=torch.bool, device=device)
    with precision_autocast(device, precision):
        probs = probability(infer_net, net_sees_views, None, mirror=False)  # (B, S, S)
        early = (wants_tta | (companion_net is not None)) & wants_gate  # a second opinion to come
        if early_reject is not None and bool(early.any()):
            reject[early] = _judge(net, images, masks, probs, early) <= -early_reject
        early_rejected = int(reject.sum())
        mirror = wants_tta & ~reject
        if bool(mirror.any()):
            probs = averaged(probs, infer_net, net_sees_views, mirror)
        keep = ~reject
        if companion_net is not None and bool(keep.any()):
            every = bool(keep.all())
            if every:
                other = probability(companion_net, True, None, mirror=False)
            else:  # the early-rejected rows keep net's own (their coarse mask replaces it below)
                other = probs.clone()
                other[keep] = probability(companion_net, True, keep, mirror=False).to(other.dtype)
            if bool(mirror.any()):
                other = averaged(other, companion_net, True, mirror)
            weight = net.config.companion_weight
            if every:
                probs = (1 - weight) * probs + weight * other.to(probs.dtype)
            else:
                probs[keep] = ((1 - weight) * probs[keep] + weight * other[keep]).to(probs.dtype)
        judge = wants_gate & ~reject
        if bool(judge.any()):
            reject[judge] = _judge(net, images, masks, probs, judge) <= 0
    ungated = probs.clone() if bool((wants_ungated & reject).any()) else None
    # rejected patches get their coarse mask back as their probability
    probs[reject] = masks[reject, 0].to(probs.dtype)
    hand_out(batch, probs, ungated)
    return int(reject.sum()), early_rejected


def hand_out(batch: PatchBatch, probs: torch.Tensor, ungated: torch.Tensor | None = None) -> None:
    """Give each job of ``batch`` its rows of ``probs`` (B, S, S), in the batch's order, and
    count them as done. ``ungated``: the same rows before the gate, for the jobs whose
    options ask for the ungated_shift rule (None: the gate rejected none of theirs here)."""
    offset = 0
    for job, a, b in batch.parts:
        job.probs[a:b] = probs[offset : offset + b - a]
        if ungated is not None and asks_ungated(job.options):
            if job.ungated is None:  # until now the gate had taken nothing: ungated = gated so far
                job.ungated = job.probs.clone()
            job.ungated[a:b] = ungated[offset : offset + b - a]
        elif job.ungated is not None:
            job.ungated[a:b] = probs[offset : offset + b - a]
        job.remaining -= b - a
        offset += b - a


def precision_autocast(device: torch.device, precision: str) -> torch.autocast:
    """Autocast for a run ``precision``: "fp16" / "bf16" on ``device``, anything else float32
    (a disabled autocast). Inference and gate training compute probabilities under it alike."""
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision)
    return torch.autocast(device_type=device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


def _view_offsets(parts: tuple) -> np.ndarray | None:
    """(B, 2) each batch row's patch offset inside its view; None when the jobs crop no context."""
    if parts[0][0].view_offsets is None:
        return None
    return np.concatenate([job.view_offsets[a:b] for job, a, b in parts])


def _row_mask(parts: tuple, wants: Callable[[RefineOptions], bool], device: torch.device) -> torch.Tensor:
    """(rows,) bool: the batch rows whose job's options ``wants``."""
    picks = torch.tensor([wants(job.options) for job, _, _ in parts], dtype=torch.bool)
    sizes = torch.tensor([b - a for _, a, b in parts])
    return picks.repeat_interleave(sizes).to(device)


def _judge(
    net: RefinerNet, images: torch.Tensor, masks: torch.Tensor, probs: torch.Tensor, rows: torch.Tensor
) -> torch.Tensor:
    """The gate's logits for the ``rows`` (bool) of a batch (no index copies when all are)."""
    if bool(rows.all()):
        return net.change_helps(images, masks, probs)
    return net.change_helps(images[rows], masks[rows], probs[rows])


def reassemble_job(job: Job) -> torch.Tensor:
    """Reassembly: paste a Job's probabilities back; (N, H, W) bool, the padding cropped away.
    Instances the ``ungated_shift`` rule picks get their ungated probabilities (``job.ungated_chosen``)."""
    if job.remaining:
        raise RuntimeError(f"finish() called with {job.remaining} patches of the job not yet run")
    o = job.options
    probs = job.probs
    removal_margins: dict[int, float] = {}
    if job.ungated is not None:
        job.ungated_chosen = ungated_instances(job)
        if job.ungated_chosen.any():
            rows = torch.as_tensor(job.ungated_chosen[job.instance_ids], device=probs.device)
            probs = torch.where(rows[:, None, None], job.ungated, probs)
            if o.ungated_removal_margin >= 0:
                removal_margins = {int(i): o.ungated_removal_margin for i in np.flatnonzero(job.ungated_chosen)}
    refined = reassemble(
        job.coarse,
        job.corners,
        job.instance_ids,
        probs,
        o.resolve_overlaps,
        o.change_margin,
        job.extents,
        removal_margins,
    )
    return refined[:, : job.height, : job.width]


def ungated_instances(job: Job) -> np.ndarray:
    """(N,) bool: the instances whose ungated answer moves their mask by at least the options'
    ``ungated_shift`` pixels on average: pixels it changes (the change margin applied, overlaps
    not yet resolved) per pixel of the coarse mask's boundary, both inside the image (not its
    padding). Only instances with a patch the gate took are measured; the others' two answers
    are the same."""
    assert job.ungated is not None
    differs = (job.ungated != job.probs).flatten(1).any(1).cpu().numpy()
    measured = np.zeros(job.coarse.shape[0], dtype=bool)
    measured[job.instance_ids[differs]] = True
    rows = measured[job.instance_ids]
    probs = job.ungated[torch.as_tensor(rows, device=job.ungated.device)]
    visible = (job.height, job.width)
    changed = changed_pixels(
        job.coarse, job.corners[rows], job.instance_ids[rows], probs, job.options.change_margin, visible
    )
    boxes = job.extents if job.extents is not None else mask_extents(job.coarse.cpu().numpy())
    chosen = np.zeros_like(measured)
    for i in np.flatnonzero(measured):
        y0, x0, y1, x1 = (int(v) for v in boxes[i])
        length = boundary_length(job.coarse[i, y0 : min(y1, job.height), x0 : min(x1, job.width)].cpu().numpy())
        chosen[i] = length > 0 and changed[i] >= job.options.ungated_shift * length
    return chosen

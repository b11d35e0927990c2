#!/usr/bin/env python
"""bpr-dev-table with two refiners averaged: a second network in place of flip TTA's mirror.

Flip TTA averages a network with itself on the mirrored patch: two views, one set of
mistakes. Two refiners trained differently (the context-16 effl0 and the default HRNet) make
different mistakes: a chunk one of them hallucinates on a nearly right mask is less likely
to be in the other's output, for about the cost of flip TTA when each runs one pass. An
experiment (issue 21, session 10), not in the library.

    BPR_ENS_SECOND=bpr/models/bpr_default.pt BPR_ENS_GATE=second BPR_ENS_TTA=0 \\
        python lab/diagnostics/ensemble_dev_table.py --checkpoint CKPT --no-flip-tta [dev-table flags]

``--checkpoint`` is the first refiner (its context sets the views); the second must have no
context and the same patch size. BPR_ENS_GATE: ``first``, ``second``, ``both`` (a patch
changes only if both gates accept) or ``none``; BPR_ENS_TTA=1 also mirrors both;
Its speed: ``python lab/diagnostics/ensemble_benchmark.py [benchmark.py flags]``.
BPR_ENS_WEIGHT: the first refiner's share of the average (default 0.5); BPR_ENS_T1 / BPR_ENS_T2:
each gate's logit threshold (default 0, on top of what its checkpoint has baked in).
"""

import os
import sys

import torch

import bpr.passes as passes
from bpr.cli.dev_table import main
from bpr.refiner import Refiner

SECOND = Refiner(os.environ["BPR_ENS_SECOND"])
GATE = os.environ.get("BPR_ENS_GATE", "second")
TTA = os.environ.get("BPR_ENS_TTA", "0") == "1"
WEIGHT = float(os.environ.get("BPR_ENS_WEIGHT", "0.5"))
THRESHOLDS = (float(os.environ.get("BPR_ENS_T1", "0")), float(os.environ.get("BPR_ENS_T2", "0")))
assert SECOND.net.config.context == 0 and GATE in ("first", "second", "both", "none")


def probability(net, images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    prob = net.foreground_probability(images, masks)
    if TTA:
        prob = 0.5 * (prob + net.foreground_probability(images.flip(-1), masks.flip(-1)).flip(-1))
    return prob


@torch.inference_mode()
def predict_batch(batch, net, infer_net, device, precision, early_reject, companion_net=None):
    """bpr.passes.predict_batch with the two refiners' probabilities averaged and gated."""
    parts = batch.parts
    view_images = torch.cat([job.image_patches[a:b] for job, a, b in parts])
    view_masks = torch.cat([job.mask_patches[a:b] for job, a, b in parts])
    offsets = passes._view_offsets(parts)
    patch = parts[0][0].probs.shape[-1]

    def inside(views: torch.Tensor) -> torch.Tensor:
        return views if offsets is None else passes.crop_rows(views, offsets, patch)

    images, masks = inside(view_images), inside(view_masks)
    with passes.precision_autocast(device, precision):
        first = inside(probability(infer_net, view_images, view_masks)).float()
    with passes.precision_autocast(SECOND.device, SECOND.precision):
        second = probability(SECOND.infer_net, images, masks).float()
    probs = WEIGHT * first + (1 - WEIGHT) * second
    accept = torch.ones(len(probs), dtype=torch.bool)
    if GATE in ("first", "both") and net.gate is not None:
        accept &= net.change_helps(images, masks, probs) > THRESHOLDS[0]
    if GATE in ("second", "both") and SECOND.net.gate is not None:
        accept &= SECOND.net.change_helps(images, masks, probs) > THRESHOLDS[1]
    reject = ~accept
    probs[reject] = masks[reject, 0].to(probs.dtype)
    passes.hand_out(batch, probs)
    return int(reject.sum()), 0


passes.predict_batch = predict_batch  # on import too: benchmarks/benchmark.py runs under it the same way
if __name__ == "__main__":
    sys.exit(main())

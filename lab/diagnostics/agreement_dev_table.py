#!/usr/bin/env python
"""bpr-dev-table for a pair checkpoint with its two refiners combined by agreement, not by average.

The default averages the HRNet and its companion 0.6 / 0.4, and a pixel changes where the
average leaves 0.5 +- margin. Here a pixel's combined probability is the less confident of the
two when they agree on a side of 0.5, and 0.5 (no change) when they disagree: a pixel changes
only where both refiners, each on its own, call for the change beyond the margin. The idea
(issue 21, session 11): a chunk one network hallucinates on a nearly right mask is not in the
other's answer, so it cannot pass. An experiment, not in the library.

    BPR_AGREE_MODE=min BPR_AGREE_GATE=first BPR_AGREE_T=0 \\
        python lab/diagnostics/agreement_dev_table.py --checkpoint bpr/models/bpr_default.pt [dev-table flags]

BPR_AGREE_MODE: ``min`` (agreement) or ``mean`` (the checkpoint's weighted average, as shipped
but without early reject: a control). BPR_AGREE_GATE: ``first`` (the HRNet's gate judges the
combined answer, its threshold shifted by BPR_AGREE_T logits) or ``none``.
"""

import os
import sys

import torch

import bpr.passes as passes
from bpr.cli.dev_table import main

MODE = os.environ.get("BPR_AGREE_MODE", "min")
GATE = os.environ.get("BPR_AGREE_GATE", "first")
SHIFT = float(os.environ.get("BPR_AGREE_T", "0"))
assert MODE in ("min", "mean") and GATE in ("first", "none")


def agreement(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """The less confident of two probabilities where both are on the same side of 0.5, else 0.5."""
    a, b = first - 0.5, second - 0.5
    weaker = torch.where(a.abs() < b.abs(), a, b)
    return 0.5 + torch.where(a * b > 0, weaker, torch.zeros_like(a))


@torch.inference_mode()
def predict_batch(batch, net, infer_net, device, precision, early_reject, companion_net=None):
    """bpr.passes.predict_batch for a pair, no flip TTA, no early reject, combined by MODE."""
    assert companion_net is not None, "a pair checkpoint is needed"
    parts = batch.parts
    view_images = torch.cat([job.image_patches[a:b] for job, a, b in parts])
    view_masks = torch.cat([job.mask_patches[a:b] for job, a, b in parts])
    offsets = passes._view_offsets(parts)
    patch = parts[0][0].probs.shape[-1]
    images = passes.crop_rows(view_images, offsets, patch)
    masks = passes.crop_rows(view_masks, offsets, patch)
    with passes.precision_autocast(device, precision):
        first = infer_net.foreground_probability(images, masks).float()
        second = passes.crop_rows(companion_net.foreground_probability(view_images, view_masks), offsets, patch).float()
    if MODE == "min":
        probs = agreement(first, second)
    else:
        weight = net.config.companion_weight
        probs = (1 - weight) * first + weight * second
    reject = torch.zeros(len(probs), dtype=torch.bool)
    if GATE == "first":
        reject = net.change_helps(images, masks, probs) <= SHIFT
    probs[reject] = masks[reject, 0].to(probs.dtype)
    passes.hand_out(batch, probs)
    return int(reject.sum()), 0


passes.predict_batch = predict_batch
if __name__ == "__main__":
    sys.exit(main())

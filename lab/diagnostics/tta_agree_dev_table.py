#!/usr/bin/env python
"""bpr-dev-table with flip TTA combined conservatively: a pixel's patch probability is the plain or
the mirrored forward's, whichever is nearer its coarse label, so a pixel changes only where both
views call for it. An experiment (issue 21, session 3): it landed on the same trade-off as a wider
change margin, so the library keeps the average. No gate: the candidates it was run on have none.

    python lab/diagnostics/tta_agree_dev_table.py --checkpoint CKPT --flip-tta --change-margin 0.2 [dev-table flags]
"""

import sys

import torch

import bpr.passes as passes
from bpr.cli.dev_table import main


@torch.inference_mode()
def predict_batch(batch, net, infer_net, device, precision, early_reject, companion_net=None):
    """bpr.passes.predict_batch with both views kept apart and combined toward the coarse label."""
    parts = batch.parts
    images = torch.cat([job.image_patches[a:b] for job, a, b in parts])
    masks = torch.cat([job.mask_patches[a:b] for job, a, b in parts])
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision)
    with torch.autocast(device_type=device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
        p1 = infer_net.foreground_probability(images, masks)
        p2 = infer_net.foreground_probability(images.flip(-1), masks.flip(-1)).flip(-1)
    coarse = masks[:, 0] > 0.5
    probs = torch.where(coarse, torch.maximum(p1, p2), torch.minimum(p1, p2))
    passes.hand_out(batch, probs)
    return 0, 0


passes.predict_batch = predict_batch
sys.exit(main())

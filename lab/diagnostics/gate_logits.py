"""Gate logits from the plain forward vs the flip-TTA forward, per patch, on real dev inputs.

How many patches could skip the mirrored forward (plain-forward logit far below 0) without
any final gate decision changing?

    python lab/diagnostics/gate_logits.py [checkpoint] [--save logits.npz]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from dev_images import first_pass, spread_images

from bpr.refiner import Refiner

BATCH = 64
MARGINS = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0)

p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument("checkpoint", nargs="?", default="bpr/models/bpr_default.pt")
p.add_argument("--images", type=int, default=30, help="images per dev input, spread evenly")
p.add_argument("--save", help="also write every logit here (npz)")
args = p.parse_args()
torch.set_num_threads(2)
ref = Refiner.from_checkpoint(args.checkpoint, backend="torch")  # the torch network: its gate and change_helps
net = ref.infer_net
out = {}
for name in ("cs-maskrcnn28", "cs-near", "cs-bottomup", "davis-osvos", "davis-rvos", "davis-near"):
    plain_logits, tta_logits = [], []
    for _, image, masks in spread_images(name, args.images):
        job = first_pass(ref, image, masks)
        if job is None:
            continue
        with torch.inference_mode():
            for b in range(0, job.num_patches, BATCH):
                i, m = job.image_patches[b : b + BATCH], job.mask_patches[b : b + BATCH]
                p1 = net.foreground_probability(i, m)
                p2 = 0.5 * (p1 + net.foreground_probability(i.flip(-1), m.flip(-1)).flip(-1))
                plain_logits.append(net.change_helps(i, m, p1))
                tta_logits.append(net.change_helps(i, m, p2))
    g1, g2 = torch.cat(plain_logits).numpy(), torch.cat(tta_logits).numpy()
    out[name] = (g1, g2)
    line = f"{name}: {len(g1)} patches, TTA-gate accepts {np.mean(g2 > 0):.3f};"
    for delta in MARGINS:
        skip = g1 <= -delta
        line += f" d{delta}: skip {skip.mean():.3f} lost {np.sum(skip & (g2 > 0))}"
    print(line, flush=True)
if args.save:
    np.savez(args.save, **{f"{k}_g1": v[0] for k, v in out.items()}, **{f"{k}_tta": v[1] for k, v in out.items()})

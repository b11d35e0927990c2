"""Gate logits from the plain forward vs the flip-TTA forward, per patch, on real dev inputs.

How many patches could skip the mirrored forward (plain-forward logit far below 0) without
any final gate decision changing?
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from dev_table import input_files  # noqa: E402

from bpr.io.coco import load_json  # noqa: E402
from bpr.io.images import read_image  # noqa: E402
from bpr.io.results import entries_to_masks  # noqa: E402
from bpr.refiner import Refiner  # noqa: E402

torch.set_num_threads(2)
ckpt = sys.argv[1] if len(sys.argv) > 1 else "models/bpr_default.pt"
ref = Refiner.from_checkpoint(ckpt)
net = ref.infer_net
opts = ref.options
out = {}
for name in ("cs-maskrcnn28", "cs-near", "cs-bottomup", "davis-osvos", "davis-rvos", "davis-near"):
    gt_path, images, coarse_path = input_files(name, Path("/work/shared/data"), Path("work/dev_inputs"))
    gt = load_json(gt_path)
    info = {i["id"]: i for i in gt["images"]}
    entries = load_json(coarse_path)
    groups: dict = {}
    for e in entries:
        groups.setdefault(e["image_id"], []).append(e)
    keys = list(groups)[:: max(1, len(groups) // 30)][:30]
    g1s, gts = [], []
    for k in keys:
        img = info[k]
        image = read_image(images / img["file_name"])
        masks = entries_to_masks(groups[k], img["height"], img["width"])
        areas = masks.reshape(len(masks), -1).sum(1)
        job = ref.prepare(torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1), torch.from_numpy(masks),
                          opts, areas >= opts.min_area)
        with torch.inference_mode():
            for b in range(0, job.num_patches, 64):
                i, m = job.image_patches[b:b + 64], job.mask_patches[b:b + 64]
                p1 = net.foreground_probability(i, m)
                p2 = 0.5 * (p1 + net.foreground_probability(i.flip(-1), m.flip(-1)).flip(-1))
                g1s.append(net.change_helps(i, m, p1))
                gts.append(net.change_helps(i, m, p2))
    g1, gt_ = torch.cat(g1s).numpy(), torch.cat(gts).numpy()
    out[name] = (g1, gt_)
    line = f"{name}: {len(g1)} patches, TTA-gate accepts {np.mean(gt_ > 0):.3f};"
    for delta in (0.0, 0.5, 1.0, 1.5, 2.0, 3.0):
        skip = g1 <= -delta
        lost = np.sum(skip & (gt_ > 0))
        line += f" d{delta}: skip {skip.mean():.3f} lost {lost}"
    print(line, flush=True)
np.savez("work/s7/gate_logits.npz", **{f"{k}_g1": v[0] for k, v in out.items()}, **{f"{k}_tta": v[1] for k, v in out.items()})

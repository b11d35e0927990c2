"""Early rejection on vs off, interleaved, on 20 real images each of cityscapes-dev (maskrcnn28)
and davis-dev-real (OSVOS): seconds per image in the network and in all, and how many patches
skipped their mirrored forward.

    python lab/diagnostics/early_reject_speed.py <checkpoint with gate_early_reject>

(benchmarks/benchmark.py's workload (b) cannot show this: its synthetic ellipses are accepted by
the gate almost everywhere.)
"""

from __future__ import annotations

import sys
import time

import torch
from dev_images import spread_images

from bpr.refiner import Refiner

torch.set_num_threads(2)
checkpoint = sys.argv[1]
ROUNDS = 3
IMAGES = 20

for name in ("cs-maskrcnn28", "davis-osvos"):
    data = [(image, masks) for _, image, masks in spread_images(name, IMAGES)]
    refiners = {on: Refiner.from_checkpoint(checkpoint, early_reject=on) for on in (True, False)}
    network = {True: 0.0, False: 0.0}
    total = {True: 0.0, False: 0.0}
    for _ in range(ROUNDS):
        for on, refiner in refiners.items():
            before, t0 = refiner.stats.seconds["network"], time.perf_counter()
            for image, masks in data:
                refiner.refine(image, masks)
            total[on] += time.perf_counter() - t0
            network[on] += refiner.stats.seconds["network"] - before
    n = ROUNDS * len(data)
    stats = refiners[True].stats
    print(
        f"{name}: network s/image early on {network[True] / n:.3f}, off {network[False] / n:.3f}; "
        f"total s/image on {total[True] / n:.3f}, off {total[False] / n:.3f}; "
        f"{stats.early_gated} of {stats.patches} patches early-rejected, {stats.gated} gated"
    )

"""Network-only variants on workload (b)'s real patches: which forward layout is fastest here.

python lab/diagnostics/speed.py [--sweep] [--compile]
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch
from dev_images import first_pass

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from benchmark import cityscapes_like  # noqa: E402

from bpr.refiner import Refiner  # noqa: E402

torch.set_num_threads(2)
ref = Refiner.from_checkpoint("bpr/models/bpr_default.pt", backend="torch")  # times the torch forward layouts
image, masks = cityscapes_like()
job = first_pass(ref, image, masks)
ims, mks = job.image_patches, job.mask_patches
print("patches", len(ims))
net = ref.infer_net


def two_calls(bs):
    out = []
    for b in range(0, len(ims), bs):
        i, m = ims[b : b + bs], mks[b : b + bs]
        p = net.foreground_probability(i, m)
        out.append(0.5 * (p + net.foreground_probability(i.flip(-1), m.flip(-1)).flip(-1)))
    return torch.cat(out)


def one_call(bs):
    out = []
    for b in range(0, len(ims), bs):
        i, m = ims[b : b + bs], mks[b : b + bs]
        n = len(i)
        p = net.foreground_probability(torch.cat([i, i.flip(-1)]), torch.cat([m, m.flip(-1)]))
        out.append(0.5 * (p[:n] + p[n:].flip(-1)))
    return torch.cat(out)


def seconds(fn) -> float:
    """Wall time of one call."""
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def timeit(fn, reps=7):
    with torch.inference_mode():
        fn()
        ts = [seconds(fn) for _ in range(reps)]
    return statistics.median(ts), min(ts)


ref_out = None
for name, fn in [
    ("two_calls bs64", lambda: two_calls(64)),
    ("two_calls bs32", lambda: two_calls(32)),
    ("two_calls bs137", lambda: two_calls(137)),
    ("one_call bs64", lambda: one_call(64)),
    ("one_call bs32", lambda: one_call(32)),
    ("one_call bs137", lambda: one_call(137)),
]:
    med, lo = timeit(fn)
    with torch.inference_mode():
        o = fn()
    if ref_out is None:
        ref_out = o
    print(
        f"{name}: median {med * 1000:.0f} ms, min {lo * 1000:.0f} ms, max diff {float((o - ref_out).abs().max()):.2e}"
    )
if "--sweep" in sys.argv:  # batch sizes, interleaved over 3 rounds of 3 runs each
    times: dict[int, list[float]] = {}
    with torch.inference_mode():
        for _ in range(3):
            for bs in (8, 16, 24, 32, 48, 64, 96):
                times.setdefault(bs, []).extend(seconds(lambda bs=bs: two_calls(bs)) for _ in range(3))
    for bs, ts in times.items():
        print(
            f"two_calls bs{bs}: median {statistics.median(ts) * 1000:.0f} ms, min {min(ts) * 1000:.0f}, max "
            f"{max(ts) * 1000:.0f}"
        )
if "--compile" in sys.argv:
    t = time.perf_counter()
    net.inference_graph = torch.compile(net.inference_graph, dynamic=True)
    with torch.inference_mode():
        two_calls(64)
    print(f"compile warm-up {time.perf_counter() - t:.1f} s")
    med, lo = timeit(lambda: two_calls(64))
    with torch.inference_mode():
        o = two_calls(64)
    print(
        f"compiled two_calls bs64: median {med * 1000:.0f} ms, min {lo * 1000:.0f}, max diff "
        f"{float((o - ref_out).abs().max()):.2e}"
    )

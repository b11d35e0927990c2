#!/usr/bin/env bash
# Every GPU row of docs/benchmarks.md in one short call on a machine with a CUDA GPU:
#   1. the network alone (the default model's patches, fp16 autocast against fp32),
#   2. the full image (benchmarks/benchmark.py workloads (a) and (b), default model and settings),
#   3. the service at 1 and 16 clients (benchmarks/loadtest.py, bpr-serve on the GPU).
# Writes everything to $OUT (default work/gpu) as markdown + json; about 3-5 minutes.
#
#   bash benchmarks/benchmark_gpu.sh            # needs torch with CUDA and this package installed
#   DEVICE=cpu REQUESTS=8 DURATION=10 bash benchmarks/benchmark_gpu.sh   # a dry run of the script itself
#
# On a CUDA device the backend is torch (fp16 autocast): `auto` picks it, the exported-graph
# backends run on the CPU only. Untested on a GPU until this script has run on one.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-work/gpu}
DEVICE=${DEVICE:-cuda}
REQUESTS=${REQUESTS:-400}
DURATION=${DURATION:-60}
export DEVICE
mkdir -p "$OUT"
python - <<'EOF' | tee "$OUT/network.md"
import os, statistics, sys, time, torch
sys.path.insert(0, "benchmarks")
from benchmark import cityscapes_like
from bpr.refiner import Refiner
device = os.environ["DEVICE"]
cuda = device.startswith("cuda")
assert torch.cuda.is_available() or not cuda, "no CUDA device"
sync = torch.cuda.synchronize if cuda else (lambda: None)
image, masks = cityscapes_like()
name = torch.cuda.get_device_name(0) if cuda else "CPU (dry run)"
print(f"{name}; network alone on workload (b)'s first-pass patches\n")
print("| precision | patches | batch | ms per forward (median of 20) | patches/s |")
print("| --- | ---: | ---: | ---: | ---: |")
for precision in (("fp16", "fp32") if cuda else ("fp32",)):
    refiner = Refiner(device=device, precision=precision, backend="torch")
    job = refiner.start_numpy(image, masks, options=refiner.options.updated(min_area=0)).advance()
    ims, mks = job.image_patches, job.mask_patches
    dtype = torch.float16 if precision == "fp16" else torch.float32
    for batch in sorted({min(b, len(ims)) for b in (64, 256, len(ims))}):
        x, m = ims[:batch], mks[:batch]
        times = []
        with torch.inference_mode(), torch.autocast(device.split(":")[0], dtype=dtype, enabled=precision == "fp16"):
            for i in range(25 if cuda else 7):
                sync(); t = time.perf_counter()
                refiner.infer_net.foreground_probability(x, m)
                sync()
                if i >= 5:
                    times.append(time.perf_counter() - t)
        ms = statistics.median(times) * 1e3
        print(f"| {precision} | {len(ims)} | {len(x)} | {ms:.2f} | {len(x) / ms * 1e3:.0f} |")
EOF
python benchmarks/benchmark.py --device "$DEVICE" --checkpoint bpr/models/bpr_default.pt --input-sizes 64 --precisions auto fp32 \
    --repeats 5 --json "$OUT/full_image.json" | tee "$OUT/full_image.md"
for clients in 1 16; do
    BPR_DEVICE=$DEVICE python benchmarks/loadtest.py --spawn --clients "$clients" --requests "$REQUESTS" \
        --duration "$DURATION" --json "$OUT/service_${clients}.json" | tee "$OUT/service_${clients}.md"
done
echo "GPU rows in $OUT"

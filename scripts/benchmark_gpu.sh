#!/usr/bin/env bash
# Every GPU row of the README in one short call on a machine with a CUDA GPU:
#   1. the network alone (the default model's patches, fp16 autocast against fp32),
#   2. the full image (scripts/benchmark.py workloads (a) and (b), default model and settings),
#   3. the service at 1 and 16 clients (scripts/loadtest.py, bpr-serve on the GPU).
# Writes everything to $OUT (default work/gpu) as markdown + json; about 3-5 minutes.
#
#   bash scripts/benchmark_gpu.sh            # needs torch with CUDA and this package installed
#
# On a CUDA device the backend is torch (fp16 autocast): `auto` picks it, the exported-graph
# backends run on the CPU only. Untested on a GPU until this script has run on one.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-work/gpu}
mkdir -p "$OUT"
python - <<'EOF' | tee "$OUT/network.md"
import statistics, sys, time, torch
sys.path.insert(0, "scripts")
from benchmark import cityscapes_like
from bpr.refiner import Refiner
assert torch.cuda.is_available(), "no CUDA device"
image, masks = cityscapes_like()
print(f"GPU: {torch.cuda.get_device_name(0)}; network alone on workload (b)'s first-pass patches\n")
print("| precision | patches | batch | ms per forward (median of 20) | patches/s |")
print("| --- | ---: | ---: | ---: | ---: |")
for precision in ("fp16", "fp32"):
    refiner = Refiner(device="cuda", precision=precision)
    job = refiner.start_numpy(image, masks, options=refiner.options.updated(min_area=0)).advance()
    ims, mks = job.image_patches, job.mask_patches
    dtype = torch.float16 if precision == "fp16" else torch.float32
    for batch in (64, 256, len(ims)):
        x, m = ims[:batch], mks[:batch]
        times = []
        with torch.inference_mode(), torch.autocast("cuda", dtype=dtype, enabled=precision == "fp16"):
            for i in range(25):
                torch.cuda.synchronize(); t = time.perf_counter()
                refiner.infer_net.foreground_probability(x, m)
                torch.cuda.synchronize()
                if i >= 5:
                    times.append(time.perf_counter() - t)
        ms = statistics.median(times) * 1e3
        print(f"| {precision} | {len(ims)} | {len(x)} | {ms:.2f} | {len(x) / ms * 1e3:.0f} |")
EOF
python scripts/benchmark.py --device cuda --checkpoint bpr/models/bpr_default.pt --input-sizes 64 --precisions auto fp32 \
    --repeats 5 --json "$OUT/full_image.json" | tee "$OUT/full_image.md"
for clients in 1 16; do
    BPR_DEVICE=cuda python scripts/loadtest.py --spawn --clients "$clients" --requests 400 --duration 60 \
        --json "$OUT/service_${clients}.json" | tee "$OUT/service_${clients}.md"
done
echo "GPU rows in $OUT"

"""Throughput of bpr-refine's local engine against --engine ray with 1 and 2 workers.

Each configuration refines the same real set end to end through the CLI (reading images,
refining, writing the results file) and must write the same bytes as the local engine;
the table gives wall time, images/s and patches/s. A run of Ray on a single image measures
Ray's fixed cost (starting the instance, the actors, loading the model in each); the steady
rate is the patches over the wall time less that cost.

    python benchmarks/benchmark_ray.py --checkpoint bpr/models/bpr_default.pt --set davis-dev-real --max-images 40
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bpr.io.datasets import shared_data_root

REPO = Path(__file__).resolve().parents[1]
SETS = {"davis-dev-real": "osvos.json", "cityscapes-dev": "maskrcnn28.json"}


def subset(data: Path, name: str, max_images: int, out: Path) -> Path:
    """The first ``max_images`` images of a set's predictions, as a results file."""
    results = json.loads((data / name / SETS[name]).read_text())
    ids = list(dict.fromkeys(e["image_id"] for e in results))[:max_images]
    keep = set(ids)
    path = out / "results.json"
    path.write_text(json.dumps([e for e in results if e["image_id"] in keep]))
    return path


def run(argv: list[str]) -> tuple[float, str]:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "bpr.cli.refine", *argv], capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"bpr-refine failed: {proc.stderr[-2000:]}")
    return wall, proc.stderr.strip().splitlines()[-1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default=str(REPO / "bpr" / "models" / "bpr_default.pt"))
    ap.add_argument("--data", type=Path, default=shared_data_root())
    ap.add_argument("--set", choices=sorted(SETS), default="davis-dev-real")
    ap.add_argument("--max-images", type=int, default=40)
    args = ap.parse_args()
    root = args.data / args.set
    cores = os.cpu_count() or 1
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "one").mkdir()

        def inputs(results: Path) -> list[str]:
            return [str(results), "--images", str(root / "images"), "--image-info", str(root / "gt.json")]

        one = subset(args.data, args.set, 1, Path(tmp) / "one")
        ray_1x = ["--engine", "ray", "--num-workers", "1", "--cpus-per-worker", str(cores)]
        startup, _ = run([*inputs(one), "--checkpoint", args.checkpoint, "--out", str(Path(tmp) / "one.json"), *ray_1x])
        results = subset(args.data, args.set, args.max_images, Path(tmp))
        n_images = len({e["image_id"] for e in json.loads(results.read_text())})
        base = [*inputs(results), "--checkpoint", args.checkpoint]
        configs = [
            ("local", ["--threads", str(cores)]),
            (f"ray, 1 worker x {cores} CPUs", ray_1x),
            (
                f"ray, {cores} workers x 1 CPU",
                ["--engine", "ray", "--num-workers", str(cores), "--cpus-per-worker", "1"],
            ),
        ]
        reference = None
        for label, extra in configs:
            out = Path(tmp) / f"{len(rows)}.json"
            wall, summary = run([*base, "--out", str(out), *extra])
            patches = int(re.search(r"(\d+) patches", summary).group(1))
            same = reference is None or out.read_bytes() == reference
            reference = reference or out.read_bytes()
            fixed = startup if extra[:2] == ["--engine", "ray"] else 0.0
            rows.append((label, wall, n_images / wall, patches / wall, patches / max(wall - fixed, 1e-9), same))
            print(f"{label}: {summary}", file=sys.stderr)
    print(
        f"\n{args.set}, {n_images} images, {Path(args.checkpoint).name}, {cores} cores; Ray's fixed cost "
        f"(a 1-image run): {startup:.1f} s\n"
    )
    print("| engine | wall | images/s | patches/s | patches/s without Ray's fixed cost | same output as local |")
    print("| --- | ---: | ---: | ---: | ---: | --- |")
    for label, wall, ips, pps, steady, same in rows:
        print(f"| {label} | {wall:.1f} s | {ips:.2f} | {pps:.0f} | {steady:.0f} | {'yes' if same else 'NO'} |")
    return 0 if all(r[-1] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())

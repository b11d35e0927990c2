"""bpr-refine: refine every mask of a COCO results file and write a results file back."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from bpr.backends import BACKENDS, backend_from_env
from bpr.cli.common import add_option_flags, command_parser, rules_summary, run_cli, torch_threads
from bpr.cli.refine_ray import add_ray_arguments, check_engine_flags, run_ray
from bpr.errors import BprInputError
from bpr.io.atomic import check_writable
from bpr.io.coco import write_json_atomic
from bpr.io.datasets import image_paths
from bpr.io.pipeline import map_behind, prefetch
from bpr.io.results import check_mask_budget, group_by_image, load_image_masks, load_results, refined_entry
from bpr.refiner import PRECISIONS
from bpr.spec import RefinerSpec


def build_parser() -> argparse.ArgumentParser:
    p = command_parser(
        prog="bpr-refine",
        description="Refine the instance masks of a COCO results file (any detector) with BPR.",
    )
    p.add_argument("results", type=Path, help="COCO results json: [{image_id, category_id, segmentation, score}]")
    p.add_argument(
        "--images",
        required=True,
        help="directory holding the images (with --engine ray also a URI prefix such as s3://bucket/images)",
    )
    p.add_argument(
        "--image-info",
        type=Path,
        help="COCO json whose 'images' map image_id to file_name "
        "(annotations not needed); without it image_id must be a file stem in --images",
    )
    p.add_argument("--out", type=Path, help="output json (default: <input stem>.refined.json beside the input)")
    p.add_argument("--checkpoint", type=Path, help="refiner checkpoint (default: the bundled model)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (fp16 autocast on CUDA)")
    p.add_argument(
        "--precision",
        default="auto",
        choices=list(PRECISIONS),
        help="auto: fp16 on CUDA, bf16 with OpenVINO on CPUs with native bf16, else fp32; "
        "int8: the exported graph statically quantized (openvino / onnxruntime backends)",
    )
    p.add_argument(
        "--backend",
        choices=list(BACKENDS),
        default=None,
        help="what runs the network: auto (default, or BPR_BACKEND): OpenVINO, else ONNX Runtime, else torch "
        "on a CPU, torch on CUDA; the ONNX graph is exported once and cached (BPR_CACHE_DIR)",
    )
    p.add_argument("--batch-size", type=int, default=64, help="patches per network pass (default 64)")
    p.add_argument(
        "--patch-size",
        type=int,
        default=None,
        help="square cut around the boundary, in image pixels (default: the checkpoint's, 64)",
    )
    p.add_argument(
        "--input-size",
        type=int,
        default=None,
        help="network input size the patch is resized to (default: the checkpoint's)",
    )
    add_option_flags(p)
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads for the network (torch.set_num_threads; default BPR_TORCH_THREADS, else one per "
        "core). Two torch jobs sharing the cores each run >10x slower: give each a share",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    p.add_argument(
        "--engine",
        choices=["local", "ray"],
        default="local",
        help="local: this process (default); ray: Ray Data actors on this machine or a cluster "
        "(same output file, resumable; see docs/ray.md)",
    )
    add_ray_arguments(p)
    return p


def _images_with_masks(
    results: list[dict[str, Any]], groups: dict[Any, list[int]], paths: dict[Any, Any]
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    for image_id, indices in groups.items():
        yield load_image_masks(str(paths[image_id]), [results[i] for i in indices], indices)


@run_cli("bpr-refine")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    check_engine_flags(args)
    args.backend = backend_from_env(args.backend)  # a bad BPR_BACKEND fails before any work
    out = args.out or args.results.with_name(f"{args.results.stem}.refined.json")
    if out.resolve() == args.results.resolve():
        raise BprInputError("--out would overwrite the input results file; choose another path")
    threads = torch_threads(args.threads)
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    check_writable(out)
    results = load_results(args.results)
    groups = group_by_image(results)
    check_mask_budget(results, groups)  # BPR_MAX_MASK_PIXELS, as the service; before any image is read
    spec = RefinerSpec.from_fields(vars(args))
    if args.engine == "ray":
        return run_ray(args, results, groups, spec, out)
    paths = image_paths(list(groups), args.images, args.image_info)
    refiner = spec.build()
    refined: list[dict[str, Any] | None] = [None] * len(results)
    start = time.perf_counter()
    bar = tqdm(total=len(groups), unit="img", disable=True if args.quiet else None, file=sys.stderr)
    # decoding runs ahead of the network and RLE encoding behind it, each on its own thread
    stream = refiner.refine_many(prefetch(_images_with_masks(results, groups, paths)))

    def encode(done: tuple[list[int], np.ndarray]) -> tuple[list[int], list[dict[str, Any]]]:
        indices, masks = done
        return indices, [refined_entry(results[i], mask) for i, mask in zip(indices, masks)]

    for indices, entries in map_behind(encode, zip(groups.values(), stream)):
        for i, entry in zip(indices, entries):
            refined[i] = entry
        elapsed = max(time.perf_counter() - start, 1e-9)
        bar.set_postfix(instances=refiner.stats.instances, patches_per_s=f"{refiner.stats.patches / elapsed:.0f}")
        bar.update(1)
    bar.close()
    write_json_atomic(out, refined)
    if not args.quiet:
        s = refiner.stats
        seconds = time.perf_counter() - start
        print(
            f"bpr-refine: {s.images} images, {s.instances} instances, {s.patches} patches in "
            f"{seconds:.1f} s ({s.images / max(seconds, 1e-9):.2f} images/s, {refiner.backend} backend); "
            f"{rules_summary(vars(s), bool(refiner.options.keep_thin))} -> {out}",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

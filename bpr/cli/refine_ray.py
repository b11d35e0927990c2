"""``bpr-refine --engine ray``: the same results file in and out, refined on a Ray cluster.

The driver plans shards of whole images, skips those a previous run left finished under the
work dir, sends the rest to Ray Data actors, keeps each finished shard as it arrives, and
writes the output once every entry is there (atomically, exactly as the local engine would).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path
from typing import Any

from bpr.cli.common import rules_summary
from bpr.distributed.shards import WorkDir, fingerprint, plan_shards, spec_settings
from bpr.errors import BprInputError
from bpr.io.coco import load_image_records, write_json_atomic
from bpr.io.datasets import image_paths
from bpr.io.images import is_uri
from bpr.spec import RefinerSpec

RAY_FLAGS = ("address", "num_workers", "cpus_per_worker", "gpus_per_worker", "work_dir", "images_per_shard")


def add_ray_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("ray engine (--engine ray; needs the 'ray' extra: pip install '<bpr checkout>[ray]')")
    g.add_argument(
        "--address",
        default=None,
        help="Ray cluster to join: 'auto', ray://head:10001 or host:port (default: start a local Ray "
        "instance on this machine)",
    )
    g.add_argument(
        "--num-workers",
        type=int,
        default=None,
        help="refiner actors, each loading the model once (default: the cluster's CPUs / --cpus-per-worker, "
        "or GPUs / --gpus-per-worker)",
    )
    g.add_argument(
        "--cpus-per-worker", type=float, default=None, help="CPUs per actor, also its torch threads (default 1)"
    )
    g.add_argument(
        "--gpus-per-worker",
        type=float,
        default=None,
        help="GPU share per actor, e.g. 0.5 for two actors per GPU (default 0: CPU actors); above 0 the "
        "actors run on CUDA",
    )
    g.add_argument(
        "--work-dir",
        type=Path,
        default=None,
        help="finished shards are kept here, so a rerun after a crash or Ctrl-C skips them (default: "
        "<out>.parts beside the output, removed after success)",
    )
    g.add_argument(
        "--images-per-shard",
        type=int,
        default=None,
        help="images per shard: the unit of work, retry and resume (default 8)",
    )


def check_engine_flags(args: argparse.Namespace) -> None:
    """Ray flags given to the local engine are a mistake worth one line, not silence."""
    if args.engine != "ray":
        given = [f"--{f.replace('_', '-')}" for f in RAY_FLAGS if getattr(args, f) is not None]
        if given:
            raise BprInputError(f"{', '.join(given)} only apply with --engine ray")


def ray_image_paths(image_ids: list[Any], images: Path | str, image_info: Path | None) -> dict[Any, str]:
    """Local folders are checked up front, as the local engine does; for a URI prefix
    (s3://bucket/dir) the names come from --image-info and the workers read the files."""
    root = str(images)
    if not is_uri(root):
        return {k: str(Path(v).resolve()) for k, v in image_paths(image_ids, images, image_info).items()}
    if image_info is None:
        raise BprInputError("--images is a URI: pass --image-info with a COCO json whose 'images' name the files")
    names = {img["id"]: img["file_name"] for img in load_image_records(image_info)}
    missing = [i for i in image_ids if i not in names]
    if missing:
        raise BprInputError(f"image_id {missing[0]!r} is not in {image_info}")
    return {i: f"{root.rstrip('/')}/{names[i]}" for i in image_ids}


def run_ray(
    args: argparse.Namespace, results: list[dict[str, Any]], groups: dict[Any, list[int]], spec: RefinerSpec, out: Path
) -> int:
    from bpr.distributed.ray_engine import ClusterOptions, connect, import_ray, pool_size, run_shards

    import_ray()  # the install hint before any work
    start = time.perf_counter()
    paths = ray_image_paths(list(groups), args.images, args.image_info)
    shards = plan_shards(results, groups, paths, args.images_per_shard or 8)
    settings = spec_settings(spec)
    if settings["checkpoint"] is not None:  # workers may start in another folder
        settings["checkpoint"] = str(Path(settings["checkpoint"]).resolve())
    default_dir = args.work_dir is None
    work = WorkDir(
        args.work_dir or out.with_name(out.name + ".parts"),
        fingerprint(args.results, {**settings, "images": str(args.images)}, shards),
        shards,
    )
    done = work.done()
    todo = [s for s in shards if s.number not in done]
    options = ClusterOptions(
        address=args.address,
        num_workers=args.num_workers,
        cpus_per_worker=args.cpus_per_worker or 1.0,
        gpus_per_worker=args.gpus_per_worker or 0.0,
        progress=not args.quiet,
    )
    workers = computed_patches = 0
    if todo:
        started = connect(options)
        try:
            workers = min(pool_size(options), len(todo))
            options = dataclasses.replace(options, num_workers=workers)  # run_shards sizes its pool from this
            for result in run_shards(todo, settings, options):
                if "error" in result:
                    raise BprInputError(result["error"])
                work.write(result)
                computed_patches += result["stats"]["patches"]
        finally:
            if started:
                import_ray().shutdown()
    refined, totals = work.assemble(len(results))
    write_json_atomic(out, refined)
    if default_dir:
        work.remove()
    if not args.quiet:
        elapsed = time.perf_counter() - start
        print(
            f"bpr-refine (ray): {len(groups)} images, {len(results)} instances, {totals['patches']} patches in "
            f"{elapsed:.1f} s ({computed_patches / max(elapsed, 1e-9):.0f} patches/s computed) on {workers} workers; "
            f"{len(shards) - len(todo)} of {len(shards)} shards reused from {work.root}; "
            f"{rules_summary(totals, bool(totals['thin_kept']))} -> {out}",
            file=sys.stderr,
        )
    return 0

"""Refinement on a Ray cluster with Ray Data batch inference: stateful actors, one model each.

Two doors, one worker:

* :func:`run_shards` serves ``bpr-refine --engine ray``: a Dataset of shards (whole images
  with their entries, see :mod:`bpr.distributed.shards`) mapped by an actor pool; each actor
  loads the refiner once and streams the patches of a shard's images through shared network
  batches, as the local engine does. Results stream back to the driver, which keeps them.
* :func:`refine_dataset` serves pipelines already on Ray Data: a Dataset of (image,
  instances) rows in, the same rows with refined instances out.

Ray is an optional extra (``pip install '.[ray]'`` in a checkout); nothing else in bpr imports this module.
Ray Data restarts an actor whose process dies and re-runs the shard it held; a shard's file is
written whole or not at all, so a re-run shard can neither be lost nor counted twice.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bpr.distributed.shards import Shard, refine_shard, spec_settings
from bpr.errors import BprInputError
from bpr.io.images import read_image_any
from bpr.io.results import entries_to_masks, refined_entry
from bpr.spec import RefinerSpec

INSTALL_HINT = "the ray engine needs Ray Data, the 'ray' extra of bpr-refine: pip install '<bpr checkout>[ray]'"


def import_ray() -> Any:
    """The ray module, or a one-line BprInputError saying how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise BprInputError(INSTALL_HINT) from None
    return ray


@dataclass(frozen=True)
class ClusterOptions:
    """Where and how wide to run. ``address`` None: a local Ray instance on this machine."""

    address: str | None = None
    num_workers: int | None = None  # None: as many as the cluster's CPUs (or GPUs) allow
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    progress: bool = True


def connect(options: ClusterOptions) -> bool:
    """Join ``options.address`` (or the Ray instance this process already has, or start a
    local one). Returns True when this call started Ray, so the caller shuts it down again."""
    ray = import_ray()
    if ray.is_initialized():
        return False
    quiet = not options.progress
    if options.address:
        try:
            ray.init(address=options.address, logging_level=logging.WARNING, log_to_driver=not quiet)
        except ConnectionError as exc:
            raise BprInputError(f"cannot reach the Ray cluster at {options.address}: {exc}") from None
    else:
        ray.init(
            num_cpus=os.cpu_count(),
            include_dashboard=False,
            object_store_memory=1 << 30,  # payloads are JSON shards, not pixels: 1 GiB is plenty
            logging_level=logging.WARNING,
            log_to_driver=not quiet,
        )
    return True


def pool_size(options: ClusterOptions) -> int:
    if options.num_workers is not None:
        if options.num_workers < 1:
            raise BprInputError(f"--num-workers must be at least 1, got {options.num_workers}")
        return options.num_workers
    ray = import_ray()
    resources = ray.cluster_resources()
    if options.gpus_per_worker > 0:
        return max(1, int(resources.get("GPU", 0) / options.gpus_per_worker))
    return max(1, int(resources.get("CPU", 1) / max(options.cpus_per_worker, 1e-9)))


def _check_options(options: ClusterOptions) -> None:
    if options.cpus_per_worker <= 0:
        raise BprInputError(f"--cpus-per-worker must be above 0, got {options.cpus_per_worker}")
    if options.gpus_per_worker < 0:
        raise BprInputError(f"--gpus-per-worker must be 0 or more, got {options.gpus_per_worker}")


def _worker_spec(settings: dict[str, Any], options: ClusterOptions) -> dict[str, Any]:
    """The RefinerSpec fields a worker builds from: a GPU share means a CUDA refiner."""
    if options.gpus_per_worker > 0 and str(settings.get("device", "cpu")) == "cpu":
        settings = {**settings, "device": "cuda"}  # Ray sets CUDA_VISIBLE_DEVICES to the actor's share
    return settings


class _RefinerActor:
    """Loads the refiner once per actor process, with torch threads = the CPUs it was given."""

    def __init__(self, settings: dict[str, Any], threads: int) -> None:
        import torch

        torch.set_num_threads(max(1, threads))
        fields = dict(settings)
        if fields.get("checkpoint") is not None:
            fields["checkpoint"] = Path(fields["checkpoint"])
        self.refiner = RefinerSpec(**fields).build()


class ShardWorker(_RefinerActor):
    """Actor of ``bpr-refine --engine ray``: one shard payload in, one JSON result out."""

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        results = [json.dumps(refine_shard(self.refiner, str(p))) for p in batch["payload"]]
        return {"shard": batch["shard"], "result": np.array(results, dtype=object)}


def run_shards(shards: Sequence[Shard], settings: dict[str, Any], options: ClusterOptions) -> Iterator[dict[str, Any]]:
    """Refine ``shards`` on the cluster; yields each shard's result as it finishes (any order)."""
    _check_options(options)
    ray = import_ray()
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = options.progress
    logging.getLogger("ray.data").setLevel(logging.INFO if options.progress else logging.WARNING)
    rows = [{"shard": s.number, "payload": s.payload()} for s in shards]
    ds = ray.data.from_items(rows, override_num_blocks=max(1, len(rows)))
    ds = ds.map_batches(
        ShardWorker,
        batch_size=1,
        compute=ray.data.ActorPoolStrategy(size=min(pool_size(options), max(1, len(rows)))),
        num_cpus=options.cpus_per_worker,
        num_gpus=options.gpus_per_worker,
        fn_constructor_kwargs={"settings": _worker_spec(settings, options), "threads": int(options.cpus_per_worker)},
    )
    for row in ds.iter_rows():
        yield json.loads(row["result"])


class RowWorker(_RefinerActor):
    """Actor of :func:`refine_dataset`: a batch of (image, instances) rows, refined together."""

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(batch["instances"])
        entries = [_entries(batch["instances"][i], i) for i in range(n)]

        def items():
            for i in range(n):
                image = batch["image"][i] if "image" in batch else read_image_any(str(batch["image_path"][i]))
                image = np.ascontiguousarray(image, dtype=np.uint8)
                yield image, entries_to_masks(entries[i], image.shape[0], image.shape[1], what=f"row {i} instances")

        refined = [
            json.dumps([refined_entry(e, m) for e, m in zip(es, masks)])
            for es, masks in zip(entries, self.refiner.refine_many(items()))
        ]
        return {**batch, "instances": np.array(refined, dtype=object)}


def _entries(value: Any, row: int) -> list[dict[str, Any]]:
    entries = json.loads(value) if isinstance(value, (str, bytes)) else list(value)
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise BprInputError(f"row {row}: 'instances' must be a JSON list of COCO results entries")
    return entries


def refine_dataset(
    ds: Any,
    spec: RefinerSpec | None = None,
    *,
    num_workers: int = 1,
    cpus_per_worker: float = 1.0,
    gpus_per_worker: float = 0.0,
    images_per_call: int = 8,
) -> Any:
    """Refine a Ray Dataset of images and their instances; returns a lazy Dataset.

    Each row has ``image`` (an HxWx3 uint8 RGB array) or ``image_path`` (a local path or a
    URI such as ``s3://bucket/frame.jpg``), and ``instances``: that image's COCO results
    entries as a JSON string (segmentations as RLE or polygons; any other keys are kept).
    The output rows are the input rows with ``instances`` replaced by the refined entries
    (JSON string: refined RLE, recomputed bbox and area). ``images_per_call`` images go
    through one actor call and share its network batches.
    """
    options = ClusterOptions(num_workers=num_workers, cpus_per_worker=cpus_per_worker, gpus_per_worker=gpus_per_worker)
    _check_options(options)
    ray = import_ray()
    settings = spec_settings(spec or RefinerSpec())
    return ds.map_batches(
        RowWorker,
        batch_size=images_per_call,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=num_workers),
        num_cpus=cpus_per_worker,
        num_gpus=gpus_per_worker,
        fn_constructor_kwargs={"settings": _worker_spec(settings, options), "threads": int(cpus_per_worker)},
    )

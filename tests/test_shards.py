"""A shard's error names the image that failed, although the stream reads ahead of the network.

``refine_shard`` is what every Ray worker runs; these tests need no Ray. The Refiner reads
and extracts the next images on a worker thread while the network runs, so "the last image
read" is usually not the one being refined when something breaks.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

import bpr.distributed.shards as shards
from bpr.io.coco import load_json
from bpr.refiner import Refiner


def _shard(data_dir: Path, images: int = 5) -> shards.Shard:
    """One shard of ``images`` DAVIS frames with their real OSVOS masks."""
    root = data_dir / "davis-dev-real"
    results = load_json(root / "osvos.json")
    files = {i["id"]: i["file_name"] for i in load_json(root / "gt.json")["images"]}
    groups: dict[int, list[int]] = {}
    for index, entry in enumerate(results):
        if len(groups) == images and entry["image_id"] not in groups:
            break
        groups.setdefault(entry["image_id"], []).append(index)
    paths = {image_id: str(root / "images" / files[image_id]) for image_id in groups}
    (shard,) = shards.plan_shards(results, groups, paths, images)
    return shard


def _counting_reads(monkeypatch: pytest.MonkeyPatch, fail_at: int | None = None) -> list[str]:
    """Record every image read; the read number ``fail_at`` raises OSError."""
    reads: list[str] = []
    real = shards.load_image_masks

    def read(path, entries, indices):
        reads.append(path)
        if len(reads) - 1 == fail_at:
            raise OSError("disk read error")
        return real(path, entries, indices)

    monkeypatch.setattr(shards, "load_image_masks", read)
    return reads


def test_a_network_failure_names_the_image_being_refined_not_the_last_one_read(
    data_dir, random_checkpoint, monkeypatch
):
    shard = _shard(data_dir)
    reads = _counting_reads(monkeypatch)
    refiner = Refiner.from_checkpoint(random_checkpoint, backend="torch", batch_size=4)

    def broken_network(batch):
        deadline = time.monotonic() + 10
        while len(reads) < 3 and time.monotonic() < deadline:  # let the reader get ahead
            time.sleep(0.01)
        raise RuntimeError("CUDA error: device-side assert triggered")

    monkeypatch.setattr(refiner, "run_batch", broken_network)
    got = shards.refine_shard(refiner, shard.payload())
    first = shard.images[0]
    assert len(reads) >= 3  # the reader was ahead of the failing image
    assert got["error"] == (
        f"image_id {first['image_id']!r} ({first['path']}): RuntimeError: CUDA error: device-side assert triggered"
    )
    assert [t.name for t in threading.enumerate() if t.name.startswith("bpr-")] == []


def test_a_failed_read_names_its_own_image_even_before_earlier_images_are_refined(
    data_dir, random_checkpoint, monkeypatch
):
    shard = _shard(data_dir)
    _counting_reads(monkeypatch, fail_at=3)
    refiner = Refiner.from_checkpoint(random_checkpoint, backend="torch", batch_size=64)
    got = shards.refine_shard(refiner, shard.payload())
    bad = shard.images[3]
    assert got == {"shard": 0, "error": f"image_id {bad['image_id']!r} ({bad['path']}): OSError: disk read error"}


def test_a_shard_that_refines_returns_every_entry_once(data_dir, random_checkpoint):
    shard = _shard(data_dir, images=3)
    refiner = Refiner.from_checkpoint(random_checkpoint, backend="torch", batch_size=16)
    got = shards.refine_shard(refiner, shard.payload())
    assert [index for index, _ in got["refined"]] == shard.indices
    assert got["stats"]["images"] == 3
    assert got["stats"]["thin_kept"] == 0  # the rule is off by default
    thin_refiner = Refiner.from_checkpoint(random_checkpoint, backend="torch", keep_thin=4)
    with_thin = shards.refine_shard(thin_refiner, shard.payload())
    assert with_thin["stats"]["thin_kept"] > 0 and with_thin["stats"]["instances"] == got["stats"]["instances"]

"""A results file cut into shards of whole images, refined shard by shard, kept on disk.

What makes a distributed run resumable and exactly-once, with no cluster code in it:

* :func:`plan_shards` cuts the images (in the order their first entry appears) into shards
  of ``images_per_shard`` images; the plan depends only on the input, so a rerun cuts the
  same shards.
* :func:`refine_shard` is what a worker does with one shard: read its images (local paths
  or fsspec / pyarrow URIs), refine them through one :meth:`Refiner.refine_many` stream, so
  their patches share network batches as in the local engine, and return the refined entries
  by their position in the results file. A failure comes back as the shard's ``error``,
  naming the image, never as a half result.
* :class:`WorkDir` keeps each finished shard as one atomically written file, under a manifest
  that fingerprints the input and the settings: a rerun skips finished shards, a retried
  shard overwrites its own file with the same content, and :meth:`WorkDir.assemble` checks
  that every entry arrived exactly once before the output is written.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bpr.errors import BprInputError
from bpr.io.coco import write_json_atomic
from bpr.io.results import load_image_masks, refined_entry

MANIFEST = "manifest.json"
# counters a shard reports (a shard file written before a counter was added reads as 0 for it)
STAT_FIELDS = ("images", "instances", "patches", "fallbacks", "small", "gated", "early_gated", "thin_kept", "ungated")


@dataclass(frozen=True)
class Shard:
    """Whole images and their entries: the unit a worker refines and the work dir keeps."""

    number: int
    images: tuple[dict[str, Any], ...]  # {"image_id", "path", "indices", "entries"}

    @property
    def indices(self) -> list[int]:
        return [i for image in self.images for i in image["indices"]]

    def payload(self) -> str:
        """What travels to the worker (JSON: plain types only, whatever the cluster)."""
        return json.dumps({"shard": self.number, "images": list(self.images)})


def plan_shards(
    results: Sequence[dict[str, Any]], groups: dict[Any, list[int]], paths: dict[Any, str], images_per_shard: int
) -> list[Shard]:
    if images_per_shard < 1:
        raise BprInputError(f"--images-per-shard must be at least 1, got {images_per_shard}")
    images = [
        {
            "image_id": image_id,
            "path": str(paths[image_id]),
            "indices": indices,
            "entries": [results[i] for i in indices],
        }
        for image_id, indices in groups.items()
    ]
    return [
        Shard(n, tuple(images[start : start + images_per_shard]))
        for n, start in enumerate(range(0, len(images), images_per_shard))
    ]


def refine_shard(refiner: Any, payload: str) -> dict[str, Any]:
    """Refine one shard with ``refiner`` (a :class:`bpr.refiner.Refiner`); see the module doc.

    Returns ``{"shard", "refined": [[index, entry], ...], "stats": {...}}``, or
    ``{"shard", "error": "..."}`` naming the image that failed.
    """
    shard = json.loads(payload)
    before = {k: getattr(refiner.stats, k) for k in STAT_FIELDS}
    unreadable: list[tuple[dict[str, Any], BaseException]] = []  # the image whose read raised, and how

    def items():
        for image in shard["images"]:
            try:
                pair = load_image_masks(image["path"], image["entries"], image["indices"])
            except BaseException as exc:
                unreadable.append((image, exc))
                raise
            yield pair

    refined: list[list[Any]] = []
    done = 0
    try:
        for image, masks in zip(shard["images"], refiner.refine_many(items())):
            for index, entry, mask in zip(image["indices"], image["entries"], masks):
                refined.append([index, refined_entry(entry, mask)])
            done += 1
    except BprInputError as exc:  # the local engine's words, unchanged
        return {"shard": shard["shard"], "error": str(exc)}
    except Exception as exc:  # noqa: BLE001 - a worker's failure must name its image, not kill the run silently
        # A read that raised names its image. Anything else (the network, reassembly) names the
        # first image not yet refined: the stream reads and extracts ahead of the network, so
        # the last image read may be several further on.
        failed = next(
            (image for image, err in unreadable if err is exc), shard["images"][min(done, len(shard["images"]) - 1)]
        )
        where = f"image_id {failed.get('image_id')!r} ({failed.get('path')})"
        return {"shard": shard["shard"], "error": f"{where}: {type(exc).__name__}: {exc}"}
    stats = {k: getattr(refiner.stats, k) - before[k] for k in STAT_FIELDS}
    return {"shard": shard["shard"], "refined": refined, "stats": stats}


def fingerprint(results_path: Path, settings: dict[str, Any], shards: Sequence[Shard]) -> str:
    """What a work dir's shards were made from: the results file's bytes, the refiner settings
    (with the checkpoint's size and time), and the shard plan. Shards of another run never mix in."""
    h = hashlib.sha256()
    with open(results_path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    checkpoint = settings.get("checkpoint")
    if checkpoint and Path(checkpoint).is_file():
        st = Path(checkpoint).stat()
        settings = {**settings, "checkpoint_stat": [st.st_size, st.st_mtime_ns]}
    plan = [[s.number, [img["path"] for img in s.images]] for s in shards]
    h.update(json.dumps({"settings": settings, "plan": plan}, sort_keys=True, default=str).encode())
    return h.hexdigest()


class WorkDir:
    """Finished shards on disk: ``shard-000012.json`` per shard, beside a manifest."""

    def __init__(self, root: Path, run_fingerprint: str, shards: Sequence[Shard]) -> None:
        self.root = Path(root)
        self.shards = {s.number: s for s in shards}
        manifest = self.root / MANIFEST
        if manifest.is_file():
            try:
                found = json.loads(manifest.read_text()).get("fingerprint")
            except (json.JSONDecodeError, AttributeError):
                found = None
            if found != run_fingerprint:
                raise BprInputError(
                    f"--work-dir {self.root} holds shards of another run (different results file, settings or "
                    "images); remove it or choose another folder"
                )
        elif self.root.exists() and any(self.root.iterdir()):
            raise BprInputError(f"--work-dir {self.root} is not empty and holds no bpr manifest; choose another folder")
        else:
            write_json_atomic(manifest, {"fingerprint": run_fingerprint, "shards": len(self.shards)})

    def path(self, number: int) -> Path:
        return self.root / f"shard-{number:06d}.json"

    def done(self) -> set[int]:
        """Shards whose file is complete and matches the plan (anything else is redone)."""
        finished = set()
        for number, shard in self.shards.items():
            got = self._read(number)
            if got is not None and [i for i, _ in got["refined"]] == shard.indices:
                finished.add(number)
        return finished

    def _read(self, number: int) -> dict[str, Any] | None:
        try:
            return json.loads(self.path(number).read_text())
        except (OSError, json.JSONDecodeError):
            return None

    def write(self, result: dict[str, Any]) -> None:
        number = result["shard"]
        if number not in self.shards or [i for i, _ in result["refined"]] != self.shards[number].indices:
            raise RuntimeError(f"shard {number} came back with entries it was not given")  # a bug, not bad input
        write_json_atomic(self.path(number), result)

    def assemble(self, n_entries: int) -> tuple[list[dict[str, Any]], dict[str, int]]:
        """Every refined entry in input order, and the summed stats; each entry exactly once."""
        out: list[dict[str, Any] | None] = [None] * n_entries
        totals = dict.fromkeys(STAT_FIELDS, 0)
        for number in sorted(self.shards):
            got = self._read(number)
            if got is None:
                raise RuntimeError(f"shard {number} is missing from {self.root}")
            for index, entry in got["refined"]:
                if out[index] is not None:
                    raise RuntimeError(f"entry {index} arrived twice")
                out[index] = entry
            for k in STAT_FIELDS:
                totals[k] += got["stats"].get(k, 0)
        missing = [i for i, e in enumerate(out) if e is None]
        if missing:
            raise RuntimeError(f"{len(missing)} entries never arrived (first: {missing[0]})")
        return out, totals  # type: ignore[return-value]

    def remove(self) -> None:
        for number in self.shards:
            self.path(number).unlink(missing_ok=True)
        (self.root / MANIFEST).unlink(missing_ok=True)
        try:
            os.rmdir(self.root)
        except OSError:
            pass


def spec_settings(spec: Any) -> dict[str, Any]:
    """A RefinerSpec as plain JSON-able fields (the fingerprint and the workers both use it)."""
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(spec).items()}

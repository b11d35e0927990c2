"""A compact, seekable store of training patches: a few .npy shards and a manifest.

Layout of a patch directory::

    manifest.json            what was built, how (sources, recipe mix, seed), shard list
    images-00000.npy         (n, S, S, 3) uint8 RGB image patches
    coarse-00000.npy         (n, S, S) uint8 {0, 1} coarse-mask patches
    target-00000.npy         (n, S, S) uint8 {0, 1} ground-truth patches (same box)
    meta-00000.npy           (n,) records: image index, instance, draw, recipe, split, y0, x0

Shards are plain uncompressed .npy so the trainer memory-maps them: no decoding per step,
and a 100k-patch set opens instantly.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from bpr.errors import BprInputError
from bpr.io.atomic import atomic_path
from bpr.io.coco import write_json_atomic

FORMAT = "bpr-patches"
META_DTYPE = np.dtype(
    [
        ("image", "<i4"),
        ("instance", "<i4"),
        ("draw", "<i2"),
        ("recipe", "<i2"),
        ("split", "u1"),
        ("y0", "<i4"),
        ("x0", "<i4"),
    ]
)
SPLITS = {"train": 0, "val": 1}


class ShardWriter:
    """Accumulates patches and writes a shard every ``shard_size`` of them."""

    def __init__(self, out: Path, patch_size: int, shard_size: int = 20000, context: int = 0) -> None:
        self.out = out
        self.patch_size = patch_size
        self.context = context  # stored squares are views of patch_size + 2 * context
        self.shard_size = shard_size
        self.shards: list[dict[str, Any]] = []
        self._buf: dict[str, list[np.ndarray]] = {"images": [], "coarse": [], "target": [], "meta": []}
        self._count = 0
        out.mkdir(parents=True, exist_ok=True)

    def add(self, images: np.ndarray, coarse: np.ndarray, target: np.ndarray, meta: np.ndarray) -> None:
        for key, arr in (("images", images), ("coarse", coarse), ("target", target), ("meta", meta)):
            self._buf[key].append(arr)
        self._count += len(meta)
        if self._count >= self.shard_size:
            self.flush()

    def flush(self) -> None:
        if self._count == 0:
            return
        index = len(self.shards)
        for key, parts in self._buf.items():
            with atomic_path(self.out / f"{key}-{index:05d}.npy") as tmp:
                with open(tmp, "wb") as f:
                    np.save(f, np.concatenate(parts))
        self.shards.append({"index": index, "count": self._count})
        self._buf = {k: [] for k in self._buf}
        self._count = 0

    def close(self, manifest: dict[str, Any]) -> dict[str, Any]:
        self.flush()
        manifest = {
            "format": FORMAT,
            "version": 1,
            "patch_size": self.patch_size,
            "context": self.context,
            "shards": self.shards,
            "total": sum(s["count"] for s in self.shards),
            **manifest,
        }
        write_json_atomic(self.out / "manifest.json", manifest)
        return manifest


@dataclass
class PatchSet:
    """Memory-mapped patches of one or more patch directories, with a split mask."""

    images: list[np.ndarray]
    coarse: list[np.ndarray]
    target: list[np.ndarray]
    meta: list[np.ndarray]
    patch_size: int
    manifests: list[dict[str, Any]]
    context: int = 0  # pixels of view beyond each side of a patch: the stored squares are view_size
    shard_dirs: list[str] = field(default_factory=list)  # the directory each shard came from
    shard_listings: list[int] = field(default_factory=list)  # its place in the list of directories opened

    def set_indices(self, split: str) -> dict[str, np.ndarray]:
        """:meth:`indices` of ``split`` by patch directory, each directory once: one listed
        twice (to weigh it more in training) is still one set of patches, its first listing."""
        first: dict[str, int] = {}
        for d, listing in zip(self.shard_dirs, self.shard_listings):
            first.setdefault(d, listing)
        groups: dict[str, list[np.ndarray]] = {}
        for s, (d, listing) in enumerate(zip(self.shard_dirs, self.shard_listings)):
            if listing == first[d]:
                groups.setdefault(d, []).append(self._shard_indices(s, split))
        return {d: np.concatenate(parts) for d, parts in groups.items()}

    def _shard_indices(self, shard: int, split: str) -> np.ndarray:
        """(K, 2) [shard, row] of the patches of ``split`` in one shard."""
        rows = np.flatnonzero(self.meta[shard]["split"] == SPLITS[split])
        return np.stack([np.full_like(rows, shard), rows], axis=1)

    @property
    def view_size(self) -> int:
        return self.patch_size + 2 * self.context

    @classmethod
    def open(cls, dirs: list[str | os.PathLike]) -> PatchSet:
        images, coarse, target, meta, manifests, shard_dirs, shard_listings = [], [], [], [], [], [], []
        patch_size = context = None
        for listing, d in enumerate(dirs):
            d = Path(d)
            manifest_path = d / "manifest.json"
            if not manifest_path.is_file():
                raise BprInputError(
                    f"{d} is not a patch directory (no manifest.json); build one with bpr-build-patches"
                )
            manifest = json.loads(manifest_path.read_text())
            if manifest.get("format") != FORMAT:
                raise BprInputError(f"{manifest_path}: not a bpr patch manifest")
            if patch_size is not None and manifest["patch_size"] != patch_size:
                raise BprInputError("all patch directories must have the same patch size")
            if context is not None and manifest.get("context", 0) != context:
                raise BprInputError("all patch directories must have the same context (bpr-build-patches --context)")
            patch_size, context = manifest["patch_size"], manifest.get("context", 0)
            manifests.append(manifest)
            for shard in manifest["shards"]:
                i = shard["index"]
                images.append(np.load(d / f"images-{i:05d}.npy", mmap_mode="r"))
                coarse.append(np.load(d / f"coarse-{i:05d}.npy", mmap_mode="r"))
                target.append(np.load(d / f"target-{i:05d}.npy", mmap_mode="r"))
                meta.append(np.load(d / f"meta-{i:05d}.npy"))
                shard_dirs.append(str(d))
                shard_listings.append(listing)
        if patch_size is None:
            raise BprInputError("no patch directories given")
        return cls(images, coarse, target, meta, patch_size, manifests, context or 0, shard_dirs, shard_listings)

    def indices(self, split: str) -> np.ndarray:
        """(K, 2) [shard, row] of every patch in ``split``."""
        parts = [self._shard_indices(s, split) for s in range(len(self.meta))]
        return np.concatenate(parts) if parts else np.zeros((0, 2), dtype=np.int64)

    def gather(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Patches at (K, 2) [shard, row] -> images (K,S,S,3), coarse (K,S,S), target (K,S,S)."""
        order = np.lexsort((idx[:, 1], idx[:, 0]))  # read each shard in row order: fewer seeks
        k = len(idx)
        s = self.images[0].shape[1] if self.images else self.view_size  # stored squares; patch_centres() cuts
        images = np.empty((k, s, s, 3), np.uint8)
        coarse = np.empty((k, s, s), np.uint8)
        target = np.empty((k, s, s), np.uint8)
        sorted_idx = idx[order]
        for shard in np.unique(sorted_idx[:, 0]):
            sel = order[sorted_idx[:, 0] == shard]
            rows = idx[sel, 1]
            images[sel] = self.images[shard][rows]
            coarse[sel] = self.coarse[shard][rows]
            target[sel] = self.target[shard][rows]
        if s != self.view_size:
            a = (s - self.view_size) // 2
            cut = slice(a, a + self.view_size)
            return images[:, cut, cut], coarse[:, cut, cut], target[:, cut, cut]
        return images, coarse, target

    def patch_centres(self) -> PatchSet:
        """The same patches without their context, so a refiner that sees none (BPR's HRNet)
        trains on sets built for one that does: the central square of each stored view. That is
        the patch itself, or, where the view was shifted to stay inside the image, a square up to
        ``context`` px off it; image, coarse and target are cut alike, so either is a sample."""
        return replace(self, context=0)

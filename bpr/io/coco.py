"""COCO json: segmentations (RLE / polygons) to masks and back, atomic writes.

Detectors write segmentations in three shapes: compressed RLE with ``counts`` as a str (or
bytes), uncompressed RLE with ``counts`` as a list of ints, and polygons (a list of flat
``[x0, y0, x1, y1, ...]`` lists). All three decode here, and every malformed one raises
:class:`BprInputError` instead of crashing inside pycocotools' C code.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from bpr.errors import BprInputError
from bpr.io.atomic import atomic_path


def load_json(path: str | os.PathLike) -> Any:
    """Read a json file, turning every way it can fail into a one-line BprInputError."""
    path = Path(path)
    if not path.is_file():
        raise BprInputError(f"file not found: {path}")
    try:
        with open(path, "rb") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BprInputError(f"{path} is not valid JSON: {exc}") from None
    except RecursionError:  # [[[[...]]]] 100k deep: the parser's stack, not ours, gives out
        raise BprInputError(f"{path} is not valid JSON: nested too deeply") from None
    except MemoryError:
        raise BprInputError(f"{path} is too large to load into memory; split it into smaller files") from None


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """Write json atomically (see atomic_path): no half-written output, ever."""
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            json.dump(obj, f)
            f.flush()
            os.fsync(f.fileno())


def _check_size(rle_size: Any, height: int, width: int, what: str) -> None:
    if not isinstance(rle_size, (list, tuple)) or len(rle_size) != 2 or not all(isinstance(v, int) for v in rle_size):
        raise BprInputError(f"{what}: RLE 'size' must be [height, width], got {rle_size!r}")
    if (rle_size[0], rle_size[1]) != (height, width):
        raise BprInputError(
            f"{what}: mask size {rle_size[0]}x{rle_size[1]} (HxW) does not match the image size {height}x{width}"
        )


def decode_segmentation(seg: Any, height: int, width: int, what: str = "segmentation") -> np.ndarray:
    """Decode one COCO segmentation (RLE str/list counts, or polygons) into an HxW bool mask.

    ``what`` names the entry in error messages (e.g. ``"results[12]"``) so the user can find it.
    """
    out = np.zeros((height, width), dtype=bool)
    decode_into(seg, out, what)
    return out


def decode_into(seg: Any, out: np.ndarray, what: str = "segmentation") -> None:
    """Decode a segmentation into ``out``, a zeroed HxW bool (C-order) array or slice.

    pycocotools decodes in column-major order; only the mask's bounding box is copied into
    ``out`` (a full-image transposing copy cost 11 ms per 1024x2048 mask, most of the decode).
    """
    height, width = out.shape
    rle = _checked_rle(seg, height, width, what)
    if rle is None:
        return
    x, y, w, h = (int(v) for v in mask_utils.toBbox(rle))
    if w and h:
        out[y : y + h, x : x + w] = mask_utils.decode(rle)[y : y + h, x : x + w]


def _checked_rle(seg: Any, height: int, width: int, what: str) -> dict | None:
    """A segmentation checked and turned into pycocotools' compressed RLE (None: no polygons)."""
    if isinstance(seg, dict):
        if "counts" not in seg or "size" not in seg:
            raise BprInputError(f"{what}: RLE needs 'counts' and 'size'")
        _check_size(seg["size"], height, width, what)
        counts = seg["counts"]
        if isinstance(counts, list):
            if not all(isinstance(c, int) and c >= 0 for c in counts):
                raise BprInputError(f"{what}: uncompressed RLE counts must be non-negative ints")
            if sum(counts) != height * width:
                raise BprInputError(f"{what}: uncompressed RLE counts sum to {sum(counts)}, expected {height * width}")
            rle = mask_utils.frPyObjects(seg, height, width)
        elif isinstance(counts, (str, bytes)):
            rle = {"size": [height, width], "counts": counts.encode() if isinstance(counts, str) else counts}
            if not _compressed_rle_is_valid(rle["counts"], height * width):
                raise BprInputError(f"{what}: malformed compressed RLE counts")
        else:
            raise BprInputError(f"{what}: RLE counts must be a string or a list of ints")
        return rle
    if isinstance(seg, list):
        if len(seg) == 0:
            return None
        polys = [_checked_polygon(poly, height, width, what) for poly in seg]
        _check_polygon_cost(polys, height, width, what)
        rles = mask_utils.frPyObjects([p.tolist() for p in polys], height, width)
        return mask_utils.merge(rles)
    raise BprInputError(f"{what}: segmentation must be an RLE object or a list of polygons")


MAX_POLYGON_VERTICES = 250_000  # per instance, all its polygons together: far beyond any detector's output


def polygon_edge_budget(height: int, width: int) -> int:
    """Longest total polygon outline (sum of max(|dx|, |dy|) over edges, in pixels) we rasterise.

    pycocotools walks every edge at 5 points per pixel, so its memory grows with this length,
    not with the image: a vertex at 1e12 asks it for terabytes. An outline as long as the
    image has pixels (every pixel a corner) is more than any real mask needs; with it the
    rasteriser's work is bounded by about 40 bytes per image pixel.
    """
    return height * width + 4 * (height + width) + 100_000


def polygon_margin(size: int) -> int:
    """How far outside the image (pixels, per side) a polygon vertex may lie: one image size,
    at least 1,024 px."""
    return max(size, 1024)


def _checked_polygon(poly: Any, height: int, width: int, what: str) -> np.ndarray:
    """One flat [x0, y0, ...] polygon as float64, or a BprInputError that says what is wrong.

    Vertices may lie outside the image (a detector's box can cross the border), but no more
    than ``polygon_margin`` beyond it on any side.
    """
    if not isinstance(poly, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in poly):
        raise BprInputError(f"{what}: polygons must be lists of numbers")
    if len(poly) < 6 or len(poly) % 2:
        raise BprInputError(f"{what}: a polygon needs an even number (>= 6) of coordinates, got {len(poly)}")
    try:
        xy = np.asarray(poly, dtype=np.float64).reshape(-1, 2)
    except OverflowError:  # an int beyond float64
        raise BprInputError(f"{what}: polygon coordinates must be finite numbers") from None
    if not np.isfinite(xy).all():
        raise BprInputError(f"{what}: polygon coordinates must be finite numbers")
    x, y = xy[:, 0], xy[:, 1]
    mx, my = polygon_margin(width), polygon_margin(height)
    if x.min() < -mx or x.max() > width + mx or y.min() < -my or y.max() > height + my:
        raise BprInputError(
            f"{what}: polygon vertex out of range: x must lie in [{-mx}, {width + mx}] and y in "
            f"[{-my}, {height + my}] for a {height}x{width} (HxW) image"
        )
    return xy.reshape(-1)


def _check_polygon_cost(polys: list[np.ndarray], height: int, width: int, what: str) -> None:
    """Refuse outlines whose rasterisation would cost more than the image itself (see polygon_edge_budget)."""
    vertices = sum(len(p) // 2 for p in polys)
    if vertices > MAX_POLYGON_VERTICES:
        raise BprInputError(f"{what}: {vertices} polygon vertices, more than the {MAX_POLYGON_VERTICES} allowed")
    length = 0.0
    for p in polys:
        xy = p.reshape(-1, 2)
        d = np.abs(np.roll(xy, -1, axis=0) - xy)  # edges, the closing one included
        length += float(np.maximum(d[:, 0], d[:, 1]).sum())
    budget = polygon_edge_budget(height, width)
    if length > budget:
        raise BprInputError(
            f"{what}: polygon outline of {length:.0f} px is longer than the {budget} px allowed for a "
            f"{height}x{width} image"
        )


def _compressed_rle_is_valid(counts: bytes, n_pixels: int) -> bool:
    """Parse COCO's compressed counts (vectorised) and check they cover exactly n_pixels.

    pycocotools reads past malformed strings without complaint (and can produce garbage
    masks), so the string is validated here first. The format: each run is a group of 5-bit
    chunks in chars 48..111, bit 0x20 = "more chunks follow", bit 0x10 of a group's last
    chunk = sign; runs after the second are stored as deltas to the run two before.
    """
    c = np.frombuffer(counts, dtype=np.uint8).astype(np.int64) - 48
    if c.size == 0:
        return n_pixels == 0
    if (c < 0).any() or (c > 63).any() or (c[-1] & 0x20):
        return False
    last = (c & 0x20) == 0  # the last chunk of each run
    run_id = np.concatenate([[0], np.cumsum(last)[:-1]])
    starts = np.flatnonzero(np.concatenate([[True], last[:-1]]))
    position = np.arange(c.size) - starts[run_id]  # chunk index inside its run
    if position.max() > 11:  # more than 60 bits: not a count any encoder writes
        return False
    values = np.bincount(run_id, weights=(c & 0x1F) << (5 * position)).astype(np.int64)
    ends = np.flatnonzero(last)
    negative = (c[ends] & 0x10) != 0
    values[negative] -= np.left_shift(1, 5 * (position[ends][negative] + 1))
    runs = values.copy()
    # runs[i] = values[i] + runs[i - 2] for i >= 3: two interleaved cumulative sums.
    if runs.size > 3:
        runs[3::2] = np.cumsum(values[1::2])[1:]
    if runs.size > 4:
        runs[4::2] = values[2] + np.cumsum(values[4::2])
    return bool((runs >= 0).all()) and int(runs.sum()) == n_pixels


def encode_mask(mask: np.ndarray) -> dict:
    """HxW bool mask -> compressed RLE with str counts (what every COCO tool reads).

    The same string as ``pycocotools.mask.encode``, computed from the columns the mask
    occupies only: their runs are found with numpy and the run list compressed by
    pycocotools. A 1024x2048 image's 50 masks are written 5x faster than through a
    full-image Fortran copy each.
    """
    height, width = mask.shape
    mask = mask.view(np.uint8) if mask.dtype == bool else (mask != 0).view(np.uint8)
    x, _, w, _ = cv2.boundingRect(np.ascontiguousarray(mask))
    if w == 0:
        runs = [height * width]
    else:
        band = np.ascontiguousarray(mask[:, x : x + w].T).reshape(-1)  # column-major order
        edges = np.flatnonzero(band[1:] != band[:-1]) + 1
        runs = np.diff(np.concatenate([[0], edges, [band.size]])).tolist()
        if band[0]:
            runs.insert(0, 0)  # RLE counts start with a background run
        runs[0] += x * height
        tail = (width - x - w) * height
        if not band[-1]:
            runs[-1] += tail
        elif tail:
            runs.append(tail)
    rle = mask_utils.frPyObjects({"size": [height, width], "counts": runs}, height, width)
    return {"size": [height, width], "counts": rle["counts"].decode("ascii")}


def mask_bounds(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """(y0, y1, x0, x1), half-open, of a mask's foreground; None when it is empty. The one box
    helper of the code base (array slices ``mask[y0:y1, x0:x1]``); COCO's [x, y, w, h] is
    :func:`mask_to_bbox`."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def mask_to_bbox(mask: np.ndarray) -> list[float]:
    """Tight [x, y, w, h] box of a mask, as pycocotools' toBbox gives it; zeros when empty."""
    bounds = mask_bounds(mask)
    if bounds is None:
        return [0.0, 0.0, 0.0, 0.0]
    y0, y1, x0, x1 = bounds
    return [float(x0), float(y0), float(x1 - x0), float(y1 - y0)]


def load_image_records(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The ``images`` list of a COCO json, each entry checked to have ``id`` and ``file_name``.

    Any COCO file works (annotations are not needed): it is how bpr maps an ``image_id`` to
    an image file, for bpr-refine's --image-info and the service's results detector alike.
    """
    info = load_json(path)
    if not isinstance(info, dict) or not isinstance(info.get("images"), list):
        raise BprInputError(f"{path}: expected a COCO json with an 'images' list")
    for img in info["images"]:
        if not isinstance(img, dict) or "id" not in img or "file_name" not in img:
            raise BprInputError(f"{path}: every image needs 'id' and 'file_name'")
    return info["images"]

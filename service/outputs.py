"""Refined arrays -> response bodies: JSON in the shape of COCO results entries, or an
instance-id PNG.

Everything here runs in the CPU pool: RLE-encoding hundreds of masks and serialising a large
answer are real work, and the event loop must not wait on them.
"""

from __future__ import annotations

import json
from typing import Any

import cv2
import numpy as np
from pydantic import BaseModel

from bpr.io.results import refined_entry


def refined_entries(entries: list[dict[str, Any]], masks: np.ndarray) -> list[dict[str, Any]]:
    """Entries with refined RLE, bbox and area; the caller's other fields carried through."""
    return [refined_entry(e, m) for e, m in zip(entries, masks)]


def instances_json(
    model: type[BaseModel],
    entries: list[dict[str, Any]],
    refined: np.ndarray,
    coarse: np.ndarray | None = None,
    fields: dict[str, Any] | None = None,
) -> bytes:
    """The JSON answer of /refine or /segment: ``instances`` (the refined masks), ``coarse``
    (the input masks, or null when not asked for), then ``fields`` (e.g. ``detector``)."""
    body = {
        "instances": refined_entries(entries, refined),
        "coarse": refined_entries(entries, coarse) if coarse is not None else None,
        **(fields or {}),
    }
    return typed_json(model, body)


def typed_json(model: type[BaseModel], body: dict[str, Any]) -> bytes:
    """``body`` checked against the route's declared response model, then encoded as JSON.

    The declared schema is enforced here because the routes send pre-encoded bytes, which
    FastAPI does not check: an answer that breaks it is a bug and fails loudly (500) rather
    than reaching a client. The body goes out as built, keys in their order (the caller's
    fields first, as bpr-refine writes them), not re-ordered by the model; the encoding is
    Starlette's ``JSONResponse`` one (compact, UTF-8, no NaN).
    """
    model.model_validate(body)
    return json.dumps(body, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":")).encode("utf-8")


def masks_to_id_png(masks: np.ndarray) -> bytes:
    """NxHxW bool -> instance-id PNG (k = k-th instance, 1-based; 16-bit above 255 instances).

    Where refined masks overlap, the earlier instance wins (results are usually sorted by
    score), which is also what reading the map back as ``{"id": k}`` entries expects.
    """
    n, h, w = masks.shape
    dtype = np.uint8 if n <= 255 else np.uint16
    ids = np.zeros((h, w), dtype=dtype)
    for k in range(n - 1, -1, -1):
        ids[masks[k]] = k + 1
    ok, buf = cv2.imencode(".png", ids)
    if not ok:  # pragma: no cover - OpenCV always encodes 1-channel 8/16-bit PNG
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()

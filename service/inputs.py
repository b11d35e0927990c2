"""Client input -> arrays; every failure a 4xx (the answers are built in service/outputs.py).

The multipart form is read by hand (not with FastAPI ``File``/``Form`` parameters) so that
``instances`` may come as a text field or as a file, JSON or PNG, so that the detector check
of /segment happens before the upload is read, and so that each malformed part gets its own
message. Decoding of images, masks and RLEs is the library's (``bpr.io``); this module only
adds the HTTP-level checks (limits, JSON shape, field types) and the instance-id PNG form.
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from fastapi import Request
from PIL import Image
from pydantic import TypeAdapter, ValidationError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from bpr.errors import BprInputError
from bpr.io.images import decode_image_bytes
from bpr.io.results import entries_to_masks
from service.errors import ServiceError, input_error
from service.schemas import InstanceIn

if TYPE_CHECKING:
    from service.settings import Settings

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_instances_adapter = TypeAdapter(list[InstanceIn])


@dataclass(frozen=True)
class InputLimits:
    """The limits on what one request may send, as the parsers check them.

    Built once from the settings, so that a parser sees the four numbers it enforces and not
    the whole configuration (API keys included). Each is a ``BPR_*`` variable of the same name.
    """

    max_upload_bytes: int  # one form part (the guard already bounds the whole body)
    max_pixels: int  # one image, or one instance-id PNG
    max_instances: int
    max_mask_pixels: int  # instances x height x width

    @classmethod
    def of(cls, settings: Settings) -> InputLimits:
        return cls(settings.max_upload_bytes, settings.max_pixels, settings.max_instances, settings.max_mask_pixels)

    def instances_for(self, height: int, width: int) -> int:
        """The most instances an image of this size may carry under both instance limits (at least 1)."""
        return max(1, min(self.max_instances, self.max_mask_pixels // (height * width)))


@dataclass
class FormPart:
    data: bytes
    filename: str | None


async def read_form(request: Request, limits: InputLimits, fields: tuple[str, ...]) -> dict[str, FormPart]:
    """The named parts of a multipart body as bytes; 400 for a broken form, 422 for a missing part."""
    try:
        async with request.form(max_files=4, max_fields=8, max_part_size=limits.max_upload_bytes) as form:
            parts: dict[str, FormPart] = {}
            for name in fields:
                value = form.get(name)
                if value is None:
                    continue
                if isinstance(value, UploadFile):
                    parts[name] = FormPart(await value.read(), value.filename)
                elif name == "image":
                    raise ServiceError(
                        422,
                        "invalid_image",
                        "form field 'image' must be a file part with a filename (e.g. curl -F image=@photo.jpg)",
                    )
                else:
                    parts[name] = FormPart(value.encode("utf-8"), None)
    except StarletteHTTPException as exc:
        if exc.status_code != 400:  # 413 from the body limit passes through
            raise
        raise ServiceError(400, "invalid_form", f"multipart form: {exc.detail}") from None
    for name in fields:
        if name not in parts:
            raise ServiceError(
                422,
                "missing_field",
                f"form field '{name}' is missing: send multipart/form-data with the fields {', '.join(fields)}",
            )
    return parts


def decode_image(data: bytes, max_pixels: int) -> np.ndarray:
    """Encoded image -> HxWx3 uint8 RGB; the pixel limit is checked on the header first."""
    try:
        return decode_image_bytes(data, what="image", max_pixels=max_pixels)
    except BprInputError as exc:
        raise input_error(exc, "image") from None


def parse_instances(
    data: bytes, height: int, width: int, limits: InputLimits
) -> tuple[list[dict[str, Any]], np.ndarray]:
    """The ``instances`` part (JSON or instance-id PNG) -> (entries, NxHxW bool masks)."""
    if data.startswith(PNG_MAGIC):
        return id_map_to_masks(data, height, width, limits)
    entries = _parse_json_instances(data)
    _check_count(len(entries), height, width, limits)
    try:
        _instances_adapter.validate_python(entries)
    except ValidationError as exc:
        raise ServiceError(422, "invalid_instances", _instance_errors(exc)) from None
    try:
        masks = entries_to_masks(entries, height, width, what="instances")
    except BprInputError as exc:
        raise input_error(exc, "instances") from None
    return entries, masks


def _instance_errors(exc: ValidationError) -> str:
    """Pydantic errors as "instances[3].score: Input should be a valid number; ..."."""
    parts = []
    for e in exc.errors()[:5]:
        index, *rest = e["loc"]
        path = f"instances[{index}]" + "".join(f".{p}" if isinstance(p, str) else f"[{p}]" for p in rest)
        parts.append(f"{path}: {e['msg']}")
    more = f" (and {exc.error_count() - 5} more)" if exc.error_count() > 5 else ""
    return "; ".join(parts) + more


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def _finite_float(text: str) -> float:
    """Numbers like 1e999 parse to inf, which no JSON answer can carry back: refuse them here."""
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is out of the range of a float")
    return value


def loads_strict(text: str | bytes) -> Any:
    """json.loads without NaN, Infinity or overflowing numbers (ValueError for those)."""
    return json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)


def _parse_json_instances(data: bytes) -> list[dict[str, Any]]:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ServiceError(
            422, "invalid_instances", "instances: neither UTF-8 JSON nor a PNG instance-id map"
        ) from None
    try:
        value = loads_strict(text)
    except (json.JSONDecodeError, ValueError) as exc:
        raise ServiceError(422, "invalid_instances", f"instances: invalid JSON: {exc}") from None
    except RecursionError:
        raise ServiceError(422, "invalid_instances", "instances: JSON nested too deeply") from None
    if isinstance(value, dict) and isinstance(value.get("instances"), list):
        value = value["instances"]
    if not isinstance(value, list):
        raise ServiceError(
            422, "invalid_instances", 'instances: expected a JSON list of instances (or {"instances": [...]})'
        )
    for i, entry in enumerate(value):
        if not isinstance(entry, dict):
            raise ServiceError(
                422, "invalid_instances", f"instances[{i}]: expected an object, got {type(entry).__name__}"
            )
    _check_one_image(value)
    return value


def _check_one_image(entries: list[dict[str, Any]]) -> None:
    """Refuse instances whose ``image_id`` differ: one request is one image, and refining one
    image's pixels under another image's masks would answer 200 with nonsense. Entries
    without ``image_id`` are fine (the id is optional here)."""
    first: dict[str, Any] | None = None
    for i, entry in enumerate(entries):
        if "image_id" not in entry:
            continue
        if first is None:
            first = {"index": i, "id": entry["image_id"]}
        elif entry["image_id"] != first["id"] or type(entry["image_id"]) is not type(first["id"]):
            raise ServiceError(
                422,
                "mixed_images",
                f"instances[{i}].image_id is {entry['image_id']!r:.40} but instances[{first['index']}].image_id is "
                f"{first['id']!r:.40}: /refine refines one image, send only the instances of the image you upload",
            )


def _check_count(n: int, height: int, width: int, limits: InputLimits) -> None:
    if n > limits.max_instances:
        raise ServiceError(
            422,
            "too_many_instances",
            f"{n} instances is over the limit of {limits.max_instances} (BPR_MAX_INSTANCES)",
        )
    if n * height * width > limits.max_mask_pixels:
        raise ServiceError(
            422,
            "too_many_instances",
            f"{n} instances of {width}x{height} pixels is over the limit of {limits.max_mask_pixels} mask pixels "
            "(BPR_MAX_MASK_PIXELS)",
        )


def id_map_to_masks(
    data: bytes, height: int, width: int, limits: InputLimits
) -> tuple[list[dict[str, Any]], np.ndarray]:
    """Instance-id PNG (0 = background, k = instance k) -> entries ``{"id": k}`` in increasing k."""
    try:
        with Image.open(io.BytesIO(data)) as im:  # reads the header only
            if im.format != "PNG":
                raise ServiceError(422, "invalid_instances", "instances: an instance-id map must be a PNG")
            w, h = im.size
            if w * h > limits.max_pixels:
                raise ServiceError(
                    422,
                    "invalid_instances",
                    f"instances: {w}x{h} pixels is over the limit of {limits.max_pixels} pixels",
                )
            if (h, w) != (height, width):
                raise ServiceError(
                    422,
                    "invalid_instances",
                    f"instances: the instance-id PNG is {w}x{h} but the image is {width}x{height}",
                )
            if im.mode not in ("L", "P", "I;16", "I;16B", "I;16L", "I"):
                raise ServiceError(
                    422,
                    "invalid_instances",
                    "instances: an instance-id PNG must have one channel (8-bit, 16-bit or palette), got mode "
                    f"{im.mode}",
                )
            ids_map = np.asarray(im)
    except ServiceError:
        raise
    except Image.DecompressionBombError:  # Pillow's own guard, far above ours, fires in open()
        raise ServiceError(
            422, "invalid_instances", f"instances: the PNG is over the limit of {limits.max_pixels} pixels"
        ) from None
    except Exception as exc:  # Pillow raises many types for truncated / corrupt files
        raise ServiceError(422, "invalid_instances", f"instances: not a readable PNG instance-id map ({exc})") from None
    ids = np.unique(ids_map)
    ids = ids[ids != 0]
    _check_count(len(ids), height, width, limits)
    masks = ids_map[None] == ids[:, None, None]
    return [{"id": int(k)} for k in ids], masks


def keep_top_detections(entries: list[dict[str, Any]], min_score: float, limit: int) -> list[dict[str, Any]]:
    """Detections at or above ``min_score``, at most ``limit`` of the best, in the detector's order."""

    def score(e: dict[str, Any]) -> float:
        s = e.get("score")
        return float(s) if isinstance(s, (int, float)) and math.isfinite(s) else 1.0

    kept = [(i, e) for i, e in enumerate(entries) if score(e) >= min_score]
    if len(kept) > limit:
        kept = sorted(sorted(kept, key=lambda p: -score(p[1]))[:limit], key=lambda p: p[0])
    return [e for _, e in kept]

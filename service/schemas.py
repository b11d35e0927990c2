"""Request and response bodies, as pydantic models: the OpenAPI page is the API reference.

Instances use the shapes of COCO results files, so a detector's output can be posted as is
and a response can be written straight into a results file.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, create_model

from service.options import info_fields

# a 25 px disc in a 64x48 image, a valid compressed RLE
RLE_EXAMPLE = {"size": [48, 64], "counts": "fk01[18J4M2N2N2N2O0O2O00000O20N1000001N101N2N2N2N3L6Hnn0"}


_RLE_SCHEMA = {
    "type": "object",
    "properties": {
        "size": {"type": "array", "items": {"type": "integer"}, "minItems": 2, "maxItems": 2},
        "counts": {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "integer", "minimum": 0}}]},
    },
    "required": ["size", "counts"],
}
_POLYGONS_SCHEMA = {"type": "array", "items": {"type": "array", "items": {"type": "number"}, "minItems": 6}}


class RLE(BaseModel):
    """COCO compressed run-length encoding, as pycocotools writes it (counts as a string)."""

    size: list[int] = Field(description="[height, width] of the image", min_length=2, max_length=2, examples=[[48, 64]])
    counts: str = Field(description="compressed RLE counts (pycocotools string form)")


class InstanceIn(BaseModel):
    """One instance to refine: an entry of a COCO results file. Other fields are carried through."""

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={"examples": [{"segmentation": RLE_EXAMPLE, "category_id": 1, "score": 0.98, "id": 7}]},
    )

    # Any here, so that a wrong shape gets the library's one-line message from
    # bpr.io.coco.decode_segmentation; the schema below documents the accepted shapes.
    segmentation: Any = Field(
        description="compressed RLE {size: [h, w], counts: str}, uncompressed RLE {size, counts: [int]}, "
        "or polygons [[x0, y0, x1, y1, ...], ...] in image pixels",
        json_schema_extra={"anyOf": [_RLE_SCHEMA, _POLYGONS_SCHEMA]},
    )
    category_id: StrictInt | None = Field(None, description="class of the instance; returned unchanged")
    score: float = Field(None, strict=True, allow_inf_nan=False, description="detector confidence; returned unchanged")
    id: StrictInt | StrictStr | None = Field(None, description="your id for the instance; returned unchanged")


class InstanceOut(BaseModel):
    """A refined instance: the input entry with segmentation, bbox and area replaced."""

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "examples": [
                {
                    "segmentation": RLE_EXAMPLE,
                    "bbox": [18.0, 10.0, 25.0, 25.0],
                    "area": 441,
                    "category_id": 1,
                    "score": 0.98,
                    "id": 7,
                }
            ]
        },
    )

    segmentation: RLE = Field(description="the refined mask")
    bbox: list[float] = Field(
        description="[x, y, width, height] of the refined mask (zeros if empty)", min_length=4, max_length=4
    )
    area: int = Field(description="pixels in the refined mask")
    category_id: int | None = Field(None, description="as given (or as the detector said, for /segment)")
    score: float | None = Field(None, description="as given (or as the detector said, for /segment)")
    id: int | str | None = Field(None, description="as given; for an instance-id PNG, the pixel value of the instance")


class RefineResponse(BaseModel):
    instances: list[InstanceOut] = Field(description="refined instances, in the order they were given")
    coarse: list[InstanceOut] | None = Field(
        None, description="the input masks as the server decoded them (only with ?include_coarse=true)"
    )


class SegmentResponse(BaseModel):
    instances: list[InstanceOut] = Field(description="detections after refinement, in the detector's order")
    coarse: list[InstanceOut] | None = Field(
        None, description="the detector's masks before refinement (only with ?include_coarse=true)"
    )
    detector: str = Field(description="which upstream detector produced the instances", examples=["http"])


class ErrorBody(BaseModel):
    """Every error the service sends has this body."""

    detail: str = Field(
        description="what went wrong, in one line",
        examples=["image: not a readable image (corrupt or unsupported format)"],
    )
    code: str = Field(description="machine-readable kind of error", examples=["invalid_image"])


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    ready: bool = Field(description="true when /refine (and /segment, if a detector is configured) can answer")
    model: str = Field(description="'loaded' or why not", examples=["loaded"])
    detector: str = Field(description="'not configured', 'reachable' or why not", examples=["not configured"])


class LoadedRefiner(BaseModel):
    checkpoint: str | None = Field(description="checkpoint file the refiner was loaded from")
    arch: str = Field(examples=["hr18s"])
    patch_size: int = Field(description="square cut around the boundary, in image pixels")
    input_size: int = Field(description="network input size the patch is resized to")
    device: str
    precision: str = Field(description="fp32, bf16 or fp16 (autocast) for the network")
    backend: str = Field(description="what runs the network: torch, openvino or onnxruntime", examples=["openvino"])
    max_batch_size: int = Field(description="patches per forward pass, pooled across requests")
    max_wait_ms: float = Field(description="how long a partly filled batch waits for more patches")


# the refiner and then every refine option it applies by default (bpr/options.py)
if TYPE_CHECKING:
    _RefinerWithOptions = LoadedRefiner
else:
    _RefinerWithOptions = create_model("_RefinerWithOptions", __base__=LoadedRefiner, **info_fields())


class RefinerInfo(_RefinerWithOptions):
    """The loaded refiner, its default refine options (quality_gate: whether a gate applies) and its size."""

    parameters: int = Field(description="number of network parameters")


class ModelsResponse(BaseModel):
    refiner: RefinerInfo
    detector: dict[str, Any] | None = Field(
        description="the upstream detector for /segment; null if none is configured"
    )


class RefineForm(BaseModel):
    """multipart/form-data body of POST /refine."""

    image: bytes = Field(description="the image file (JPEG, PNG, BMP, TIFF, WebP)")
    instances: str = Field(
        description='the instances to refine: JSON (a list of InstanceIn objects, or {"instances": [...]}) as a '
        "text field or a file, or an instance-id PNG file (0 = background, k = instance k; 8-bit, 16-bit or "
        "palette) of the image's size",
        examples=['[{"segmentation": [[4, 4, 40, 6, 36, 30, 6, 28]], "category_id": 1, "score": 0.9, "id": "a"}]'],
    )


class SegmentForm(BaseModel):
    """multipart/form-data body of POST /segment."""

    image: bytes = Field(description="the image file (JPEG, PNG, BMP, TIFF, WebP)")


def multipart_body(model: type[BaseModel]) -> dict[str, Any]:
    """OpenAPI ``requestBody`` for a multipart form read by hand (see service.inputs.read_form)."""
    schema = model.model_json_schema()
    encoding = {
        name: {"contentType": "application/octet-stream"}
        for name, p in schema["properties"].items()
        if p.get("format") == "binary"
    }
    content: dict[str, Any] = {"schema": schema}
    if encoding:
        content["encoding"] = encoding
    return {"requestBody": {"required": True, "content": {"multipart/form-data": content}}}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the error statuses a route can answer, all with ErrorBody."""
    text = {
        400: "malformed multipart form",
        401: "missing or wrong API key (header X-API-Key)",
        404: "no precomputed detections for this image (results detector)",
        413: "request body over BPR_MAX_UPLOAD_BYTES",
        422: "bad image, instances or parameters; the detail names which",
        429: "queue full; retry after the Retry-After header's seconds",
        502: "the upstream detector failed or answered nonsense",
        503: "no detector configured, shutting down, or past BPR_REQUEST_TIMEOUT_S",
    }
    return {c: {"model": ErrorBody, "description": text[c]} for c in codes}

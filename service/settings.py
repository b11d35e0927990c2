"""Every knob of the service, read from ``BPR_*`` environment variables (pydantic-settings).

One flat class on purpose: each field is one environment variable (``max_queue`` ->
``BPR_MAX_QUEUE``), ``bpr-serve --help`` and docs/service.md list the same names, and a test
builds a server with ``Settings(max_queue=1)`` without touching the environment.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from bpr.io.limits import DEFAULT_MAX_MASK_PIXELS, DEFAULT_MAX_PIXELS
from bpr.options import option_infos
from bpr.spec import RefinerSpec
from service.options import OptionSettings

DetectorKind = Literal["none", "http", "mmdet", "results"]
CPU_REQUEST_PATCHES = 4096  # default cost budget per request on CPU (network patch forwards)
GPU_REQUEST_PATCHES = 65536


class Settings(OptionSettings):
    """Service configuration; defaults suit one CPU or GPU box serving a few clients."""

    model_config = SettingsConfigDict(env_prefix="BPR_", extra="forbid", validate_default=True)

    # --- where to listen (bpr-serve only; the app itself does not bind) -----------------
    host: str = Field("127.0.0.1", description="interface to bind; 0.0.0.0 inside a container")
    port: int = Field(8000, ge=0, le=65535, description="TCP port; 0 picks a free one")

    # --- the refiner --------------------------------------------------------------------
    checkpoint: Path | None = Field(None, description="refiner checkpoint; None = the bundled default model")
    device: str = Field("cpu", description="cpu, cuda or cuda:N")
    precision: Literal["auto", "fp32", "bf16", "fp16", "int8"] = Field(
        "auto",
        description="network precision: auto = fp16 on CUDA, bf16 with OpenVINO on CPUs with native bf16, "
        "else fp32; int8 = the exported graph statically quantized (openvino / onnxruntime backends)",
    )
    backend: Literal["auto", "torch", "openvino", "onnxruntime"] = Field(
        "auto",
        description="what runs the network: auto = OpenVINO, else ONNX Runtime, else torch on a CPU; torch on CUDA",
    )
    patch_size: int | None = Field(None, ge=4, description="override the checkpoint's patch size (image pixels)")
    input_size: int | None = Field(None, ge=8, description="override the checkpoint's network input size")
    # every refine option (bpr/options.py) is a setting too: BPR_NMS_IOU, BPR_FLIP_TTA... (OptionSettings)

    # --- dynamic batching and backpressure ----------------------------------------------
    max_batch_size: int = Field(64, ge=1, description="patches per network forward pass, pooled across requests")
    max_wait_ms: float = Field(5.0, ge=0.0, description="how long a partly filled batch waits for more patches")
    max_queue: int = Field(32, ge=0, description="requests admitted to /refine and /segment at once; more get 429")
    max_queued_patches: int = Field(
        8192,
        ge=1,
        description="patches waiting for the network: a request that would exceed it gets 429, one whose pass alone "
        "needs more gets 422 before any patch is cut (bounds memory per request)",
    )
    max_request_patches: int | None = Field(
        None,
        ge=1,
        description="cost budget of one request, in network patch forwards: patches per pass x passes x 2 with "
        "flip_tta; over it, 422 over_budget before any patch is queued. None = 4096 on CPU, 65536 on a GPU; keep it "
        "under the timeout times the measured speed (bpr_patches_total per second)",
    )
    request_timeout_s: float = Field(60.0, gt=0.0, description="per-request deadline; past it the answer is 503")
    cpu_workers: int = Field(
        default_factory=lambda: max(1, min(4, os.cpu_count() or 1)),
        ge=1,
        description="threads for decoding, patch extraction, reassembly and encoding",
    )
    torch_threads: int | None = Field(
        None, ge=1, description="intra-op threads of the network (torch.set_num_threads); default one per core"
    )
    shutdown_timeout_s: float = Field(30.0, ge=0.0, description="how long shutdown waits for in-flight requests")

    # --- limits on client input ---------------------------------------------------------
    max_upload_bytes: int = Field(20 * 1024 * 1024, ge=1, description="largest request body, in bytes (413 above)")
    max_uploads: int = Field(
        64,
        ge=1,
        description="/refine and /segment bodies read at once, before a request slot is taken; more get 429 "
        "(bounds their memory at max_uploads x max_upload_bytes)",
    )
    min_upload_bytes_per_s: float = Field(
        16384, gt=0, description="after the grace period a body must arrive at least this fast on average, else 408"
    )
    upload_grace_s: float = Field(5.0, ge=0.0, description="seconds a body may take before the rate rule applies")
    upload_timeout_s: float = Field(60.0, gt=0.0, description="the whole body must arrive within this, else 408")
    max_pixels: int = Field(
        DEFAULT_MAX_PIXELS,
        ge=1,
        description="largest image, in pixels, any format: read from the header before decoding; bpr-refine "
        "reads the same variable",
    )
    max_instances: int = Field(256, ge=1, description="most instances in one request")
    max_mask_pixels: int = Field(
        DEFAULT_MAX_MASK_PIXELS, ge=1, description="instances x height x width of one request (bounds mask memory)"
    )

    # --- security -----------------------------------------------------------------------
    api_key: SecretStr | None = Field(
        None, description="if set, /refine, /segment and /v1/models need header X-API-Key"
    )

    # --- upstream detector for /segment -------------------------------------------------
    detector: DetectorKind = Field("none", description="none, http, mmdet or results")
    detector_url: str | None = Field(None, description="http: the upstream's detect endpoint (POST multipart 'image')")
    detector_health_url: str | None = Field(
        None, description="http: readiness probe; default <scheme://host:port>/healthz"
    )
    detector_api_key: SecretStr | None = Field(None, description="http: sent to the upstream as header X-API-Key")
    detector_timeout_s: float = Field(30.0, gt=0.0, description="http: timeout of one upstream call")
    results_file: Path | None = Field(None, description="results: COCO results json with the precomputed detections")
    results_image_info: Path | None = Field(
        None, description="results: COCO json whose 'images' give file_name per image_id"
    )
    results_images_dir: Path | None = Field(
        None, description="results: image folder, to also match uploads by content hash"
    )
    mmdet_config: Path | None = Field(None, description="mmdet: model config file (PointRend, HTC, Mask R-CNN...)")
    mmdet_checkpoint: Path | None = Field(None, description="mmdet: model weights")
    mmdet_device: str | None = Field(None, description="mmdet: device; default the refiner's")
    min_score: float = Field(0.0, ge=0.0, le=1.0, description="/segment: drop detections below this score by default")

    def request_patch_budget(self, device: str) -> int:
        """BPR_MAX_REQUEST_PATCHES, else the default for ``device``: on one CPU core-pair the
        default checkpoint runs about 150 patch forwards a second, so 4096 answer in under 30 s,
        half the default timeout; a GPU runs 20x more."""
        if self.max_request_patches is not None:
            return self.max_request_patches
        return CPU_REQUEST_PATCHES if str(device).startswith("cpu") else GPU_REQUEST_PATCHES

    def refiner_spec(self) -> RefinerSpec:
        """The Refiner these settings describe (the same builder as bpr-refine's flags)."""
        return RefinerSpec(
            checkpoint=self.checkpoint,
            device=self.device,
            precision=self.precision,
            backend=self.backend,
            batch_size=self.max_batch_size,
            patch_size=self.patch_size,
            input_size=self.input_size,
            options={name: getattr(self, name) for name in option_infos()},
        )

    @field_validator("api_key", "detector_api_key", mode="before")
    @classmethod
    def _empty_means_none(cls, value: object) -> object:
        """BPR_API_KEY= (empty, as compose files often leave it) means no key, not the empty key."""
        return None if value == "" else value

    @model_validator(mode="after")
    def _detector_needs_its_settings(self) -> Settings:
        """Fail at startup, naming the missing variable, rather than on the first /segment."""
        needed = {
            "http": ["detector_url"],
            "results": ["results_file", "results_image_info"],
            "mmdet": ["mmdet_config", "mmdet_checkpoint"],
        }.get(self.detector, [])
        missing = [f"BPR_{name.upper()}" for name in needed if getattr(self, name) is None]
        if missing:
            raise ValueError(f"BPR_DETECTOR={self.detector} needs {', '.join(missing)}")
        return self

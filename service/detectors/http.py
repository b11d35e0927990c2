"""``http`` detector: any upstream detector server that speaks a two-route protocol.

The protocol (docs/service.md, "Upstream detector protocol"), small enough for a PointRend
or HTC deployment to add in a few lines:

* ``POST <BPR_DETECTOR_URL>`` with a multipart form, the image file in field ``image``
  (bytes exactly as the client sent them to bpr, with the client's file name);
  answer ``200`` with JSON ``{"instances": [{"segmentation": RLE | polygons,
  "category_id": int, "score": float, ...}, ...]}`` (a bare list is accepted too), masks at
  the size of the image.
* ``GET <BPR_DETECTOR_HEALTH_URL>`` (default ``<scheme://host:port>/healthz``) answers 2xx
  while the detector can serve; /readyz reports it.

``scripts/upstream_detector_example.py`` is a complete upstream speaking it.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import numpy as np

from bpr.errors import BprInputError
from service.detectors.base import Detector
from service.errors import ServiceError
from service.inputs import loads_strict


def default_health_url(url: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/healthz", "", ""))


class HttpDetector(Detector):
    kind = "http"

    def __init__(
        self, url: str, health_url: str | None = None, timeout_s: float = 30.0, api_key: str | None = None
    ) -> None:
        if urlsplit(url).scheme not in ("http", "https"):
            raise BprInputError(f"BPR_DETECTOR_URL must be an http(s) URL, got {url!r}")
        self.url = url
        self.health_url = health_url or default_health_url(url)
        self.headers = {"X-API-Key": api_key} if api_key else {}
        self.client = httpx.AsyncClient(timeout=timeout_s, headers=self.headers)
        self.timeout_s = timeout_s

    async def detect(self, data: bytes, image: np.ndarray, filename: str | None) -> list[dict[str, Any]]:
        files = {"image": (filename or "image", data, "application/octet-stream")}
        try:
            response = await self.client.post(self.url, files=files)
        except httpx.TimeoutException:
            raise ServiceError(
                502, "detector_failed", f"the upstream detector at {self.url} did not answer within {self.timeout_s} s"
            ) from None
        except httpx.HTTPError as exc:
            raise ServiceError(
                502, "detector_failed", f"cannot reach the upstream detector at {self.url}: {exc}"
            ) from None
        if response.status_code != 200:
            text = response.text[:300].replace("\n", " ")
            raise ServiceError(502, "detector_failed", f"the upstream detector answered {response.status_code}: {text}")
        try:
            body = loads_strict(response.content)
        except (UnicodeDecodeError, ValueError, RecursionError):  # JSONDecodeError is a ValueError
            raise ServiceError(502, "detector_bad_output", "the upstream detector's answer is not valid JSON") from None
        instances = body.get("instances") if isinstance(body, dict) else body
        if not isinstance(instances, list) or not all(isinstance(e, dict) for e in instances):
            raise ServiceError(
                502,
                "detector_bad_output",
                'the upstream detector must answer {"instances": [objects]} (see docs/service.md)',
            )
        return instances

    async def ready(self) -> tuple[bool, str]:
        try:
            response = await self.client.get(self.health_url, timeout=min(self.timeout_s, 2.0))
        except httpx.HTTPError as exc:
            return False, f"unreachable: {self.health_url}: {type(exc).__name__}"
        if response.is_success:
            return True, "reachable"
        return False, f"{self.health_url} answered {response.status_code}"

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "url": self.url, "health_url": self.health_url}

    async def close(self) -> None:
        await self.client.aclose()

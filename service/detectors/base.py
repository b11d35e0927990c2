"""What /segment needs from an upstream detector, whichever kind it is.

A detector turns one uploaded image into COCO-style instances: dicts with a
``segmentation`` (RLE or polygons, at the image's size), ``category_id`` and ``score``;
other keys are passed through to the response. Failures are :class:`ServiceError` with a
status that says whose fault it was (502: the upstream; 404/422: the upload).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np


class Detector(ABC):
    """One configured upstream detector; the app holds at most one."""

    kind: str = ""

    @abstractmethod
    async def detect(self, data: bytes, image: np.ndarray, filename: str | None) -> list[dict[str, Any]]:
        """Instances for one image.

        data: the uploaded file as sent (an HTTP upstream gets it unchanged);
        image: the same image decoded, HxWx3 uint8 RGB; filename: the upload's file name.
        """

    async def ready(self) -> tuple[bool, str]:
        """(usable now, why not) for /readyz."""
        return True, "ready"

    def describe(self) -> dict[str, Any]:
        """What /v1/models shows about this detector (no secrets)."""
        return {"kind": self.kind}

    async def close(self) -> None:  # noqa: B027 - an optional hook: most detectors hold nothing
        """Release connections, threads, GPU memory."""

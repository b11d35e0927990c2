"""One description of a Refiner to build, shared by every door that builds one from options.

``bpr-refine`` maps its flags onto a :class:`RefinerSpec`, the service maps its ``BPR_*``
settings onto the same class (``service.settings.Settings.refiner_spec``), and both build
with :meth:`RefinerSpec.build`; a test checks that every field here has a CLI flag and a
service setting, so the two doors cannot drift apart again.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from bpr.refiner import Refiner


@dataclass(frozen=True)
class RefinerSpec:
    """What to load and how to run it. ``None`` = what the checkpoint / library recommends."""

    checkpoint: Path | None = None
    device: str = "cpu"
    precision: str = "auto"
    backend: str | None = None  # None: BPR_BACKEND, else auto (bpr.backends)
    batch_size: int = 64
    patch_size: int | None = None
    input_size: int | None = None
    # per-call defaults (bpr.refiner.RefineOptions)
    nms_iou: float | None = None
    cover_all: bool | None = None
    resolve_overlaps: bool | None = None
    flip_tta: bool | None = None
    iterations: int | None = None
    confine_passes: bool | None = None
    fallback_iou: float | None = None
    min_area: int | None = None
    change_margin: float | None = None
    quality_gate: bool | None = None

    def build(self) -> Refiner:
        """Load the network and make the Refiner (ModelNotAvailableError / BprInputError on bad input)."""
        fields = dataclasses.asdict(self)
        return Refiner.from_checkpoint(fields.pop("checkpoint"), input_size=fields.pop("input_size"), **fields)

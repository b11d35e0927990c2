"""Upstream detectors for /segment: ``http``, ``mmdet`` or ``results``, one at a time.

``build_detector(settings)`` returns the configured one, or None (then /segment answers 503
and /refine works as always). Each kind lives in its own module; mmdet is imported only
when it is configured.
"""

from __future__ import annotations

from typing import TypeVar

from bpr.errors import BprInputError
from service.detectors.base import Detector
from service.settings import Settings

T = TypeVar("T")

NO_DETECTOR_HELP = (
    "no upstream detector is configured, so /segment cannot run (/refine works): set BPR_DETECTOR=http with "
    "BPR_DETECTOR_URL, BPR_DETECTOR=results with BPR_RESULTS_FILE and BPR_RESULTS_IMAGE_INFO, or "
    "BPR_DETECTOR=mmdet with BPR_MMDET_CONFIG and BPR_MMDET_CHECKPOINT (see docs/service.md)"
)


def _needed(value: T | None, variable: str) -> T:
    """A setting the chosen detector cannot do without (Settings checks these at startup too)."""
    if value is None:
        raise BprInputError(f"BPR_DETECTOR needs {variable}")
    return value


def build_detector(settings: Settings) -> Detector | None:
    """The detector named by ``settings.detector``; raises with a clear message if it cannot load."""
    if settings.detector == "http":
        from service.detectors.http import HttpDetector

        key = settings.detector_api_key.get_secret_value() if settings.detector_api_key else None
        return HttpDetector(
            _needed(settings.detector_url, "BPR_DETECTOR_URL"),
            settings.detector_health_url,
            settings.detector_timeout_s,
            key,
        )
    if settings.detector == "results":
        from service.detectors.results import ResultsDetector

        return ResultsDetector(
            _needed(settings.results_file, "BPR_RESULTS_FILE"),
            _needed(settings.results_image_info, "BPR_RESULTS_IMAGE_INFO"),
            settings.results_images_dir,
        )
    if settings.detector == "mmdet":
        from service.detectors.mmdet import MMDetDetector

        return MMDetDetector(
            _needed(settings.mmdet_config, "BPR_MMDET_CONFIG"),
            _needed(settings.mmdet_checkpoint, "BPR_MMDET_CHECKPOINT"),
            settings.mmdet_device or settings.device,
        )
    return None


__all__ = ["Detector", "NO_DETECTOR_HELP", "build_detector"]

"""Upstream detectors for /segment: ``http``, ``mmdet`` or ``results``, one at a time.

``build_detector(settings)`` returns the configured one, or None (then /segment answers 503
and /refine works as always). Each kind lives in its own module; mmdet is imported only
when it is configured.
"""

from __future__ import annotations

from service.detectors.base import Detector
from service.settings import Settings

NO_DETECTOR_HELP = (
    "no upstream detector is configured, so /segment cannot run (/refine works): set BPR_DETECTOR=http with "
    "BPR_DETECTOR_URL, BPR_DETECTOR=results with BPR_RESULTS_FILE and BPR_RESULTS_IMAGE_INFO, or "
    "BPR_DETECTOR=mmdet with BPR_MMDET_CONFIG and BPR_MMDET_CHECKPOINT (see docs/service.md)"
)


def build_detector(settings: Settings) -> Detector | None:
    """The detector named by ``settings.detector``; raises with a clear message if it cannot load."""
    if settings.detector == "http":
        from service.detectors.http import HttpDetector

        key = settings.detector_api_key.get_secret_value() if settings.detector_api_key else None
        assert settings.detector_url is not None  # Settings checks it
        return HttpDetector(settings.detector_url, settings.detector_health_url, settings.detector_timeout_s, key)
    if settings.detector == "results":
        from service.detectors.results import ResultsDetector

        assert settings.results_file is not None and settings.results_image_info is not None
        return ResultsDetector(settings.results_file, settings.results_image_info, settings.results_images_dir)
    if settings.detector == "mmdet":
        from service.detectors.mmdet import MMDetDetector

        assert settings.mmdet_config is not None and settings.mmdet_checkpoint is not None
        return MMDetDetector(settings.mmdet_config, settings.mmdet_checkpoint, settings.mmdet_device or settings.device)
    return None


__all__ = ["Detector", "NO_DETECTOR_HELP", "build_detector"]

"""The input limits every door shares (library, bpr-refine, bpr-serve), one variable each.

bpr-serve reads them as settings (``Settings.max_pixels`` is ``BPR_MAX_PIXELS``); the library
and bpr-refine read the same environment variables here, so one environment bounds both and
a refused input gets the same words from either.
"""

from __future__ import annotations

import os

from bpr.errors import BprInputError

MAX_PIXELS_ENV = "BPR_MAX_PIXELS"
DEFAULT_MAX_PIXELS = 25_000_000  # a 5000x5000 photo; decoded RGB is 75 MB
MAX_MASK_PIXELS_ENV = "BPR_MAX_MASK_PIXELS"
DEFAULT_MAX_MASK_PIXELS = 256_000_000  # instances x height x width of one image: 256 MB of bool masks


def env_limit(name: str, default: int) -> int:
    """The whole number in environment variable ``name``, else ``default``; one-line error if malformed."""
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    if not value.isdigit() or int(value) < 1:
        raise BprInputError(f"{name} must be a whole number, at least 1, got {value!r}")
    return int(value)


def default_max_pixels() -> int:
    """``BPR_MAX_PIXELS`` if set, else 25,000,000: the largest image any door decodes."""
    return env_limit(MAX_PIXELS_ENV, DEFAULT_MAX_PIXELS)


def default_max_mask_pixels() -> int:
    """``BPR_MAX_MASK_PIXELS`` if set, else 256,000,000: instances x pixels of one image."""
    return env_limit(MAX_MASK_PIXELS_ENV, DEFAULT_MAX_MASK_PIXELS)


def over_pixel_limit(what: str, width: int, height: int, max_pixels: int) -> str:
    """The one message for an image over the limit."""
    return f"{what}: {width}x{height} pixels is over the limit of {max_pixels} pixels ({MAX_PIXELS_ENV})"


def over_mask_limit(what: str, n: int, width: int, height: int, max_mask_pixels: int) -> str:
    """The one message for too many instances x pixels in one image."""
    return (
        f"{what}: {n} instances of {width}x{height} pixels is over the limit of {max_mask_pixels} mask pixels "
        f"({MAX_MASK_PIXELS_ENV})"
    )

"""Image files in, RGB uint8 arrays out."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from bpr.errors import BprInputError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as HxWx3 uint8 RGB (grey and RGBA files are converted)."""
    path = Path(path)
    if not path.is_file():
        raise BprInputError(f"image not found: {path}")
    return decode_image_bytes(path.read_bytes(), what=str(path))


def decode_image_bytes(data: bytes, what: str = "image", max_pixels: int | None = None) -> np.ndarray:
    """Decode encoded image bytes (JPEG, PNG, ...) to HxWx3 uint8 RGB.

    ``max_pixels`` guards against decompression bombs: the header is read first and a larger
    image is refused before its pixels are decoded.
    """
    buf = np.frombuffer(data, dtype=np.uint8)
    if buf.size == 0:
        raise BprInputError(f"{what}: empty file, not an image")
    if max_pixels is not None:
        size = _header_size(data)
        if size is not None and size[0] * size[1] > max_pixels:
            raise BprInputError(
                f"{what}: {size[0]}x{size[1]} pixels is over the limit of {max_pixels} pixels"
            )
    image = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    if image is None:
        raise BprInputError(f"{what}: not a readable image (corrupt or unsupported format)")
    if max_pixels is not None and image.shape[0] * image.shape[1] > max_pixels:
        raise BprInputError(
            f"{what}: {image.shape[1]}x{image.shape[0]} pixels is over the limit of {max_pixels} pixels"
        )
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG or JPEG header without decoding pixels; None if unknown."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24:
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    if data[:2] == b"\xff\xd8":
        i = 2
        while i + 9 < len(data):
            if data[i] != 0xFF:
                return None
            marker = data[i + 1]
            length = int.from_bytes(data[i + 2 : i + 4], "big")
            if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
                h = int.from_bytes(data[i + 5 : i + 7], "big")
                w = int.from_bytes(data[i + 7 : i + 9], "big")
                return w, h
            i += 2 + length
    return None


def find_image_by_stem(directory: Path, stem: str) -> Path | None:
    """The image in ``directory`` whose name without suffix is ``stem`` (e.g. image_id "42")."""
    for suffix in IMAGE_SUFFIXES:
        for candidate in (directory / f"{stem}{suffix}", directory / f"{stem}{suffix.upper()}"):
            if candidate.is_file():
                return candidate
    return None


def is_uri(path: str) -> bool:
    """``s3://bucket/x.jpg``, ``gs://...``, ``hdfs://...``: read through a filesystem library."""
    return "://" in path and not path.startswith("file://")


def read_image_any(path: str) -> np.ndarray:
    """An image from a local path or a URI, as HxWx3 uint8 RGB.

    URIs go through fsspec when it is installed (it knows the most schemes), else through
    pyarrow's filesystems (s3, gs, hdfs), which Ray Data brings along.
    """
    if not is_uri(path):
        return read_image(path[len("file://"):] if path.startswith("file://") else path)
    try:
        data = _read_uri(path)
    except FileNotFoundError:
        raise BprInputError(f"image not found: {path}") from None
    return decode_image_bytes(data, what=path)


def _read_uri(path: str) -> bytes:
    try:
        import fsspec
    except ImportError:
        from pyarrow import fs

        filesystem, inner = fs.FileSystem.from_uri(path)
        with filesystem.open_input_file(inner) as f:
            return f.read()
    with fsspec.open(path, "rb") as f:
        return f.read()

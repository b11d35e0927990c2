"""Image files in, RGB uint8 arrays out, each one sized from its header before it is decoded.

Why the header is read by Pillow and the pixels decoded by OpenCV: OpenCV's decoders give
the arrays every result so far was made with (outputs must not change), but OpenCV cannot
say how large an image is without allocating it, which is how a 1 MB TIFF or a JPEG with a
stray byte becomes a 3 GB allocation. Pillow reads only the header of every format it
knows. To make sure both read the *same* header, the format is chosen once, by the file's
signature (as OpenCV chooses its decoder), and Pillow's reader for exactly that format sizes
it; any other format, or a header that reader cannot parse, is refused, never decoded.
After decoding, the array must have the size the header promised.

The limit is one setting for every door (bpr-refine, bpr-serve, the library):
``BPR_MAX_PIXELS``, default 25,000,000 pixels, with one message.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import cv2
import numpy as np
from PIL import (
    BmpImagePlugin,
    GifImagePlugin,
    ImageFile,
    JpegImagePlugin,
    PngImagePlugin,
    PpmImagePlugin,
    TiffImagePlugin,
)

from bpr.errors import BprInputError
from bpr.io.limits import default_max_pixels, over_pixel_limit

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")

UNREADABLE = "not a readable image (corrupt or unsupported format)"


def _webp_reader() -> type[ImageFile.ImageFile] | None:
    try:
        from PIL import WebPImagePlugin

        return WebPImagePlugin.WebPImageFile
    except ImportError:  # pragma: no cover - Pillow built without libwebp: WebP is refused
        return None


def _reader_for(data: bytes) -> type[ImageFile.ImageFile] | None:
    """Pillow's header reader for the format OpenCV would pick for ``data``; None = refused."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return PngImagePlugin.PngImageFile
    if data.startswith(b"\xff\xd8\xff"):
        return JpegImagePlugin.JpegImageFile
    if data[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return TiffImagePlugin.TiffImageFile
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return _webp_reader()
    if data.startswith(b"BM"):
        return BmpImagePlugin.BmpImageFile
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return GifImagePlugin.GifImageFile
    if len(data) > 2 and data[0:1] == b"P" and data[1:2] in b"123456" and data[2:3].isspace():
        return PpmImagePlugin.PpmImageFile
    return None


def image_size(data: bytes, what: str = "image") -> tuple[int, int]:
    """(width, height) of encoded image bytes from the header alone; BprInputError if unknown.

    The reader's class is called directly (not ``Image.open``): no other format is tried,
    and Pillow's own bomb guard, which would answer above our limit with its own words,
    is not in the way.
    """
    reader = _reader_for(data)
    if reader is None:
        raise BprInputError(f"{what}: {UNREADABLE}")
    try:
        with reader(io.BytesIO(data)) as im:
            width, height = im.size
    except Exception as exc:  # Pillow raises many types for malformed headers
        raise BprInputError(f"{what}: {UNREADABLE}: cannot read its size ({exc})") from None
    if width < 1 or height < 1:
        raise BprInputError(f"{what}: {UNREADABLE}: its header says {width}x{height} pixels")
    return int(width), int(height)


def read_image(path: str | os.PathLike, max_pixels: int | None = None) -> np.ndarray:
    """Read an image file as HxWx3 uint8 RGB (grey and RGBA files are converted).

    ``max_pixels``: the limit checked on the header (default ``BPR_MAX_PIXELS``)."""
    path = Path(path)
    if not path.is_file():
        raise BprInputError(f"image not found: {path}")
    return decode_image_bytes(path.read_bytes(), what=str(path), max_pixels=max_pixels)


def decode_image_bytes(data: bytes, what: str = "image", max_pixels: int | None = None) -> np.ndarray:
    """Decode encoded image bytes (JPEG, PNG, TIFF, WebP, BMP, GIF, PNM) to HxWx3 uint8 RGB.

    ``max_pixels`` (default ``BPR_MAX_PIXELS``) guards against decompression bombs: the
    header is read first and a larger image, or one whose size cannot be read, is refused
    before any pixel is allocated.
    """
    if len(data) == 0:
        raise BprInputError(f"{what}: empty file, not an image")
    limit = default_max_pixels() if max_pixels is None else max_pixels
    width, height = image_size(data, what)
    if width * height > limit:
        raise BprInputError(over_pixel_limit(what, width, height, limit))
    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise BprInputError(f"{what}: {UNREADABLE}")
    if sorted(image.shape[:2]) != sorted((height, width)):  # EXIF orientation may swap the sides
        raise BprInputError(
            f"{what}: {UNREADABLE}: its header says {width}x{height} pixels, its data {image.shape[1]}x{image.shape[0]}"
        )
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


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
        return read_image(path[len("file://") :] if path.startswith("file://") else path)
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

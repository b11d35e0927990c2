"""Image bombs: small files whose headers claim huge images (imported by the tests, not a conftest).

Each is a valid file of its format apart from the claimed size, so a decoder that trusts the
header would allocate width x height pixels; the only defence is to size it first.
"""

from __future__ import annotations

import struct
import zlib

import cv2
import numpy as np


def tiff_claiming(width: int, height: int) -> bytes:
    """A one-strip deflate TIFF (8-bit grey) that claims width x height: ~1 KB on disk."""
    strip = zlib.compress(b"\0" * 4096)
    entries = [  # (tag, type, count, value); type 3 = SHORT, 4 = LONG
        (256, 4, 1, width),
        (257, 4, 1, height),
        (258, 3, 1, 8),
        (259, 3, 1, 8),
        (262, 3, 1, 1),
        (273, 4, 1, 0),
        (277, 3, 1, 1),
        (278, 4, 1, height),
        (279, 4, 1, len(strip)),
    ]
    ifd_size = 2 + 12 * len(entries) + 4
    strip_offset = 8 + ifd_size
    ifd = struct.pack("<H", len(entries))
    for tag, kind, count, value in entries:
        value = strip_offset if tag == 273 else value
        packed = struct.pack("<HI", value, 0)[:4] if kind == 3 else struct.pack("<I", value)
        ifd += struct.pack("<HHI", tag, kind, count) + packed
    return b"II*\x00" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0) + strip


def jpeg_claiming(width: int, height: int, stray_byte: bool = True) -> bytes:
    """A small JPEG whose SOF claims width x height, with one stray byte before the SOF marker
    (libjpeg warns and decodes on; a header reader that stops at the junk cannot size it)."""
    ok, buf = cv2.imencode(".jpg", np.full((16, 16, 3), 128, np.uint8))
    data = bytearray(buf.tobytes())
    sof = data.find(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data[:sof]) + (b"\x00" if stray_byte else b"") + bytes(data[sof:])


def png_claiming(width: int, height: int) -> bytes:
    """A PNG that claims width x height with one tiny IDAT."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def bmp_claiming(width: int, height: int) -> bytes:
    """An uncompressed 24-bit BMP header claiming width x height, with almost no pixel data."""
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 2835, 2835, 0, 0)
    header = b"BM" + struct.pack("<IHHI", 14 + len(info) + 64, 0, 0, 14 + len(info))
    return header + info + b"\0" * 64

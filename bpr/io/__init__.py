"""Reading and writing what users hand us: images, COCO json, masks as RLE / polygons."""

from bpr.io.coco import (
    decode_segmentation,
    encode_mask,
    load_json,
    mask_to_bbox,
    write_json_atomic,
)
from bpr.io.images import read_image

__all__ = [
    "decode_segmentation",
    "encode_mask",
    "load_json",
    "mask_to_bbox",
    "read_image",
    "write_json_atomic",
]

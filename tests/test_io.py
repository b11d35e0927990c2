"""COCO segmentations: every shape detectors write decodes, every malformed one is refused."""

import io
import json

import bombs
import numpy as np
import pytest
from conftest import disk
from pycocotools import mask as mask_utils

from bpr.errors import BprInputError
from bpr.io.coco import decode_segmentation, encode_mask, load_json, mask_to_bbox, write_json_atomic
from bpr.io.images import decode_image_bytes


def test_rle_round_trip_with_str_counts():
    m = disk(37, 53, 18, 20, 11)
    rle = encode_mask(m)
    assert isinstance(rle["counts"], str) and rle["size"] == [37, 53]
    assert np.array_equal(decode_segmentation(rle, 37, 53), m)
    json.dumps(rle)  # str counts are JSON-serialisable


def test_uncompressed_rle_list_counts():
    m = disk(20, 30, 10, 10, 6)
    flat = m.flatten(order="F").astype(np.uint8)
    changes = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1]]])))
    counts = np.diff(np.concatenate([[0], changes])).tolist()
    assert np.array_equal(decode_segmentation({"size": [20, 30], "counts": counts}, 20, 30), m)


def test_polygons_decode_like_pycocotools():
    poly = [[10.0, 10.0, 40.0, 10.0, 40.0, 30.0, 10.0, 30.0], [50, 5, 60, 5, 55, 15]]
    got = decode_segmentation(poly, 50, 70)
    want = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(poly, 50, 70))).astype(bool)
    assert np.array_equal(got, want) and got.sum() > 0


def test_bbox_matches_pycocotools():
    m = disk(40, 60, 20, 25, 9)
    assert mask_to_bbox(m) == list(mask_utils.toBbox(mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))))
    assert mask_to_bbox(np.zeros((5, 5), bool)) == [0.0, 0.0, 0.0, 0.0]


@pytest.mark.parametrize(
    "seg, message",
    [
        ({"size": [10, 10], "counts": "@@@@!!"}, "malformed"),
        ({"size": [10, 10], "counts": "0"}, "malformed"),
        ({"size": [10, 12], "counts": "1"}, "does not match"),
        ({"counts": "abc"}, "needs"),
        ({"size": [10, 10], "counts": [50, 40]}, "sum to 90"),
        ({"size": [10, 10], "counts": 5}, "string or a list"),
        ([[1, 2, 3]], "even number"),
        ([["a", 1, 2, 3, 4, 5]], "lists of numbers"),
        ("nope", "RLE object or a list"),
        ([[0, 0, 1e300, 0, 1e300, 1e300]], "out of range"),  # crashed pycocotools (25 GB)
        ([[0, 0, -1e12, 0, 5, 5]], "out of range"),  # 11.6 GB and 48 s in the server
        ([[0, 0, 10**400, 0, 5, 5]], "finite numbers"),  # an int no float holds
        ([[0, 0, True, 0, 5, 5]], "lists of numbers"),
        ([[0, 0, 1000, 0, 1000, 1000] * 40], "outline of"),  # in range, but 120 edges of 1000 px each
        ([[0, 0, 5, 0, 5, 5] * 90_000], "vertices, more than"),
    ],
)
def test_malformed_segmentations_raise_one_line_errors(seg, message):
    with pytest.raises(BprInputError, match=message) as info:
        decode_segmentation(seg, 10, 10, what="results[3]")
    assert "results[3]" in str(info.value) and "\n" not in str(info.value)


def test_polygons_may_cross_the_border_by_one_image_size_and_at_least_1024_px():
    crossing = [[-1000.0, -10.0, 15.0, -10.0, 15.0, 8.0, -10.0, 8.0]]
    got = decode_segmentation(crossing, 10, 10)
    want = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(crossing, 10, 10))).astype(bool)
    assert np.array_equal(got, want) and got.sum() > 50
    with pytest.raises(BprInputError, match=r"x must lie in \[-1024, 1034\] and y in \[-1024, 1034\]"):
        decode_segmentation([[-1024.5, 0, 5, 0, 5, 5]], 10, 10)
    big = [[-3000.0, 0, 5, 0, 5, 5]]  # one image size beyond a 3000 px wide image
    assert decode_segmentation(big, 20, 3000).shape == (20, 3000)
    with pytest.raises(BprInputError, match=r"x must lie in \[-3000, 6000\]"):
        decode_segmentation([[6000.5, 0, 5, 0, 5, 5]], 20, 3000)


def test_load_json_errors(tmp_path):
    with pytest.raises(BprInputError, match="not found"):
        load_json(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(BprInputError, match="not valid JSON"):
        load_json(tmp_path / "bad.json")


def test_atomic_write_leaves_no_partial_file_on_failure(tmp_path):
    out = tmp_path / "out.json"
    write_json_atomic(out, {"a": 1})
    with pytest.raises(TypeError):
        write_json_atomic(out, {"a": object()})
    assert json.loads(out.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_image_bytes_errors_and_pixel_limit():
    import cv2

    with pytest.raises(BprInputError, match="empty"):
        decode_image_bytes(b"")
    with pytest.raises(BprInputError, match="not a readable image"):
        decode_image_bytes(b"hello world, not an image")
    ok, png = cv2.imencode(".png", np.zeros((100, 200, 3), np.uint8))
    assert decode_image_bytes(png.tobytes()).shape == (100, 200, 3)
    with pytest.raises(BprInputError, match="over the limit"):
        decode_image_bytes(png.tobytes(), max_pixels=10_000)
    ok, jpg = cv2.imencode(".jpg", np.zeros((100, 200, 3), np.uint8))
    with pytest.raises(BprInputError, match="over the limit"):
        decode_image_bytes(jpg.tobytes(), max_pixels=10_000)


def _pycocotools_rle(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")}


def test_encode_mask_writes_pycocotools_strings_exactly():
    """The column-band encoder against pycocotools' own: random masks of every shape (empty,
    full, touching each border, one column), and the real masks of a DAVIS and a COCO image."""
    rng = np.random.default_rng(0)
    masks = [np.zeros((5, 7), bool), np.ones((5, 7), bool), np.ones((1, 1), bool), np.zeros((1, 1), bool)]
    for _ in range(3000):
        h, w = (int(v) for v in rng.integers(1, 24, 2))
        m = rng.random((h, w)) < rng.random()
        m[:, : int(rng.integers(0, w + 1))] &= rng.random() < 0.5  # empty columns on the left
        m[:, int(rng.integers(0, w + 1)) :] &= rng.random() < 0.5  # and on the right
        masks.append(m)
    for m in masks:
        assert encode_mask(m) == _pycocotools_rle(m), m.astype(int)
        assert np.array_equal(decode_segmentation(_pycocotools_rle(m), *m.shape), m)  # box-copy decode
    assert encode_mask(masks[5].astype(np.uint8)) == _pycocotools_rle(masks[5])  # 0/1 arrays too


def test_encode_mask_round_trips_real_masks(data_dir):
    for name in ("davis-dev-real", "coco-mini"):
        gt = load_json(data_dir / name / "gt.json")
        sizes = {i["id"]: (i["height"], i["width"]) for i in gt["images"]}
        for a in gt["annotations"][:40]:
            h, w = sizes[a["image_id"]]
            m = decode_segmentation(a["segmentation"], h, w)
            seg = a["segmentation"]
            rle = (
                mask_utils.merge(mask_utils.frPyObjects(seg, h, w))
                if isinstance(seg, list)
                else (
                    {**seg, "counts": seg["counts"].encode()}
                    if isinstance(seg["counts"], str)
                    else mask_utils.frPyObjects(seg, h, w)
                )
            )
            assert np.array_equal(m, mask_utils.decode(rle).astype(bool))  # what pycocotools decodes
            assert encode_mask(m) == _pycocotools_rle(m)
            assert np.array_equal(decode_segmentation(encode_mask(m), *m.shape), m)


@pytest.mark.parametrize(
    "build",
    [bombs.tiff_claiming, bombs.jpeg_claiming, bombs.png_claiming, bombs.bmp_claiming],
    ids=["tiff", "jpeg-stray-byte", "png", "bmp"],
)
def test_every_format_is_sized_before_decoding(build):
    """A 30000x30000 claim in a small file is refused from its header, in every format, with
    one message; nothing near 900 M pixels is ever allocated (tracemalloc would see numpy's)."""
    import tracemalloc

    tracemalloc.start()
    try:
        with pytest.raises(BprInputError) as info:
            decode_image_bytes(build(30000, 30000), what="x.img", max_pixels=25_000_000)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert str(info.value) == "x.img: 30000x30000 pixels is over the limit of 25000000 pixels (BPR_MAX_PIXELS)"
    assert peak < 50_000_000


@pytest.mark.parametrize("fmt", ["TIFF", "WEBP", "BMP", "GIF", "PPM", "PNG", "JPEG"])
def test_every_accepted_format_decodes_to_its_header_size(fmt):
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.full((30, 50, 3), 200, np.uint8)).save(buf, format=fmt)
    assert decode_image_bytes(buf.getvalue()).shape == (30, 50, 3)
    with pytest.raises(BprInputError, match="50x30 pixels is over the limit of 1000 pixels"):
        decode_image_bytes(buf.getvalue(), max_pixels=1000)


def test_an_image_whose_size_cannot_be_read_is_refused_not_decoded():
    import cv2

    ok, hdr = cv2.imencode(".hdr", np.ones((8, 8, 3), np.float32))  # OpenCV decodes it, we cannot size it
    assert ok and cv2.imdecode(hdr, cv2.IMREAD_COLOR) is not None
    with pytest.raises(BprInputError, match="not a readable image"):
        decode_image_bytes(hdr.tobytes())
    broken = bombs.jpeg_claiming(16, 16)[:4] + b"\xff\x01" * 40  # JPEG signature, no readable header
    with pytest.raises(BprInputError, match="not a readable image"):
        decode_image_bytes(broken)


def test_the_pixel_limit_defaults_to_bpr_max_pixels(monkeypatch):
    from bpr.io.images import default_max_pixels

    assert default_max_pixels() == 25_000_000
    monkeypatch.setenv("BPR_MAX_PIXELS", "1000")
    with pytest.raises(BprInputError, match=r"200x100 pixels is over the limit of 1000 pixels \(BPR_MAX_PIXELS\)"):
        decode_image_bytes(bombs.png_claiming(200, 100))
    monkeypatch.setenv("BPR_MAX_PIXELS", "lots")
    with pytest.raises(BprInputError, match="BPR_MAX_PIXELS must be a whole number, at least 1"):
        default_max_pixels()

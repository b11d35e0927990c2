"""Bad input, limits, the API key, backpressure and timeouts: always a 4xx/503 JSON, never a 500."""

from __future__ import annotations

import io
import json
import struct
import threading
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import bombs
import httpx
import numpy as np
import pytest
from conftest_service import (  # noqa: F401  (checkpoint and good are fixtures)
    checkpoint,
    good,
    metric_value,
    needs_data,
    refine_request,
    serve,
)
from PIL import Image

pytestmark = needs_data
UPLOAD_LIMIT = 600_000


@pytest.fixture(scope="module")
def server(checkpoint: Path):
    with serve(checkpoint, max_upload_bytes=UPLOAD_LIMIT, max_pixels=1_000_000, max_instances=5) as live:
        yield live


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims width x height (a decompression bomb's header) with one tiny IDAT."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def _entry(good, **changes: Any) -> dict:
    return {**good[1][0], **changes}


# (name, builds (image bytes, instances) from `good`, expected code, words the detail must contain)
# fmt: off
BAD_INPUTS: list[tuple[str, Callable[[Any], tuple[bytes, Any]], str, str]] = [
    ("not an image", lambda g: (b"hello, I am a text file", g[1]), "invalid_image", "not a readable image"),
    ("empty image", lambda g: (b"", g[1]), "invalid_image", "empty"),
    ("corrupt jpeg", lambda g: (g[0][:20] + bytes(range(256)) * 20, g[1]), "invalid_image", "not a readable image"),
    ("corrupt png", lambda g: (_png(np.zeros((40, 40), np.uint8))[:60] + b"\0" * 200, g[1]), "invalid_image", "not a readable image"),
    ("decompression bomb", lambda g: (_png_header_only(100_000, 100_000), g[1]), "invalid_image", "over the limit of 1000000 pixels"),
    ("image over pixel limit", lambda g: (_png(np.zeros((1001, 1000), np.uint8)), g[1]), "invalid_image", "pixels is over the limit of 1000000 pixels"),
    ("mask size differs", lambda g: (g[0], [_entry(g, segmentation={"size": [100, 100], "counts": "PPYo0"})]), "invalid_instances", "does not match the image size 480x854"),
    ("malformed rle", lambda g: (g[0], [_entry(g, segmentation={"size": [480, 854], "counts": "!!!!"})]), "invalid_instances", "malformed compressed RLE"),
    ("rle without size", lambda g: (g[0], [_entry(g, segmentation={"counts": "abc"})]), "invalid_instances", "needs 'counts' and 'size'"),
    ("uncompressed rle wrong sum", lambda g: (g[0], [_entry(g, segmentation={"size": [480, 854], "counts": [1, 2, 3]})]), "invalid_instances", "sum to 6"),
    ("odd polygon", lambda g: (g[0], [_entry(g, segmentation=[[1, 2, 3, 4, 5, 6, 7]])]), "invalid_instances", "even number"),
    ("polygon of strings", lambda g: (g[0], [_entry(g, segmentation=[["a", "b", "c", "d", "e", "f"]])]), "invalid_instances", "lists of numbers"),
    ("polygon at 1e300", lambda g: (g[0], [_entry(g, segmentation=[[0, 0, 1e300, 0, 1e300, 1e300]])]), "invalid_instances", "polygon vertex out of range"),
    ("polygon at -1e12", lambda g: (g[0], [_entry(g, segmentation=[[0, 0, -1e12, 0, 5, 5]])]), "invalid_instances", "polygon vertex out of range"),
    ("segmentation a string", lambda g: (g[0], [_entry(g, segmentation="everything")]), "invalid_instances", "RLE object or a list of polygons"),
    ("no segmentation", lambda g: (g[0], [{"score": 0.5}]), "invalid_instances", "instances[0].segmentation: Field required"),
    ("score of wrong type", lambda g: (g[0], [_entry(g, score="high")]), "invalid_instances", "instances[0].score"),
    ("category_id of wrong type", lambda g: (g[0], [_entry(g), _entry(g, category_id=1.5)]), "invalid_instances", "instances[1].category_id"),
    ("id of wrong type", lambda g: (g[0], [_entry(g, id=[1])]), "invalid_instances", "instances[0].id"),
    ("too many instances", lambda g: (g[0], [_entry(g)] * 6), "too_many_instances", "6 instances is over the limit of 5"),
    ("instances not a list", lambda g: (g[0], {"segmentation": "x"}), "invalid_instances", "expected a JSON list"),
    ("instances of numbers", lambda g: (g[0], [1, 2]), "invalid_instances", "instances[0]: expected an object"),
    ("id map of wrong size", lambda g: (g[0], _png(np.ones((48, 64), np.uint8))), "invalid_instances", "64x48 but the image is 854x480"),
    ("id map in colour", lambda g: (g[0], _png(np.ones((480, 854, 3), np.uint8))), "invalid_instances", "one channel"),
    ("id map truncated", lambda g: (g[0], _png(np.ones((480, 854), np.uint8))[:80]), "invalid_instances", "not a readable PNG"),
    ("id map bomb", lambda g: (g[0], _png_header_only(100_000, 100_000)), "invalid_instances", "over the limit"),
    ("tiff bomb", lambda g: (bombs.tiff_claiming(30000, 30000), g[1]), "invalid_image", "30000x30000 pixels is over the limit of 1000000 pixels"),
    ("jpeg bomb with a stray byte", lambda g: (bombs.jpeg_claiming(30000, 30000), g[1]), "invalid_image", "30000x30000 pixels is over the limit of 1000000 pixels"),
    ("bmp bomb", lambda g: (bombs.bmp_claiming(30000, 30000), g[1]), "invalid_image", "30000x30000 pixels is over the limit of 1000000 pixels"),
    ("format nobody can size", lambda g: (b"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n-Y 8 +X 8\n" + b"\0" * 256, g[1]), "invalid_image", "not a readable image"),
    ("instances of two images", lambda g: (g[0], [_entry(g, image_id=1), _entry(g, image_id=2)]), "mixed_images", "instances[1].image_id is 2 but instances[0].image_id is 1"),
    ("instances of an int and a str image_id", lambda g: (g[0], [_entry(g, image_id=1), _entry(g, image_id="1")]), "mixed_images", "send only the instances of the image you upload"),
]
# fmt: on


@pytest.mark.parametrize("name,build,code,words", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_is_a_422_naming_the_problem(server, good, name, build, code, words) -> None:
    image, instances = build(good)
    r = refine_request(server.url, image, instances)
    assert r.status_code == 422, r.text
    assert r.json()["code"] == code
    assert words in r.json()["detail"]


@pytest.mark.parametrize(
    "raw,words",
    [
        ("{not json", "invalid JSON"),
        ('[{"segmentation": [], "score": NaN}]', "NaN is not a number JSON allows"),
        ('[{"segmentation": [], "score": 1e999}]', "1e999 is out of the range"),
        ("[" * 100_000 + "]" * 100_000, "JSON"),
        ("\udcff".encode("utf-8", "surrogatepass"), "neither UTF-8 JSON nor a PNG"),
    ],
    ids=["syntax", "nan", "overflow", "deep", "binary"],
)
def test_instances_that_are_not_json(server, good, raw, words) -> None:
    files = {"image": ("a.jpg", good[0]), "instances": ("i.json", raw if isinstance(raw, bytes) else raw.encode())}
    r = httpx.post(f"{server.url}/refine", files=files, timeout=30)
    assert r.status_code == 422 and r.json()["code"] == "invalid_instances", r.text
    assert words in r.json()["detail"]


def test_missing_and_misplaced_fields(server, good) -> None:
    r = httpx.post(f"{server.url}/refine", files={"image": ("a.jpg", good[0])})
    assert r.status_code == 422 and r.json()["code"] == "missing_field" and "'instances'" in r.json()["detail"]
    r = httpx.post(f"{server.url}/refine", data={"instances": "[]"})
    assert r.status_code == 422 and "'image'" in r.json()["detail"]
    r = httpx.post(f"{server.url}/refine", data={"image": "not a file", "instances": "[]"})
    assert r.status_code == 422 and "must be a file part" in r.json()["detail"]
    r = httpx.post(f"{server.url}/refine", json={"image": "x", "instances": []})  # not multipart at all
    assert r.status_code == 422 and "multipart/form-data" in r.json()["detail"]


def test_broken_multipart_is_400(server) -> None:
    headers = {"content-type": "multipart/form-data; boundary=xyz"}
    body = b'--xyz\r\nContent-Disposition: form-data; name="image"; filename="a"\r\n\r\nabc'  # never closed
    r = httpx.post(f"{server.url}/refine", content=body, headers=headers)
    assert r.status_code in (400, 422) and r.json()["detail"], r.text
    files = [("f", (f"{i}.bin", b"x")) for i in range(6)]
    r = httpx.post(f"{server.url}/refine", files=files)
    assert r.status_code == 400 and r.json()["code"] == "invalid_form" and "files" in r.json()["detail"]


@pytest.mark.parametrize(
    "params,words",
    [
        ({"nms_iou": 2}, "query parameter 'nms_iou'"),
        ({"nms_iou": "dense"}, "nms_iou"),
        ({"output": "gif"}, "query parameter 'output'"),
    ],
)
def test_bad_query_parameters(server, good, params, words) -> None:
    r = refine_request(server.url, good[0], good[1], params=params)
    assert r.status_code == 422 and r.json()["code"] == "invalid_parameter" and words in r.json()["detail"], r.text


def test_upload_over_the_byte_limit(server, good) -> None:
    big = good[0] + b"\0" * UPLOAD_LIMIT
    r = refine_request(server.url, big, good[1])
    assert r.status_code == 413 and r.json()["code"] == "upload_too_large"
    assert f"limit of {UPLOAD_LIMIT} bytes" in r.json()["detail"]

    def chunks():  # no Content-Length: the limit must hold on the streamed body too
        yield b'--b\r\nContent-Disposition: form-data; name="image"; filename="a.jpg"\r\n\r\n'
        for _ in range(20):
            yield b"\0" * 50_000

    r = httpx.post(
        f"{server.url}/refine", content=chunks(), headers={"content-type": "multipart/form-data; boundary=b"}
    )
    assert r.status_code == 413 and r.json()["code"] == "upload_too_large", r.text


def test_unknown_route_and_method_are_json(server) -> None:
    r = httpx.get(f"{server.url}/nope")
    assert r.status_code == 404 and "detail" in r.json()
    r = httpx.get(f"{server.url}/refine")
    assert r.status_code == 405 and "detail" in r.json()


def test_no_client_input_caused_a_500(server, good) -> None:
    """Runs after the tests above (same module server): the server is alive and never answered 500."""
    assert refine_request(server.url, good[0], good[1]).status_code == 200
    text = httpx.get(f"{server.url}/metrics").text
    assert 'status="500"' not in text
    assert metric_value(text, "bpr_requests_total", 'route="/refine",status="422"') >= len(BAD_INPUTS)


# ---------------------------------------------------------------------- API key
def test_api_key(checkpoint: Path, good) -> None:
    with serve(checkpoint, api_key="s3cret") as live:
        for path in ("/refine", "/segment"):
            r = httpx.post(
                f"{live.url}{path}", files={"image": ("a.jpg", good[0])}, data={"instances": json.dumps(good[1])}
            )
            assert r.status_code == 401 and r.json()["code"] == "unauthorized", path
        assert refine_request(live.url, good[0], good[1], headers={"X-API-Key": "wrong"}).status_code == 401
        assert (
            refine_request(
                live.url, good[0], good[1], headers={"X-API-Key": "s3cret\u00e9".encode("latin-1")}
            ).status_code
            == 401
        )
        assert httpx.get(f"{live.url}/v1/models").status_code == 401
        # a stranger's oversized upload is refused for the key, not for its size (auth first)
        r = refine_request(live.url, good[0] + b"\0" * (25 * 1024 * 1024), good[1], headers={"X-API-Key": "wrong"})
        assert r.status_code == 401, r.text
        assert httpx.get(f"{live.url}/v1/models", headers={"X-API-Key": "s3cret"}).status_code == 200
        assert refine_request(live.url, good[0], good[1], headers={"X-API-Key": "s3cret"}).status_code == 200
        assert httpx.get(f"{live.url}/healthz").status_code == 200  # probes stay open
        assert httpx.get(f"{live.url}/metrics").status_code == 200


# ---------------------------------------------------------------------- backpressure, timeout
def _in_background(fn: Callable[[], httpx.Response]) -> tuple[threading.Thread, list[httpx.Response]]:
    out: list[httpx.Response] = []
    thread = threading.Thread(target=lambda: out.append(fn()))
    thread.start()
    return thread, out


def _wait_for_metric(url: str, name: str, at_least: float, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while metric_value(httpx.get(f"{url}/metrics").text, name) < at_least:
        assert time.monotonic() < deadline, f"{name} never reached {at_least}"
        time.sleep(0.02)


def test_429_when_too_many_requests_are_in_flight(checkpoint: Path, good) -> None:
    # max_wait 1.5 s keeps the first request in flight (its lone batch waits for company)
    with serve(checkpoint, max_queue=1, max_wait_ms=1500) as live:
        thread, first = _in_background(lambda: refine_request(live.url, good[0], good[1]))
        _wait_for_metric(live.url, "bpr_requests_in_flight", 1)
        r = refine_request(live.url, good[0], good[1])
        assert r.status_code == 429 and r.json()["code"] == "queue_full"
        assert int(r.headers["retry-after"]) >= 1
        thread.join(60)
        assert first[0].status_code == 200
        assert refine_request(live.url, good[0], good[1]).status_code == 200  # slot free again


def _patches_of(checkpoint: Path, good) -> int:
    """How many boundary patches the good request needs (placement does not depend on weights)."""
    import torch

    from bpr.io.results import entries_to_masks
    from bpr.refiner import Refiner

    (h, w), refiner = good[2], Refiner.from_checkpoint(checkpoint)
    masks = torch.from_numpy(entries_to_masks(good[1], h, w))
    return refiner.prepare(torch.zeros(3, h, w, dtype=torch.uint8), masks, refiner.options).num_patches


def test_429_when_the_patch_queue_is_full(checkpoint: Path, good) -> None:
    with serve(checkpoint, max_queued_patches=_patches_of(checkpoint, good), max_wait_ms=1500) as live:
        thread, first = _in_background(lambda: refine_request(live.url, good[0], good[1]))
        _wait_for_metric(live.url, "bpr_queue_patches", 1)
        r = refine_request(live.url, good[0], good[1])
        assert r.status_code == 429 and "queue is full" in r.json()["detail"] and int(r.headers["retry-after"]) >= 1
        thread.join(60)
        assert first[0].status_code == 200


def test_a_request_needing_more_patches_than_the_queue_holds_is_refused_before_cropping(checkpoint: Path, good) -> None:
    needed = _patches_of(checkpoint, good)
    with serve(checkpoint, max_queued_patches=needed - 1) as live:
        r = refine_request(live.url, good[0], good[1])
        assert r.status_code == 422 and r.json()["code"] == "too_many_patches", r.text
        assert f"need {needed} boundary patches, over the limit of {needed - 1}" in r.json()["detail"]
        assert "BPR_MAX_QUEUED_PATCHES" in r.json()["detail"]
        assert metric_value(httpx.get(f"{live.url}/metrics").text, "bpr_patches_total") == 0
    with serve(checkpoint, max_queued_patches=needed) as live:
        assert refine_request(live.url, good[0], good[1]).status_code == 200


def test_request_timeout_is_503_and_frees_the_queue(checkpoint: Path, good) -> None:
    with serve(checkpoint, request_timeout_s=0.5, max_wait_ms=5000) as live:
        t0 = time.monotonic()
        r = refine_request(live.url, good[0], good[1])
        assert r.status_code == 503 and r.json()["code"] == "timeout" and "BPR_REQUEST_TIMEOUT_S" in r.json()["detail"]
        assert time.monotonic() - t0 < 4.5  # did not wait for the 5 s batch
        deadline = time.monotonic() + 3
        while metric_value(httpx.get(f"{live.url}/metrics").text, "bpr_queue_patches") > 0:
            assert time.monotonic() < deadline, "the timed-out request's patches stayed queued"
            time.sleep(0.02)
        assert httpx.get(f"{live.url}/healthz").status_code == 200
        assert metric_value(httpx.get(f"{live.url}/metrics").text, "bpr_cancelled_total", 'reason="timeout"') == 1


def test_a_client_that_hangs_up_stops_its_work(checkpoint: Path, good) -> None:
    """The 5 s batch wait keeps the request's patches queued; the client gives up after 0.8 s."""
    with serve(checkpoint, request_timeout_s=60, max_wait_ms=5000) as live:
        with pytest.raises(httpx.ReadTimeout):
            refine_request(live.url, good[0], good[1], timeout=0.8)
        t0 = time.monotonic()
        _wait_for_metric(live.url, 'bpr_cancelled_total{reason="disconnect"}', 1, timeout=3)
        while metric_value(httpx.get(f"{live.url}/metrics").text, "bpr_queue_patches") > 0:
            assert time.monotonic() - t0 < 3, "the departed client's patches stayed queued"
            time.sleep(0.02)
        assert time.monotonic() - t0 < 3  # well before the 5 s batch would have run
        text = httpx.get(f"{live.url}/metrics").text
        assert metric_value(text, "bpr_patches_total") == 0  # the network never ran its patches
        assert refine_request(live.url, good[0], good[1], timeout=30).status_code == 200  # and the server serves on


def test_probes_answer_within_a_second_while_the_worst_allowed_request_runs(checkpoint: Path, good) -> None:
    """The largest request the limits allow here (64 instances, each a polygon at the vertex and
    outline limits' scale of this image) keeps the CPU pool and the network busy for seconds;
    /healthz and /readyz must still answer within 1 s throughout: no heavy work on the event loop."""
    h, w = good[2]
    rng = np.random.default_rng(0)
    instances = []
    for _ in range(64):
        cx, cy, r = rng.uniform(100, w - 100), rng.uniform(100, h - 100), rng.uniform(30, 90)
        angles = np.linspace(0, 2 * np.pi, 2000, endpoint=False)
        radius = r * (1 + 0.2 * np.sin(7 * angles))
        poly = np.stack([cx + radius * np.cos(angles), cy + radius * np.sin(angles)], 1).ravel().tolist()
        instances.append({"segmentation": [poly], "score": 0.5})
    with serve(checkpoint, max_instances=64, max_wait_ms=0) as live:
        thread, answer = _in_background(lambda: refine_request(live.url, good[0], instances, timeout=300))
        _wait_for_metric(live.url, "bpr_requests_in_flight", 1)
        slowest, probes = 0.0, 0
        while thread.is_alive():
            for path in ("/healthz", "/readyz"):
                t0 = time.perf_counter()
                assert httpx.get(f"{live.url}{path}", timeout=5).status_code == 200
                slowest = max(slowest, time.perf_counter() - t0)
                probes += 1
            time.sleep(0.05)
        thread.join()
        assert answer[0].status_code == 200 and len(answer[0].json()["instances"]) == 64
        assert probes >= 6, "the request finished too fast to probe it"
        assert slowest < 1.0, slowest

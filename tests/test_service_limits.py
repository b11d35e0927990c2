"""Cost per request and slow clients: no request, and no client, can starve the service.

* The cost budget: patches per pass x passes x TTA is counted after patch placement and
  before anything is queued; over ``BPR_MAX_REQUEST_PATCHES`` the answer is a 422 naming the
  budget and how to lower the cost, whichever parameter made it large.
* The upload rule: a request slot is taken only once the body has arrived, and a body that
  trickles in is cut off with 408, so a flood of slow uploads leaves normal clients served.
  Measured with real sockets on loopback, bounded to a few seconds.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

import httpx
from conftest_service import (  # noqa: F401  (checkpoint and good are fixtures)
    checkpoint,
    good,
    metric_value,
    needs_data,
    refine_request,
    serve,
)

pytestmark = needs_data


def _patches_of(checkpoint: Path, good, nms_iou: float) -> int:
    """Boundary patches of the good request in one pass (placement does not depend on weights)."""
    import torch

    from bpr.io.results import entries_to_masks
    from bpr.refiner import Refiner

    (h, w), refiner = good[2], Refiner.from_checkpoint(checkpoint)
    masks = torch.from_numpy(entries_to_masks(good[1], h, w))
    options = refiner.resolve(nms_iou=nms_iou)
    return refiner.prepare(torch.zeros(3, h, w, dtype=torch.uint8), masks, options).num_patches


# ---------------------------------------------------------------------- the cost budget
def test_the_issues_costly_queries_are_refused_fast_naming_the_budget(checkpoint: Path, good) -> None:
    """?nms_iou=1 (and with iterations=3): within each parameter's range, over the budget together."""
    dense = _patches_of(checkpoint, good, 1.0)
    with serve(checkpoint) as live:  # the default budget on CPU: 4096 patch forwards
        for params, passes in (({"nms_iou": 1}, 1), ({"iterations": 3, "nms_iou": 1}, 3)):
            t0 = time.monotonic()
            r = refine_request(live.url, good[0], good[1], params=params)
            assert r.status_code == 422 and r.json()["code"] == "over_budget", r.text
            assert time.monotonic() - t0 < 5
            detail = r.json()["detail"]
            assert (
                f"needs {dense} boundary patches per pass x {passes} pass(es) = {dense * passes} network patch "
                "forwards, over the budget of 4096 per request (BPR_MAX_REQUEST_PATCHES)"
            ) in detail
            assert "nms_iou nearer the default 0.25, fewer iterations, flip_tta=false" in detail
        text = httpx.get(f"{live.url}/metrics").text
        assert metric_value(text, "bpr_patches_total") == 0  # nothing reached the network
        assert refine_request(live.url, good[0], good[1]).status_code == 200  # the default request is cheap


def test_the_budget_counts_passes_and_tta_together(checkpoint: Path, good) -> None:
    """Budget 2n - 1 for a request of n patches a pass: one plain pass fits; two passes, or one
    with TTA, do not, and are refused after placement (no patch run); 2n fits TTA."""
    n = _patches_of(checkpoint, good, 0.25)
    with serve(checkpoint, max_request_patches=2 * n - 1) as live:
        assert refine_request(live.url, good[0], good[1]).status_code == 200
        r = refine_request(live.url, good[0], good[1], params={"flip_tta": "true"})
        assert r.status_code == 422 and r.json()["code"] == "over_budget", r.text
        assert (
            f"{n} boundary patches per pass x 1 pass(es) x 2 (flip_tta) = {2 * n} network patch forwards"
            in r.json()["detail"]
        )
        r = refine_request(live.url, good[0], good[1], params={"iterations": 2})
        assert r.status_code == 422 and f"x 2 pass(es) = {2 * n} network" in r.json()["detail"], r.text
    with serve(checkpoint, max_request_patches=2 * n) as live:
        assert refine_request(live.url, good[0], good[1], params={"flip_tta": "true"}).status_code == 200


def test_the_budget_counts_a_companion_refiners_forwards_too(checkpoint: Path, good, tmp_path: Path) -> None:
    """A checkpoint of two refiners (bpr-package --companion) runs both on every patch: a plain
    request of n patches costs 2n forwards, so budget 2n - 1 refuses it, naming the refiners, and 2n fits."""
    import torch

    from bpr.cli.package import main as package_main
    from bpr.modeling import RefinerConfig, RefinerNet, save_refiner

    torch.manual_seed(0)
    save_refiner(RefinerNet(RefinerConfig(arch="effl0", input_size=64, context=16)), tmp_path / "second.pt")
    pair = tmp_path / "pair.pt"
    assert package_main([str(checkpoint), str(pair), "--companion", str(tmp_path / "second.pt")]) == 0
    n = _patches_of(checkpoint, good, 0.25)
    with serve(pair, max_request_patches=2 * n - 1) as live:
        r = refine_request(live.url, good[0], good[1])
        assert r.status_code == 422 and r.json()["code"] == "over_budget", r.text
        assert f"{n} boundary patches per pass x 1 pass(es) x 2 (refiners) = {2 * n} network" in r.json()["detail"]
    with serve(pair, max_request_patches=2 * n) as live:
        assert refine_request(live.url, good[0], good[1]).status_code == 200


def test_the_budget_defaults_by_device() -> None:
    from service.settings import Settings

    assert Settings().request_patch_budget("cpu") == 4096
    assert Settings().request_patch_budget("cuda:0") == 65536
    assert Settings(max_request_patches=10).request_patch_budget("cuda") == 10


# ---------------------------------------------------------------------- slow uploads
def _multipart(good) -> tuple[bytes, str]:
    request = httpx.Request(
        "POST", "http://x/refine", files={"image": ("a.jpg", good[0])}, data={"instances": json.dumps(good[1])}
    )
    return request.read(), request.headers["content-type"]


def _trickle(port: int, body: bytes, content_type: str, out: list, stop_after: float) -> None:
    """Send the headers, then the body one byte every 0.1 s; record the status line and when it came."""
    t0 = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=stop_after) as sock:
        head = (
            f"POST /refine HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        sock.sendall(head)
        sock.setblocking(False)
        answer = b""
        for byte in body:
            try:
                answer += sock.recv(4096)
            except BlockingIOError:
                pass
            except OSError:
                break
            if answer or time.monotonic() - t0 > stop_after:
                break
            try:
                sock.send(bytes([byte]))
            except OSError:
                pass  # the server closed its side; the answer may still be readable
            time.sleep(0.1)
        sock.settimeout(max(0.1, stop_after - (time.monotonic() - t0)))
        try:
            while b"\r\n" not in answer:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                answer += chunk
        except OSError:
            pass
    out.append((answer.split(b"\r\n", 1)[0].decode(errors="replace"), time.monotonic() - t0))


def test_a_flood_of_trickling_uploads_leaves_normal_clients_served(checkpoint: Path, good) -> None:
    """8 clients send their upload a byte at a time, 4x the request slots. Normal clients are
    answered 200 throughout; each trickler gets 408 once the 1 s grace is over."""
    body, content_type = _multipart(good)
    with serve(checkpoint, max_queue=2, upload_grace_s=1.0, min_upload_bytes_per_s=2000) as live:
        port = int(live.url.rsplit(":", 1)[1])
        answers: list = []
        threads = [threading.Thread(target=_trickle, args=(port, body, content_type, answers, 8.0)) for _ in range(8)]
        for t in threads:
            t.start()
        time.sleep(0.3)  # all eight are connected and trickling
        normal = []
        t0 = time.monotonic()
        while time.monotonic() - t0 < 1.5:
            normal.append(refine_request(live.url, good[0], good[1], timeout=10).status_code)
        for t in threads:
            t.join(10)
        assert normal and set(normal) == {200}, normal
        assert len(answers) == 8 and all(status.startswith("HTTP/1.1 408") for status, _ in answers), answers
        assert max(seconds for _, seconds in answers) < 4.0, answers
        text = httpx.get(f"{live.url}/metrics").text
        assert metric_value(text, "bpr_rejected_total", 'reason="upload_too_slow"') == 8
        assert refine_request(live.url, good[0], good[1]).status_code == 200


def test_a_body_in_pauses_within_the_rule_is_served_and_408_names_the_rule(checkpoint: Path, good) -> None:
    body, content_type = _multipart(good)

    def pauses(gap: float):
        for i in range(0, len(body), len(body) // 3 + 1):
            yield body[i : i + len(body) // 3 + 1]
            time.sleep(gap)

    with serve(checkpoint, upload_grace_s=0.5, min_upload_bytes_per_s=1_000_000, upload_timeout_s=5) as live:
        headers = {"content-type": content_type}
        assert httpx.post(f"{live.url}/refine", content=pauses(0.1), headers=headers, timeout=30).status_code == 200
        r = httpx.post(f"{live.url}/refine", content=pauses(1.0), headers=headers, timeout=30)
        assert r.status_code == 408 and r.json()["code"] == "upload_too_slow", r.text
        assert "BPR_MIN_UPLOAD_BYTES_PER_S" in r.json()["detail"] and "BPR_UPLOAD_TIMEOUT_S" in r.json()["detail"]

"""Memory per request is bounded by the limits: the worst request the settings allow, sent to a
real bpr-serve process, raises its peak RSS by no more than the formula in docs/service.md.

Small limits keep it quick: a 500x500 image (BPR_MAX_PIXELS), 16 instances (BPR_MAX_INSTANCES)
that each cover a third of it with a 4,000-vertex outline, 2,048 queued patches at most
(BPR_MAX_QUEUED_PATCHES). Measured here: 331-353 MB above the warmed-up server for the
request's 1,069 patches (OpenVINO fp32, 2-core AVX2 CPU, 2026-12-06); the bound, with the
request's own patch count, allows 405 MB. Holding the waiting patches' crops in float32 instead
of uint8 / bool measured 461-472 MB and fails it, as would any change that made each patch or
each mask copy much bigger.
"""

from __future__ import annotations

import io
import json
import os

import httpx
import numpy as np
from conftest_service import ServerProcess, bin_path
from PIL import Image

LIMITS = {
    "BPR_MAX_PIXELS": 250_000,
    "BPR_MAX_INSTANCES": 16,
    "BPR_MAX_MASK_PIXELS": 4_000_000,
    "BPR_MAX_UPLOAD_BYTES": 4_000_000,
    "BPR_MAX_QUEUED_PATCHES": 2048,
    "BPR_MAX_QUEUE": 1,
}
PER_PATCH = 350_000  # bytes: crops in float32, probabilities, reassembly indices (docs/service.md)
MASK_COPIES = 6


def _peak_rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM"))


def _rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS"))


def _patches_done(url: str) -> float:
    """The server's count of patches refined so far (its /metrics)."""
    return next(
        float(line.split()[1])
        for line in httpx.get(f"{url}/metrics").text.splitlines()
        if line.startswith("bpr_patches_total")
    )


def _instances(n: int, h: int, w: int) -> list[dict]:
    out = []
    for k in range(n):
        a = np.linspace(0, 2 * np.pi, 4000, endpoint=False)
        r = (0.3 + 0.15 * np.sin(9 * a + k)) * w
        poly = np.stack([w / 2 + r * np.cos(a), h / 2 + r * np.sin(a)], 1).ravel().tolist()
        out.append({"segmentation": [poly], "score": 0.5})
    return out


def test_the_worst_allowed_request_stays_under_the_memory_bound() -> None:
    h = w = 500
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(buf, format="PNG")
    image = buf.getvalue()
    env = {
        **os.environ,
        **{k: str(v) for k, v in LIMITS.items()},
        "BPR_TORCH_THREADS": "2",
        "BPR_REQUEST_TIMEOUT_S": "300",
    }
    with ServerProcess([bin_path("bpr-serve"), "--port", "0"], env=env) as server:
        warm = httpx.post(
            f"{server.url}/refine",
            files={"image": ("a.png", image)},
            data={"instances": json.dumps(_instances(1, h, w))},
            timeout=300,
        )
        assert warm.status_code == 200
        base = _rss(server.proc.pid)
        before = _patches_done(server.url)
        worst = json.dumps(_instances(LIMITS["BPR_MAX_INSTANCES"], h, w)).encode()
        r = httpx.post(
            f"{server.url}/refine", files={"image": ("a.png", image), "instances": ("i.json", worst)}, timeout=300
        )
        assert r.status_code == 200 and len(r.json()["instances"]) == LIMITS["BPR_MAX_INSTANCES"]
        grown = _peak_rss(server.proc.pid) - base
        patches = _patches_done(server.url) - before  # this request's own, not the warm-up's
    upload = len(image) + len(worst)
    bound = 2 * upload + 3 * h * w + MASK_COPIES * LIMITS["BPR_MAX_MASK_PIXELS"] + PER_PATCH * patches
    assert grown < bound, (grown / 1e6, bound / 1e6)
    assert grown > 50e6  # the request really was heavy (the measurement measures something)

"""A real bpr-serve under an address-space limit: the worst inputs, then 8 clients for a minute.

The server runs as a subprocess with RLIMIT_AS at 4 GiB, so a regression that tries to
allocate what the issue's hostile polygons once did (25 GB) fails this test instead of the
machine. The soak mixes valid requests (real DAVIS frames and COCO polygons, each answer
compared with bpr-refine's) with hostile ones, while a probe times /healthz and the server's
memory is sampled. ``BPR_SOAK_S`` sets the soak's length (default 60 s).
"""

from __future__ import annotations

import json
import os
import random
import resource
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest_service import (  # noqa: F401  (checkpoint is a fixture)
    COCO,
    DAVIS,
    ServerProcess,
    bin_path,
    checkpoint,
    coco_items,
    davis_items,
    metric_value,
    needs_data,
    refine_request,
    refine_with_cli,
)

pytestmark = [needs_data, pytest.mark.slow]
ADDRESS_SPACE = 4 << 30
SOAK_SECONDS = float(os.environ.get("BPR_SOAK_S", "60"))
LIMITS = {"BPR_MAX_INSTANCES": "64", "BPR_MAX_UPLOAD_BYTES": "8000000", "BPR_REQUEST_TIMEOUT_S": "120"}


def _limit_address_space() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))


class LimitedServer(ServerProcess):
    """bpr-serve in a subprocess whose address space is capped."""

    def __init__(self, checkpoint: Path) -> None:
        cmd = [bin_path("bpr-serve"), "--checkpoint", str(checkpoint), "--port", "0"]
        super().__init__(cmd, env=LIMITS, preexec_fn=_limit_address_space)

    def status(self, field: str) -> int:
        with open(f"/proc/{self.proc.pid}/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field + ":"))


@pytest.fixture(scope="module")
def expected(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> list[tuple[Path, list[dict], list[dict]]]:
    """(image, entries, bpr-refine's refined entries) for 4 DAVIS frames and 2 COCO images."""
    tmp = tmp_path_factory.mktemp("soak")
    cases = []
    for items, root in ((davis_items(4), DAVIS), (coco_items(2), COCO)):
        refined = refine_with_cli(items, root, checkpoint, tmp)
        start = 0
        for img, entries in items:
            cases.append((root / "images" / img["file_name"], entries, refined[start : start + len(entries)]))
            start += len(entries)
    return cases


def hostile_requests(image: Path, entries: list[dict]) -> list[tuple[str, dict[str, Any]]]:
    """(name, httpx.post keyword arguments) of requests that must get a 4xx, cheaply."""
    e = entries[0]
    bad_polygons = {
        "polygon at 1e300": [[0, 0, 1e300, 0, 1e300, 1e300]],
        "polygon at -1e12": [[0, 0, -1e12, 0, 5, 5]],
        "polygon at 1e7": [[0, 0, 1e7, 0, 1e7, 1e7]],
        "polygon of 300k vertices": [[float(i % 500) for i in range(600_000)]],
    }
    out: list[tuple[str, dict[str, Any]]] = [
        (
            name,
            {
                "files": {"image": ("x.jpg", image.read_bytes())},
                "data": {"instances": json.dumps([{**e, "segmentation": poly}])},
            },
        )
        for name, poly in bad_polygons.items()
    ]
    out += [
        ("text as image", {"files": {"image": ("x.jpg", b"not an image")}, "data": {"instances": json.dumps(entries)}}),
        (
            "truncated jpeg",
            {"files": {"image": ("x.jpg", image.read_bytes()[:300])}, "data": {"instances": json.dumps(entries)}},
        ),
        ("instances not json", {"files": {"image": ("x.jpg", image.read_bytes())}, "data": {"instances": "[{"}}),
        (
            "score a string",
            {
                "files": {"image": ("x.jpg", image.read_bytes())},
                "data": {"instances": json.dumps([{**e, "score": "high"}])},
            },
        ),
        (
            "too many instances",
            {"files": {"image": ("x.jpg", image.read_bytes())}, "data": {"instances": json.dumps([e] * 65)}},
        ),
        (
            "rle of another size",
            {
                "files": {"image": ("x.jpg", image.read_bytes())},
                "data": {"instances": json.dumps([{**e, "segmentation": {"size": [9, 9], "counts": "PP"}}])},
            },
        ),
        ("upload too large", {"files": {"image": ("x.jpg", b"\xff" * 8_100_000)}, "data": {"instances": "[]"}}),
        ("no form at all", {"content": b"garbage", "headers": {"content-type": "multipart/form-data; boundary=zz"}}),
    ]
    return out


def test_worst_inputs_under_a_memory_limit_get_4xx_fast(checkpoint: Path, expected: list) -> None:
    image, entries, _ = expected[0]
    with LimitedServer(checkpoint) as server:
        for name, kwargs in hostile_requests(image, entries):
            t0 = time.monotonic()
            r = httpx.post(f"{server.url}/refine", timeout=60, **kwargs)
            took = time.monotonic() - t0
            assert 400 <= r.status_code < 500, (name, r.status_code, r.text[:300])
            assert r.json()["detail"] and took < 5, (name, took)
        assert httpx.get(f"{server.url}/healthz").status_code == 200
        assert server.proc.poll() is None
        assert server.status("VmHWM") < 2 << 30


def test_cli_worst_polygons_under_a_memory_limit(tmp_path: Path, checkpoint: Path, expected: list) -> None:
    image, entries, _ = expected[0]
    for poly in ([[0, 0, 1e300, 0, 1e300, 1e300]], [[0, 0, 1e7, 0, 1e7, 1e7]]):
        src = tmp_path / "bad.json"
        src.write_text(json.dumps([{**entries[0], "segmentation": poly}]))
        t0 = time.monotonic()
        run = subprocess.run(
            [
                bin_path("bpr-refine"),
                str(src),
                "--images",
                str(image.parent),
                "--image-info",
                str(DAVIS / "gt.json"),
                "--checkpoint",
                str(checkpoint),
                "--out",
                str(tmp_path / "o.json"),
            ],
            capture_output=True,
            text=True,
            preexec_fn=_limit_address_space,
            timeout=120,
        )
        assert run.returncode == 2 and time.monotonic() - t0 < 60
        assert run.stderr.strip().startswith("bpr-refine: error: ") and "\n" not in run.stderr.strip()
        assert not (tmp_path / "o.json").exists()


def test_eight_clients_for_a_minute(checkpoint: Path, expected: list) -> None:
    rng = random.Random(7)
    hostile = hostile_requests(expected[0][0], expected[0][1])
    statuses: Counter[str] = Counter()
    wrong: list[str] = []
    probe_worst = [0.0]
    memory = [0]
    stop = threading.Event()
    with LimitedServer(checkpoint) as server:
        url = server.url

        def client(seed: int) -> None:
            r_ = random.Random(seed)
            with httpx.Client(timeout=180) as http:
                while not stop.is_set():
                    if r_.random() < 0.5:
                        image, entries, refined = r_.choice(expected)
                        files = {"image": (image.name, image.read_bytes())}
                        r = http.post(f"{url}/refine", files=files, data={"instances": json.dumps(entries)})
                        statuses[f"valid {r.status_code}"] += 1
                        if r.status_code == 200 and r.json()["instances"] != refined:
                            wrong.append(image.name)
                    elif r_.random() < 0.1:  # a client that gives up: the server must drop the work
                        image, entries, _ = r_.choice(expected)
                        try:
                            http.post(
                                f"{url}/refine",
                                files={"image": (image.name, image.read_bytes())},
                                data={"instances": json.dumps(entries * 8)},
                                timeout=0.3,
                            )
                        except httpx.TimeoutException:
                            pass
                        statuses["abandoned"] += 1
                    else:
                        name, kwargs = r_.choice(hostile)
                        r = http.post(f"{url}/refine", **kwargs)
                        statuses[f"hostile {r.status_code // 100}xx"] += 1

        def probe() -> None:
            while not stop.is_set():
                t0 = time.monotonic()
                httpx.get(f"{url}/healthz", timeout=30)
                probe_worst[0] = max(probe_worst[0], time.monotonic() - t0)
                memory[0] = max(memory[0], server.status("VmRSS"))
                time.sleep(0.25)

        threads = [threading.Thread(target=client, args=(rng.random(),)) for _ in range(8)]
        threads.append(threading.Thread(target=probe))
        for t in threads:
            t.start()
        time.sleep(SOAK_SECONDS)
        stop.set()
        for t in threads:
            t.join(240)
        metrics = httpx.get(f"{url}/metrics").text
        alive = server.proc.poll() is None
    summary = f"{dict(statuses)}, /healthz worst {probe_worst[0]:.2f} s, RSS peak {memory[0] / 2**20:.0f} MiB"
    print(summary, file=sys.stderr)
    assert alive, summary
    assert statuses["valid 200"] >= 8 and sum(v for k, v in statuses.items() if k.startswith("hostile 4")) >= 8, summary
    assert not [k for k in statuses if k.endswith(("5xx",)) or k.startswith("valid 5")], summary
    assert 'status="500"' not in metrics and metric_value(metrics, "bpr_cancelled_total", 'reason="disconnect"') >= 1
    assert not wrong, f"answers that differ from bpr-refine: {wrong}"
    assert probe_worst[0] < 1.0, summary
    assert memory[0] < 3 << 30, summary

"""bpr-serve as a process: startup errors, serving, and graceful shutdown on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest
from conftest_service import (  # noqa: F401  (checkpoint is a fixture)
    DAVIS,
    ServerProcess,
    bin_path,
    checkpoint,
    davis_items,
    needs_data,
    refine_request,
)


def test_missing_model_fails_to_start_with_the_message(tmp_path: Path) -> None:
    env = {"BPR_DEFAULT_CHECKPOINT": str(tmp_path / "nothing.pt")}
    r = subprocess.run(
        [bin_path("bpr-serve"), "--port", "0"], capture_output=True, text=True, timeout=120, env={**os.environ, **env}
    )
    assert r.returncode == 2
    assert "bpr-serve: error: no trained model is bundled" in r.stderr and "give a checkpoint" in r.stderr
    assert "Traceback" not in r.stderr


def test_invalid_settings_fail_to_start(checkpoint: Path) -> None:
    env = {**os.environ, "BPR_DETECTOR": "http", "BPR_MAX_QUEUE": "lots"}
    r = subprocess.run(
        [bin_path("bpr-serve"), "--checkpoint", str(checkpoint)], capture_output=True, text=True, timeout=120, env=env
    )
    assert r.returncode == 2 and "invalid settings" in r.stderr and "max_queue" in r.stderr
    assert "Traceback" not in r.stderr


@needs_data
def test_serves_and_shuts_down_gracefully(checkpoint: Path) -> None:
    """SIGTERM while a request is in flight: that request still gets its 200, then the process exits."""
    img, entries = davis_items(1)[0]
    image = (DAVIS / "images" / img["file_name"]).read_bytes()
    cmd = [bin_path("bpr-serve"), "--port", "0", "--checkpoint", str(checkpoint), "--max-wait-ms", "1500"]
    with ServerProcess(cmd) as server:
        assert httpx.get(f"{server.url}/readyz").json()["ready"] is True
        out: list[httpx.Response] = []
        thread = threading.Thread(target=lambda: out.append(refine_request(server.url, image, entries)))
        thread.start()
        deadline = time.monotonic() + 20
        while "bpr_requests_in_flight 1" not in httpx.get(f"{server.url}/metrics").text:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        server.proc.send_signal(signal.SIGTERM)
        thread.join(60)
        assert out and out[0].status_code == 200, out and out[0].text
        assert len(out[0].json()["instances"]) == len(entries)
        server.proc.wait(30)
        assert server.proc.returncode is not None
        log = "".join(server.lines)
        assert "Shutting down" in log and "Finished server process" in log and "Traceback" not in log
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{server.url}/healthz", timeout=2)

"""Helpers shared by the tests/test_service_*.py files (imported by them, not a pytest conftest).

The servers are real: uvicorn on 127.0.0.1 with a random port, in a thread of the test
process (``LiveServer``) or as a ``bpr-serve`` subprocess (``ServerProcess``); tests talk
HTTP to them with httpx. The refiner is a random-init 64 px network: fast, deterministic,
and the same checkpoint the CLI comparison uses.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from conftest import make_checkpoint  # noqa: F401  (re-exported for the service tests)

from bpr.io.datasets import shared_data_root

REPO = Path(__file__).resolve().parents[1]
DATA = shared_data_root()
DAVIS = DATA / "davis-dev-real"
COCO = DATA / "coco-mini"

needs_data = pytest.mark.skipif(not (DAVIS / "gt.json").is_file(), reason=f"shared data not found at {DATA}")


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "bpr64.pt")


class LiveServer:
    """uvicorn serving ``app`` on 127.0.0.1:<random port> in a background thread."""

    def __init__(self, app: Any) -> None:
        config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", timeout_graceful_shutdown=10)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="test-uvicorn", daemon=True)
        self.url = ""

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError("the test server did not start (see the log above)")
            if time.monotonic() > deadline:
                raise TimeoutError("the test server did not start within 60 s")
            time.sleep(0.02)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(60)
        assert not self.thread.is_alive(), "the test server did not stop"


@contextlib.contextmanager
def serve(checkpoint: Path, detector_instance: Any = None, **settings: Any) -> Iterator[LiveServer]:
    """A live server built from Settings(checkpoint=..., **settings), optionally with a ready detector."""
    from service.app import create_app
    from service.settings import Settings

    settings.setdefault("cpu_workers", 2)
    app = create_app(Settings(checkpoint=checkpoint, **settings), detector=detector_instance)
    with LiveServer(app) as live:
        yield live


class ServerProcess:
    """A command that starts a uvicorn server (bpr-serve, the example upstream) as a subprocess."""

    def __init__(self, cmd: list[str], env: dict[str, str] | None = None, preexec_fn: Any = None) -> None:
        self.proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, **(env or {})},
            cwd=REPO,
            preexec_fn=preexec_fn,  # e.g. an address-space limit, so a regression fails the test, not the machine
        )
        self.lines: list[str] = []
        self.url = ""

    def __enter__(self) -> ServerProcess:
        deadline = time.monotonic() + 90
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break  # exited
            self.lines.append(line)
            m = re.search(r"Uvicorn running on (http://127\.0\.0\.1:\d+)", line)
            if m:
                self.url = m.group(1)
                threading.Thread(target=self._drain, daemon=True).start()
                return self
        self.proc.kill()
        raise RuntimeError("server process did not start:\n" + "".join(self.lines))

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def bin_path(name: str) -> str:
    """A console script of this venv (bpr-serve, bpr-refine)."""
    return str(Path(sys.executable).with_name(name))


# ---------------------------------------------------------------------- data
def load_json(path: Path) -> Any:
    with open(path) as f:
        return json.load(f)


def davis_items(n: int, model: str = "osvos") -> list[tuple[dict, list[dict]]]:
    """(image record, its result entries) for the first ``n`` DAVIS images that have predictions."""
    gt = load_json(DAVIS / "gt.json")
    results = load_json(DAVIS / f"{model}.json")
    by_image: dict[Any, list[dict]] = {}
    for e in results:
        by_image.setdefault(e["image_id"], []).append(e)
    return [(img, by_image[img["id"]]) for img in gt["images"] if img["id"] in by_image][:n]


def coco_items(n: int, min_instances: int = 2) -> list[tuple[dict, list[dict]]]:
    """(image record, its ground-truth annotations as result entries): polygons, several per image."""
    gt = load_json(COCO / "gt.json")
    by_image: dict[Any, list[dict]] = {}
    for a in gt["annotations"]:
        by_image.setdefault(a["image_id"], []).append({**a, "score": 1.0})
    return [(img, by_image[img["id"]]) for img in gt["images"] if len(by_image.get(img["id"], [])) >= min_instances][:n]


def refine_with_cli(
    items: list[tuple[dict, list[dict]]], root: Path, checkpoint: Path, tmp: Path, *flags: str
) -> list[dict]:
    """What bpr-refine (called in-process, to save a torch import) writes for ``items`` of the set
    at ``root`` with ``checkpoint`` and ``flags``: the reference every service answer is held to."""
    from bpr.cli.refine import main as refine_cli

    src, dst = tmp / f"{root.name}.in.json", tmp / f"{root.name}.refined.json"
    src.write_text(json.dumps([e for _, entries in items for e in entries]))
    argv = [str(src), "--images", str(root / "images"), "--image-info", str(root / "gt.json")]
    assert refine_cli([*argv, "--checkpoint", str(checkpoint), "--out", str(dst), "--quiet", *flags]) == 0
    return load_json(dst)


@pytest.fixture(scope="module")
def good() -> tuple[bytes, list[dict], tuple[int, int]]:
    """A valid request: one DAVIS frame's bytes, its OSVOS instances and its (height, width)."""
    img, entries = davis_items(1)[0]
    return (DAVIS / "images" / img["file_name"]).read_bytes(), entries, (img["height"], img["width"])


def refine_request(
    url: str, image: Path | bytes, instances: Any, filename: str = "image.jpg", timeout: float = 60.0, **kw: Any
):
    """POST /refine with the image as a file and ``instances`` as a JSON text field (or raw bytes as a file)."""
    import httpx

    data = image.read_bytes() if isinstance(image, Path) else image
    files: dict[str, Any] = {"image": (filename, data, "application/octet-stream")}
    form: dict[str, str] = {}
    if isinstance(instances, bytes):
        files["instances"] = ("instances.png", instances, "application/octet-stream")
    else:
        form["instances"] = json.dumps(instances)
    return httpx.post(f"{url}/refine", files=files, data=form, timeout=timeout, **kw)


def metric_value(text: str, name: str, labels: str = "") -> float:
    """The value of one sample in a Prometheus text page (0 if absent)."""
    pattern = re.escape(name) + (re.escape("{" + labels + "}") if labels else r"(?:\{\})?") + r" (\S+)$"
    for line in text.splitlines():
        m = re.match(pattern, line)
        if m:
            return float(m.group(1))
    return 0.0

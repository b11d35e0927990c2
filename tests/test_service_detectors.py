"""/segment with each upstream detector: http (a real upstream process), results, mmdet."""

from __future__ import annotations

import json
import os
import sys
import types
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from conftest_service import (  # noqa: F401  (checkpoint is a fixture)
    COCO,
    DAVIS,
    REPO,
    LiveServer,
    ServerProcess,
    checkpoint,
    coco_items,
    davis_items,
    needs_data,
    refine_request,
    serve,
)
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pycocotools import mask as mask_utils

pytestmark = needs_data


def segment(url: str, image: bytes, filename: str, **params: Any) -> httpx.Response:
    return httpx.post(f"{url}/segment", files={"image": (filename, image)}, params=params, timeout=60)


def decode(rle: dict) -> np.ndarray:
    return mask_utils.decode({**rle, "counts": rle["counts"].encode()}).astype(bool)


@pytest.fixture(scope="module")
def upstream():
    """scripts/upstream_detector_example.py serving DAVIS OSVOS predictions, as its own process."""
    cmd = [
        sys.executable,
        str(REPO / "scripts" / "upstream_detector_example.py"),
        "--port",
        "0",
        "--results",
        str(DAVIS / "osvos.json"),
        "--image-info",
        str(DAVIS / "gt.json"),
    ]
    with ServerProcess(cmd) as proc:
        yield proc


def test_no_detector_is_503_with_how_to_configure(checkpoint: Path) -> None:
    img, entries = davis_items(1)[0]
    data = (DAVIS / "images" / img["file_name"]).read_bytes()
    with serve(checkpoint) as live:
        r = segment(live.url, data, img["file_name"])
        assert r.status_code == 503 and r.json()["code"] == "no_detector"
        assert "BPR_DETECTOR=http" in r.json()["detail"] and "/refine works" in r.json()["detail"]
        assert refine_request(live.url, data, entries).status_code == 200


def test_http_detector_against_a_real_upstream(checkpoint: Path, upstream: ServerProcess) -> None:
    items = davis_items(2)
    with serve(checkpoint, detector="http", detector_url=f"{upstream.url}/detect") as live:
        ready = httpx.get(f"{live.url}/readyz")
        assert ready.status_code == 200 and ready.json()["detector"] == "reachable"
        assert httpx.get(f"{live.url}/v1/models").json()["detector"]["url"] == f"{upstream.url}/detect"
        for img, entries in items:
            data = (DAVIS / "images" / img["file_name"]).read_bytes()
            r = segment(live.url, data, img["file_name"], include_coarse="true")
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["detector"] == "http" and len(body["instances"]) == len(entries) == len(body["coarse"])
            for inst, coarse, entry in zip(body["instances"], body["coarse"], entries):
                assert inst["category_id"] == entry["category_id"] and inst["score"] == entry["score"]
                assert np.array_equal(decode(coarse["segmentation"]), decode(entry["segmentation"]))
            # refining the detector's output through /segment == posting it to /refine
            direct = refine_request(live.url, data, entries).json()["instances"]
            assert [i["segmentation"] for i in body["instances"]] == [d["segmentation"] for d in direct]
            assert "coarse" in body and segment(live.url, data, img["file_name"]).json()["coarse"] is None
        # an image the upstream has no detections for: its 404 becomes our 502, with its message
        r = segment(live.url, (COCO / "images" / coco_items(1)[0][0]["file_name"]).read_bytes(), "unknown.jpg")
        assert r.status_code == 502 and r.json()["code"] == "detector_failed" and "404" in r.json()["detail"]


def test_http_detector_down_or_talking_nonsense(checkpoint: Path) -> None:
    """A fake upstream whose answers the test chooses; then no upstream at all."""
    img, entries = davis_items(1)[0]
    data = (DAVIS / "images" / img["file_name"]).read_bytes()
    answer: dict[str, Any] = {}
    fake = FastAPI()

    @fake.post("/detect")
    async def detect(request: Request) -> Response:
        await request.body()
        return answer["response"]

    @fake.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok"}

    bad = {
        "not json": Response(b"<html>oops</html>", media_type="text/html"),
        "wrong shape": JSONResponse({"detections": []}),
        "bad rle": JSONResponse({"instances": [{"segmentation": {"size": [480, 854], "counts": "!!"}, "score": 0.9}]}),
        "wrong size": JSONResponse({"instances": [{"segmentation": {"size": [10, 10], "counts": "0:0"}}]}),
        "nan score": Response(b'{"instances": [{"segmentation": [], "score": NaN}]}', media_type="application/json"),
        "inf score": Response(b'{"instances": [{"segmentation": [], "score": 1e999}]}', media_type="application/json"),
        "server error": Response(b"boom", status_code=500),
    }
    with LiveServer(fake) as up, serve(checkpoint, detector="http", detector_url=f"{up.url}/detect") as live:
        for name, response in bad.items():
            answer["response"] = response
            r = segment(live.url, data, "x.jpg")
            assert r.status_code == 502, (name, r.text)
            assert r.json()["code"] in ("detector_failed", "detector_bad_output"), name
        answer["response"] = JSONResponse({"instances": [{**e, "label": "thing"} for e in entries]})
        ok = segment(live.url, data, "x.jpg")
        assert ok.status_code == 200 and ok.json()["instances"][0]["label"] == "thing"
    with serve(checkpoint, detector="http", detector_url="http://127.0.0.1:9/detect", detector_timeout_s=2) as live:
        ready = httpx.get(f"{live.url}/readyz")
        assert ready.status_code == 503 and ready.json()["ready"] is False and "unreachable" in ready.json()["detector"]
        r = segment(live.url, data, "x.jpg")
        assert r.status_code == 502 and "cannot reach" in r.json()["detail"]


def test_results_detector_by_name_by_hash_and_unknown(checkpoint: Path, tmp_path: Path) -> None:
    items = coco_items(2)
    (img, entries), (img2, _) = items
    data = (COCO / "images" / img["file_name"]).read_bytes()
    results = tmp_path / "res.json"
    scored = [{**e, "score": s} for e, s in zip(entries, np.linspace(0.1, 0.95, len(entries)).round(3).tolist())]
    results.write_text(json.dumps(scored))
    settings = dict(
        detector="results",
        results_file=results,
        results_image_info=COCO / "gt.json",
        results_images_dir=COCO / "images",
    )
    with serve(checkpoint, max_instances=5, **settings) as live:
        by_name = segment(live.url, data, f"some/dir/{img['file_name']}")
        assert by_name.status_code == 200, by_name.text
        got = by_name.json()["instances"]
        best5 = sorted(scored, key=lambda e: -e["score"])[:5]
        assert [g["id"] for g in got] == [e["id"] for e in scored if e in best5]  # top 5, detector's order
        by_hash = segment(live.url, data, "renamed.jpg")
        assert by_hash.json() == by_name.json()
        few = segment(live.url, data, "renamed.jpg", min_score=0.9).json()["instances"]
        assert [g["score"] for g in few] == [e["score"] for e in scored if e["score"] >= 0.9]
        none = segment(live.url, (COCO / "images" / img2["file_name"]).read_bytes(), img2["file_name"])
        assert none.status_code == 200 and none.json()["instances"] == []  # known image, no detections
        unknown = segment(live.url, (DAVIS / "images" / davis_items(1)[0][0]["file_name"]).read_bytes(), "who.jpg")
        assert unknown.status_code == 404 and unknown.json()["code"] == "no_detections"
        resized = segment(
            live.url, (DAVIS / "images" / davis_items(1)[0][0]["file_name"]).read_bytes(), img["file_name"]
        )
        assert resized.status_code == 422 and "for a 640x" in resized.json()["detail"]


# ---------------------------------------------------------------------- mmdet
COCO_NAMES = ["person"] + [f"class{i}" for i in range(1, 80)]


def _fake_mmdet(monkeypatch: pytest.MonkeyPatch, calls: list) -> None:
    """A stand-in for mmdet.apis with mmdetection 3.x's shapes (DetDataSample.pred_instances)."""

    class Instances(dict):
        __getattr__ = dict.__getitem__

    def init_detector(config: str, checkpoint: str, device: str = "cpu") -> Any:
        return types.SimpleNamespace(dataset_meta={"classes": COCO_NAMES}, cfg=config)

    def inference_detector(model: Any, image: np.ndarray) -> Any:
        calls.append(image)
        h, w = image.shape[:2]
        masks = torch.zeros((2, h, w), dtype=torch.bool)
        masks[0, h // 4 : h // 2, w // 4 : w // 2] = True
        masks[1, h // 2 :, w // 2 :] = True
        pred = Instances(masks=masks, labels=torch.tensor([0, 12]), scores=torch.tensor([0.9, 0.4]))
        return types.SimpleNamespace(pred_instances=pred)

    apis = types.ModuleType("mmdet.apis")
    apis.init_detector, apis.inference_detector = init_detector, inference_detector
    monkeypatch.setitem(sys.modules, "mmdet", types.ModuleType("mmdet"))
    monkeypatch.setitem(sys.modules, "mmdet.apis", apis)


def test_mmdet_detector_with_a_stand_in_mmdet(checkpoint: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from service.detectors.mmdet import MMDetDetector

    calls: list = []
    _fake_mmdet(monkeypatch, calls)
    detector = MMDetDetector("cfg.py", "w.pth")
    img, _ = davis_items(1)[0]
    data = (DAVIS / "images" / img["file_name"]).read_bytes()
    with serve(checkpoint, detector_instance=detector) as live:
        r = segment(live.url, data, "a.jpg", min_score=0.5, include_coarse="true")
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["detector"] == "mmdet" and len(body["instances"]) == 1  # the 0.4 one is below min_score
        assert body["instances"][0]["category_id"] == 1 and body["instances"][0]["category_name"] == "person"
        assert body["coarse"][0]["bbox"] == [213.0, 120.0, 214.0, 120.0]
        all_of_them = segment(live.url, data, "a.jpg").json()["instances"]
        assert [i["category_id"] for i in all_of_them] == [1, 14]  # label 12 -> COCO id 14 (ids skip 12)

        def out_of_memory(model: Any, image: np.ndarray) -> Any:
            raise RuntimeError("CUDA out of memory (simulated)")

        detector._infer = out_of_memory
        failed = segment(live.url, data, "a.jpg")
        assert failed.status_code == 502 and "out of memory" in failed.json()["detail"]
    rgb = np.asarray(calls[0])
    from bpr.io.images import read_image

    assert np.array_equal(rgb, read_image(DAVIS / "images" / img["file_name"])[:, :, ::-1])  # mmdet gets BGR


def test_mmdet_missing_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from bpr.errors import ModelNotAvailableError
    from service.detectors.mmdet import MMDetDetector

    monkeypatch.setitem(sys.modules, "mmdet", None)  # import fails as if not installed
    monkeypatch.setitem(sys.modules, "mmdet.apis", None)
    hint = r"the 'mmdet' extra of bpr-refine: pip install '<bpr checkout>\[mmdet\]'"
    with pytest.raises(ModelNotAvailableError, match=hint):
        MMDetDetector("cfg.py", "w.pth")


@pytest.mark.mmdet
@pytest.mark.skipif(
    os.environ.get("BPR_TEST_MMDET") != "1", reason="opt-in: BPR_TEST_MMDET=1 with mmdetection installed"
)
def test_mmdet_detector_for_real(checkpoint: Path) -> None:
    """Real mmdetection: BPR_TEST_MMDET_CONFIG and BPR_TEST_MMDET_CHECKPOINT name a COCO instance model."""
    config, weights = os.environ["BPR_TEST_MMDET_CONFIG"], os.environ["BPR_TEST_MMDET_CHECKPOINT"]
    img, _ = coco_items(1)[0]
    data = (COCO / "images" / img["file_name"]).read_bytes()
    with serve(
        checkpoint, detector="mmdet", mmdet_config=config, mmdet_checkpoint=weights, request_timeout_s=600
    ) as live:
        r = segment(live.url, data, img["file_name"], min_score=0.3, include_coarse="true")
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["instances"], "a COCO model finds something in a COCO image"
        assert all(1 <= i["category_id"] <= 90 and 0.3 <= i["score"] <= 1 for i in body["instances"])

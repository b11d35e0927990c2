"""RefinePipeline on its own, without HTTP: a real DAVIS frame and its real masks in, the same
refined masks out as ``Refiner.refine`` gives, with every stage timed."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest
from conftest_service import DAVIS, checkpoint, load_json, needs_data  # noqa: F401  (checkpoint is a fixture)
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from bpr.io.images import decode_image_bytes
from bpr.refiner import Refiner
from service.detectors.base import Detector
from service.engine import RefineEngine
from service.errors import ServiceError
from service.inputs import InputLimits
from service.metrics import ServiceMetrics
from service.options import RefineQuery
from service.pipeline import Answer, RefinePipeline

pytestmark = needs_data

T = TypeVar("T")
LIMITS = InputLimits(max_upload_bytes=20 << 20, max_pixels=10_000_000, max_instances=8, max_mask_pixels=10_000_000)
FRAME = "bmx-trees_00010.jpg"


@pytest.fixture(scope="module")
def refiner(checkpoint: Path) -> Refiner:
    return Refiner.from_checkpoint(checkpoint)


@pytest.fixture(scope="module")
def frame() -> tuple[bytes, list[dict[str, Any]], np.ndarray]:
    """The frame's file, its instances (the ground-truth annotation and OSVOS's prediction) as
    COCO entries, and their masks as pycocotools decodes them."""
    coco = COCO(str(DAVIS / "gt.json"))
    (image_id,) = [i["id"] for i in coco.dataset["images"] if i["file_name"] == FRAME]
    entries = [dict(a) for a in coco.loadAnns(coco.getAnnIds(imgIds=[image_id]))]
    entries += [e for e in load_json(DAVIS / "osvos.json") if e["image_id"] == image_id]
    masks = np.stack([coco.annToMask(e).astype(bool) for e in entries])
    assert len(entries) == 2 and masks.any(axis=(1, 2)).all()
    return (DAVIS / "images" / FRAME).read_bytes(), entries, masks


def run(
    refiner: Refiner, work: Callable[[RefinePipeline], Awaitable[T]], detector: Detector | None = None
) -> tuple[T, ServiceMetrics]:
    """``work(pipeline)`` on a pipeline over a started engine, which is closed afterwards."""
    metrics = ServiceMetrics()

    async def main() -> T:
        engine = RefineEngine(refiner, metrics, cpu_workers=1, max_wait_ms=1.0)
        engine.start()
        try:
            return await work(RefinePipeline(engine, metrics, LIMITS, detector, min_score=0.5))
        finally:
            await engine.close(10)

    return asyncio.run(main()), metrics


def decoded(instances: list[dict[str, Any]]) -> np.ndarray:
    rles = [{**i["segmentation"], "counts": i["segmentation"]["counts"].encode()} for i in instances]
    return np.stack([mask_utils.decode(rle) for rle in rles]).astype(bool)


def assert_timed(answer: Answer, stages: list[str], metrics: ServiceMetrics) -> None:
    """The stages, in order, each took time; those the pipeline measures went to the metrics too."""
    assert list(answer.stages) == stages and all(s > 0 for s in answer.stages.values()), answer.stages
    timing = [part.split(";dur=")[0] for part in answer.headers["Server-Timing"].split(", ")]
    assert timing == stages
    for stage in stages:
        assert metrics.stage.count(stage) == (0 if stage == "refine" else 1), stage


def test_refine_json_equals_the_library(refiner: Refiner, frame) -> None:
    data, entries, masks = frame
    expected = refiner.refine(decode_image_bytes(data), masks)
    assert not np.array_equal(expected, masks)  # the refiner changes these masks: equality below means something
    query = RefineQuery()
    answer, metrics = run(refiner, lambda p: p.refine(data, json.dumps(entries).encode(), query, "json", True))
    body = json.loads(answer.body)
    assert answer.media_type == "application/json" and answer.instances == 2
    assert np.array_equal(decoded(body["instances"]), expected)
    assert np.array_equal(decoded(body["coarse"]), masks)
    replaced = ("segmentation", "bbox", "area")
    carried = [{k: v for k, v in i.items() if k not in replaced} for i in body["instances"]]
    assert carried == [{k: v for k, v in e.items() if k not in replaced} for e in entries]  # the caller's fields
    assert [i["area"] for i in body["instances"]] == [int(m.sum()) for m in expected]
    assert answer.passes == 1 and answer.patches == metrics.patches.get() > 0
    assert_timed(answer, ["decode", "refine", "encode"], metrics)
    assert answer.headers["X-BPR-Patches"] == str(answer.patches) and "X-BPR-Instances" not in answer.headers


def test_refine_png_with_per_request_options(refiner: Refiner, frame) -> None:
    """An instance-id PNG in and out; ?iterations=2&nms_iou=0.4 applied as Refiner.refine applies them."""
    data, _, masks = frame
    ids = np.zeros(masks.shape[1:], np.uint8)
    for k in range(len(masks) - 1, -1, -1):  # where the masks overlap, the first instance wins
        ids[masks[k]] = k + 1
    png = io.BytesIO()
    Image.fromarray(ids).save(png, "PNG")
    id_masks = ids[None] == np.arange(1, len(masks) + 1)[:, None, None]
    expected = refiner.refine(decode_image_bytes(data), id_masks, iterations=2, nms_iou=0.4)
    expected_ids = np.zeros_like(ids)
    for k in range(len(masks) - 1, -1, -1):
        expected_ids[expected[k]] = k + 1
    assert not np.array_equal(expected_ids, ids)
    query = RefineQuery(iterations=2, nms_iou=0.4)
    answer, metrics = run(refiner, lambda p: p.refine(data, png.getvalue(), query, "png"))
    assert answer.media_type == "image/png" and answer.passes == 2 and answer.headers["X-BPR-Instances"] == "2"
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(answer.body))), expected_ids)
    assert_timed(answer, ["decode", "refine", "encode"], metrics)


class _Detections(Detector):
    kind = "stub"

    def __init__(self, entries: list[dict[str, Any]]) -> None:
        self.entries = entries

    async def detect(self, data: bytes, image: np.ndarray, filename: str | None) -> list[dict[str, Any]]:
        return self.entries


def test_segment_refines_the_kept_detections(refiner: Refiner, frame) -> None:
    """Detections under the pipeline's min_score (0.5) are dropped, the rest refined as the library does."""
    data, entries, masks = frame
    detections = [{**entries[0], "score": 0.9}, {**entries[1], "score": 0.3}]
    expected = refiner.refine(decode_image_bytes(data), masks[:1])
    answer, metrics = run(refiner, lambda p: p.segment(data, FRAME, RefineQuery()), _Detections(detections))
    body = json.loads(answer.body)
    assert body["detector"] == "stub" and body["coarse"] is None and len(body["instances"]) == 1
    assert np.array_equal(decoded(body["instances"]), expected)
    assert_timed(answer, ["decode", "detect", "refine", "encode"], metrics)


def test_refusals_are_service_errors(refiner: Refiner, frame) -> None:
    """Bad input stops at its stage, with the route's status and code, and times nothing after it."""
    data, entries, _ = frame

    async def bad_instances(p: RefinePipeline) -> ServiceError:
        with pytest.raises(ServiceError) as caught:
            await p.refine(data, b"[{", RefineQuery())
        return caught.value

    error, metrics = run(refiner, bad_instances)
    assert (error.status, error.code) == (422, "invalid_instances")
    assert metrics.stage.count("decode") == metrics.stage.count("encode") == 0

    async def no_detector(p: RefinePipeline) -> ServiceError:
        with pytest.raises(ServiceError) as caught:
            await p.segment(data, FRAME, RefineQuery())
        return caught.value

    error, _ = run(refiner, no_detector)
    assert (error.status, error.code) == (503, "no_detector")

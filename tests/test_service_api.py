"""The service's endpoints on real images, equality with bpr-refine, and pooled batches under load."""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest_service import (  # noqa: F401  (checkpoint is a fixture)
    COCO,
    DAVIS,
    checkpoint,
    coco_items,
    davis_items,
    metric_value,
    needs_data,
    refine_request,
    refine_with_cli,
    serve,
)
from PIL import Image
from pycocotools import mask as mask_utils

pytestmark = needs_data


@pytest.fixture(scope="module")
def server(checkpoint: Path):
    # a long max wait makes pooling across concurrent requests certain, not a matter of luck
    with serve(checkpoint, max_wait_ms=40) as live:
        yield live


@pytest.fixture(scope="module")
def cli_outputs(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict]]:
    """bpr-refine's output for a few DAVIS and COCO images (same checkpoint, default settings)."""
    tmp = tmp_path_factory.mktemp("cli")
    return {
        name: refine_with_cli(items, root, checkpoint, tmp)
        for name, items, root in (("davis", davis_items(4), DAVIS), ("coco", coco_items(3), COCO))
    }


def test_healthz_readyz_models_docs(server) -> None:
    assert httpx.get(f"{server.url}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{server.url}/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"ready": True, "model": "loaded", "detector": "not configured"}
    models = httpx.get(f"{server.url}/v1/models").json()
    assert models["refiner"]["input_size"] == 64 and models["refiner"]["patch_size"] == 64
    assert models["refiner"]["checkpoint"].endswith("bpr64.pt") and models["detector"] is None
    schema = httpx.get(f"{server.url}/openapi.json").json()
    assert {"/refine", "/segment", "/healthz", "/readyz", "/metrics", "/v1/models"} <= set(schema["paths"])
    assert "multipart/form-data" in schema["paths"]["/refine"]["post"]["requestBody"]["content"]
    docs = httpx.get(f"{server.url}/docs")
    assert docs.status_code == 200


def test_docs_load_nothing_from_outside_the_server(server) -> None:
    """Swagger UI's script and style come from the package: /docs works on a machine without internet."""
    import re

    html = httpx.get(f"{server.url}/docs").text
    sources = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert sources and all(s.startswith("/") for s in sources), sources  # no CDN, no scheme
    for src in sources:
        asset = httpx.get(f"{server.url}{src}")
        assert asset.status_code == 200 and len(asset.content) > 500, src
    js = httpx.get(f"{server.url}/docs/assets/swagger-ui-bundle.js").text
    assert "SwaggerUIBundle" in js
    assert "/openapi.json" in html
    assert httpx.get(f"{server.url}/redoc").status_code == 404  # no offline ReDoc: off, not blank


@pytest.mark.parametrize("dataset", ["davis", "coco"])
def test_refine_equals_cli(server, cli_outputs, dataset: str) -> None:
    """Per image, /refine answers exactly what bpr-refine wrote (RLE, bbox, area, every other key)."""
    items = davis_items(4) if dataset == "davis" else coco_items(3)
    root = DAVIS if dataset == "davis" else COCO
    cli = cli_outputs[dataset]
    start = 0
    for img, entries in items:
        expected = cli[start : start + len(entries)]
        start += len(entries)
        r = refine_request(server.url, root / "images" / img["file_name"], entries, filename=img["file_name"])
        assert r.status_code == 200, r.text
        got = r.json()["instances"]
        assert len(got) == len(entries)
        for g, e, src in zip(got, expected, entries):
            assert g == e  # same dict: segmentation, bbox, area and the carried keys
            assert g["image_id"] == src["image_id"] and g.get("id") == src.get("id")
    assert start == len(cli)
    assert sum(c["area"] > 0 for c in cli) > len(cli) // 2  # non-trivial masks, or this test proves little


def test_refine_changes_masks_and_keeps_extra_fields(server) -> None:
    img, entries = davis_items(1)[0]
    entry = {**entries[0], "id": "obj-7", "track": {"frame": 3}, "category_id": 5}
    r = refine_request(server.url, DAVIS / "images" / img["file_name"], [entry])
    out = r.json()["instances"][0]
    assert out["id"] == "obj-7" and out["track"] == {"frame": 3} and out["category_id"] == 5 and out["score"] == 1.0
    refined = mask_utils.decode({**out["segmentation"], "counts": out["segmentation"]["counts"].encode()})
    coarse = mask_utils.decode({**entry["segmentation"], "counts": entry["segmentation"]["counts"].encode()})
    assert refined.shape == (480, 854)
    assert out["area"] == int(refined.sum()) and out["bbox"] == list(
        mask_utils.toBbox(mask_utils.encode(np.asfortranarray(refined)))
    )
    assert refined.sum() > 0 and (refined != coarse).sum() > 0, "refinement changed nothing: is the network running?"


def test_refine_nms_parameter_changes_patch_count(server) -> None:
    img, entries = davis_items(1)[0]
    path = DAVIS / "images" / img["file_name"]

    def patches() -> float:
        return metric_value(httpx.get(f"{server.url}/metrics").text, "bpr_patches_total")

    p0 = patches()
    assert refine_request(server.url, path, entries).status_code == 200
    p1 = patches()
    assert refine_request(server.url, path, entries, params={"nms_iou": 0.55}).status_code == 200
    p2 = patches()
    assert p2 - p1 > p1 - p0 > 0  # denser NMS -> more patches, only for that request
    assert refine_request(server.url, path, entries).status_code == 200
    assert patches() - p2 == p1 - p0


def test_instance_id_png_in_and_out(server) -> None:
    """A COCO image's instances as a 16-bit id PNG in, JSON and PNG out; both forms agree."""
    img, entries = coco_items(1)[0]
    h, w = img["height"], img["width"]
    ids = np.zeros((h, w), np.uint16)
    for k, e in enumerate(entries[:6], start=1):
        rles = mask_utils.frPyObjects(e["segmentation"], h, w)
        m = mask_utils.decode(mask_utils.merge(rles) if isinstance(rles, list) else rles).astype(bool)
        ids[m & (ids == 0)] = k * 1000  # sparse ids, to check they come back as "id"
    buf = io.BytesIO()
    Image.fromarray(ids).save(buf, format="PNG")
    image_path = COCO / "images" / img["file_name"]
    as_json = refine_request(server.url, image_path, buf.getvalue())
    assert as_json.status_code == 200, as_json.text
    instances = as_json.json()["instances"]
    assert [i["id"] for i in instances] == sorted({int(v) for v in np.unique(ids)} - {0})
    as_png = refine_request(server.url, image_path, buf.getvalue(), params={"output": "png"})
    assert as_png.status_code == 200 and as_png.headers["content-type"] == "image/png"
    out = np.asarray(Image.open(io.BytesIO(as_png.content)))
    assert out.shape == (h, w) and as_png.headers["x-bpr-instances"] == str(len(instances))
    expected = np.zeros((h, w), np.uint8)
    for k in range(len(instances), 0, -1):  # refined masks may overlap: the earlier instance wins
        seg = instances[k - 1]["segmentation"]
        expected[mask_utils.decode({**seg, "counts": seg["counts"].encode()}).astype(bool)] = k
    assert np.array_equal(out, expected)


def test_png_output_gives_overlaps_to_the_earlier_instance(server) -> None:
    img, entries = davis_items(1)[0]
    twice = [entries[0], {**entries[0], "id": 2}]  # the same mask twice: refined the same way
    r = refine_request(server.url, DAVIS / "images" / img["file_name"], twice, params={"output": "png"})
    ids = np.asarray(Image.open(io.BytesIO(r.content)))
    assert ids.dtype == np.uint8 and set(np.unique(ids)) == {0, 1}


def test_palette_png_instances(server) -> None:
    """DAVIS-style palette PNGs are read by index, not by colour."""
    img, entries = davis_items(1)[0]
    rle = entries[0]["segmentation"]
    m = mask_utils.decode({**rle, "counts": rle["counts"].encode()})
    pal = Image.fromarray(m.astype(np.uint8) * 3)
    pal.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0, 128, 128, 0] + [0] * 756)
    buf = io.BytesIO()
    pal.save(buf, format="PNG")
    r = refine_request(server.url, DAVIS / "images" / img["file_name"], buf.getvalue())
    assert r.status_code == 200, r.text
    assert [i["id"] for i in r.json()["instances"]] == [3]
    plain = refine_request(server.url, DAVIS / "images" / img["file_name"], entries).json()["instances"][0]
    assert r.json()["instances"][0]["segmentation"] == plain["segmentation"]


def test_16_parallel_clients_are_pooled_into_shared_batches(server) -> None:
    items = davis_items(16, model="rvos")
    before = httpx.get(f"{server.url}/metrics").text
    sequential = [refine_request(server.url, DAVIS / "images" / img["file_name"], e).json() for img, e in items[:4]]

    def one(item):
        img, entries = item
        return refine_request(server.url, DAVIS / "images" / img["file_name"], entries, timeout=120)

    mid = httpx.get(f"{server.url}/metrics").text
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(one, items))
    assert [a.status_code for a in answers] == [200] * 16
    assert [a.json() for a in answers[:4]] == sequential  # pooling does not change results
    after = httpx.get(f"{server.url}/metrics").text
    batches = metric_value(after, "bpr_batch_requests_count") - metric_value(mid, "bpr_batch_requests_count")
    single = metric_value(after, "bpr_batch_requests_bucket", 'le="1"') - metric_value(
        mid, "bpr_batch_requests_bucket", 'le="1"'
    )
    assert batches > 0 and single < batches, "no network batch held patches of two requests"
    requests = metric_value(after, "bpr_requests_total", 'route="/refine",status="200"')
    assert requests - metric_value(before, "bpr_requests_total", 'route="/refine",status="200"') == 20


def test_metrics_exposition(server) -> None:
    text = httpx.get(f"{server.url}/metrics").text
    assert httpx.get(f"{server.url}/metrics").headers["content-type"].startswith("text/plain; version=0.0.4")
    for name in (
        "bpr_requests_total",
        "bpr_request_duration_seconds",
        "bpr_stage_duration_seconds",
        "bpr_batch_patches",
        "bpr_batch_requests",
        "bpr_queue_patches",
        "bpr_queue_requests",
        "bpr_patches_per_second",
        "bpr_requests_in_flight",
        "bpr_model_info",
    ):
        assert f"# TYPE {name} " in text, name
    for stage in ("decode", "extract", "batch_wait", "network", "reassemble", "encode"):
        assert metric_value(text, "bpr_stage_duration_seconds_count", f'stage="{stage}"') > 0, stage
    assert metric_value(text, "bpr_queue_patches") == 0
    assert 'status="500"' not in text


def test_iterations_setting_matches_the_cli_flag(checkpoint: Path, tmp_path: Path) -> None:
    """BPR_ITERATIONS=2 runs two passes per request, exactly as bpr-refine --iterations 2 does."""
    items = davis_items(2)
    cli = refine_with_cli(items, DAVIS, checkpoint, tmp_path, "--iterations", "2")
    with serve(checkpoint, iterations=2) as live:
        assert httpx.get(f"{live.url}/v1/models").json()["refiner"]["iterations"] == 2
        got = []
        for img, entries in items:
            r = refine_request(live.url, DAVIS / "images" / img["file_name"], entries, filename=img["file_name"])
            assert r.status_code == 200, r.text
            got += r.json()["instances"]
    assert got == cli


def test_per_request_passes_and_tta_match_the_cli_flags(server, checkpoint: Path, tmp_path: Path) -> None:
    """?iterations=2&flip_tta=true answers what bpr-refine --iterations 2 --flip-tta writes; the cost
    headers count that request's patches; include_coarse returns the input as the server read it."""
    items = davis_items(2)
    cli = refine_with_cli(items, DAVIS, checkpoint, tmp_path, "--iterations", "2", "--flip-tta")
    got = []
    for img, entries in items:
        before = metric_value(httpx.get(f"{server.url}/metrics").text, "bpr_patches_total")
        r = refine_request(
            server.url,
            DAVIS / "images" / img["file_name"],
            entries,
            params={"iterations": 2, "flip_tta": "true", "include_coarse": "true"},
        )
        assert r.status_code == 200, r.text
        got += r.json()["instances"]
        assert r.json()["coarse"] == [
            {**e, **{k: c[k] for k in ("segmentation", "bbox", "area")}} for e, c in zip(entries, r.json()["coarse"])
        ]
        coarse = [
            mask_utils.decode({**c["segmentation"], "counts": c["segmentation"]["counts"].encode()})
            for c in r.json()["coarse"]
        ]
        given = [
            mask_utils.decode({**e["segmentation"], "counts": e["segmentation"]["counts"].encode()}) for e in entries
        ]
        assert all(np.array_equal(a, b) for a, b in zip(coarse, given))
        patches = metric_value(httpx.get(f"{server.url}/metrics").text, "bpr_patches_total") - before
        assert int(r.headers["x-bpr-patches"]) == patches > 0  # this request's patches, both passes
        assert r.headers["x-bpr-passes"] == "2"
        stages = dict(part.strip().split(";dur=") for part in r.headers["server-timing"].split(","))
        assert set(stages) == {"decode", "refine", "encode"} and float(stages["refine"]) > 0
    assert got == cli
    assert (
        refine_request(
            server.url, DAVIS / "images" / items[0][0]["file_name"], items[0][1], params={"iterations": 4}
        ).status_code
        == 422
    )  # at most MAX_PASSES


def test_keep_thin_per_request_matches_the_cli_flag(server, checkpoint: Path, tmp_path: Path) -> None:
    """?keep_thin=4 answers what bpr-refine --keep-thin 4 writes, and the rule acts (the answer
    differs from the one without it); out of its range it is a 422."""
    items = davis_items(2)
    cli = refine_with_cli(items, DAVIS, checkpoint, tmp_path, "--keep-thin", "4")
    got, plain = [], []
    for img, entries in items:
        path = DAVIS / "images" / img["file_name"]
        r = refine_request(server.url, path, entries, params={"keep_thin": 4})
        assert r.status_code == 200, r.text
        got += r.json()["instances"]
        plain += refine_request(server.url, path, entries).json()["instances"]
    assert got == cli and got != plain
    r = refine_request(server.url, DAVIS / "images" / items[0][0]["file_name"], items[0][1], params={"keep_thin": 17})
    assert r.status_code == 422 and "keep_thin" in r.text


def test_ungated_shift_is_a_per_request_option_checked_at_the_door(server) -> None:
    """?ungated_shift=0.6 is accepted (the rule itself: tests/test_ungated_shift.py); a negative
    shift is a 422 naming it."""
    img, entries = davis_items(1)[0]
    path = DAVIS / "images" / img["file_name"]
    assert refine_request(server.url, path, entries, params={"ungated_shift": 0.6}).status_code == 200
    r = refine_request(server.url, path, entries, params={"ungated_shift": -1})
    assert r.status_code == 422 and "ungated_shift" in r.text


def test_answers_are_checked_against_their_declared_model() -> None:
    from pydantic import ValidationError

    from service.outputs import typed_json
    from service.schemas import RefineResponse

    good = {
        "instances": [
            {"segmentation": {"size": [2, 2], "counts": "04"}, "bbox": [0.0, 0.0, 0.0, 0.0], "area": 0, "mine": 1}
        ]
    }
    assert (
        typed_json(RefineResponse, good)
        == b'{"instances":[{"segmentation":{"size":[2,2],"counts":"04"},"bbox":[0.0,0.0,0.0,0.0],"area":0,"mine":1}]}'
    )
    with pytest.raises(ValidationError):
        typed_json(RefineResponse, {"instances": [{"segmentation": {"size": [2, 2], "counts": "04"}, "bbox": [0, 0]}]})

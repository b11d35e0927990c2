"""The before/after viewer at / in a real headless Chromium, against a real bpr server.

What the page draws is checked against what the API answers: the canvas pixels that change
between "before" and "after" are the outline pixels of the API's coarse and refined masks,
the downloads equal the API's answer, the service's error messages appear verbatim.
Skips with the reason where Chromium or Playwright is missing (`.ci/run` installs both).
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest_service import DATA, checkpoint, load_json, refine_request, serve  # noqa: F401  (checkpoint: fixture)
from PIL import Image
from pycocotools import mask as mask_utils

CS = DATA / "cityscapes-dev"
CHROMIUM = os.environ.get("BPR_CHROMIUM", shutil.which("chromium") or "/usr/bin/chromium")

playwright_api = pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed (pip install playwright)"
)
pytestmark = [
    pytest.mark.skipif(not Path(CHROMIUM).is_file(), reason=f"no Chromium at {CHROMIUM} (apt-get install chromium)"),
    pytest.mark.skipif(not (CS / "gt.json").is_file(), reason=f"shared data not found at {DATA}"),
    pytest.mark.slow,
]
LAUNCH_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


def busiest_image() -> tuple[dict, list[dict]]:
    """The cityscapes-dev image with the most coarse instances, and those entries."""
    results = load_json(CS / "maskrcnn28.json")
    gt = load_json(CS / "gt.json")
    counts: dict[int, int] = {}
    for e in results:
        counts[e["image_id"]] = counts.get(e["image_id"], 0) + 1
    image_id = max(counts, key=lambda k: (counts[k], -k))
    image = next(i for i in gt["images"] if i["id"] == image_id)
    return image, [e for e in results if e["image_id"] == image_id]


@pytest.fixture(scope="module")
def server(checkpoint: Path) -> Iterator[Any]:  # noqa: F811
    detector = dict(
        detector="results",
        results_file=CS / "maskrcnn28.json",
        results_image_info=CS / "gt.json",
        results_images_dir=CS / "images",
    )
    with serve(checkpoint, **detector) as live:
        yield live


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with playwright_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser: Any, server: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1500, "height": 900}, accept_downloads=True)
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.goto(server.url + "/")
    yield pg
    context.close()
    assert not errors, f"uncaught errors in the page: {errors}"


def submit(
    page: Any, image: Path, instances: Path | None = None, gt: Path | None = None, detector: bool = False
) -> str:
    """Fill the form, press Refine, wait for the page to finish; returns the final state."""
    page.set_input_files("#image-file", str(image))
    if detector:
        page.check("#source-detector")
    if instances is not None:
        page.set_input_files("#instances-file", str(instances))
    if gt is not None:
        page.set_input_files("#gt-file", str(gt))
    page.click("#run")
    page.wait_for_function("['done', 'error'].includes(document.body.dataset.state)", timeout=120_000)
    return page.evaluate("document.body.dataset.state")


def canvas_pixels(page: Any, mode: str) -> np.ndarray:
    """The canvas as drawn in ``mode`` at 1:1 with the image at the origin, outlines only."""
    data_url = page.evaluate(
        """(mode) => {
            document.getElementById('fill').value = 0;
            bprViewer.setMode(mode);
            bprViewer.setView(1, 0, 0);
            bprViewer.paint();
            return document.getElementById('canvas').toDataURL('image/png');
        }""",
        mode,
    )
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1]))).convert("RGB"))


def outline(masks: np.ndarray) -> np.ndarray:
    """Union of the masks' 4-neighbour outlines (inside pixels next to outside or the border)."""
    padded = np.pad(masks, ((0, 0), (1, 1), (1, 1)))
    inner = padded[:, 1:-1, 1:-1]
    interior = inner & padded[:, :-2, 1:-1] & padded[:, 2:, 1:-1] & padded[:, 1:-1, :-2] & padded[:, 1:-1, 2:]
    return (inner & ~interior).any(axis=0)


def decode(entries: list[dict]) -> np.ndarray:
    return np.stack([mask_utils.decode(e["segmentation"]).astype(bool) for e in entries])


def api_answer(server: Any, image: dict, entries: list[dict], **params: Any) -> dict:
    r = refine_request(
        server.url, CS / "images" / image["file_name"], entries, params={"include_coarse": "true", **params}
    )
    assert r.status_code == 200, r.text
    return r.json()


def test_outlines_drawn_are_the_apis_masks(page: Any, server: Any) -> None:
    image, entries = busiest_image()
    state = submit(page, CS / "images" / image["file_name"], CS / "maskrcnn28.json", CS / "gt.json")
    assert state == "done", page.inner_text("#error")
    answer = api_answer(server, image, entries)
    shown = page.evaluate("bprViewer.shown.answer")
    assert shown == answer  # the page cut the 105-image results file down to this image's entries
    coarse, refined = decode(answer["coarse"]), decode(answer["instances"])
    assert (coarse != refined).any(), "the test needs masks that refinement changed"

    h, w = image["height"], image["width"]
    before, after = canvas_pixels(page, "before")[:h, :w], canvas_pixels(page, "after")[:h, :w]
    drawn_differently = (before != after).any(axis=2)
    line_c, line_r = outline(coarse), outline(refined)
    assert not (drawn_differently & ~(line_c | line_r)).any()  # nothing changes off the outlines
    moved = line_c ^ line_r
    assert drawn_differently[moved].mean() > 0.99  # where an outline moved, the picture changed
    assert page.locator("#rows tr").count() == len(entries)
    assert "patches" in page.inner_text("#timing")


def test_instance_list_has_area_and_iou_against_ground_truth(page: Any, server: Any) -> None:
    image, entries = busiest_image()
    assert submit(page, CS / "images" / image["file_name"], CS / "maskrcnn28.json", CS / "gt.json") == "done"
    answer = page.evaluate("bprViewer.shown.answer")
    coarse, refined = decode(answer["coarse"]), decode(answer["instances"])
    gt = load_json(CS / "gt.json")
    gt_masks = decode([a for a in gt["annotations"] if a["image_id"] == image["id"] and not a.get("iscrowd")])

    def iou(a: np.ndarray, b: np.ndarray) -> float:
        union = (a | b).sum()
        return float((a & b).sum() / union) if union else 1.0

    change = [iou(c, r) for c, r in zip(coarse, refined)]
    rows = page.locator("#rows tr")
    first = int(rows.nth(0).locator("td").nth(0).inner_text()) - 1
    assert change[first] == min(change)  # most changed first
    for n in (0, 1, len(entries) - 1):
        cells = [c.inner_text() for c in rows.nth(n).locator("td").all()]
        k = int(cells[0]) - 1
        assert cells[2].startswith(f"{coarse[k].sum()}→{refined[k].sum()}")
        assert cells[3] == f"{100 * change[k]:.1f}"
        best = max(range(len(gt_masks)), key=lambda j: iou(coarse[k], gt_masks[j]))
        assert cells[4] == f"{100 * iou(coarse[k], gt_masks[best]):.1f}→{100 * iou(refined[k], gt_masks[best]):.1f}"


def test_toggle_zoom_pan_and_jump_to_an_instance(page: Any) -> None:
    image, _ = busiest_image()
    assert submit(page, CS / "images" / image["file_name"], CS / "maskrcnn28.json", CS / "gt.json") == "done"
    page.click("button[data-mode=before]")
    assert page.locator("button.on").inner_text() == "Before"
    page.keyboard.press("b")
    assert page.locator("button.on").inner_text() == "After"

    view = page.evaluate("({...bprViewer.view})")
    box = page.locator("#canvas").bounding_box()
    cx, cy = round(box["x"]) + 300, round(box["y"]) + 200
    px, py = cx - box["x"], cy - box["y"]  # canvas pixels (device pixel ratio 1)
    under = ((px - view["tx"]) / view["scale"], (py - view["ty"]) / view["scale"])
    page.mouse.move(cx, cy)
    for _ in range(5):
        page.mouse.wheel(0, -400)
    page.wait_for_timeout(100)
    zoomed = page.evaluate("({...bprViewer.view})")
    assert zoomed["scale"] > 4 * view["scale"]
    assert (px - zoomed["tx"]) / zoomed["scale"] == pytest.approx(under[0], abs=1e-6)  # the point stays put
    assert (py - zoomed["ty"]) / zoomed["scale"] == pytest.approx(under[1], abs=1e-6)

    page.mouse.down()
    page.mouse.move(cx - 120, cy - 50)
    page.mouse.up()
    panned = page.evaluate("({...bprViewer.view})")
    assert (panned["tx"] - zoomed["tx"], panned["ty"] - zoomed["ty"]) == pytest.approx((-120, -50))

    # pixel level: at 8x one image pixel is an 8x8 block of one colour, no smoothing
    block = page.evaluate(
        """() => {
            bprViewer.setView(8, 0, 0); bprViewer.paint();
            const d = document.getElementById('canvas').getContext('2d').getImageData(80, 80, 16, 16).data;
            return Array.from(d);
        }"""
    )
    px = np.array(block).reshape(16, 16, 4)
    for by in (0, 8):
        for bx in (0, 8):
            assert (px[by : by + 8, bx : bx + 8] == px[by, bx]).all()

    page.locator("#rows tr").nth(0).click()
    page.wait_for_timeout(100)
    k = int(page.locator("#rows tr.selected td").nth(0).inner_text()) - 1
    target = page.evaluate(
        """(k) => { const s = bprViewer.shown, v = bprViewer.view, c = document.getElementById('canvas');
            const a = s.coarse[k], r = s.refined[k];
            const x0 = Math.min(a.x0, r.x0), x1 = Math.max(a.x0 + a.w, r.x0 + r.w);
            const y0 = Math.min(a.y0, r.y0), y1 = Math.max(a.y0 + a.h, r.y0 + r.h);
            return [v.scale * (x0 + x1) / 2 + v.tx - c.width / 2, v.scale * (y0 + y1) / 2 + v.ty - c.height / 2]; }""",
        k,
    )
    assert target == pytest.approx([0, 0], abs=1e-6)  # the instance is centred


def test_downloads_equal_the_apis_answer(page: Any, server: Any, tmp_path: Path) -> None:
    image, entries = busiest_image()
    assert submit(page, CS / "images" / image["file_name"], CS / "maskrcnn28.json", CS / "gt.json") == "done"
    answer = api_answer(server, image, entries)
    with page.expect_download() as got:
        page.click("#download-json")
    assert got.value.suggested_filename.endswith(".refined.json")
    assert json.loads(Path(got.value.path()).read_text()) == answer["instances"]

    with page.expect_download() as got:
        page.click("#download-png")
    png = Path(got.value.path()).read_bytes()
    r = refine_request(server.url, CS / "images" / image["file_name"], entries, params={"output": "png"})
    assert r.status_code == 200
    ours, theirs = Image.open(io.BytesIO(png)), Image.open(io.BytesIO(r.content))
    assert ours.size == theirs.size and ours.mode == theirs.mode == "L"
    assert np.array_equal(np.asarray(ours), np.asarray(theirs))  # the same file content as ?output=png


def test_detector_mode_calls_segment(page: Any, server: Any) -> None:
    image, entries = busiest_image()
    assert submit(page, CS / "images" / image["file_name"], detector=True) == "done"
    shown = page.evaluate("bprViewer.shown.answer")
    assert shown["detector"] == "results" and len(shown["instances"]) == len(entries)


def test_an_instance_id_png_dropped_on_the_page(page: Any, server: Any, tmp_path: Path) -> None:
    """Files can be dropped as well as picked; an id PNG goes to the API as it is."""
    image, _ = busiest_image()
    gt = load_json(CS / "gt.json")
    anns = [a for a in gt["annotations"] if a["image_id"] == image["id"]][:30]
    ids = np.zeros((image["height"], image["width"]), np.uint8)
    for k, a in enumerate(anns, start=1):
        ids[mask_utils.decode(a["segmentation"]).astype(bool)] = 3 * k  # ids need not be consecutive
    png = tmp_path / "ids.png"
    Image.fromarray(ids).save(png)
    for zone, path, kind in (
        ("image-file", CS / "images" / image["file_name"], "image/jpeg"),
        ("instances-file", png, "image/png"),
    ):
        transfer = page.evaluate_handle(
            """([b64, name, kind]) => { const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
                const dt = new DataTransfer(); dt.items.add(new File([bytes], name, {type: kind})); return dt; }""",
            [base64.b64encode(path.read_bytes()).decode(), path.name, kind],
        )
        page.dispatch_event(f"label.drop[data-for={zone}]", "drop", {"dataTransfer": transfer})
    assert image["file_name"] in page.inner_text("#image-name") and "ids.png" in page.inner_text("#instances-name")
    page.click("#run")
    page.wait_for_function("['done', 'error'].includes(document.body.dataset.state)", timeout=120_000)
    assert page.evaluate("document.body.dataset.state") == "done", page.inner_text("#error")
    shown = page.evaluate("bprViewer.shown.answer")
    present = sorted(set(np.unique(ids).tolist()) - {0})
    assert [e["id"] for e in shown["instances"]] == present == [e["id"] for e in shown["coarse"]]
    for entry in shown["coarse"]:
        assert np.array_equal(mask_utils.decode(entry["segmentation"]).astype(bool), ids == entry["id"])


def test_the_services_errors_are_shown_verbatim(page: Any, server: Any, tmp_path: Path) -> None:
    image, entries = busiest_image()
    not_an_image = tmp_path / "notes.jpg"
    not_an_image.write_text("this is text")
    one_image = tmp_path / "instances.json"
    one_image.write_text(json.dumps(entries))
    expected = refine_request(server.url, not_an_image, entries).json()["detail"]
    assert submit(page, not_an_image, one_image) == "error"
    assert expected in page.inner_text("#error")

    wrong_size = tmp_path / "ids.png"
    Image.fromarray(np.ones((10, 12), np.uint8)).save(wrong_size)
    expected = refine_request(server.url, CS / "images" / image["file_name"], wrong_size.read_bytes()).json()["detail"]
    assert submit(page, CS / "images" / image["file_name"], wrong_size) == "error"
    assert expected in page.inner_text("#error")
    assert page.locator("#canvas").is_visible()  # never a blank page

    # a results file of many images, and nothing that says which one this is
    assert submit(page, CS / "images" / image["file_name"], CS / "maskrcnn28.json") == "error"
    assert "entries of 105 images; drop the ground-truth JSON too" in page.inner_text("#error")


def test_api_key_is_asked_for(browser: Any, checkpoint: Path) -> None:  # noqa: F811
    image, _ = busiest_image()
    with serve(checkpoint, api_key="s3cret") as live:
        context = browser.new_context(viewport={"width": 1500, "height": 900})
        page = context.new_page()
        page.goto(live.url + "/")
        assert submit(page, CS / "images" / image["file_name"], CS / "maskrcnn28.json", CS / "gt.json") == "error"
        assert "missing or wrong API key" in page.inner_text("#error")
        page.fill("#api-key", "s3cret")
        page.click("#run")
        page.wait_for_function("['done', 'error'].includes(document.body.dataset.state)", timeout=120_000)
        assert page.evaluate("document.body.dataset.state") == "done", page.inner_text("#error")
        context.close()


def test_polygon_ground_truth_is_rasterised_like_pycocotools(page: Any) -> None:
    coco = load_json(DATA / "coco-mini" / "gt.json")
    image = coco["images"][0]
    anns = [a for a in coco["annotations"] if isinstance(a["segmentation"], list)][:40]
    ious = page.evaluate(
        """async ([anns, images]) => {
            const m = await import('/viewer/masks.js');
            return anns.map((a) => {
                const im = images[a.image_id];
                const ours = m.decodeSegmentation(a.segmentation, im.height, im.width);
                const rle = m.decodeSegmentation(a.rle, im.height, im.width);
                return m.maskIoU(ours, rle);
            });
        }""",
        [
            [{**a, "rle": _rle_of(a, coco)} for a in anns],
            {i["id"]: {"height": i["height"], "width": i["width"]} for i in coco["images"]},
        ],
    )
    assert image and min(ious) > 0.8 and float(np.median(ious)) > 0.95


def _rle_of(annotation: dict, coco: dict) -> dict:
    im = next(i for i in coco["images"] if i["id"] == annotation["image_id"])
    rle = mask_utils.merge(mask_utils.frPyObjects(annotation["segmentation"], im["height"], im["width"]))
    return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}

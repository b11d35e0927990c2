"""bpr-eval end to end: the table, --json, --plots, and one-line errors with exit code 2."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from bpr.cli.evaluate import main
from bpr.io.datasets import shared_data_root

DATA = shared_data_root()
DAVIS = DATA / "davis-dev-real"
COCO_MINI = DATA / "coco-mini"
needs_data = pytest.mark.skipif(not (DAVIS / "gt.json").is_file(), reason=f"shared data not found at {DATA}")


def cocoeval_ap(gt: Path, results: Path) -> float:
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(gt))
        ev = COCOeval(coco, coco.loadRes(str(results)), "segm")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return float(ev.stats[0])


def assert_real_png(path: Path, min_bytes: int = 15_000) -> None:
    assert path.is_file(), path
    assert path.stat().st_size > min_bytes, (path, path.stat().st_size)
    image = cv2.imread(str(path))
    assert image is not None and image.shape[0] > 200 and image.shape[1] > 300
    assert image.std() > 10  # not a blank canvas


@needs_data
def test_davis_table_json_and_plots(tmp_path, capsys):
    report, plots = tmp_path / "out" / "report.json", tmp_path / "plots"
    rc = main(
        [
            "--gt",
            str(DAVIS / "gt.json"),
            str(DAVIS / "osvos.json"),
            str(DAVIS / "rvos.json"),
            "--images",
            str(DAVIS / "images"),
            "--json",
            str(report),
            "--plots",
            str(plots),
            "--quiet",
        ]
    )
    out, err = capsys.readouterr()
    assert rc == 0, err
    lines = out.splitlines()
    header = next(line for line in lines if line.startswith("metric"))
    assert header.split() == ["metric", "osvos", "rvos", "rvos", "-", "osvos"]
    for row in (
        "mask AP ",
        "mask AP_L",
        "boundary AP ",
        "boundary AP75",
        "AF (tol 1 px)",
        "J (mean IoU)",
        "F (contour, tol 8 px)",
        "J&F",
    ):
        assert any(line.startswith(row) for line in lines), row
    assert any(line.startswith("bmx-trees") for line in lines)  # per-group table
    assert "worse by >1 pt" in out
    assert "Accumulating" not in out  # pycocotools' chatter stays out of the report
    ap_row = next(line for line in lines if line.startswith("mask AP "))
    osvos_ap = cocoeval_ap(DAVIS / "gt.json", DAVIS / "osvos.json")
    assert ap_row.split()[2] == f"{100 * osvos_ap:.2f}"

    data = json.loads(report.read_text())
    assert data["single_instance"] is True and data["images"] == 89
    assert data["settings"]["band_width_px"] == [20]
    osvos, rvos = data["files"]
    assert osvos["mask_ap"]["AP"] == osvos_ap
    assert osvos["mask_ap"]["APs"] is None  # no small objects: COCOeval's -1
    assert osvos["boundary_ap"]["AP"] < osvos["mask_ap"]["AP"]
    assert len(osvos["single_instance"]["images"]) == 89
    assert len(osvos["single_instance"]["groups"]) == 7
    c = rvos["vs_baseline"]
    assert c["unit"] == "image" and c["units"] == 89
    assert 0 < c["improved"] < 1 and c["improved"] + c["worsened"] <= 1
    assert c["worse_by_1pt"] <= c["worsened"]

    for name in ("metrics.png", "iou_scatter.png", "gallery_rvos.png"):
        assert_real_png(plots / name)
    assert sorted(p.name for p in plots.iterdir()) == ["gallery_rvos.png", "iou_scatter.png", "metrics.png"]


@needs_data
def test_one_file_plots_need_no_images(tmp_path, capsys):
    rc = main(["--gt", str(DAVIS / "gt.json"), str(DAVIS / "osvos.json"), "--plots", str(tmp_path), "--quiet"])
    assert rc == 0, capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.png"]
    assert_real_png(tmp_path / "metrics.png")


@needs_data
def test_coco_mini_crowds_and_polygons(tmp_path, capsys):
    """Instance data with polygons and crowd RLE: ground truth dilated vs eroded, side by side."""
    from bpr.io.coco import decode_segmentation, encode_mask

    gt = json.loads((COCO_MINI / "gt.json").read_text())
    sizes = {img["id"]: (img["height"], img["width"]) for img in gt["images"]}
    kernel = np.ones((3, 3), np.uint8)
    fakes: dict[str, list] = {"dilated": [], "eroded": []}
    for ann in gt["annotations"]:
        if ann["iscrowd"]:
            continue
        mask = decode_segmentation(ann["segmentation"], *sizes[ann["image_id"]]).astype(np.uint8)
        for name, op in (("dilated", cv2.dilate), ("eroded", cv2.erode)):
            fakes[name].append(
                {
                    "image_id": ann["image_id"],
                    "category_id": ann["category_id"],
                    "segmentation": encode_mask(op(mask, kernel).astype(bool)),
                    "score": 0.9,
                }
            )
    paths = []
    for name, entries in fakes.items():
        paths.append(tmp_path / f"{name}.json")
        paths[-1].write_text(json.dumps(entries))
    report = tmp_path / "r.json"
    rc = main(["--gt", str(COCO_MINI / "gt.json"), *map(str, paths), "--json", str(report), "--quiet"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "(+5 crowd regions), instance data" in out
    assert "instance mIoU" in out and "J (mean IoU)" not in out
    assert "per instance IoU against dilated (619 instances)" in out
    data = json.loads(report.read_text())
    assert data["crowd_regions"] == 5 and data["single_instance"] is False
    assert data["files"][0]["mask_ap"]["AP"] == cocoeval_ap(COCO_MINI / "gt.json", paths[0])
    assert len(data["files"][0]["instances"]) == 619


EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "davis"


@pytest.mark.skipif(not (EXAMPLES / "gt.json").is_file(), reason="examples/davis not present")
def test_bundled_example_runs_without_shared_data(tmp_path, capsys):
    """The four DAVIS frames shipped in examples/: what CI can always run."""
    report = tmp_path / "r.json"
    rc = main(
        [
            "--gt",
            str(EXAMPLES / "gt.json"),
            str(EXAMPLES / "osvos.json"),
            str(EXAMPLES / "rvos.json"),
            "--images",
            str(EXAMPLES / "images"),
            "--json",
            str(report),
            "--plots",
            str(tmp_path / "p"),
            "--quiet",
        ]
    )
    assert rc == 0, capsys.readouterr().err
    data = json.loads(report.read_text())
    assert data["files"][0]["mask_ap"]["AP"] == cocoeval_ap(EXAMPLES / "gt.json", EXAMPLES / "osvos.json")
    assert data["files"][1]["vs_baseline"]["units"] == 4
    assert {p.name for p in (tmp_path / "p").iterdir()} == {"metrics.png", "iou_scatter.png", "gallery_rvos.png"}


# ---------------------------------------------------------------- bad input: one line, exit 2


@pytest.fixture()
def tiny(tmp_path: Path) -> Path:
    """A valid 1-image ground truth (10x10, one 4x4 square) in tmp_path/gt.json."""
    from bpr.io.coco import encode_mask

    m = np.zeros((10, 10), dtype=bool)
    m[2:6, 2:6] = True
    gt = {
        "images": [{"id": 1, "file_name": "x_0.jpg", "height": 10, "width": 10}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "segmentation": encode_mask(m), "iscrowd": 0}],
        "categories": [{"id": 1, "name": "object"}],
    }
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "ok.json").write_text(
        json.dumps([{"image_id": 1, "category_id": 1, "segmentation": encode_mask(m), "score": 1.0}])
    )
    return tmp_path


def run_bad(capsys, argv: list[str]) -> str:
    rc = main(argv)
    out, err = capsys.readouterr()
    assert rc == 2
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bpr-eval: error: "), err
    return lines[0]


def results_file(tiny: Path, obj, name: str = "bad.json") -> str:
    path = tiny / name
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return str(path)


def test_tiny_set_evaluates(tiny, capsys):
    assert main(["--gt", str(tiny / "gt.json"), str(tiny / "ok.json"), "--quiet"]) == 0
    assert "mask AP " in capsys.readouterr().out


def test_missing_ground_truth(tiny, capsys):
    assert "file not found" in run_bad(capsys, ["--gt", str(tiny / "nope.json"), str(tiny / "ok.json")])


def test_results_not_json(tiny, capsys):
    bad = results_file(tiny, "{not json")
    assert "is not valid JSON" in run_bad(capsys, ["--gt", str(tiny / "gt.json"), bad])


def test_empty_results(tiny, capsys):
    bad = results_file(tiny, [])
    assert "empty" in run_bad(capsys, ["--gt", str(tiny / "gt.json"), bad])


def test_unknown_image_id(tiny, capsys):
    entry = json.loads((tiny / "ok.json").read_text())[0]
    bad = results_file(tiny, [entry, {**entry, "image_id": 999}])
    msg = run_bad(capsys, ["--gt", str(tiny / "gt.json"), bad])
    assert "image_ids not in gt.json" in msg and "999" in msg


def test_unknown_category(tiny, capsys):
    entry = json.loads((tiny / "ok.json").read_text())[0]
    bad = results_file(tiny, [{**entry, "category_id": 7}])
    assert "category_ids not in gt.json (7)" in run_bad(capsys, ["--gt", str(tiny / "gt.json"), bad])


def test_malformed_rle_names_the_entry(tiny, capsys):
    entry = json.loads((tiny / "ok.json").read_text())[0]
    bad = results_file(tiny, [entry, {**entry, "segmentation": {"size": [10, 10], "counts": "zz~~"}}])
    msg = run_bad(capsys, ["--gt", str(tiny / "gt.json"), bad])
    assert "results[1]" in msg and "RLE" in msg


def test_wrong_mask_size(tiny, capsys):
    entry = json.loads((tiny / "ok.json").read_text())[0]
    from bpr.io.coco import encode_mask

    bad = results_file(tiny, [{**entry, "segmentation": encode_mask(np.zeros((12, 10), dtype=bool))}])
    assert "does not match the image size" in run_bad(capsys, ["--gt", str(tiny / "gt.json"), bad])


def test_non_numeric_score(tiny, capsys):
    entry = json.loads((tiny / "ok.json").read_text())[0]
    bad = results_file(tiny, [{**entry, "score": "high"}])
    assert "score" in run_bad(capsys, ["--gt", str(tiny / "gt.json"), bad])


def test_gallery_needs_images(tiny, capsys):
    ok = str(tiny / "ok.json")
    msg = run_bad(capsys, ["--gt", str(tiny / "gt.json"), ok, ok, "--plots", str(tiny / "plots")])
    assert "--images" in msg
    assert not (tiny / "plots").exists()  # refused before any work


def test_missing_image_dir(tiny, capsys):
    ok = str(tiny / "ok.json")
    assert "image directory not found" in run_bad(
        capsys, ["--gt", str(tiny / "gt.json"), ok, "--images", str(tiny / "nope")]
    )


def test_json_must_not_overwrite_an_input(tiny, capsys):
    ok = str(tiny / "ok.json")
    assert "overwrite" in run_bad(capsys, ["--gt", str(tiny / "gt.json"), ok, "--json", ok])
    assert json.loads((tiny / "ok.json").read_text())  # untouched


def test_ground_truth_without_categories(tiny, capsys):
    gt = json.loads((tiny / "gt.json").read_text())
    del gt["categories"]
    bad_gt = results_file(tiny, gt, "gt_bad.json")
    assert "'categories'" in run_bad(capsys, ["--gt", bad_gt, str(tiny / "ok.json")])


def test_console_script_exit_code(tiny):
    """The installed entry point, as a user runs it: exit status 2 and one stderr line."""
    exe = Path(sys.executable).with_name("bpr-eval")
    if not exe.is_file():
        pytest.skip("bpr-eval console script not installed")
    proc = subprocess.run(
        [str(exe), "--gt", str(tiny / "missing.json"), str(tiny / "ok.json")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("bpr-eval: error: file not found")
    assert proc.stdout == ""

"""The bundled model at its default settings: on a real street scene nothing is erased or left
as a fragment and small instances pass through; masks that are already right stay right; and
the dev-table command runs end to end."""

import json

import numpy as np

from bpr.cli.dev_table import main as dev_table_main
from bpr.evaluate import dev_table
from bpr.io.coco import decode_segmentation, load_json
from bpr.io.images import read_image
from bpr.refiner import Refiner


def _street_scene(data_dir, index=0):
    root = data_dir / "cityscapes-dev"
    gt = load_json(root / "gt.json")
    info = gt["images"][index]
    coarse = [e for e in load_json(root / "maskrcnn28.json") if e["image_id"] == info["id"]]
    masks = np.stack([decode_segmentation(e["segmentation"], info["height"], info["width"]) for e in coarse])
    return read_image(root / "images" / info["file_name"]), masks


def test_every_instance_comes_out_non_empty_and_overlapping_its_input(data_dir):
    refiner = Refiner.from_checkpoint()
    assert refiner.options.fallback_iou >= 0.5 and refiner.options.min_area > 0  # the default's safety rules
    for index in (1, 3):  # scenes where the default does change pixels (on 0 and 2 the gate keeps all)
        image, masks = _street_scene(data_dir, index)
        refined = refiner.refine(image, masks)
        assert len(masks) >= 5  # a real multi-instance scene
        for before, after in zip(masks, refined):
            if before.any():
                iou = (before & after).sum() / (before | after).sum()
                assert after.any() and iou >= refiner.options.fallback_iou, iou
            if before.sum() < refiner.options.min_area:
                assert np.array_equal(after, before)  # smaller than the minimum area: as given
        assert not np.array_equal(refined, masks)  # ...and it does refine


def test_masks_that_are_already_right_stay_right(data_dir):
    """Ground truth through half resolution (every boundary within a pixel or so) on three DAVIS
    frames the model never saw: refinement at the default settings costs at most 0.3 IoU points."""
    import cv2

    root = data_dir / "davis-dev-real"
    gt = load_json(root / "gt.json")
    refiner = Refiner.from_checkpoint()
    for info in gt["images"][::30]:
        ann = next(a for a in gt["annotations"] if a["image_id"] == info["id"])
        truth = decode_segmentation(ann["segmentation"], info["height"], info["width"])
        half = cv2.resize(
            truth.astype(np.float32), (info["width"] // 2, info["height"] // 2), interpolation=cv2.INTER_AREA
        )
        near = cv2.resize(half, (info["width"], info["height"]), interpolation=cv2.INTER_LINEAR) > 0.5
        refined = refiner.refine(read_image(root / "images" / info["file_name"]), near[None])[0]

        def iou(m, truth=truth):
            return (m & truth).sum() / (m | truth).sum()

        assert iou(refined) >= iou(near) - 0.003, (info["file_name"], iou(near), iou(refined))


def test_dev_table_runs_on_a_tiny_subset(data_dir, tmp_path, random_checkpoint, capsys):
    out = tmp_path / "table.json"
    code = dev_table_main(
        [
            "--checkpoint",
            str(random_checkpoint),
            "--max-images",
            "1",
            "--data",
            str(data_dir),
            "--cache",
            str(tmp_path / "cache"),
            "--json",
            str(out),
            "--iterations",
            "1",
            "--inputs",
            "cs-maskrcnn28",
            "cs-near",
            "cs-bottomup",
            "davis-osvos",
            "davis-near",
        ]
    )
    assert code == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].startswith(f"checkpoint {random_checkpoint};")
    names = [line.split(" | ")[0] for line in table[-5:]]  # the markdown table: one row per input, in order
    assert names == ["| cs-maskrcnn28", "| cs-near", "| cs-bottomup", "| davis-osvos", "| davis-near"]
    rows = json.loads(out.read_text())["rows"]
    assert set(rows) == {"cs-maskrcnn28", "cs-near", "cs-bottomup", "davis-osvos", "davis-near"}
    near = rows["cs-near"]
    assert near["J"][0] > 0.85 and near["AP"][0] > 0.8  # the near-perfect input is near perfect
    assert rows["cs-bottomup"]["J"][0] < near["J"][0]  # the stride-4-8 input is worse than that
    for r in rows.values():
        assert 0.0 <= r["worse"] <= 1.0 and r["run"]["images"] == 1
        assert 0 <= r["run"]["early_gated"] <= r["run"]["gated"] <= r["run"]["patches"]
        # the units refinement harmed most, worst first: the "worse" share's first suspects
        drops = [before - after for before, after in (unit["iou"] for unit in r["most_harmed"])]
        assert len(drops) <= 5 and all(d > 0 for d in drops) and drops == sorted(drops, reverse=True)
        assert (bool(drops) and drops[0] > 0.01 + 1e-12) == (r["worse"] > 0)
        assert all((unit["annotation_id"] is None) == r["single"] for unit in r["most_harmed"])
    assert rows["cs-maskrcnn28"]["most_harmed"], "random weights harm some street instance"
    again = ["--checkpoint", str(random_checkpoint), "--max-images", "1", "--data", str(data_dir)]
    again += ["--cache", str(tmp_path / "cache"), "--iterations", "1", "--inputs", "cs-near", "--against", str(out)]
    assert dev_table_main(again) == 0
    assert capsys.readouterr().out.rstrip().endswith(f"against {out}: 0 numbers better, 0 worse")
    # the table's gate cell names the early rejections only when there were some
    assert dev_table._gated_cell({"gated": 12, "patches": 40, "early_gated": 0}) == "12 / 40"
    assert dev_table._gated_cell({"gated": 12, "patches": 40, "early_gated": 5}) == "12 / 40 (5 early)"


def test_against_lists_every_number_a_run_loses_on_any_input():
    reference = {
        "cs-maskrcnn28": {"AP": [0.90, 0.92], "bAP": [0.88, 0.89], "AP_S": [None, None], "worse": 0.001, "emptied": 0},
        "davis-osvos": {"J": [0.67, 0.68], "F": [0.72, 0.73], "worse": 0.0, "worse_M": None},
    }
    rows = {
        "cs-maskrcnn28": {"AP": [0.90, 0.93], "bAP": [0.88, 0.89], "AP_S": [None, None], "worse": 0.0, "emptied": 1},
        "davis-osvos": {"J": [0.67, 0.69], "F": [0.72, 0.7262], "worse": 0.0112, "worse_M": 0.05},
        "davis-near": {"J": [0.9, 0.1], "F": [0.9, 0.1], "worse": 1.0},  # not in the reference: not compared
    }
    better, worse = dev_table.regressions(reference, rows)
    assert better == 3  # AP, cs "worse" share, OSVOS J; the equal boundary AP counts neither way
    assert worse == [
        "cs-maskrcnn28 emptied 0.00 -> 1.00 (+1.00)",
        "davis-osvos F 73.00 -> 72.62 (-0.38)",
        "davis-osvos worse 0.00 -> 1.12 (+1.12)",
    ]


def test_against_a_file_that_is_no_dev_table_is_a_one_line_error_before_any_work(tmp_path, capsys):
    bad = tmp_path / "results.json"
    bad.write_text("[]")
    assert dev_table_main(["--against", str(bad), "--cache", str(tmp_path / "cache")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"bpr-dev-table: error: --against {bad}: not a bpr-dev-table --json file (no 'rows')"
    assert not (tmp_path / "cache").exists()


def test_dev_table_reads_the_data_sets_from_bpr_shared_data(monkeypatch):
    from pathlib import Path

    from bpr.cli.dev_table import build_parser

    monkeypatch.setenv("BPR_SHARED_DATA", "/elsewhere/data")
    assert build_parser().parse_args([]).data == Path("/elsewhere/data")
    monkeypatch.delenv("BPR_SHARED_DATA")
    assert build_parser().parse_args([]).data == Path("../shared/data").resolve()  # beside the checkout, run from it


def test_an_extra_input_is_scored_exactly_as_a_built_in_one_on_the_same_file(data_dir, tmp_path, random_checkpoint):
    """--extra-input NAME=RESULTS: any results file on cityscapes-dev (cs-...) or davis-dev-real
    (davis-...) becomes one more row, refined and scored by the same code as the built-in rows."""
    out = tmp_path / "table.json"
    copy = tmp_path / "mine.json"
    copy.write_bytes((data_dir / "cityscapes-dev" / "maskrcnn28.json").read_bytes())
    args = ["--checkpoint", str(random_checkpoint), "--max-images", "1", "--data", str(data_dir), "--iterations", "1"]
    args += ["--cache", str(tmp_path / "cache"), "--json", str(out), "--inputs", "cs-maskrcnn28"]
    assert dev_table_main([*args, "--extra-input", f"cs-mine={copy}"]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert list(rows) == ["cs-maskrcnn28", "cs-mine"]
    for key in ("AP", "bAP", "J", "F", "worse"):
        assert rows["cs-mine"][key] == rows["cs-maskrcnn28"][key]
    assert rows["cs-mine"]["run"]["patches"] == rows["cs-maskrcnn28"]["run"]["patches"] > 0


def test_a_malformed_extra_input_is_a_one_line_error_before_any_work(tmp_path, capsys):
    results = tmp_path / "r.json"
    results.write_text("[]")
    cases = {
        "cs-mine": "--extra-input 'cs-mine': expected NAME=RESULTS.json",
        f"coco-mine={results}": "--extra-input coco-mine: the name must start with cs- or davis- (which set it scores)",
        f"cs-near={results}": "--extra-input cs-near: that name is a built-in input",
        f"davis-mine={tmp_path / 'none.json'}": f"--extra-input davis-mine: no such file {tmp_path / 'none.json'}",
    }
    for text, message in cases.items():
        assert dev_table_main(["--extra-input", text, "--cache", str(tmp_path / "cache")]) == 2
        assert capsys.readouterr().err.strip() == f"bpr-dev-table: error: {message}"
    other = tmp_path / "other.json"
    other.write_text("[]")
    twice = ["--extra-input", f"cs-mine={results}", "--extra-input", f"cs-mine={other}"]
    assert dev_table_main([*twice, "--cache", str(tmp_path / "cache")]) == 2
    assert (
        capsys.readouterr().err.strip()
        == f"bpr-dev-table: error: --extra-input cs-mine: given twice ({results} and {other})"
    )
    assert not (tmp_path / "cache").exists()

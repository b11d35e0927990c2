"""scripts/neighbour_frames_coarse.py: a frame's coarse mask is its neighbour's ground truth,
aligned on the centroid, in a results file bpr-build-patches accepts."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
from conftest import REPO

from bpr.cli.build_patches import main as build_main
from bpr.io.coco import decode_segmentation, encode_mask, load_json

spec = importlib.util.spec_from_file_location(
    "neighbour_frames_coarse", REPO / "scripts" / "neighbour_frames_coarse.py"
)
neighbour = importlib.util.module_from_spec(spec)
spec.loader.exec_module(neighbour)


def _video(frames: list[np.ndarray], names: list[str]) -> dict:
    h, w = frames[0].shape
    return {
        "images": [{"id": i + 1, "file_name": n, "height": h, "width": w} for i, n in enumerate(names)],
        "annotations": [
            {
                "id": i + 1,
                "image_id": i + 1,
                "category_id": 3,
                "segmentation": encode_mask(m),
                "iscrowd": 0,
                "area": int(m.sum()),
            }
            for i, m in enumerate(frames)
        ],
        "categories": [{"id": 3, "name": "object"}],
    }


def test_a_moved_object_comes_back_aligned_on_the_centroid_and_a_changed_pose_does_not():
    first = np.zeros((60, 80), bool)
    first[10:30, 10:40] = True
    moved = np.roll(first, (7, 12), axis=(0, 1))  # same shape, moved: alignment undoes it
    posed = moved.copy()
    posed[37:50, 30:34] = True  # a leg appeared in the third frame
    entries = neighbour.neighbour_results(
        _video([first, moved, posed], ["cat_00000.jpg", "cat_00008.jpg", "cat_00016.jpg"]), reach=1
    )
    by_image = {}
    for e in entries:
        by_image.setdefault(e["image_id"], []).append(decode_segmentation(e["segmentation"], 60, 80))
        assert e["category_id"] == 3
    assert len(by_image[1]) == 1 and len(by_image[2]) == 2 and len(by_image[3]) == 1  # reach 1: direct neighbours
    assert np.array_equal(by_image[1][0], first)  # frame 2's mask moved back onto frame 1
    assert not np.array_equal(by_image[3][0], posed)  # the leg is missing: a real-looking error
    assert (by_image[3][0] & posed).sum() > 0.8 * by_image[3][0].sum()


def test_sequences_do_not_mix_and_a_bad_file_name_is_refused():
    square = np.zeros((40, 40), bool)
    square[5:20, 5:20] = True
    entries = neighbour.neighbour_results(_video([square, square], ["a_00000.jpg", "b_00000.jpg"]), reach=2)
    assert entries == []  # one frame per sequence: no neighbours
    with pytest.raises(neighbour.BprInputError, match="sequence"):
        neighbour.neighbour_results(_video([square], ["frame.jpg"]), reach=1)


def test_neighbour_masks_build_a_patch_set_from_real_davis_frames(data_dir, tmp_path):
    gt = load_json(data_dir / "davis-train" / "gt.json")
    names = {"bear_00000.jpg", "bear_00008.jpg", "bear_00016.jpg"}
    keep = {im["id"] for im in gt["images"] if im["file_name"] in names}
    small = {
        "images": [im for im in gt["images"] if im["id"] in keep],
        "annotations": [a for a in gt["annotations"] if a["image_id"] in keep],
        "categories": gt["categories"],
    }
    (tmp_path / "gt.json").write_text(json.dumps(small))
    assert neighbour.main([str(tmp_path / "gt.json"), str(tmp_path / "coarse.json"), "--reach", "1"]) == 0
    assert len(load_json(tmp_path / "coarse.json")) == 4  # 3 frames: 1 + 2 + 1 neighbours
    code = build_main(
        [
            "--gt",
            str(tmp_path / "gt.json"),
            "--images",
            str(data_dir / "davis-train" / "images"),
            "--coarse",
            str(tmp_path / "coarse.json"),
            "--draws",
            "0",
            "--out",
            str(tmp_path / "patches"),
            "--quiet",
        ]
    )
    assert code == 0
    manifest = load_json(tmp_path / "patches" / "manifest.json")
    assert manifest["total"] > 0
    assert manifest["sources"][0]["coarse"].endswith("coarse.json") and manifest["draws"] == 0

"""J / F, merging, groups and improved / worsened fractions on a hand-made DAVIS-style set.

Four 40x40 images, each with one 30x30 ground-truth square (rows and columns 5..34):

    image      baseline A             other B
    a_0.jpg    exact                  two halves (merged: exact)
    a_1.jpg    exact                  no prediction
    b_0.jpg    shifted right by 2     shifted right by 1
    b_1.jpg    exact                  exact but one interior pixel missing

Tolerances at 40x40 (diagonal 56.57): F and AF both ceil(0.45) = ceil(0.05) = 1 px.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bpr.evaluate import evaluate

H = W = 40


def square(x_shift: int = 0, rows: tuple[int, int] = (5, 34)) -> np.ndarray:
    m = np.zeros((H, W), dtype=bool)
    m[rows[0] : rows[1] + 1, 5 + x_shift : 35 + x_shift] = True
    return m


def rle(mask: np.ndarray) -> dict:
    from bpr.io.coco import encode_mask

    return encode_mask(mask)


@pytest.fixture()
def toy(tmp_path: Path) -> tuple[Path, Path, Path]:
    names = ["a_0.jpg", "a_1.jpg", "b_0.jpg", "b_1.jpg"]
    gt = {
        "images": [{"id": i + 1, "file_name": n, "height": H, "width": W} for i, n in enumerate(names)],
        "annotations": [
            {"id": 10 + i, "image_id": i + 1, "category_id": 1, "segmentation": rle(square()), "iscrowd": 0}
            for i in range(4)
        ],
        "categories": [{"id": 1, "name": "object"}],
    }
    holed = square()
    holed[20, 20] = False

    def det(image_id: int, mask: np.ndarray, score: float = 1.0) -> dict:
        return {"image_id": image_id, "category_id": 1, "segmentation": rle(mask), "score": score}

    a = [det(1, square()), det(2, square()), det(3, square(2)), det(4, square())]
    b = [
        det(1, square(rows=(20, 34)), 0.8),
        det(1, square(rows=(5, 19)), 0.9),
        det(3, square(1)),
        det(4, holed),
    ]
    paths = []
    for name, obj in (("gt", gt), ("A", a), ("B", b)):
        paths.append(tmp_path / f"{name}.json")
        paths[-1].write_text(json.dumps(obj))
    return paths[0], paths[1], paths[2]


# Hand-computed values (see the module docstring for the set):
J_A = [1.0, 1.0, 840 / 960, 1.0]  # shift 2: 30*28 / (30*32)
J_B = [1.0, 0.0, 870 / 930, 899 / 900]  # shift 1: 30*29 / (30*31); one pixel missing
# Shift by 2 at 1 px tolerance: of the 116 contour pixels of each square, 60 find a partner
# (the shared horizontal runs, one px more at the near corner, and the 2 pixels next to them).
F_SHIFT2 = 60 / 116
# One missing interior pixel adds 4 unmatched contour pixels: P = 116/120, R = 1.
F_HOLE = 2 * (116 / 120) / (116 / 120 + 1)
F_A = [1.0, 1.0, F_SHIFT2, 1.0]
F_B = [1.0, 0.0, 1.0, F_HOLE]


def test_j_and_f_per_image_with_merging_and_missing(toy):
    gt, a, b = toy
    ev = evaluate(gt, [a, b])
    assert ev.single_instance
    fa, fb = ev.scores.files
    assert [fa.image_j[i] for i in (1, 2, 3, 4)] == pytest.approx(J_A)
    assert [fb.image_j[i] for i in (1, 2, 3, 4)] == pytest.approx(J_B)
    assert [fa.image_f[i] for i in (1, 2, 3, 4)] == pytest.approx(F_A)
    assert [fb.image_f[i] for i in (1, 2, 3, 4)] == pytest.approx(F_B)
    sa, sb = ev.summaries
    assert sa.single.j == pytest.approx(np.mean(J_A))
    assert sb.single.f == pytest.approx(np.mean(F_B))
    assert (sa.single.merged_images, sb.single.merged_images) == (0, 1)


def test_groups_are_file_name_prefixes(toy):
    gt, a, b = toy
    sb = evaluate(gt, [a, b]).summaries[1].single
    assert list(sb.groups) == ["a", "b"]
    assert sb.groups["a"].j == pytest.approx(0.5) and sb.groups["a"].images == 2
    assert sb.groups["b"].j == pytest.approx((J_B[2] + J_B[3]) / 2)
    assert sb.j_groups == pytest.approx((0.5 + (J_B[2] + J_B[3]) / 2) / 2)


def test_improved_worsened_fractions(toy):
    gt, a, b = toy
    c = evaluate(gt, [a, b]).summaries[1].vs_baseline
    assert c.units == 4
    assert c.improved == 0.25  # b_0: 87.5 -> 93.5
    assert c.worsened == 0.5  # a_1 (lost) and b_1 (-0.11 points)
    assert c.worse_by_1pt == 0.25  # only a_1: b_1 is worse by less than a point
    assert c.mean_delta_iou == pytest.approx(np.mean(np.subtract(J_B, J_A)))


def test_af_uses_best_overlapping_detection(toy):
    gt, a, b = toy
    ev = evaluate(gt, [a, b])
    assert ev.summaries[0].af == pytest.approx(np.mean(F_A))  # one prediction per image
    halves = ev.scores.files[1].instances[10]
    assert halves.iou == pytest.approx(0.5)
    assert halves.partner == 1  # both halves overlap 50%: the higher score (0.9) wins
    assert ev.scores.files[1].instances[11].partner is None  # no prediction on a_1
    assert ev.scores.files[1].instances[11].f == 0.0


def test_single_instance_can_be_switched_off(toy):
    gt, a, b = toy
    ev = evaluate(gt, [a, b], single_instance=False)
    assert ev.summaries[1].single is None
    assert ev.unit_kind == "instance"
    # per instance, a_0 now counts its best half (IoU 0.5) instead of the merged mask
    assert ev.unit_ious[1].tolist() == pytest.approx([0.5, 0.0, J_B[2], J_B[3]])

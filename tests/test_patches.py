"""Boundary patches: which pixels are boundary, where squares go, what NMS keeps."""

import cv2
import numpy as np
import pytest
from conftest import disk, street_masks_and_an_empty_one

from bpr.io.coco import decode_segmentation, load_json
from bpr.patches import (
    boundary_candidates,
    coverage_counts,
    extract_patch_corners,
    nms_squares,
    nms_squares_reference,
    squares_inside,
)


def test_boundary_pixels_are_those_with_both_classes_in_3x3():
    m = np.zeros((8, 8), bool)
    m[2:6, 2:6] = True
    ys, xs, scores = boundary_candidates(m)
    got = set(zip(ys.tolist(), xs.tolist()))
    # a 4x4 square: its outer ring of 1 px on both sides, corners of the outer ring included
    ring = {(y, x) for y in range(1, 7) for x in range(1, 7)} - {(y, x) for y in range(3, 5) for x in range(3, 5)}
    assert got == ring
    # straight-edge pixels see 3 of one class and 6 of the other: min(3,6)/4.5
    edge_score = scores[(ys == 2) & (xs == 3)][0]
    assert edge_score == pytest.approx(3 / 4.5)
    # an outer corner sees one foreground pixel only
    assert scores[(ys == 1) & (xs == 1)][0] == pytest.approx(1 / 4.5)


def test_image_border_is_not_a_boundary():
    m = np.zeros((10, 10), bool)
    m[:, :5] = True  # touches left, top and bottom borders
    ys, xs, _ = boundary_candidates(m)
    assert set(xs.tolist()) == {4, 5}
    assert set(ys.tolist()) == set(range(10))


def test_empty_and_full_masks_have_no_patches():
    assert extract_patch_corners(np.zeros((100, 100), bool)).shape == (0, 2)
    assert extract_patch_corners(np.ones((100, 100), bool)).shape == (0, 2)


def test_squares_are_shifted_inside_and_reach_the_last_row_and_column():
    ys = np.array([0, 99, 50, 99])
    xs = np.array([0, 149, 75, 0])
    c = squares_inside(ys, xs, 64, 100, 150)
    assert (c >= 0).all()
    assert (c[:, 0] + 64 <= 100).all() and (c[:, 1] + 64 <= 150).all()
    # the bottom-right box ends exactly on the last row / column (the reference stops one short)
    assert tuple(c[1]) == (100 - 64, 150 - 64)
    # every square still contains the pixel it was made for
    assert ((c[:, 0] <= ys) & (ys < c[:, 0] + 64) & (c[:, 1] <= xs) & (xs < c[:, 1] + 64)).all()


def test_squares_inside_refuses_images_smaller_than_a_patch():
    with pytest.raises(ValueError):
        squares_inside(np.array([1]), np.array([1]), 64, 50, 200)


def _opencv_nms(corners, scores, size, iou):
    boxes = np.column_stack([corners[:, 1], corners[:, 0], np.full(len(corners), size), np.full(len(corners), size)])
    return np.asarray(cv2.dnn.NMSBoxes(boxes.astype(np.int32), scores.astype(np.float32), 0.0, iou)).reshape(-1)


@pytest.mark.parametrize("name", ["rvos", "osvos"])
def test_nms_equals_the_greedy_reference_and_opencv_on_real_masks(data_dir, name):
    results = load_json(data_dir / "davis-dev-real" / f"{name}.json")
    for entry in results[::9]:
        h, w = entry["segmentation"]["size"]
        m = decode_segmentation(entry["segmentation"], h, w)
        ys, xs, scores = boundary_candidates(m)
        corners = squares_inside(ys, xs, 64, h, w)
        for iou in (0.25, 0.55, 0.0, 1.0):
            kept = nms_squares(corners, scores, 64, iou)
            assert np.array_equal(kept, nms_squares_reference(corners, scores, 64, iou))
            assert np.array_equal(kept, _opencv_nms(corners, scores, 64, iou))
        assert len(nms_squares(corners, scores, 64, 1.0)) == len(corners)  # IoU never exceeds 1: all kept


def test_kept_squares_overlap_at_most_the_threshold():
    m = disk(300, 300, 150, 150, 100)
    c = extract_patch_corners(m, 64, 0.25, cover_all=False)
    dy = np.abs(c[:, None, 0] - c[None, :, 0])
    dx = np.abs(c[:, None, 1] - c[None, :, 1])
    inter = np.clip(64 - dy, 0, None) * np.clip(64 - dx, 0, None)
    iou = inter / (2 * 64 * 64 - inter)
    np.fill_diagonal(iou, 0)
    assert iou.max() <= 0.25


def test_denser_nms_gives_more_patches():
    m = disk(400, 400, 200, 200, 150)
    assert len(extract_patch_corners(m, 64, 0.55)) > len(extract_patch_corners(m, 64, 0.25))


def test_plain_nms_can_miss_boundary_pixels_and_cover_all_never_does(data_dir):
    """Measured on all 89 OSVOS masks of davis-dev-real at NMS 0.25: plain NMS covers 99.7% of
    boundary pixels on average (97.5% at worst); cover_all covers all of them."""
    results = load_json(data_dir / "davis-dev-real" / "osvos.json")
    plain_cov = []
    for entry in results:
        h, w = entry["segmentation"]["size"]
        m = decode_segmentation(entry["segmentation"], h, w)
        ys, xs, _ = boundary_candidates(m)
        full = extract_patch_corners(m, 64, 0.25, cover_all=True)
        assert (coverage_counts(full, 64, h, w)[ys, xs] > 0).all()
        plain = extract_patch_corners(m, 64, 0.25, cover_all=False)
        plain_cov.append((coverage_counts(plain, 64, h, w)[ys, xs] > 0).mean())
        assert len(full) >= len(plain)
    assert 0.99 < np.mean(plain_cov) < 1.0


def test_coverage_counts_matches_painting():
    corners = np.array([[0, 0], [10, 20], [36, 36]])
    got = coverage_counts(corners, 64, 100, 100)
    want = np.zeros((100, 100), int)
    for y, x in corners:
        want[y : y + 64, x : x + 64] += 1
    assert np.array_equal(got, want)


def _edge_padded_crop(source: np.ndarray, y: int, x: int, size: int) -> np.ndarray:
    """Oracle: np.pad's edge mode, then a plain slice."""
    h, w = source.shape[-2:]
    pad = [(0, 0)] * (source.ndim - 2) + [(0, max(0, y + size - h)), (0, max(0, x + size - w))]
    return np.pad(source, pad, mode="edge")[..., y : y + size, x : x + size]


def test_crop_squares_cuts_image_and_mask_squares_repeating_the_edge():
    import torch

    from bpr.patches import crop_squares

    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (3, 37, 53), dtype=np.uint8)
    masks = rng.random((4, 37, 53)) > 0.5
    corners = np.array([[0, 0], [5, 9], [30, 50], [36, 2], [0, 52]])  # the last three cross the bottom / right edge
    layers = np.array([0, 3, 1, 2, 3])
    crops = crop_squares(torch.from_numpy(image), corners, 8).numpy()
    assert crops.shape == (5, 3, 8, 8)
    mask_crops = crop_squares(torch.from_numpy(masks), corners, 8, layers).numpy()
    assert mask_crops.shape == (5, 8, 8)
    for k, ((y, x), layer) in enumerate(zip(corners, layers)):
        assert np.array_equal(crops[k], _edge_padded_crop(image, y, x, 8))
        assert np.array_equal(mask_crops[k], _edge_padded_crop(masks[layer], y, x, 8))


def test_crop_squares_inside_a_real_frame_are_its_slices(data_dir):
    """Squares wholly inside a CPU source are cut by numpy slices (the fast path); they must be
    the gather's crops exactly, for the image and for each instance's mask."""
    import torch

    from bpr.io.images import read_image
    from bpr.patches import _all_inside, _gather_squares, crop_squares

    gt = load_json(data_dir / "davis-dev-real" / "gt.json")
    info = gt["images"][0]
    image = torch.from_numpy(read_image(data_dir / "davis-dev-real" / "images" / info["file_name"])).permute(2, 0, 1)
    results = [r for r in load_json(data_dir / "davis-dev-real" / "osvos.json") if r["image_id"] == info["id"]]
    masks = np.stack([decode_segmentation(r["segmentation"], info["height"], info["width"]) for r in results] * 2)
    masks[1] = np.roll(masks[1], 17, axis=1)  # a second, different layer
    per_layer = [extract_patch_corners(m, 64) for m in masks]
    corners = np.concatenate(per_layer)
    layers = np.repeat(np.arange(len(masks)), [len(c) for c in per_layer])
    assert len(corners) > 10 and _all_inside(corners, 64, info["height"], info["width"])  # the slice path runs
    crops = crop_squares(image, corners, 64)
    assert crops.shape == (len(corners), 3, 64, 64) and crops.dtype == torch.uint8
    assert torch.equal(crops, _gather_squares(image, corners, 64))
    mask_crops = crop_squares(torch.from_numpy(masks), corners, 64, layers)
    assert mask_crops.dtype == torch.bool
    assert torch.equal(mask_crops, _gather_squares(torch.from_numpy(masks), corners, 64, layers))
    k = len(per_layer[0]) + 3  # a square of the second layer, against a plain slice
    y, x = corners[k]
    assert np.array_equal(mask_crops[k].numpy(), masks[1, y : y + 64, x : x + 64])


def test_crop_squares_of_sources_numpy_cannot_view_are_gathered():
    """A bf16 image (refine_torch takes float images) or one inside autograd cannot take the
    numpy slice path; its squares come from the gather, equal to the float32 crops."""
    import torch

    from bpr.patches import crop_squares

    image = torch.rand(3, 40, 50) * 255
    corners = np.array([[0, 0], [7, 11], [24, 34]])  # all inside
    want = crop_squares(image, corners, 16)
    assert torch.equal(crop_squares(image.bfloat16(), corners, 16), want.bfloat16())
    traced = image.clone().requires_grad_(True)
    crops = crop_squares(traced, corners, 16)
    assert torch.equal(crops.detach(), want) and crops.requires_grad  # the gradient reaches the image


def test_mask_extents_are_the_boxes_of_real_masks_and_zeros_when_empty(data_dir):
    from bpr.patches import mask_extents

    masks = street_masks_and_an_empty_one(data_dir, 12)
    boxes = mask_extents(masks)
    for m, box in zip(masks[:-1], boxes[:-1]):
        ys, xs = np.nonzero(m)
        assert box.tolist() == [ys.min(), xs.min(), ys.max() + 1, xs.max() + 1]
    assert boxes[-1].tolist() == [0, 0, 0, 0]


def test_a_known_extent_gives_the_same_patches_as_finding_it(data_dir):
    from bpr.patches import mask_extents

    results = load_json(data_dir / "davis-dev-real" / "rvos.json")[::15]
    for entry in results:
        h, w = entry["segmentation"]["size"]
        m = decode_segmentation(entry["segmentation"], h, w)
        extent = tuple(mask_extents(m[None])[0])
        assert np.array_equal(extract_patch_corners(m, 64, 0.25, True, extent), extract_patch_corners(m, 64))
    empty = np.zeros((80, 90), bool)
    assert extract_patch_corners(empty, 64, 0.25, True, (0, 0, 0, 0)).shape == (0, 2)


@pytest.mark.parametrize("shape", [(20, 30), (70, 30), (20, 90), (64, 64), (80, 100)])
def test_pad_to_patch_repeats_the_last_row_and_column(shape):
    import torch

    from bpr.patches import pad_to_patch

    source = np.random.default_rng(1).random((2, *shape))
    got = pad_to_patch(torch.from_numpy(source), 64).numpy()
    h, w = shape
    want = np.pad(source, [(0, 0), (0, max(0, 64 - h)), (0, max(0, 64 - w))], mode="edge")
    assert np.array_equal(got, want)

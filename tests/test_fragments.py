"""``fragment_reach``: a part of a mask detached from its largest part may shrink or vanish, and
its boundary move by the reach, but it cannot grow further.

A detector's stray blob on a neighbouring object looks, inside one patch, like the visible part
of an object, and a refiner completes it: on real OSVOS predictions the three frames the effl0
refiner harmed most were such blobs grown over a passer-by and a wall's graffiti.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from conftest import disk

from bpr.io.coco import decode_segmentation, load_json
from bpr.io.images import read_image
from bpr.modeling import RefinerConfig, RefinerNet
from bpr.refinement import anchored
from bpr.refiner import Refiner


class GrowNet(RefinerNet):
    """A 'refiner' that grows every mask it sees by 4 pixels, a blob as much as a body."""

    def foreground_probability(self, image_patches: torch.Tensor, mask_patches: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(mask_patches, 9, stride=1, padding=4)[:, 0]


def test_growth_stays_only_where_it_touches_the_largest_part():
    body = disk(120, 160, 60, 50, 30)
    blob = disk(120, 160, 60, 130, 6)
    given = body | blob
    grown_body = disk(120, 160, 60, 50, 34)
    grown_blob = disk(120, 160, 60, 130, 15)  # the blob completed into a neighbour
    new_part = disk(120, 160, 10, 140, 4)  # appears out of nothing
    out = anchored(grown_body | grown_blob | new_part, given)
    np.testing.assert_array_equal(out, grown_body | blob)


def test_a_fragment_may_shrink_or_vanish_and_the_body_may_shrink():
    body, blob = disk(120, 160, 60, 50, 30), disk(120, 160, 60, 130, 6)
    shrunk = disk(120, 160, 60, 50, 25) | disk(120, 160, 60, 130, 3)
    np.testing.assert_array_equal(anchored(shrunk, body | blob), shrunk)
    np.testing.assert_array_equal(anchored(disk(120, 160, 60, 50, 25), body | blob), disk(120, 160, 60, 50, 25))


def test_growth_that_joins_a_fragment_to_the_body_is_kept():
    body, blob = disk(120, 160, 60, 50, 30), disk(120, 160, 60, 95, 5)  # 10 px apart
    bridge = np.zeros_like(body)
    bridge[57:63, 75:95] = True
    refined = body | blob | bridge
    np.testing.assert_array_equal(anchored(refined, body | blob), refined)


def test_a_fragment_may_move_its_boundary_by_the_reach():
    body, blob = disk(120, 160, 60, 50, 30), disk(120, 160, 60, 130, 6)
    grown_blob = disk(120, 160, 60, 130, 15)
    yy, xx = np.mgrid[:120, :160]
    by, bx = np.nonzero(blob)
    distance = np.sqrt((yy[..., None] - by) ** 2 + (xx[..., None] - bx) ** 2).min(-1)  # to the nearest blob pixel
    expected = body | (grown_blob & (distance <= 3))
    assert (expected & ~blob & ~body).sum() > 100  # the blob's boundary did move
    np.testing.assert_array_equal(anchored(body | grown_blob, body | blob, 3), expected)


def test_an_empty_input_anchors_nothing():
    empty = np.zeros((40, 40), bool)
    np.testing.assert_array_equal(anchored(disk(40, 40, 20, 20, 5), empty), empty)


def _scooter(data_dir):
    """OSVOS's real mask of scooter-black frame 5: the scooter, plus a stray blob on a passer-by."""
    root = data_dir / "davis-dev-real"
    info = next(i for i in load_json(root / "gt.json")["images"] if i["file_name"] == "scooter-black_00005.jpg")
    entry = next(r for r in load_json(root / "osvos.json") if r["image_id"] == info["id"])
    mask = decode_segmentation(entry["segmentation"], info["height"], info["width"])
    return read_image(root / "images" / info["file_name"]), mask


def test_on_a_real_prediction_only_the_stray_blob_stops_growing(data_dir):
    image, mask = _scooter(data_dir)
    count, parts, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    assert count > 2  # the prediction has detached fragments
    body = parts == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    refiner = Refiner(GrowNet(RefinerConfig(input_size=64)))
    rules = dict(iterations=1, flip_tta=False, quality_gate=False, change_margin=0.0, min_area=0, fallback_iou=0.0)
    free = refiner.refine(image, mask[None], **rules, fragment_reach=-1)[0]
    held = refiner.refine(image, mask[None], **rules, fragment_reach=0)[0]
    assert (free & ~mask).sum() > (held & ~mask).sum() > 0  # fragments grew when free; the body grows in both
    assert not (held & ~free).any()
    _, regions = cv2.connectedComponents(held.astype(np.uint8), connectivity=8)
    anchors = set(np.unique(regions[body & held])) - {0}
    added = held & ~mask
    assert set(np.unique(regions[added])) <= anchors  # every added pixel hangs on the body
    near_body = cv2.dilate(body.astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool)
    np.testing.assert_array_equal(held & near_body, free & near_body)  # the body's own growth is untouched

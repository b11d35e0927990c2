"""Reassembly against a dense reference: averaged patch probabilities, the change margin and
the rule that pixels newly claimed by two instances go to the more confident one.

The reference below paints every patch into full-image arrays instance by instance, the way
the method describes it, so any slip in reassemble's flat-buffer indexing (offsets, region
corners, widths) or in its rival search shows up as a differing pixel."""

import numpy as np
import pytest
import torch
from conftest import disk

from bpr.patches import mask_extents
from bpr.reassemble import patch_reach, reassemble


def _dense_reference(coarse, corners, ids, probs, resolve, margin):
    n, h, w = coarse.shape
    s = probs.shape[-1]
    sums = np.zeros((n, h, w))
    counts = np.zeros((n, h, w))
    for (y, x), i, p in zip(corners, ids, probs):
        sums[i, y : y + s, x : x + s] += p
        counts[i, y : y + s, x : x + s] += 1
    covered = counts > 0
    prob = np.where(covered, sums / np.maximum(counts, 1), coarse.astype(float))
    keep = prob >= 0.5 - margin if margin > 0 else prob > 0.5
    refined = np.where(covered, np.where(coarse, keep, prob > 0.5 + margin), coarse)
    if not resolve:
        return refined
    for i in sorted(set(ids.tolist())):  # instances in index order, each seeing the others' current masks
        gained = refined[i] & ~coarse[i] & covered[i]
        if not gained.any():
            continue
        others = [j for j in range(n) if j != i]
        conf = np.stack([np.where(refined[j], prob[j], -1.0) for j in others])
        best = conf.max(0)
        contested = gained & (best >= 0)
        refined[i] &= ~(contested & (best > prob[i]))
        wins = contested & (prob[i] > best)
        for j in others:
            refined[j] &= ~wins
    return refined


def _scene(seed):
    rng = np.random.default_rng(seed)
    h, w, s = 90, 120, 24
    if seed < 10:
        coarse = np.stack(
            [disk(h, w, 30, 35, 14), disk(h, w, 40, 55, 12), disk(h, w, 60, 85, 16), disk(h, w, 20, 100, 6)]
        )
    elif seed >= 20:  # a tall instance near the left edge, crossed low down by a wide one
        yy, xx = np.mgrid[:h, :w]
        coarse = np.stack(
            [((yy - 50) / 38) ** 2 + ((xx - 12) / 6) ** 2 <= 1, ((yy - 70) / 7) ** 2 + ((xx - 40) / 35) ** 2 <= 1]
        )
    else:  # wide and tall neighbours: boxes whose height and width differ, crossing each other
        yy, xx = np.mgrid[:h, :w]
        coarse = np.stack(
            [
                ((yy - 45) / 8) ** 2 + ((xx - 60) / 45) ** 2 <= 1,
                ((yy - 45) / 35) ** 2 + ((xx - 62) / 7) ** 2 <= 1,
                ((yy - 20) / 6) ** 2 + ((xx - 30) / 25) ** 2 <= 1,
            ]
        )
    corners, ids = [], []
    for i, m in enumerate(coarse):
        ys, xs = np.nonzero(m)
        for _ in range(5):
            k = rng.integers(len(ys))
            corners.append([min(max(ys[k] - s // 2, 0), h - s), min(max(xs[k] - s // 2, 0), w - s)])
            ids.append(i)
    corners, ids = np.array(corners), np.array(ids)
    # smooth random probabilities, leaning towards each patch's coarse mask so gains and losses both occur
    noise = torch.nn.functional.avg_pool2d(
        torch.rand(len(ids), 1, s, s, generator=torch.Generator().manual_seed(seed)), 5, 1, 2, count_include_pad=False
    )[:, 0].numpy()
    base = np.stack([coarse[i, y : y + s, x : x + s] for (y, x), i in zip(corners, ids)]).astype(float)
    probs = np.clip(0.5 * base + 0.25 + 5.0 * (noise - 0.5), 0, 1).astype(np.float32)
    return coarse, corners, ids, probs


@pytest.mark.parametrize("seed", [0, 1, 2, 10, 11, 20, 21])
@pytest.mark.parametrize("resolve, margin", [(False, 0.0), (True, 0.0), (True, 0.15)])
@pytest.mark.parametrize("known_extents", [False, True])  # the boxes extraction found, or found here
def test_reassemble_equals_the_dense_reference(seed, resolve, margin, known_extents):
    coarse, corners, ids, probs = _scene(seed)
    extents = mask_extents(coarse) if known_extents else None
    coarse_t = torch.from_numpy(coarse.copy())
    got = reassemble(coarse_t, corners, ids, torch.from_numpy(probs), resolve, margin, extents).numpy()
    want = _dense_reference(coarse, corners, ids, probs, resolve, margin)
    assert (got != coarse).sum() > 20  # the scene really changes
    assert np.array_equal(got, want)
    assert np.array_equal(coarse_t.numpy(), coarse)  # the input masks are never written to


def test_the_scenes_exercise_overlap_resolution():
    """Guard for the test above: with resolution off, some gained pixels are claimed twice."""
    coarse, corners, ids, probs = _scene(0)
    raw = _dense_reference(coarse, corners, ids, probs, False, 0.0)
    shared_new = (raw.sum(0) > 1) & ~(coarse.sum(0) > 1)
    assert shared_new.sum() > 5
    resolved = _dense_reference(coarse, corners, ids, probs, True, 0.0)
    assert ((resolved.sum(0) > 1) & ~(coarse.sum(0) > 1)).sum() < shared_new.sum()


def test_patch_reach_is_the_union_of_each_instance_s_squares():
    coarse, corners, ids, _ = _scene(1)
    reach = patch_reach(coarse.shape, corners, ids, 24).numpy()
    want = np.zeros_like(coarse)
    for (y, x), i in zip(corners, ids):
        want[i, y : y + 24, x : x + 24] = True
    assert np.array_equal(reach, want)
    assert not patch_reach((2, 5, 5), np.zeros((0, 2), int), np.zeros(0, int), 3).any()


def test_a_single_patch_is_pasted_too():
    coarse, corners, ids, probs = _scene(0)
    one = reassemble(torch.from_numpy(coarse), corners[:1], ids[:1], torch.from_numpy(probs[:1])).numpy()
    assert np.array_equal(one, _dense_reference(coarse, corners[:1], ids[:1], probs[:1], True, 0.0))
    assert (one != coarse).any()

"""``ungated_shift``: an instance whose mask the refiner, without its quality gate, would move by
at least t pixels on average (pixels changed per pixel of the input's boundary) gets that
ungated answer; every other instance keeps the gate's. The gate exists to guard masks that are
already right, and the refiner barely moves those (under half a pixel on nearly right dev
masks); a mask it moves further was not right, and there the gate's caution costs the gain."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import davis_frame

from bpr.evaluate.dev_table import near_perfect
from bpr.feed import Job, PatchFeed
from bpr.io.coco import decode_segmentation, load_json
from bpr.options import RefineOptions
from bpr.passes import reassemble_job, ungated_instances
from bpr.patches import mask_extents
from bpr.reassemble import boundary_length, changed_pixels, reassemble
from bpr.refiner import Refiner

OSVOS_FRAME = 88  # an OSVOS frame the default refiner moves by 1.6 px on average


def square(h: int, w: int, y0: int, x0: int, y1: int, x1: int) -> np.ndarray:
    m = np.zeros((h, w), dtype=bool)
    m[y0:y1, x0:x1] = True
    return m


def test_boundary_length_counts_each_boundary_pixel_of_outer_and_inner_contours():
    assert boundary_length(square(50, 50, 10, 10, 20, 20)) == 36  # a 10x10 square: 4 * 9 steps
    ring = square(50, 50, 10, 10, 40, 40) & ~square(50, 50, 20, 20, 30, 30)
    # outer contour of the 30x30 square (4 * 29 steps), inner one along the 10x10 hole: the 40 ring
    # pixels beside it (the ring's corner pixels touch the hole only diagonally)
    assert boundary_length(ring) == 4 * 29 + 4 * 10
    assert boundary_length(np.zeros((20, 20), dtype=bool)) == 0


def two_squares_job(options: RefineOptions) -> Job:
    """Two 40x40 squares far apart, one 64 px patch each, both patches rejected by the gate
    (their gated probability is the coarse mask). Ungated, the first grows by 3 px on every
    side; the second gains a 1 px strip along one side only."""
    h, w = 100, 200
    coarse = torch.from_numpy(np.stack([square(h, w, 20, 20, 60, 60), square(h, w, 20, 120, 60, 160)]))
    corners = np.array([[8, 8], [8, 108]])
    ids = np.array([0, 1])
    gated = torch.stack([coarse[0, 8:72, 8:72], coarse[1, 8:72, 108:172]]).float()
    ungated = torch.stack(
        [
            torch.from_numpy(square(h, w, 17, 17, 63, 63))[8:72, 8:72],
            torch.from_numpy(square(h, w, 20, 119, 60, 160))[8:72, 108:172],
        ]
    ).float()
    return Job(
        coarse=coarse,
        height=h,
        width=w,
        corners=corners,
        instance_ids=ids,
        image_patches=torch.zeros(2, 3, 64, 64),
        mask_patches=gated[:, None].clone(),
        probs=gated,
        options=options,
        remaining=0,
        extents=mask_extents(coarse.numpy()),
        ungated=ungated,
    )


def test_changed_pixels_counts_what_reassembly_would_change():
    job = two_squares_job(RefineOptions(ungated_shift=1.0))
    assert job.ungated is not None
    changed = changed_pixels(job.coarse, job.corners, job.instance_ids, job.ungated)
    refined = reassemble(job.coarse, job.corners, job.instance_ids, job.ungated, resolve_overlaps=False)
    assert changed.tolist() == (refined ^ job.coarse).flatten(1).sum(1).tolist() == [46 * 46 - 1600, 40]


def test_only_the_instance_moved_by_at_least_the_shift_gets_its_ungated_answer():
    """Shift of the first square: 516 changed pixels over a 156-pixel boundary (3.3 px); of the
    second: 40 over 156 (0.26 px)."""
    first_shift = (46 * 46 - 1600) / 156
    job = two_squares_job(RefineOptions(ungated_shift=1.0))
    refined = reassemble_job(job)
    assert job.ungated_chosen is not None and job.ungated_chosen.tolist() == [True, False]
    assert np.array_equal(refined[0].numpy(), square(100, 200, 17, 17, 63, 63))  # the ungated answer
    assert np.array_equal(refined[1].numpy(), job.coarse[1].numpy())  # the gate's (its coarse mask)
    # the threshold is inclusive, and applies to the average over the whole boundary
    assert ungated_instances(two_squares_job(RefineOptions(ungated_shift=first_shift))).tolist() == [True, False]
    assert ungated_instances(two_squares_job(RefineOptions(ungated_shift=first_shift + 1e-3))).tolist() == [
        False,
        False,
    ]
    assert ungated_instances(two_squares_job(RefineOptions(ungated_shift=40 / 156))).tolist() == [True, True]


def test_the_change_margin_counts_toward_the_shift():
    """A change the margin would veto is no change: probability 0.6 outside a square, margin 0.2."""
    job = two_squares_job(RefineOptions(ungated_shift=0.1, change_margin=0.2))
    assert job.ungated is not None
    job.ungated = torch.where(job.ungated > job.probs, torch.full_like(job.ungated, 0.6), job.ungated)
    assert ungated_instances(job).tolist() == [False, False]
    job.options = RefineOptions(ungated_shift=0.1, change_margin=0.05)
    assert ungated_instances(job).tolist() == [True, True]


def test_on_an_image_smaller_than_a_patch_the_padding_does_not_count():
    """A 30x30 image is padded to 64 x 64 for its patch (the last row and column repeat). An
    ungated answer that changes only the padding changes nothing the user sees: no shift."""
    h, w = 30, 30
    visible = square(h, w, 10, 5, 30, 15)  # a bar touching the bottom edge
    padded = np.pad(visible, ((0, 34), (0, 34)), mode="edge")
    coarse = torch.from_numpy(padded[None])
    gated = coarse[:, :64, :64].float()
    ungated = gated.clone()
    ungated[0, 40:, :] = 0.0  # clears only padding rows
    job = Job(
        coarse=coarse,
        height=h,
        width=w,
        corners=np.array([[0, 0]]),
        instance_ids=np.array([0]),
        image_patches=torch.zeros(1, 3, 64, 64),
        mask_patches=gated[:, None].clone(),
        probs=gated,
        options=RefineOptions(ungated_shift=0.1),
        remaining=0,
        extents=mask_extents(coarse.numpy()),
        ungated=ungated,
    )
    assert ungated_instances(job).tolist() == [False]
    ungated[0, 20:30, 5:15] = 0.0  # now half the visible bar goes: 100 px over a 56 px boundary
    assert ungated_instances(job).tolist() == [True]
    assert np.array_equal(reassemble_job(job)[0].numpy(), square(h, w, 10, 5, 20, 15))


def test_hand_out_keeps_the_ungated_rows_of_the_jobs_that_ask_for_them_across_batches():
    """A job split over three batches (no rejection, a rejection, none again) gets, for every
    row, its probability before the gate; a pooled job that does not ask for the rule (shift 0,
    or no gate) never gets an ungated copy."""
    from bpr.feed import PatchBatch
    from bpr.passes import hand_out

    def job(options: RefineOptions, patches: int) -> Job:
        return Job(
            coarse=torch.zeros(1, 64, 64, dtype=torch.bool),
            height=64,
            width=64,
            corners=np.zeros((patches, 2), dtype=np.int64),
            instance_ids=np.zeros(patches, dtype=np.int64),
            image_patches=torch.zeros(patches, 3, 4, 4),
            mask_patches=torch.zeros(patches, 1, 4, 4),
            probs=torch.empty(patches, 4, 4),
            options=options,
            remaining=patches,
        )

    rule, plain, no_gate = (
        job(RefineOptions(ungated_shift=0.6), 6),
        job(RefineOptions(), 2),
        job(RefineOptions(ungated_shift=0.6, quality_gate=False), 2),
    )
    before = torch.arange(6, dtype=torch.float32)[:, None, None].expand(6, 4, 4).clone()  # row k: k
    after = before.clone()
    after[3] = -1.0  # the gate took row 3 of the rule job
    hand_out(PatchBatch(((rule, 0, 2), (plain, 0, 2))), torch.cat([after[0:2], torch.zeros(2, 4, 4)]))
    assert rule.ungated is None  # nothing taken yet
    ungated = torch.cat([before[2:4], torch.full((2, 4, 4), 7.0)])
    gated = torch.cat([after[2:4], torch.full((2, 4, 4), 5.0)])
    hand_out(PatchBatch(((rule, 2, 4), (no_gate, 0, 2))), gated, ungated)
    hand_out(PatchBatch(((rule, 4, 6),)), after[4:6])
    assert rule.ungated is not None and torch.equal(rule.ungated, before)
    assert torch.equal(rule.probs, after)
    assert plain.ungated is None and no_gate.ungated is None
    assert rule.remaining == plain.remaining == no_gate.remaining == 0


def test_pooled_requests_with_other_options_get_what_they_get_alone(data_dir):
    """The service pools patches of requests with different options into one batch: a job
    without the rule next to one with it is refined exactly as alone (and the other way round)."""
    image, masks = davis_frame(data_dir, OSVOS_FRAME)
    refiner = Refiner.from_checkpoint(None, backend="torch", precision="fp32", batch_size=16)
    on = refiner.options
    off = on.updated(ungated_shift=0.0)
    alone = [refiner.refine(image, masks, ungated_shift=o.ungated_shift) for o in (off, on)]
    assert not np.array_equal(*alone)  # the rule acts on this frame
    flights = [refiner.start_numpy(image, masks, o) for o in (off, on)]

    feed = PatchFeed(16)
    jobs = [f.advance() for f in flights]
    for j in jobs:
        assert j is not None
        feed.add(j)
    while feed:
        batch = feed.take()
        refiner.run_batch(batch)
    for f in flights:
        assert f.advance() is None
    assert np.array_equal(flights[0].output().cpu().numpy(), alone[0])
    assert np.array_equal(flights[1].output().cpu().numpy(), alone[1])


@pytest.fixture(scope="module")
def default_refiner() -> Refiner:
    return Refiner.from_checkpoint(None, backend="torch", precision="fp32")


def test_the_default_model_recommends_the_rule(default_refiner):
    assert default_refiner.options.ungated_shift == 0.6
    # since session 16 the instances it picks lose pixels more readily; since session 19 every
    # instance keeps its thin parts (keep_thin 4), so the rule needs no radius of its own
    assert default_refiner.options.ungated_removal_margin == 0.1
    assert default_refiner.options.keep_thin == 4 and default_refiner.options.ungated_keep_thin == 0
    assert RefineOptions().ungated_shift == 0.0  # off in the library, on in the checkpoint


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def davis_truth(data_dir, index: int) -> np.ndarray:
    gt = load_json(data_dir / "davis-dev-real" / "gt.json")
    info = gt["images"][index]
    return np.stack(
        [
            decode_segmentation(a["segmentation"], info["height"], info["width"])
            for a in gt["annotations"]
            if a["image_id"] == info["id"]
        ]
    )


@pytest.mark.parametrize("index", [34])
def test_on_a_real_video_prediction_the_rule_takes_the_ungated_answer_and_it_is_better(
    data_dir, default_refiner, index
):
    """The ungated answer is exactly what the refiner gives without its gate (with a companion,
    early_reject=False runs it on every patch); on this RVOS frame it moves the mask far enough (1.7 px), and
    it is closer to the ground truth than the gate's answer."""
    image, masks = davis_frame(data_dir, index, "rvos")
    truth = davis_truth(data_dir, index)
    refiner = Refiner.from_checkpoint(
        None,
        backend="torch",
        precision="fp32",
        early_reject=False,
        ungated_removal_margin=-1.0,
        ungated_keep_thin=0,
        keep_thin=0,
    )  # the ungated answer as it is, without the default's margins and thin parts
    gated = refiner.refine(image, masks, ungated_shift=0.0)
    free = refiner.refine(image, masks, quality_gate=False)
    shift = (free ^ masks).sum() / boundary_length(masks[0])
    assert shift > 0.6
    before = refiner.stats.ungated
    assert np.array_equal(refiner.refine(image, masks), free)
    assert refiner.stats.ungated == before + 1
    assert np.array_equal(refiner.refine(image, masks, ungated_shift=float(shift) + 1e-3), gated)
    assert iou(free, truth) > iou(gated, truth) + 0.015  # 0.619 -> 0.640


@pytest.mark.parametrize("index", [58, 0, 20])  # paragliding-launch (cords), bear, another sequence
def test_nearly_right_masks_keep_the_gates_answer(data_dir, default_refiner, index):
    """The ground truth through half resolution: the refiner moves it by well under 0.6 px, so
    the rule never fires and the answer is the gate's."""
    image, _ = davis_frame(data_dir, index)
    near = np.stack([near_perfect(m) for m in davis_truth(data_dir, index)])
    before = default_refiner.stats.ungated
    assert np.array_equal(default_refiner.refine(image, near), default_refiner.refine(image, near, ungated_shift=0.0))
    assert default_refiner.stats.ungated == before


def test_an_instance_is_counted_once_whatever_the_passes_and_not_when_it_falls_back(data_dir):
    image, masks = davis_frame(data_dir, OSVOS_FRAME)
    refiner = Refiner.from_checkpoint(None, backend="torch", precision="fp32")
    refiner.refine(image, masks, iterations=2, ungated_shift=0.05)
    assert refiner.stats.ungated == 1
    refiner.refine(image, masks, fallback_iou=0.999)  # every change reverted: the input comes back
    assert refiner.stats.ungated == 1 and refiner.stats.fallbacks == 1


def test_the_answer_does_not_depend_on_how_patches_are_batched(data_dir):
    """The ungated probabilities are kept batch by batch: a job split over many batches, some
    with no rejection in them, gets the same masks as in one batch."""
    image, masks = davis_frame(data_dir, OSVOS_FRAME)
    one = Refiner.from_checkpoint(None, backend="torch", precision="fp32", batch_size=256)
    many = Refiner.from_checkpoint(None, backend="torch", precision="fp32", batch_size=3)
    out = one.refine(image, masks)
    assert one.stats.ungated == 1
    assert np.array_equal(many.refine(image, masks), out)
    assert many.stats.ungated == 1


def test_the_summary_line_counts_the_instances_given_their_ungated_answer():
    from bpr.cli.common import rules_summary

    counts = {"fallbacks": 0, "small": 3, "gated": 40, "early_gated": 20, "thin_kept": 0, "ungated": 2}
    assert "2 instances given the refiner's ungated answer" in rules_summary(counts, thin=False)
    assert "ungated" not in rules_summary({**counts, "ungated": 0}, thin=False)


def test_a_removal_margin_lets_pixels_leave_where_the_change_margin_would_keep_them():
    """decide(): with change margin 0.2 a foreground pixel at probability 0.4 stays; with a removal
    margin of 0.05 it leaves (and one at 0.46 stays); additions keep the change margin."""
    from bpr.reassemble import decide

    old = torch.tensor([True, True, False, False])
    prob = torch.tensor([0.4, 0.46, 0.6, 0.75])
    assert decide(old, prob, 0.2).tolist() == [True, True, False, True]
    assert decide(old, prob, 0.2, removal_margin=0.05).tolist() == [False, True, False, True]
    assert decide(old, prob, 0.2, removal_margin=0.0).tolist() == [False, False, False, True]


def test_only_the_instances_given_their_ungated_answer_get_the_removal_margin():
    """Both squares' ungated probability is 0.4 on a 2 px rim inside them (change margin 0.2 keeps
    it) and 0.9 on 3 px outside the first (it grows). Only the first is moved far enough; with
    ungated_removal_margin 0 it also loses its rim, the second keeps everything."""
    job = two_squares_job(RefineOptions(ungated_shift=1.0, change_margin=0.2, ungated_removal_margin=0.0))
    assert job.ungated is not None
    rim = torch.zeros(2, 64, 64)
    rim[0, 12:52, 12:52], rim[0, 14:50, 14:50] = 1, 0  # first square [20:60) seen from corner 8
    rim[1, 12:52, 12:52], rim[1, 14:50, 14:50] = 1, 0  # second square [20:60, 120:160) from corner (8, 108)
    job.ungated = torch.where(rim > 0, torch.full_like(job.ungated, 0.4), job.ungated)
    refined = reassemble_job(job)
    assert job.ungated_chosen is not None and job.ungated_chosen.tolist() == [True, False]
    assert np.array_equal(
        refined[0].numpy(),
        square(100, 200, 17, 17, 63, 63) & ~(square(100, 200, 20, 20, 60, 60) & ~square(100, 200, 22, 22, 58, 58)),
    )
    assert np.array_equal(refined[1].numpy(), job.coarse[1].numpy())
    job.options = RefineOptions(ungated_shift=1.0, change_margin=0.2)  # -1: the change margin
    assert np.array_equal(reassemble_job(job)[0].numpy(), square(100, 200, 17, 17, 63, 63))


def test_ungated_keep_thin_applies_to_the_instances_given_their_ungated_answer_only(data_dir):
    """On the OSVOS frame the rule picks, ungated_keep_thin 4 gives back exactly what keep_thin 4
    gives back; with the rule off it changes nothing."""
    image, masks = davis_frame(data_dir, OSVOS_FRAME)
    refiner = Refiner.from_checkpoint(None, backend="torch", precision="fp32", ungated_keep_thin=0, keep_thin=0)
    kept = refiner.refine(image, masks, keep_thin=4)
    assert not np.array_equal(kept, refiner.refine(image, masks))  # the radius gives something back here
    assert np.array_equal(refiner.refine(image, masks, ungated_keep_thin=4), kept)
    off = refiner.refine(image, masks, ungated_shift=0.0)
    assert np.array_equal(refiner.refine(image, masks, ungated_shift=0.0, ungated_keep_thin=4), off)

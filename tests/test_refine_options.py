"""Per-call options and the pass rules of the one pass loop: no compounding across passes,
no instance emptied, small instances left alone, counts per image, one Refiner shared by
threads with different options, and the patch feed's batching rule."""

import dataclasses
import re
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import IdentityNet, disk
from test_refiner import _davis

from bpr import BprInputError
from bpr.cli.refine import build_parser
from bpr.feed import PatchFeed
from bpr.modeling import RefinerConfig
from bpr.modeling.checkpoint import load_refiner, save_refiner
from bpr.modeling.refiner_net import RefinerNet
from bpr.options import option_infos, option_types
from bpr.reassemble import patch_reach
from bpr.refiner import RefineOptions, Refiner
from bpr.spec import RefinerSpec


class GrowNet(RefinerNet):
    """Predicts the mask dilated by 6 px: every pass grows every instance (a worst case)."""

    def foreground_probability(self, image_patches: torch.Tensor, mask_patches: torch.Tensor) -> torch.Tensor:
        return (F.max_pool2d(mask_patches, 13, stride=1, padding=6) > 0.5).float()[:, 0]


class SoftGrowNet(RefinerNet):
    """GrowNet's 6 px dilation, blurred: gained pixels are less sure than a neighbour's own,
    so where two instances grow into each other the overlap rule takes pixels back."""

    def foreground_probability(self, image_patches: torch.Tensor, mask_patches: torch.Tensor) -> torch.Tensor:
        grown = F.max_pool2d(mask_patches, 13, stride=1, padding=6)
        return F.avg_pool2d(grown, 5, stride=1, padding=2, count_include_pad=False)[:, 0]


class EraseNet(RefinerNet):
    """Predicts background everywhere: refinement would erase what it touches."""

    def foreground_probability(self, image_patches: torch.Tensor, mask_patches: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(mask_patches[:, 0])


def _scene(h=200, w=260):
    image = np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8)
    masks = np.stack([disk(h, w, 100, 80, 40), disk(h, w, 90, 190, 6), disk(h, w, 30, 200, 20)])
    return image, masks


def test_later_passes_change_only_what_the_first_pass_could_reach():
    image, masks = _scene()
    net = GrowNet(RefinerConfig(input_size=64))
    one = Refiner(net, iterations=1).refine(image, masks, resolve_overlaps=False)
    free = Refiner(net, iterations=3, confine_passes=False).refine(image, masks, resolve_overlaps=False)
    confined = Refiner(net, iterations=3).refine(image, masks, resolve_overlaps=False)
    assert free.sum() > one.sum()  # unconfined, each pass grows the masks further
    # Confined: the first pass's patches bound every change. Outside them nothing moved.
    refiner = Refiner(net, iterations=1)
    for i, mask in enumerate(masks):
        job = refiner.prepare(torch.from_numpy(image).permute(2, 0, 1), torch.from_numpy(mask)[None], refiner.options)
        reach = patch_reach(job.coarse.shape, job.corners, job.instance_ids, 64)[0, :200, :260].numpy()
        assert np.array_equal(confined[i][~reach], mask[~reach])
        assert confined[i][reach].sum() >= one[i][reach].sum()  # later passes still work inside the reach
    assert (confined != free).any()


def test_no_instance_comes_back_empty_when_the_fallback_is_on():
    image, masks = _scene()
    net = EraseNet(RefinerConfig(input_size=64))
    erased = Refiner(net).refine(image, masks)
    assert not erased[1].any()  # the 6 px disc is erased without the rule
    refiner = Refiner(net, fallback_iou=0.5)
    kept = refiner.refine(image, masks)
    for before, after in zip(masks, kept):
        assert after.any() and (after & before).sum() / (after | before).sum() >= 0.5
    assert np.array_equal(kept[1], masks[1])  # returned as given
    assert refiner.stats.fallbacks == int(sum((e & m).sum() / (e | m).sum() < 0.5 for e, m in zip(erased, masks)))


class RampNet(RefinerNet):
    """Foreground probability 0.5 + 0.4 * (input mask - 0.5) blurred: sure deep inside and far
    outside the mask, unsure (near 0.5) across a band around its boundary."""

    def foreground_probability(self, image_patches: torch.Tensor, mask_patches: torch.Tensor) -> torch.Tensor:
        soft = F.avg_pool2d(mask_patches, 15, stride=1, padding=7, count_include_pad=False)
        shifted = torch.roll(soft, shifts=4, dims=-1)  # the network "moves" the boundary 4 px right
        return (0.5 + 0.8 * (shifted - 0.5))[:, 0]


def test_change_margin_keeps_the_input_where_the_network_is_unsure():
    image, masks = _scene()
    net = RampNet(RefinerConfig(input_size=64))
    plain = Refiner(net).refine(image, masks, resolve_overlaps=False)
    guarded = Refiner(net, change_margin=0.2).refine(image, masks, resolve_overlaps=False)
    changed_plain = (plain != masks).sum()
    changed_guarded = (guarded != masks).sum()
    assert changed_plain > 500  # the shift moves many boundary pixels
    assert 0 < changed_guarded < changed_plain  # only the confident part of the move is taken
    # every pixel the margin lets change, the plain threshold changes the same way
    moved = guarded != masks
    assert np.array_equal(guarded[moved], plain[moved])
    # a margin beyond what the network ever reaches (p in [0.1, 0.9]) changes nothing
    assert np.array_equal(Refiner(net, change_margin=0.45).refine(image, masks, resolve_overlaps=False), masks)


@pytest.mark.parametrize("threshold", [0.3, 0.6, 0.8, 0.95])
def test_the_fallback_returns_exactly_the_instances_moved_below_the_iou(threshold):
    """GrowNet dilates each disc by 6 px: the small disc keeps the least IoU, the large the most."""
    image, masks = _scene()
    net = GrowNet(RefinerConfig(input_size=64))
    grown = Refiner(net).refine(image, masks, resolve_overlaps=False)
    ious = [(g & m).sum() / (g | m).sum() for g, m in zip(grown, masks)]
    assert min(ious) < 0.3 and 0.6 < max(ious) < 0.95  # the thresholds split the instances differently
    refiner = Refiner(net, fallback_iou=threshold)
    out = refiner.refine(image, masks, resolve_overlaps=False)
    for g, m, o, iou in zip(grown, masks, out, ious):
        assert np.array_equal(o, m if iou < threshold else g)
    assert refiner.stats.fallbacks == sum(iou < threshold for iou in ious)


@pytest.mark.parametrize("threshold", [0.3, 0.6, 0.8])
def test_the_fallback_counts_iou_right_with_overlaps_resolved_and_two_passes(threshold):
    """The fallback counts each IoU inside the box of the input and its patches: with
    neighbours that lose pixels to each other and a second pass, it still decides as a
    whole-image IoU does."""
    image, masks = _scene()
    masks[1] = disk(200, 260, 100, 150, 30)  # grows into the large disc: overlaps get resolved
    net = SoftGrowNet(RefinerConfig(input_size=64))
    grown = Refiner(net, iterations=2).refine(image, masks)
    kept_overlaps = Refiner(net, iterations=2, resolve_overlaps=False).refine(image, masks)
    assert (grown[0] & grown[1]).sum() < (kept_overlaps[0] & kept_overlaps[1]).sum()  # the overlap rule acted
    ious = [(g & m).sum() / (g | m).sum() for g, m in zip(grown, masks)]
    refiner = Refiner(net, iterations=2, fallback_iou=threshold)
    out = refiner.refine(image, masks)
    for g, m, o, iou in zip(grown, masks, out, ious):
        assert np.array_equal(o, m if iou < threshold else g)
    assert refiner.stats.fallbacks == sum(iou < threshold for iou in ious)


def test_a_pass_needing_more_patches_than_allowed_is_refused_before_any_crop():
    from bpr.refiner import TooManyPatches

    image, masks = _scene()
    refiner = Refiner(IdentityNet(RefinerConfig(input_size=64)))
    needed = refiner.prepare(
        torch.from_numpy(image).permute(2, 0, 1), torch.from_numpy(masks), refiner.options
    ).num_patches
    before = refiner.stats.patches
    with pytest.raises(TooManyPatches, match=f"need {needed} boundary patches, over the limit of {needed - 1}"):
        refiner.start_numpy(image, masks, max_patches=needed - 1).advance()
    assert refiner.stats.patches == before  # nothing was cut
    flight = refiner.start_numpy(image, masks, max_patches=needed)
    assert flight.advance().num_patches == needed


def test_instances_under_the_minimum_area_come_back_as_given():
    image, masks = _scene()
    refiner = Refiner(EraseNet(RefinerConfig(input_size=64)), min_area=int(masks[1].sum()) + 1)
    out = refiner.refine(image, masks)
    assert np.array_equal(out[1], masks[1])
    assert not np.array_equal(out[0], masks[0])  # the large ones are refined
    assert refiner.stats.small == 1


def test_images_and_instances_are_counted_once_whatever_the_passes(data_dir, random_checkpoint):
    items = [_davis(data_dir, k) for k in (0, 1, 2)]
    refiner = Refiner.from_checkpoint(random_checkpoint, iterations=2)
    list(refiner.refine_many((img, m[None]) for img, m in items))
    assert (refiner.stats.images, refiner.stats.instances) == (3, 3)
    once = Refiner.from_checkpoint(random_checkpoint, iterations=1)
    list(once.refine_many((img, m[None]) for img, m in items))
    assert refiner.stats.patches > once.stats.patches  # the second pass did run patches


def test_one_refiner_serves_threads_with_different_options(data_dir, random_checkpoint):
    items = [_davis(data_dir, k) for k in (0, 4, 8, 12)]
    refiner = Refiner.from_checkpoint(random_checkpoint)
    options = [refiner.resolve(nms_iou=v) for v in (0.25, 0.55, 0.25, 0.55)]
    alone = [refiner.refine(img, m[None], o) for (img, m), o in zip(items, options)]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(lambda a: refiner.refine(a[0][0], a[0][1][None], a[1]), zip(items, options)))
    for a, b in zip(alone, together):
        assert np.array_equal(a, b)
    assert not np.array_equal(alone[0], refiner.refine(*items[0][:1], items[0][1][None], nms_iou=0.55))
    assert refiner.options.nms_iou == 0.25  # per-call options never change the Refiner
    image, mask = items[0]
    as_object = refiner.refine(image, mask[None], RefineOptions(nms_iou=0.55))
    assert np.array_equal(as_object, refiner.refine(image, mask[None], nms_iou=0.55))  # options object == keywords
    assert np.array_equal(
        as_object,
        refiner.refine_torch(
            torch.from_numpy(image).permute(2, 0, 1), torch.from_numpy(mask)[None], RefineOptions(nms_iou=0.55)
        ).numpy(),
    )


def test_the_torch_door_refuses_mismatched_shapes(random_checkpoint):
    refiner = Refiner.from_checkpoint(random_checkpoint)
    image = torch.zeros(3, 40, 50, dtype=torch.uint8)
    for bad_image, bad_masks in (
        (image, torch.zeros(1, 40, 51, dtype=torch.bool)),
        (image[:2], torch.zeros(1, 40, 50, dtype=torch.bool)),
        (image, torch.zeros(40, 50, dtype=torch.bool)),
    ):
        with pytest.raises(BprInputError, match=r"expected image \(3, H, W\) and masks \(N, H, W\)"):
            refiner.refine_torch(bad_image, bad_masks)


def test_options_are_checked():
    for bad in (
        dict(nms_iou=0.0),
        dict(iterations=0),
        dict(fallback_iou=1.0),
        dict(min_area=-1),
        dict(change_margin=0.5),
    ):
        with pytest.raises(BprInputError):
            RefineOptions(**bad)
    with pytest.raises(TypeError, match="unknown refine option"):
        RefineOptions().updated(nms=0.3)
    assert RefineOptions().updated(nms_iou=None) == RefineOptions()


def test_checkpoint_recommendations_become_the_defaults():
    net = IdentityNet(
        RefinerConfig(input_size=64),
        recommended=dict(flip_tta=True, iterations=2, fallback_iou=0.4, min_area=50, change_margin=0.1),
    )
    o = Refiner(net).options
    assert (o.flip_tta, o.iterations, o.fallback_iou, o.min_area, o.change_margin) == (True, 2, 0.4, 50, 0.1)
    assert Refiner(net, iterations=1, min_area=0).options.iterations == 1


def test_a_checkpoint_keeps_its_architecture_and_its_recommendations_apart(tmp_path):
    """save_refiner writes "config" (what to build) and "recommended" (how to refine) apart; a file
    written before they were apart, recommendations inside "config", loads the same."""
    net = IdentityNet(RefinerConfig(input_size=64), recommended=dict(flip_tta=True, min_area=50))
    save_refiner(net, tmp_path / "new.pt")
    ckpt = torch.load(tmp_path / "new.pt", weights_only=True)
    assert ckpt["recommended"] == {"flip_tta": True, "min_area": 50}
    assert set(ckpt["config"]) == {f.name for f in dataclasses.fields(RefinerConfig)}
    legacy = {
        **ckpt,
        "config": {
            **ckpt["config"],
            "flip_tta": True,
            "min_area": 50,
            "iterations": 1,
            "gate_early_reject": None,
            "upsample_mode": "bilinear",
        },
    }
    del legacy["recommended"]
    torch.save(legacy, tmp_path / "old.pt")
    for name in ("new.pt", "old.pt"):
        o = Refiner(tmp_path / name).options
        assert (o.flip_tta, o.min_area, o.iterations, o.change_margin) == (True, 50, 1, 0.0), name
    assert load_refiner(tmp_path / "old.pt").config == load_refiner(tmp_path / "new.pt").config


def test_every_option_has_one_declaration_that_every_door_derives():
    """bpr-refine's flags, the BPR_* settings, the per-request query and /v1/models all come
    from bpr/options.py: each option appears in each with the declared type, bounds and default."""
    from pydantic import ValidationError

    from service.options import RefineQuery
    from service.schemas import RefinerInfo
    from service.settings import Settings

    parser = build_parser()
    dests = {a.dest for a in parser._actions}
    flags = {s for a in parser._actions for s in a.option_strings}
    spec_fields = {f.name for f in dataclasses.fields(RefinerSpec)} - {"options"}
    assert spec_fields <= dests, "a RefinerSpec loading field has no bpr-refine flag"
    for name, info in option_infos().items():
        typ = option_types()[name]
        flag = "--" + name.replace("_", "-")
        assert flag in flags, f"bpr-refine has no {flag}"
        assert parser.parse_args(["r.json", "--images", "."]).__dict__[name] is None  # None: the checkpoint's
        assert name in Settings.model_fields and Settings().__dict__[name] is None, f"no BPR_{name.upper()}"
        assert name in RefinerInfo.model_fields, f"/v1/models does not report {name}"
        assert (name in RefineQuery.model_fields) == info.per_request
        default = getattr(RefineOptions(), name)
        if typ is bool:
            on = parser.parse_args(["r.json", "--images", ".", flag]).__dict__[name]
            off = parser.parse_args(["r.json", "--images", ".", f"--no-{flag[2:]}"]).__dict__[name]
            assert (on, off) == (True, False)
            continue
        # a value just outside each bound is refused by the library and the settings alike
        step = 1 if typ is int else 1e-3
        outside = {
            "gt": info.gt,
            "ge": None if info.ge is None else info.ge - step,
            "le": None if info.le is None else info.le + step,
            "lt": info.lt,
        }
        for bad in (typ(v) for v in outside.values() if v is not None):
            with pytest.raises(BprInputError, match=re.escape(info.label)):
                RefineOptions(**{name: bad})
            with pytest.raises(ValidationError):
                Settings(**{name: bad})
        value = typ(parser.parse_args(["r.json", "--images", ".", flag, str(default)]).__dict__[name])
        assert value == default
        spec = Settings(**{name: default}).refiner_spec()
        assert spec.options[name] == default


def test_a_request_may_set_fewer_passes_than_the_library_allows():
    from pydantic import ValidationError

    from service.options import RefineQuery

    assert RefineQuery(iterations=3).iterations == 3
    with pytest.raises(ValidationError):
        RefineQuery(iterations=4)
    with pytest.raises(ValidationError):
        RefineQuery(nms_iou=0.0)
    assert RefineQuery(min_area=5).model_dump() == {
        "nms_iou": None,
        "flip_tta": None,
        "iterations": None,
        "keep_thin": None,
        "ungated_shift": None,
    }


def test_settings_and_flags_reach_the_refiner_spec():
    from service.settings import Settings

    spec = Settings(
        nms_iou=0.55, flip_tta=False, iterations=3, fallback_iou=0.3, min_area=9, change_margin=0.15, max_batch_size=5
    ).refiner_spec()
    o = spec.options
    assert (
        o["nms_iou"],
        o["flip_tta"],
        o["iterations"],
        o["fallback_iou"],
        o["min_area"],
        o["change_margin"],
        spec.batch_size,
    ) == (0.55, False, 3, 0.3, 9, 0.15, 5)
    args = build_parser().parse_args(
        ["r.json", "--images", ".", "--keep-overlaps", "--no-cover-all", "--min-area", "7"]
    )
    cli = RefinerSpec.from_fields(vars(args))
    assert (cli.options["resolve_overlaps"], cli.options["cover_all"], cli.options["min_area"]) == (False, False, 7)
    assert cli.options["nms_iou"] is None and cli.batch_size == 64
    with pytest.raises(TypeError, match="unknown refine option"):
        RefinerSpec(options={"nms": 0.3})


class _FakeJob:
    def __init__(self, n):
        self.num_patches = n


def test_the_feed_cuts_full_batches_oldest_first_and_drops_discarded_jobs():
    feed = PatchFeed(8)
    a, b, c = _FakeJob(5), _FakeJob(6), _FakeJob(3)
    for j in (a, b, c):
        feed.add(j)
    feed.add(_FakeJob(0))  # nothing to run: not queued
    first = feed.take()
    assert [(j, s, e) for j, s, e in first.parts] == [(a, 0, 5), (b, 0, 3)]
    assert first.size == 8 and first.num_jobs == 2 and feed.queued == 6
    assert feed.discard([c]) == 3 and feed.queued == 3
    second = feed.take()
    assert [(j, s, e) for j, s, e in second.parts] == [(b, 3, 6)] and not feed


def test_the_feed_fills_the_last_free_slot_and_takes_batches_of_one():
    feed = PatchFeed(8)
    a, b = _FakeJob(7), _FakeJob(5)
    feed.add(a)
    feed.add(b)
    batch = feed.take()  # 7 of a leave one slot: b's first patch takes it
    assert [(j, s, e) for j, s, e in batch.parts] == [(a, 0, 7), (b, 0, 1)] and batch.size == 8
    single = PatchFeed(1)
    single.add(_FakeJob(2))
    assert single.take().size == 1 and single.take().size == 1 and not single
    with pytest.raises(ValueError, match="batch size must be at least 1, got 0"):
        PatchFeed(0)


def test_discarding_a_partly_taken_job_drops_only_its_untaken_patches():
    feed = PatchFeed(8)
    a, b, c = _FakeJob(5), _FakeJob(6), _FakeJob(4)
    for j in (a, b, c):
        feed.add(j)
    feed.take()  # a whole, b's first 3
    assert feed.queued == 7
    assert feed.discard([b]) == 3  # b's last 3 patches, not c's 4 nor b's 6
    assert feed.queued == 4
    batch = feed.take()
    assert [(j, s, e) for j, s, e in batch.parts] == [(c, 0, 4)] and batch.completed() == [c]
    assert feed.queued == 0 and feed.discard([a, b, c]) == 0


def test_the_refiner_loads_the_bundled_model_or_a_path_with_or_without_from_checkpoint(random_checkpoint):
    assert Refiner().checkpoint == Refiner.from_checkpoint().checkpoint  # the bundled default model
    by_path = Refiner(random_checkpoint, batch_size=7)
    assert by_path.checkpoint == str(random_checkpoint) and by_path.batch_size == 7
    assert Refiner(checkpoint=random_checkpoint, input_size=32).input_size == 32
    with pytest.raises(BprInputError, match="input_size"):
        Refiner(IdentityNet(RefinerConfig(input_size=64)), input_size=32)


def test_mixed_tta_requests_in_one_batch_each_get_their_own_answer(data_dir, random_checkpoint):
    refiner = Refiner.from_checkpoint(random_checkpoint, batch_size=512)
    items = [_davis(data_dir, k) for k in (0, 6)]
    alone = [refiner.refine(img, m[None], flip_tta=t) for (img, m), t in zip(items, (True, False))]
    flights = [
        refiner.start_numpy(img, m[None], refiner.resolve(flip_tta=t, iterations=1))
        for (img, m), t in zip(items, (True, False))
    ]
    feed = PatchFeed(512)
    jobs = [f.advance() for f in flights]
    for job in jobs:
        feed.add(job)
    batch = feed.take()
    assert batch.num_jobs == 2  # both requests in one forward pass
    refiner.run_batch(batch)
    for f, expected in zip(flights, alone):
        assert f.advance() is None
        assert (f.output().numpy() != expected).mean() < 1e-5  # up to float summation order

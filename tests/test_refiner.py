"""The Refiner: exactness of reassembly, order, edges, small images, batching across images."""

import numpy as np
import pytest
import torch
from conftest import IdentityNet, InvertNet, disk, street_masks_and_an_empty_one

from bpr import BprInputError, ModelNotAvailableError, Refiner
from bpr.io.coco import decode_segmentation, load_json
from bpr.io.images import read_image
from bpr.modeling import RefinerConfig
from bpr.patches import boundary_candidates
from bpr.reassemble import reassemble


def _davis(data_dir, k=0):
    gt = load_json(data_dir / "davis-dev-real" / "gt.json")
    res = load_json(data_dir / "davis-dev-real" / "osvos.json")
    info = {i["id"]: i for i in gt["images"]}[res[k]["image_id"]]
    image = read_image(data_dir / "davis-dev-real" / "images" / info["file_name"])
    return image, decode_segmentation(res[k]["segmentation"], info["height"], info["width"])


def test_identity_refiner_returns_the_input_exactly(data_dir, identity_net):
    image, m = _davis(data_dir)
    masks = np.stack([m, np.roll(m, 40, axis=1), np.zeros_like(m)])
    out = Refiner(identity_net).refine(image, masks)
    assert out.dtype == bool and out.shape == masks.shape
    assert np.array_equal(out, masks)


def test_only_patch_covered_pixels_change_and_the_whole_boundary_is_covered(data_dir):
    image, m = _davis(data_dir, 3)
    out = Refiner(InvertNet(RefinerConfig(input_size=64)), resolve_overlaps=False).refine(image, m[None])[0]
    ys, xs, _ = boundary_candidates(m)
    assert (out[ys, xs] != m[ys, xs]).all()  # every boundary pixel was inside some patch
    far = np.ones_like(m)
    far[max(ys.min() - 64, 0) : ys.max() + 64, max(xs.min() - 64, 0) : xs.max() + 64] = False
    assert np.array_equal(out[far], m[far])  # nothing far from the boundary moves


def test_instances_keep_their_order_and_empty_masks_pass_through(identity_net):
    image = np.random.default_rng(0).integers(0, 255, (120, 160, 3), dtype=np.uint8)
    masks = np.stack([disk(120, 160, 60, 40, 20), np.zeros((120, 160), bool), disk(120, 160, 60, 120, 30)])
    out = Refiner(identity_net).refine(image, masks)
    assert np.array_equal(out, masks)


@pytest.mark.parametrize("shape", [(40, 30), (50, 200), (200, 20), (64, 64)])
def test_images_smaller_than_a_patch_are_padded_and_cropped_back(shape, random_checkpoint):
    h, w = shape
    image = np.full((h, w, 3), 128, np.uint8)
    m = disk(h, w, h / 2, w / 2, min(h, w) / 3)
    r = Refiner.from_checkpoint(random_checkpoint)
    out = r.refine(image, m[None])
    assert out.shape == (1, h, w)
    assert r.stats.patches > 0
    assert np.array_equal(Refiner(IdentityNet(RefinerConfig(input_size=64))).refine(image, m[None])[0], m)


def test_mask_touching_right_and_bottom_edges_is_refined_there():
    h, w = 100, 130
    m = np.zeros((h, w), bool)
    m[50:, 70:] = True
    m[50:, 99] = False  # a notch ending on the last row
    out = Refiner(InvertNet(RefinerConfig(input_size=64)), resolve_overlaps=False).refine(
        np.zeros((h, w, 3), np.uint8), m[None]
    )[0]
    assert out[h - 1, 99] != m[h - 1, 99]  # the last row is inside a patch


def test_batching_across_images_gives_the_same_masks_as_one_by_one(data_dir, random_checkpoint):
    items = [_davis(data_dir, k) for k in (0, 10, 20)]
    one_by_one = [Refiner.from_checkpoint(random_checkpoint, batch_size=7).refine(img, m[None]) for img, m in items]
    r = Refiner.from_checkpoint(random_checkpoint, batch_size=16)
    pooled = list(r.refine_many((img, m[None]) for img, m in items))
    for a, b in zip(one_by_one, pooled):
        assert (a != b).mean() < 1e-5  # identical up to float summation order
    assert r.stats.batches == -(-r.stats.patches // 16)  # all batches full but the last


def test_torch_door_equals_numpy_door(data_dir, random_checkpoint):
    image, m = _davis(data_dir, 5)
    r = Refiner.from_checkpoint(random_checkpoint)
    a = r.refine(image, m[None])
    b = r.refine_torch(torch.from_numpy(image).permute(2, 0, 1), torch.from_numpy(m[None]))
    assert np.array_equal(a, b.numpy())


def test_gained_pixels_claimed_twice_go_to_the_more_confident_instance():
    coarse = torch.zeros(2, 10, 10, dtype=torch.bool)
    coarse[0, :, :4] = True
    coarse[1, :, 6:] = True
    corners = np.array([[0, 0], [0, 0]])
    ids = np.array([0, 1])
    probs = torch.zeros(2, 10, 10)
    probs[0, :, :6] = 0.9  # instance 0 grows to column 5, confidently
    probs[1, :, 4:] = 0.7  # instance 1 grows to column 4, less sure
    out = reassemble(coarse, corners, ids, probs, resolve_overlaps=True)
    assert out[0, :, :6].all() and not out[1, :, 4:6].any() and out[1, :, 6:].all()
    kept = reassemble(coarse, corners, ids, probs, resolve_overlaps=False)
    assert kept[1, :, 4:6].all()  # without resolution both keep the contested pixels


def test_a_confident_gain_takes_the_pixel_from_the_other_instance():
    coarse = torch.zeros(2, 10, 10, dtype=torch.bool)
    coarse[0, :, :5] = True
    coarse[1, :, 5:] = True  # disjoint input, as from an instance-id PNG
    probs = torch.zeros(2, 10, 10)
    probs[0, :, :7] = 0.95  # instance 0 confidently grows into columns 5-6
    probs[1, :, 5:] = 0.6  # instance 1 keeps them, unsure
    out = reassemble(coarse, np.array([[0, 0], [0, 0]]), np.array([0, 1]), probs)
    assert out[0, :, :7].all() and not out[1, :, 5:7].any() and out[1, :, 7:].all()
    assert not (out[0] & out[1]).any()  # disjoint in, disjoint out


def test_coarse_overlaps_are_left_alone():
    coarse = torch.zeros(2, 10, 10, dtype=torch.bool)
    coarse[:, 2:8, 2:8] = True
    probs = coarse.float()
    out = reassemble(coarse, np.array([[0, 0], [0, 0]]), np.array([0, 1]), probs)
    assert torch.equal(out, coarse)


def test_bad_inputs(random_checkpoint, tmp_path, monkeypatch):
    r = Refiner.from_checkpoint(random_checkpoint)
    with pytest.raises(BprInputError, match="does not match"):
        r.refine(np.zeros((50, 60, 3), np.uint8), np.zeros((1, 50, 61), bool))
    with pytest.raises(BprInputError, match="uint8"):
        r.refine(np.zeros((50, 60, 3), np.float32), np.zeros((1, 50, 60), bool))
    with pytest.raises(BprInputError):
        Refiner.from_checkpoint(random_checkpoint, batch_size=0)
    monkeypatch.setenv("BPR_DEFAULT_CHECKPOINT", str(tmp_path / "none.pt"))
    with pytest.raises(ModelNotAvailableError, match="no trained model is bundled"):
        Refiner.from_checkpoint()


def test_bf16_refines_like_fp32_and_fp16_needs_cuda(data_dir):
    """The bundled network in bf16 gives nearly the fp32 masks on a real frame (and both move it;
    the safety rules are off so that what the network does shows)."""
    image, m = _davis(data_dir, 3)
    options = dict(
        iterations=1, flip_tta=False, quality_gate=False, change_margin=0.0, min_area=0, fallback_iou=0.0, keep_thin=0
    )
    fp32 = Refiner.from_checkpoint(precision="fp32", **options).refine(image, m[None])[0]
    bf16 = Refiner.from_checkpoint(precision="bf16", **options).refine(image, m[None])[0]
    assert (fp32 != m).sum() > 500  # refinement did change the mask
    assert (bf16 != fp32).sum() < 0.05 * (fp32 != m).sum()  # ...and bf16 changed it the same way
    with pytest.raises(BprInputError, match="CUDA"):
        Refiner.from_checkpoint(precision="fp16")
    with pytest.raises(BprInputError, match="precision must be auto, fp32, bf16, fp16 or int8"):
        Refiner.from_checkpoint(precision="int4")
    with pytest.raises(BprInputError, match="int8 runs with the openvino or onnxruntime backend"):
        Refiner.from_checkpoint(precision="int8", backend="torch")


def test_each_iteration_refines_the_previous_pass_output(data_dir, random_checkpoint):
    items = [_davis(data_dir, k) for k in (0, 10)]
    once = Refiner.from_checkpoint(random_checkpoint, iterations=1)
    twice = Refiner.from_checkpoint(random_checkpoint, iterations=2, batch_size=16, confine_passes=False)
    chained = list(twice.refine_many((img, m[None]) for img, m in items))
    for (img, m), got in zip(items, chained):
        by_hand = once.refine(img, once.refine(img, m[None]))
        assert (got != by_hand).mean() < 1e-5  # identical up to float summation order (pooled batches)
        torch_door = twice.refine_torch(torch.from_numpy(img).permute(2, 0, 1), torch.from_numpy(m[None])).numpy()
        assert (torch_door != by_hand).mean() < 1e-5
    image, m = items[0]
    assert (chained[0] != once.refine(image, m[None])).sum() > 100  # the second pass did something


def test_iterations_default_to_the_checkpoint_recommendation_and_must_be_positive():
    assert Refiner(IdentityNet(RefinerConfig(input_size=64), recommended={"iterations": 2})).options.iterations == 2
    assert (
        Refiner(
            IdentityNet(RefinerConfig(input_size=64), recommended={"iterations": 2}), iterations=1
        ).options.iterations
        == 1
    )
    with pytest.raises(BprInputError):
        Refiner(IdentityNet(RefinerConfig(input_size=64)), iterations=0)


def test_pixel_counts_count_each_mask_and_leave_it_as_it_is(data_dir):
    from bpr.refinement import pixel_counts

    masks = street_masks_and_an_empty_one(data_dir, 8)
    h, w = masks.shape[1:]
    counts = pixel_counts(torch.from_numpy(masks))
    assert counts.dtype == torch.int64
    assert counts.tolist() == [int(m.sum()) for m in masks] and counts[-1] == 0
    assert pixel_counts(torch.zeros((0, h, w), dtype=torch.bool)).shape == (0,)


def _spy_batches(refiner: Refiner) -> list[tuple[tuple[int, int, int], ...]]:
    """Record every batch the refiner runs as ((start, end, job size) per part)."""
    seen: list[tuple[tuple[int, int, int], ...]] = []
    run = refiner.run_batch

    def recording(batch):
        seen.append(tuple((a, b, job.num_patches) for job, a, b in batch.parts))
        run(batch)

    refiner.run_batch = recording
    return seen


def _stream_items(data_dir, frames=(0, 7, 14, 21, 28)):
    """Real DAVIS frames, two instances each, and one image with nothing to patch."""
    items = []
    for k in frames:
        image, m = _davis(data_dir, k)
        items.append((image, np.stack([m, np.roll(m, 25, axis=0)])))
    items.insert(2, (items[0][0], np.zeros((1, *items[0][1].shape[1:]), bool)))  # done at once
    return items


@pytest.mark.parametrize(
    "rules",
    [{"iterations": 1}, {"iterations": 2}, {"iterations": 1, "fallback_iou": 0.2, "min_area": 5000}],
    ids=["one-pass", "two-passes", "fallback-and-min-area"],
)
def test_overlapped_stages_run_the_same_batches_and_give_the_same_bytes(data_dir, random_checkpoint, rules):
    """refine_many extracts ahead of the network and reassembles behind it on worker threads;
    every batch holds the same patches and every mask comes out the same as on one thread."""
    items = _stream_items(data_dir)
    runs = {}
    for overlap in (False, True):
        r = Refiner.from_checkpoint(random_checkpoint, batch_size=24, backend="torch", **rules)
        batches = _spy_batches(r)
        runs[overlap] = (list(r.refine_many(items, overlap=overlap)), batches, r.stats)
    (serial, serial_batches, serial_stats), (overlapped, overlapped_batches, overlapped_stats) = runs[False], runs[True]
    assert len(overlapped) == len(items) and len(serial_batches) > 4
    assert overlapped_batches == serial_batches
    for a, b in zip(serial, overlapped):
        assert np.array_equal(a, b)
    assert any(not np.array_equal(out, masks) for out, (_, masks) in zip(serial, items))  # the network acted
    counted = ("images", "patches", "fallbacks", "small")
    assert [getattr(overlapped_stats, k) for k in counted] == [getattr(serial_stats, k) for k in counted]
    if "fallback_iou" in rules:
        assert serial_stats.fallbacks > 0 and serial_stats.small > 0  # the rules the worker runs did act


def test_a_bad_image_raises_where_the_stream_reaches_it_with_or_without_overlap(data_dir, random_checkpoint):
    """The worker thread checks images ahead, but its error surfaces at the same place in the
    stream: with two passes (no reassembly thread) after exactly the same images; with one,
    images reassembled behind the network may still be on their way."""
    image, m = _davis(data_dir, 0)
    items = [(image, m[None])] * 3 + [(image, m[None, :-1])] + [(image, m[None])]
    for iterations in (1, 2):
        yielded = {}
        for overlap in (False, True):
            r = Refiner.from_checkpoint(random_checkpoint, backend="torch", batch_size=8, iterations=iterations)
            got = []
            with pytest.raises(BprInputError, match="does not match the image size"):
                for masks in r.refine_many(items, overlap=overlap):
                    got.append(masks)
            yielded[overlap] = len(got)
        assert yielded[False] >= 2
        assert yielded[True] == yielded[False] if iterations == 2 else yielded[True] <= yielded[False]


def test_a_failing_reassembly_raises_and_an_abandoned_stream_leaves_no_threads(data_dir, random_checkpoint):
    import threading

    items = _stream_items(data_dir)
    r = Refiner.from_checkpoint(random_checkpoint, backend="torch", batch_size=8)
    finish, calls = r.finish, []

    def failing(job):
        calls.append(job)
        if len(calls) == 3:
            raise RuntimeError("reassembly broke")
        return finish(job)

    r.finish = failing
    with pytest.raises(RuntimeError, match="reassembly broke"):
        list(r.refine_many(items))
    r.finish = finish
    stream = r.refine_many(items * 3)
    next(stream)
    stream.close()
    assert not [t for t in threading.enumerate() if t.name.startswith(("bpr-prefetch", "bpr-reassemble"))]

"""A refiner that sees beyond its patch (``RefinerConfig.context``): the network is fed each
patch's view, ``context`` more image pixels on every side, and only the patch's own pixels
of its prediction are judged by the gate and pasted back. Training sets store the views
(``bpr-build-patches --context``), so training and inference cut the same squares."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import davis_frame

from bpr.cli.build_patches import main as build_main
from bpr.cli.train_gate import main as train_gate_main
from bpr.modeling import RefinerConfig, RefinerNet, load_refiner, save_refiner
from bpr.patches import crop_rows, extract_patch_corners, view_corners
from bpr.refiner import Refiner
from bpr.train.loop import TrainConfig, Trainer
from bpr.train.patch_store import PatchSet

CONTEXT = 16


class RedEchoNet(RefinerNet):
    """Foreground probability = the view's red channel / 255: where each probability comes
    from in the view is then visible in what reassembly pastes back."""

    def foreground_probability(self, image_patches: torch.Tensor, mask_patches: torch.Tensor) -> torch.Tensor:
        return image_patches[:, 0] / 255.0


def test_views_hold_their_patch_centred_and_shift_inside_the_image_at_its_edges():
    corners = np.array([[0, 0], [40, 100], [200, 300], [416, 790], [10, 500]])  # in a 480 x 854 frame
    views = view_corners(corners, 64, CONTEXT, 480, 854)
    offsets = corners - views
    assert (views >= 0).all() and (views + 96 <= [480, 854]).all()  # every view lies in the image
    assert ((offsets >= 0) & (offsets <= 2 * CONTEXT)).all()  # and holds its whole patch
    assert offsets.tolist() == [[0, 0], [16, 16], [16, 16], [32, 32], [10, 16]]
    # a source smaller than the view: the view starts at 0 (the crop repeats the edge)
    assert view_corners(np.array([[0, 0], [10, 20]]), 64, CONTEXT, 80, 90).tolist() == [[0, 0], [0, 0]]


def test_crop_rows_cuts_each_row_its_own_square():
    views = torch.arange(3 * 2 * 10 * 10, dtype=torch.float32).reshape(3, 2, 10, 10)
    offsets = np.array([[0, 0], [3, 1], [4, 4]])
    cut = crop_rows(views, offsets, 6)
    assert cut.shape == (3, 2, 6, 6)
    for k, (dy, dx) in enumerate(offsets):
        assert torch.equal(cut[k], views[k, :, dy : dy + 6, dx : dx + 6])
        assert torch.equal(crop_rows(views[:, 1], offsets, 6)[k], views[k, 1, dy : dy + 6, dx : dx + 6])


@pytest.mark.parametrize("flip_tta", [False, True])
def test_the_network_sees_the_view_and_the_patch_part_of_its_answer_is_pasted(data_dir, flip_tta):
    image, masks = davis_frame(data_dir)
    net = RedEchoNet(RefinerConfig(input_size=64, context=CONTEXT))
    refiner = Refiner(net, backend="torch", flip_tta=flip_tta, min_area=0)
    image_t, masks_t = torch.from_numpy(image).permute(2, 0, 1), torch.from_numpy(masks)
    job = refiner.prepare(image_t, masks_t, refiner.options)
    assert job.num_patches > 5 and job.image_patches.shape[1:] == (3, 96, 96)
    # waiting patches stay compact (a request's memory is mostly them): uint8 and bool crops
    assert job.image_patches.dtype == torch.uint8 and job.mask_patches.dtype == torch.bool
    assert job.view_offsets is not None and (job.view_offsets == CONTEXT).all(axis=1).any()
    views = view_corners(job.corners, 64, CONTEXT, *image.shape[:2])
    for k in (0, job.num_patches - 1):  # each view is the image around its patch
        vy, vx = views[k]
        assert np.array_equal(job.image_patches[k].permute(1, 2, 0).numpy(), image[vy : vy + 96, vx : vx + 96])
    refined = refiner.refine(image, masks)
    red = image[..., 0] / 255.0
    covered = np.zeros_like(masks)
    for (y, x), i in zip(job.corners, job.instance_ids):
        covered[i, y : y + 64, x : x + 64] = True
    # every patched pixel follows the red channel AT THAT PIXEL (not at an offset in the view);
    # pixels no patch covers keep their input
    assert np.array_equal(refined[covered], np.broadcast_to(red > 0.5, masks.shape)[covered])
    assert np.array_equal(refined[~covered], masks[~covered])


def test_an_effl0_view_must_be_fed_at_a_multiple_of_its_stride():
    RefinerNet(RefinerConfig(arch="effl0", input_size=64, context=16))  # a 96 px view fed at 96
    with pytest.raises(ValueError, match="multiple of 32"):
        RefinerNet(RefinerConfig(arch="effl0", input_size=64, context=8))
    with pytest.raises(ValueError, match="at least 0"):
        RefinerNet(RefinerConfig(input_size=64, context=-1))


def test_a_view_is_fed_at_the_patch_scale():
    net = RefinerNet(RefinerConfig(input_size=128, patch_size=64, context=CONTEXT))
    assert net.feed_size(96) == 192  # the 64 px patch inside is fed at 128, as without context
    assert net.feed_size(64, context=0) == 128  # what the gate sees: the patch alone


def test_the_exported_graph_of_a_context_refiner_gives_the_torch_probabilities(data_dir, tmp_path, monkeypatch):
    pytest.importorskip("openvino", reason="the openvino backend is not installed")
    monkeypatch.setenv("BPR_CACHE_DIR", str(tmp_path / "cache"))
    torch.manual_seed(0)
    save_refiner(RefinerNet(RefinerConfig(arch="effl0", input_size=64, context=CONTEXT)), tmp_path / "c.pt")
    image, masks = davis_frame(data_dir, 3)
    exported = Refiner(tmp_path / "c.pt", backend="openvino", precision="fp32", min_area=0)
    plain = Refiner(tmp_path / "c.pt", backend="torch", precision="fp32", fuse=False, min_area=0)
    assert exported.view_size == 96
    job = plain.start_numpy(image, masks).advance()
    with torch.inference_mode():
        expected = plain.net.foreground_probability(job.image_patches, job.mask_patches)
        got = exported.infer_net.foreground_probability(job.image_patches, job.mask_patches)
    assert got.shape == expected.shape == (job.num_patches, 96, 96)
    assert (got - expected).abs().max() < 1e-4
    assert (exported.refine(image, masks) != plain.refine(image, masks)).mean() < 1e-5


@pytest.fixture(scope="module")
def patch_sets(tmp_path_factory, data_dir):
    """The same draws of 4 DAVIS images built without and with 16 px of context."""
    root = tmp_path_factory.mktemp("context-sets")
    common = ["--gt", str(data_dir / "davis-train" / "gt.json"), "--images", str(data_dir / "davis-train" / "images")]
    common += ["--max-images", "4", "--draws", "2", "--workers", "1", "--quiet", "--val-fraction", "0.5", "--seed", "3"]
    assert build_main([*common, "--out", str(root / "plain")]) == 0
    assert build_main([*common, "--out", str(root / "c16"), "--context", str(CONTEXT)]) == 0
    return root / "plain", root / "c16"


def test_a_context_set_stores_views_whose_patch_is_the_plain_sets_patch(patch_sets):
    plain_dir, views_dir = patch_sets
    manifest = json.loads((views_dir / "manifest.json").read_text())
    assert manifest["patch_size"] == 64 and manifest["context"] == CONTEXT
    plain, views = PatchSet.open([plain_dir]), PatchSet.open([views_dir])
    assert views.context == CONTEXT and views.view_size == 96 and views.images[0].shape[1:] == (96, 96, 3)
    assert np.array_equal(plain.meta[0], views.meta[0])  # the same draws, placed at the same corners
    idx = plain.indices("train")
    p_img, p_coarse, p_target = plain.gather(idx)
    v_img, v_coarse, v_target = views.gather(idx)
    meta = plain.meta[0][idx[:, 1]]
    inner = (meta["y0"] >= CONTEXT) & (meta["x0"] >= CONTEXT) & (meta["y0"] + 64 + CONTEXT <= 480)
    inner &= meta["x0"] + 64 + CONTEXT <= 854  # patches whose view is centred on them (davis-train: 854x480)
    assert inner.sum() > 20
    centre = slice(CONTEXT, CONTEXT + 64)
    assert np.array_equal(v_img[inner][:, centre, centre], p_img[inner])
    assert np.array_equal(v_coarse[inner][:, centre, centre], p_coarse[inner])
    assert np.array_equal(v_target[inner][:, centre, centre], p_target[inner])


def test_the_centres_of_a_context_set_are_its_patches_for_a_refiner_without_context(patch_sets, tmp_path):
    plain_dir, views_dir = patch_sets
    plain, views = PatchSet.open([plain_dir]), PatchSet.open([views_dir])
    centres = views.patch_centres()
    assert centres.context == 0 and centres.view_size == 64 and views.context == CONTEXT  # the set itself is kept
    idx = plain.indices("train")
    v = views.gather(idx)
    c = centres.gather(idx)
    centre = slice(CONTEXT, CONTEXT + 64)
    for whole, cut in zip(v, c):
        assert cut.shape[1:3] == (64, 64) and np.array_equal(cut, whole[:, centre, centre])
    meta = plain.meta[0][idx[:, 1]]
    inner = (meta["y0"] >= CONTEXT) & (meta["x0"] >= CONTEXT) & (meta["y0"] + 64 + CONTEXT <= 480)
    inner &= meta["x0"] + 64 + CONTEXT <= 854
    for stored, cut in zip(plain.gather(idx), c):
        assert np.array_equal(cut[inner], stored[inner])  # away from the image's edge: the very patch
    cfg = TrainConfig(
        patches=[str(views_dir)], patch_centres=True, iters=2, batch_size=4, eval_every=2, eval_patches=16
    )
    Trainer(cfg, tmp_path / "run").run(progress=False)
    assert load_refiner(tmp_path / "run" / "model.pt").config.context == 0


def test_sets_of_different_context_do_not_mix(patch_sets):
    from bpr.errors import BprInputError

    with pytest.raises(BprInputError, match="same context"):
        PatchSet.open(list(patch_sets))


def test_training_on_views_makes_a_context_refiner_that_refines_and_takes_a_gate(patch_sets, tmp_path, data_dir):
    _, views_dir = patch_sets
    cfg = TrainConfig(patches=[str(views_dir)], iters=3, batch_size=4, eval_every=3, eval_patches=16, threads=1)
    trainer = Trainer(cfg, tmp_path / "run")
    trainer.run()
    net = load_refiner(tmp_path / "run" / "model.pt")
    assert net.config.context == CONTEXT and net.config.patch_size == 64
    image, masks = davis_frame(data_dir)
    refined = Refiner(tmp_path / "run" / "model.pt", backend="torch", min_area=0).refine(image, masks)
    assert refined.shape == masks.shape
    gated = tmp_path / "gated.pt"
    flags = ["--steps", "2", "--batch-size", "4", "--eval-patches", "16", "--eval-every", "2"]
    assert (
        train_gate_main([str(tmp_path / "run" / "model.pt"), "--patches", str(views_dir), "--out", str(gated), *flags])
        == 0
    )
    with_gate = Refiner(gated, backend="torch", min_area=0)
    assert with_gate.net.gate is not None and with_gate.net.config.context == CONTEXT
    assert with_gate.refine(image, masks).shape == masks.shape


def test_a_gate_for_a_refiner_of_another_context_is_a_one_line_error(patch_sets, random_checkpoint, tmp_path, capsys):
    _, views_dir = patch_sets
    out = tmp_path / "gated.pt"
    code = train_gate_main([str(random_checkpoint), "--patches", str(views_dir), "--out", str(out), "--steps", "2"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "--context 0" in err and "hold 16" in err
    assert not out.exists()


def test_corners_of_a_real_mask_give_views_inside_the_frame(data_dir):
    image, masks = davis_frame(data_dir, 5)
    corners = extract_patch_corners(masks[0], 64)
    views = view_corners(corners, 64, CONTEXT, *image.shape[:2])
    offsets = corners - views
    assert ((offsets >= 0) & (offsets <= 2 * CONTEXT)).all() and (views + 96 <= image.shape[:2]).all()

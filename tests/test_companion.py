"""A refiner with a companion (``RefinerConfig.companion``): a second network, which may see
context, whose probability on every patch is averaged in with ``companion_weight`` before the
first network's gate judges the average. ``bpr-package --companion`` ships the pair as one
checkpoint, and every door refines with both."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import davis_frame

from bpr.cli.package import main as package_main
from bpr.cli.train_gate import main as train_gate_main
from bpr.feed import PatchBatch
from bpr.modeling import RefinerConfig, RefinerNet, load_refiner, save_refiner
from bpr.modeling.checkpoint import read_checkpoint
from bpr.passes import predict_batch
from bpr.patches import crop_rows
from bpr.refiner import Refiner

CONTEXT = 16


class RedEchoNet(RefinerNet):
    """Foreground probability = the red channel / 255 of what it is fed."""

    def foreground_probability(self, image_patches: torch.Tensor, mask_patches: torch.Tensor) -> torch.Tensor:
        return image_patches[:, 0] / 255.0


class GreenEchoNet(RefinerNet):
    """Foreground probability = the green channel / 255 of what it is fed."""

    def foreground_probability(self, image_patches: torch.Tensor, mask_patches: torch.Tensor) -> torch.Tensor:
        return image_patches[:, 1] / 255.0


def _echo_pair(weight: float) -> RefinerNet:
    companion = RefinerConfig(input_size=64, context=CONTEXT)
    net = RedEchoNet(RefinerConfig(input_size=64, companion=companion.to_dict(), companion_weight=weight))
    net.companion = GreenEchoNet(companion)
    return net


@pytest.mark.parametrize("flip_tta", [False, True])
def test_the_companion_sees_the_view_the_refiner_its_patch_and_their_weighted_average_is_pasted(data_dir, flip_tta):
    image, masks = davis_frame(data_dir, 39)  # 82 patches, 11 of them at the frame's edge
    refiner = Refiner(_echo_pair(0.25), backend="torch", flip_tta=flip_tta, min_area=0, change_margin=0)
    assert refiner.view_size == 64 + 2 * CONTEXT  # views are cut for the companion's context
    job = refiner.prepare(torch.from_numpy(image).permute(2, 0, 1), torch.from_numpy(masks), refiner.options)
    assert job.image_patches.shape[1:] == (3, 96, 96) and (job.view_offsets != CONTEXT).any()  # some at the edge
    refined = refiner.refine(image, masks)
    covered = np.zeros_like(masks)
    for (y, x), i in zip(job.corners, job.instance_ids):
        covered[i, y : y + 64, x : x + 64] = True
    # every patched pixel is decided by 0.75 red + 0.25 green AT THAT PIXEL: the refiner got
    # its patch, the companion its view, and the patch's part of the view's answer was taken
    mix = 0.75 * image[..., 0] / 255.0 + 0.25 * image[..., 1] / 255.0
    clear = covered & (np.abs(mix - 0.5) > 1e-6)  # not a tie that float rounding decides
    assert clear.sum() > 0.99 * covered.sum()
    assert np.array_equal(refined[clear], np.broadcast_to(mix > 0.5, masks.shape)[clear])
    assert np.array_equal(refined[~covered], masks[~covered])
    red_alone = np.broadcast_to(image[..., 0] > 127.5, masks.shape)
    assert (refined[covered] != red_alone[covered]).sum() > 100  # the companion's share changed pixels


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """A random hr18s refiner with a gate, a random effl0 context refiner with a gate of its
    own, and the two packaged as one checkpoint (weight 0.4)."""
    root = tmp_path_factory.mktemp("companion")
    torch.manual_seed(0)
    first = RefinerNet(RefinerConfig(input_size=64, gate=True))
    second = RefinerNet(RefinerConfig(arch="effl0", input_size=64, context=CONTEXT, gate=True, gate_width=32))
    save_refiner(first, root / "first.pt", half=False)
    save_refiner(second, root / "second.pt", half=False)
    flags = ["--companion", str(root / "second.pt"), "--companion-weight", "0.4", "--no-flip-tta"]
    assert package_main([str(root / "first.pt"), str(root / "pair.pt"), *flags]) == 0
    return root


def test_a_packaged_pair_is_one_checkpoint_that_loads_strictly_without_the_companions_gate(pair):
    net = load_refiner(pair / "pair.pt")
    assert net.companion is not None and net.gate is not None and net.companion.gate is None
    assert net.config.companion_weight == 0.4 and net.config.companion["context"] == CONTEXT
    assert net.view_context == CONTEXT and net.config.context == 0
    keys = read_checkpoint(pair / "pair.pt")["state_dict"].keys()
    assert any(k.startswith("companion.backbone.") for k in keys)
    assert not any(k.startswith("companion.gate.") for k in keys)
    meta = read_checkpoint(pair / "pair.pt")["meta"]["companion"]
    assert meta["weight"] == 0.4 and meta["from"].endswith("second.pt")
    second = load_refiner(pair / "second.pt")
    for name, tensor in second.state_dict().items():
        if not name.startswith("gate."):  # fp16 as every shipped checkpoint
            assert torch.allclose(net.companion.state_dict()[name], tensor, atol=2e-3, rtol=2e-3), name


def test_a_pair_missing_a_companion_weight_is_a_one_line_load_error(pair, tmp_path):
    from bpr.errors import ModelNotAvailableError

    ckpt = read_checkpoint(pair / "pair.pt")
    dropped = next(k for k in ckpt["state_dict"] if k.startswith("companion."))
    del ckpt["state_dict"][dropped]
    torch.save(ckpt, tmp_path / "broken.pt")
    with pytest.raises(ModelNotAvailableError, match="1 missing keys") as info:
        load_refiner(tmp_path / "broken.pt")
    assert "\n" not in str(info.value)


def test_the_pass_loop_averages_the_two_networks_and_the_gate_judges_the_average(pair, data_dir):
    image, masks = davis_frame(data_dir, 24)  # 4 of its 22 patches at the frame's edge
    refiner = Refiner(pair / "pair.pt", backend="torch", fuse=False, precision="fp32", min_area=0)
    net = refiner.net
    job = refiner.prepare(torch.from_numpy(image).permute(2, 0, 1), torch.from_numpy(masks), refiner.options)
    n = job.num_patches
    assert (job.view_offsets != CONTEXT).any()
    with torch.inference_mode():
        patches = crop_rows(job.image_patches, job.view_offsets, 64), crop_rows(job.mask_patches, job.view_offsets, 64)
        own = net.foreground_probability(*patches)
        views = net.companion.foreground_probability(job.image_patches, job.mask_patches)
        other = crop_rows(views, job.view_offsets, 64)
        expected = 0.6 * own + 0.4 * other
        accept = net.change_helps(patches[0], patches[1], expected) > 0
    assert 0 < int(accept.sum()) < n  # the random gate accepts some patches and rejects others
    batch = PatchBatch(((job, 0, n),))
    gated, _ = predict_batch(batch, net, refiner.infer_net, refiner.device, "fp32", None, refiner.companion_net)
    assert gated == n - int(accept.sum())
    assert torch.allclose(job.probs[accept], expected[accept], atol=1e-6)
    assert torch.equal(job.probs[~accept], patches[1][~accept, 0])  # rejected: the coarse patch


def test_early_rejected_patches_skip_the_companion_and_keep_their_coarse_patch(pair, data_dir):
    image, masks = davis_frame(data_dir, 24)
    refiner = Refiner(pair / "pair.pt", backend="torch", fuse=False, precision="fp32", min_area=0)
    net = refiner.net
    job = refiner.prepare(torch.from_numpy(image).permute(2, 0, 1), torch.from_numpy(masks), refiner.options)
    calls = []

    class Counting:
        def foreground_probability(self, images, masks_):
            calls.append(len(images))
            return refiner.companion_net.foreground_probability(images, masks_)

    with torch.inference_mode():
        patches = crop_rows(job.image_patches, job.view_offsets, 64), crop_rows(job.mask_patches, job.view_offsets, 64)
        first = net.change_helps(*patches, net.foreground_probability(*patches))
    margin = float(-first.median())  # about half the patches fall below it
    early = first <= -margin
    assert 0 < int(early.sum()) < job.num_patches
    batch = PatchBatch(((job, 0, job.num_patches),))
    _, early_rejected = predict_batch(batch, net, refiner.infer_net, refiner.device, "fp32", margin, Counting())
    assert early_rejected == int(early.sum()) and calls == [job.num_patches - int(early.sum())]
    assert torch.equal(job.probs[early], patches[1][early, 0])


def test_a_refiner_without_a_companion_runs_as_before(random_checkpoint, data_dir):
    image, masks = davis_frame(data_dir, 1)
    refiner = Refiner(random_checkpoint, backend="torch", min_area=0)
    assert refiner.companion_net is None and refiner.view_size == 64
    assert refiner.refine(image, masks).shape == masks.shape


@pytest.mark.parametrize(
    ("first", "second", "flags", "message"),
    [
        (dict(input_size=64), dict(input_size=64, patch_size=96), [], "patch size"),
        (dict(input_size=64, context=CONTEXT), dict(input_size=64), [], "sees no context itself"),
        (dict(input_size=64), dict(input_size=64), ["--companion-weight", "1.5"], "in (0, 1)"),
    ],
)
def test_a_pair_that_cannot_work_is_a_one_line_packaging_error(tmp_path, capsys, first, second, flags, message):
    save_refiner(RefinerNet(RefinerConfig(**first)), tmp_path / "a.pt")
    save_refiner(RefinerNet(RefinerConfig(**second)), tmp_path / "b.pt")
    pair_flags = ["--companion", str(tmp_path / "b.pt"), *flags]
    code = package_main([str(tmp_path / "a.pt"), str(tmp_path / "out.pt"), *pair_flags])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and message in err
    assert not (tmp_path / "out.pt").exists()


def test_a_pair_repackaged_keeps_its_companion_and_may_take_an_early_reject_margin(pair, tmp_path):
    out = tmp_path / "again.pt"
    assert package_main([str(pair / "pair.pt"), str(out), "--gate-early-reject", "0.5", "--no-flip-tta"]) == 0
    again = load_refiner(out)
    assert again.companion is not None and again.recommended["gate_early_reject"] == 0.5


def test_a_pair_is_not_packaged_again_with_a_third(pair, tmp_path, capsys):
    code = package_main([str(pair / "pair.pt"), str(tmp_path / "out.pt"), "--companion", str(pair / "second.pt")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "already has a companion" in err


def test_a_gate_trained_for_a_pair_judges_the_pairs_average(pair, tmp_path, data_dir):
    from bpr.cli.build_patches import main as build_main
    from bpr.train.gate import refined_probability
    from bpr.train.patch_store import PatchSet

    sets = tmp_path / "c16"
    flags = ["--max-images", "2", "--draws", "1", "--workers", "1", "--quiet", "--seed", "5", "--context", "16"]
    davis = data_dir / "davis-train"
    flags += ["--gt", str(davis / "gt.json"), "--images", str(davis / "images"), "--out", str(sets)]
    assert build_main(flags) == 0
    data = PatchSet.open([sets])
    images, coarse, _ = (torch.from_numpy(a) for a in data.gather(data.indices("train")[:8]))
    images, coarse = images.permute(0, 3, 1, 2).float(), coarse[:, None].float()
    refiner = Refiner(pair / "pair.pt", backend="torch", fuse=False, precision="fp32")
    prob = refined_probability(refiner, images, coarse, flip_tta=False)
    net, centre = refiner.net, (..., slice(16, 80), slice(16, 80))
    with torch.inference_mode():
        own = net.foreground_probability(images[centre], coarse[centre])
        other = net.companion.foreground_probability(images, coarse)
    assert torch.allclose(prob[centre], 0.6 * own + 0.4 * other[centre], atol=1e-6)  # what the pass loop pastes
    out = tmp_path / "g.pt"
    short = ["--steps", "2", "--batch-size", "4", "--eval-patches", "16", "--eval-every", "2", "--gate-width", "8"]
    assert train_gate_main([str(pair / "pair.pt"), "--patches", str(sets), "--out", str(out), *short]) == 0
    gated = load_refiner(out)
    assert gated.companion is not None and gated.config.companion_weight == 0.4
    assert gated.gate is not None and gated.config.gate_width == 8  # a new gate, not the pair's own (width 16)
    for name, tensor in net.companion.state_dict().items():
        assert torch.equal(gated.companion.state_dict()[name], tensor), name  # the networks as they were


def test_the_exported_pair_refines_as_the_torch_pair(pair, data_dir, tmp_path, monkeypatch):
    pytest.importorskip("openvino", reason="the openvino backend is not installed")
    monkeypatch.setenv("BPR_CACHE_DIR", str(tmp_path / "cache"))
    image, masks = davis_frame(data_dir, 3)
    exported = Refiner(pair / "pair.pt", backend="openvino", precision="fp32", min_area=0)
    plain = Refiner(pair / "pair.pt", backend="torch", precision="fp32", fuse=False, min_area=0)
    assert exported.companion_net is not None and type(exported.companion_net).__name__ == "OpenVinoNet"
    assert (exported.refine(image, masks) != plain.refine(image, masks)).mean() < 1e-5

"""The patch-quality gate: rejected patches keep the coarse mask, accepted ones the refinement;
off without a gate or when asked; saved and loaded with the checkpoint; mixed requests in one
network batch each get their own rule."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import disk

from bpr.feed import PatchFeed
from bpr.modeling import RefinerConfig
from bpr.modeling.checkpoint import load_refiner, save_refiner
from bpr.modeling.refiner_net import RefinerNet
from bpr.refiner import Refiner


class GrowNet(RefinerNet):
    """Dilates the mask by 6 px in every patch: a change the gate can be made to refuse."""

    def foreground_probability(self, image_patches: torch.Tensor, mask_patches: torch.Tensor) -> torch.Tensor:
        return (F.max_pool2d(mask_patches, 13, stride=1, padding=6) > 0.5).float()[:, 0]


def _gated(bias: float, weight_on_mask: float = 0.0, early_reject: float | None = None) -> GrowNet:
    """A GrowNet whose gate says ``bias + weight * (share of the patch that is coarse foreground)``."""
    net = GrowNet(
        RefinerConfig(input_size=64, gate=True), recommended=dict(flip_tta=True, gate_early_reject=early_reject)
    ).eval()
    with torch.no_grad():
        net.gate.classifier.weight.zero_()
        net.gate.classifier.bias.fill_(bias)
        net.gate.classifier.weight[0, -1] = weight_on_mask  # the gate's "mask share" statistic
    return net


def _scene():
    h, w = 160, 220
    image = np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8)
    return image, np.stack([disk(h, w, 70, 70, 35), disk(h, w, 90, 170, 12)])


def test_a_gate_that_rejects_every_patch_returns_the_input():
    image, masks = _scene()
    refiner = Refiner(_gated(-10.0))
    out = refiner.refine(image, masks, resolve_overlaps=False)
    assert np.array_equal(out, masks)
    assert refiner.stats.gated == refiner.stats.patches > 0
    grown = refiner.refine(image, masks, resolve_overlaps=False, quality_gate=False)
    assert grown.sum() > masks.sum() + 1000  # the option turns it off


def test_a_gate_that_accepts_every_patch_changes_nothing_about_the_refinement():
    image, masks = _scene()
    plain = Refiner(GrowNet(RefinerConfig(input_size=64))).refine(image, masks, resolve_overlaps=False)
    refiner = Refiner(_gated(10.0))
    assert np.array_equal(refiner.refine(image, masks, resolve_overlaps=False), plain)
    assert refiner.stats.gated == 0


def test_the_gate_decides_per_patch():
    """Rejects patches more than a quarter foreground: the large disc's patches (37-40%) keep the
    coarse mask, the small disc's patch (11%) is refined."""
    image, masks = _scene()
    plain = Refiner(GrowNet(RefinerConfig(input_size=64))).refine(image, masks, resolve_overlaps=False)
    refiner = Refiner(_gated(2.0, -8.0))
    out = refiner.refine(image, masks, resolve_overlaps=False)
    assert np.array_equal(out[0], masks[0])
    assert np.array_equal(out[1], plain[1]) and plain[1].sum() > masks[1].sum() + 300
    assert refiner.stats.gated == refiner.stats.patches - 1


def test_the_gate_travels_with_the_checkpoint(tmp_path):
    net = _gated(-3.0, 2.5)
    torch.nn.init.normal_(net.gate.features[0].weight)
    save_refiner(net, tmp_path / "g.pt", half=False)
    loaded = load_refiner(tmp_path / "g.pt")
    assert loaded.config.gate and loaded.gate is not None
    for (name, a), b in zip(net.gate.state_dict().items(), loaded.gate.state_dict().values()):
        assert torch.equal(a, b), name
    images = torch.rand(4, 3, 64, 64) * 255
    masks = (torch.rand(4, 1, 64, 64) > 0.5).float()
    prob = torch.rand(4, 64, 64)
    assert torch.allclose(net.change_helps(images, masks, prob), loaded.change_helps(images, masks, prob))


def test_a_refiner_without_a_gate_refuses_to_score():
    with pytest.raises(RuntimeError, match="no patch-quality gate"):
        RefinerNet(RefinerConfig(input_size=64)).change_helps(
            torch.zeros(1, 3, 64, 64), torch.zeros(1, 1, 64, 64), torch.zeros(1, 64, 64)
        )


def test_jobs_with_and_without_the_gate_share_a_batch_and_each_get_their_own_answer():
    image, masks = _scene()
    refiner = Refiner(_gated(-10.0), batch_size=4096)
    img = torch.from_numpy(image).permute(2, 0, 1)
    m = torch.from_numpy(masks)
    gated_job = refiner.prepare(img, m, refiner.resolve(quality_gate=True))
    free_job = refiner.prepare(img, m, refiner.resolve(quality_gate=False))
    feed = PatchFeed(4096)
    feed.add(gated_job)
    feed.add(free_job)
    batch = feed.take()
    assert batch.num_jobs == 2
    refiner.run_batch(batch)
    assert torch.equal(refiner.finish(gated_job), m)
    assert refiner.finish(free_job).sum() > m.sum() + 1000
    assert refiner.stats.gated == gated_job.num_patches


class CountingGrowNet(GrowNet):
    """A GrowNet that records how many patches each forward gets."""

    calls: list[int]

    def foreground_probability(self, image_patches: torch.Tensor, mask_patches: torch.Tensor) -> torch.Tensor:
        self.calls.append(len(image_patches))
        return super().foreground_probability(image_patches, mask_patches)


def _counting(bias: float, weight_on_mask: float, early_reject: float | None) -> CountingGrowNet:
    net = _gated(bias, weight_on_mask, early_reject)
    net.__class__ = CountingGrowNet
    net.calls = []
    return net


@pytest.mark.parametrize("margin, early", [(0.5, "large disc"), (5.0, "none"), (-5.0, "all")])
def test_patches_rejected_early_skip_only_their_mirrored_forward(margin, early):
    """The gate says 2 - 8 x (mask share): about -1.1 for the large disc's patches, +1.1 for the
    small disc's. Rejected on the plain forward by more than the margin, a patch gets no mirrored
    forward; the rest are mirrored and judged on the average as without the shortcut. (This
    net's change is mirror-symmetric, so TTA cannot overturn a rejection: with any margin above
    the gate's own logits the masks match the full path exactly.)"""
    image, masks = _scene()
    full = Refiner(_gated(2.0, -8.0), early_reject=False)
    want = full.refine(image, masks, resolve_overlaps=False)
    net = _counting(2.0, -8.0, margin)
    refiner = Refiner(net)
    assert refiner.early_reject == margin
    out = refiner.refine(image, masks, resolve_overlaps=False)
    assert np.array_equal(out, masks if early == "all" else want)  # all rejected: the input comes back
    patches = refiner.stats.patches
    skipped = {"large disc": patches - 1, "none": 0, "all": patches}[early]
    assert net.calls == [patches, patches - skipped] if skipped < patches else net.calls == [patches]
    assert refiner.stats.early_gated == skipped
    assert refiner.stats.gated == full.stats.gated + (1 if early == "all" else 0)


def test_early_rejection_is_off_without_tta_or_when_asked():
    image, masks = _scene()
    net = _counting(2.0, -8.0, 0.5)
    Refiner(net, early_reject=False).refine(image, masks)
    Refiner(net).refine(image, masks, flip_tta=False)
    Refiner(net).refine(image, masks, quality_gate=False)
    p = len(net.calls) and net.calls[0]
    assert net.calls == [p] * 5  # asked off: plain + full mirror; no TTA: plain only; no gate: plain + full mirror

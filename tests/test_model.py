"""The refiner network: mmsegmentation-compatible names, shapes, checkpoint loading, and
packaging a checkpoint to ship (bpr-package)."""

from collections import OrderedDict

import pytest
import torch
from conftest import REPO

from bpr.cli.package import main as package_main
from bpr.errors import ModelNotAvailableError
from bpr.modeling import RefinerConfig, RefinerNet, load_refiner, save_refiner
from bpr.refiner import DEFAULT_CHECKPOINT

COMPAT_KEYS = REPO.parent / "shared" / "compat" / "hrnet18s_bpr_mmseg_keys.txt"


def _shape(t: torch.Tensor) -> str:
    return "scalar" if t.dim() == 0 else "x".join(map(str, t.shape))


def test_state_dict_matches_the_original_bpr_checkpoint_key_for_key():
    expected = dict(line.split() for line in COMPAT_KEYS.read_text().splitlines())
    got = {k: _shape(v) for k, v in RefinerNet(RefinerConfig()).state_dict().items()}
    assert got == expected
    n_float = sum(v.numel() for v in RefinerNet().state_dict().values() if v.is_floating_point())
    assert n_float == 3_951_766


@pytest.mark.parametrize("size", [64, 128])
def test_output_is_two_class_logits_at_input_size(size):
    net = RefinerNet(RefinerConfig(input_size=size)).eval()
    with torch.inference_mode():
        out = net(torch.randn(2, 3, size, size), torch.randn(2, 1, size, size))
    assert out.shape == (2, 2, size, size)


def test_mask_branch_changes_the_output():
    torch.manual_seed(0)
    net = RefinerNet(RefinerConfig(input_size=64)).eval()
    img = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        a = net(img, torch.ones(1, 1, 64, 64))
        b = net(img, -torch.ones(1, 1, 64, 64))
    assert not torch.allclose(a, b)


def test_w48_variant_builds():
    net = RefinerNet(RefinerConfig(arch="hr48", input_size=64))
    assert net.state_dict()["backbone.transition1.0.0.weight"].shape[0] == 48


def _mmseg_style_state(net: RefinerNet) -> "OrderedDict[str, torch.Tensor]":
    return OrderedDict((k, v.clone()) for k, v in net.state_dict().items())


@pytest.mark.parametrize("wrap", ["bare", "state_dict", "meta+state_dict", "module-prefix"])
def test_original_bpr_checkpoints_load_in_every_wrapping(tmp_path, wrap):
    torch.manual_seed(1)
    src = RefinerNet(RefinerConfig())
    sd = _mmseg_style_state(src)
    sd["auxiliary_head.conv_seg.weight"] = torch.zeros(2, 3, 1, 1)  # training-only extra, dropped
    if wrap == "bare":
        obj = sd
    elif wrap == "state_dict":
        obj = {"state_dict": sd}
    elif wrap == "module-prefix":
        obj = {"state_dict": OrderedDict((f"module.{k}", v) for k, v in sd.items())}
    else:
        obj = {
            "meta": {"mmcv_version": "0.0", "CLASSES": ["bg", "fg"], "iter": 160000},
            "state_dict": sd,
            "optimizer": {},
        }
    path = tmp_path / "bpr.pth"
    torch.save(obj, path)
    net = load_refiner(path)
    assert net.config.arch == "hr18s" and net.config.input_size == 128
    x, m = torch.randn(1, 3, 128, 128), torch.randn(1, 1, 128, 128)
    with torch.inference_mode():
        assert torch.allclose(net(x, m), src.eval()(x, m), atol=1e-5)


def test_nearest_upsampling_option_for_old_checkpoints(tmp_path):
    torch.save(RefinerNet().state_dict(), tmp_path / "old.pth")
    net = load_refiner(tmp_path / "old.pth", overrides={"upsample_mode": "nearest", "input_size": 64})
    assert net.config.upsample_mode == "nearest"
    assert net.backbone.stage2[0].upsample_mode == "nearest"


def test_bpr_checkpoint_round_trip_keeps_config_and_weights_to_fp16(tmp_path):
    torch.manual_seed(2)
    net = RefinerNet(RefinerConfig(input_size=64, patch_size=48))
    save_refiner(net, tmp_path / "m.pt", meta={"note": "x"})
    back = load_refiner(tmp_path / "m.pt")
    assert back.config == net.config
    for k, v in net.state_dict().items():
        if v.is_floating_point():
            assert torch.allclose(back.state_dict()[k], v.half().float())


def test_unreadable_or_foreign_checkpoints_fail_clearly(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelNotAvailableError, match="cannot read"):
        load_refiner(tmp_path / "junk.pt")
    torch.save({"state_dict": {"backbone.foo": torch.zeros(1)}}, tmp_path / "foreign.pt")
    with pytest.raises(ModelNotAvailableError, match="not a BPR"):
        load_refiner(tmp_path / "foreign.pt")
    with pytest.raises(ModelNotAvailableError, match="not found"):
        load_refiner(tmp_path / "missing.pt")


def test_detail_head_starts_as_the_refiner_without_it_and_round_trips(tmp_path):
    torch.manual_seed(0)
    plain = RefinerNet(RefinerConfig(input_size=64)).eval()
    detailed = RefinerNet(RefinerConfig(input_size=64, detail_head=True)).eval()
    missing, unexpected = detailed.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and missing and all(k.startswith("detail_head.") for k in missing)
    image, mask = torch.randn(2, 3, 64, 64), torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        assert torch.allclose(detailed(image, mask), plain(image, mask), atol=1e-6)
        torch.nn.init.normal_(detailed.detail_head.conv_out.weight, std=0.1)
        changed = detailed(image, mask)
    assert not torch.allclose(changed, plain(image, mask))
    save_refiner(detailed, tmp_path / "detail.pt", half=False)
    back = load_refiner(tmp_path / "detail.pt")
    assert back.config.detail_head and back.detail_head is not None
    with torch.no_grad():
        assert torch.allclose(back(image, mask), changed, atol=1e-5)


def test_the_bundled_model_loads_with_the_settings_its_card_states():
    assert DEFAULT_CHECKPOINT == REPO / "bpr" / "models" / "bpr_default.pt"  # package data: wheels carry it
    net = load_refiner(DEFAULT_CHECKPOINT)
    c = net.config
    # one network since session 19: the context-16 effl0 refiner trained with quarter turns, and its own gate
    assert (c.arch, c.patch_size, c.input_size, c.context) == ("effl0", 64, 64, 16)
    assert c.gate and net.gate is not None and c.gate_width == 32
    assert net.companion is None and not c.detail_head
    assert net.recommended == {
        "flip_tta": False,
        "iterations": 1,
        "fallback_iou": 0.5,
        "min_area": 1024,
        "change_margin": 0.2,
        "keep_thin": 4,
        "ungated_shift": 0.6,
        "ungated_removal_margin": 0.1,
    }
    assert DEFAULT_CHECKPOINT.stat().st_size < 20e6


def test_packaging_writes_fp16_weights_and_exactly_the_settings_given(random_checkpoint, tmp_path, capsys):
    dst = tmp_path / "shipped.pt"
    args = [str(random_checkpoint), str(dst), "--flip-tta", "--min-area", "50", "--change-margin", "0.1"]
    assert package_main(args) == 0
    assert capsys.readouterr().out.startswith(f"{dst}: ")
    net = load_refiner(dst)
    assert net.recommended == {"flip_tta": True, "min_area": 50, "change_margin": 0.1}  # flags not given: none
    saved = torch.load(dst, weights_only=True)["state_dict"]
    for k, v in load_refiner(random_checkpoint).state_dict().items():
        if v.is_floating_point():
            assert saved[k].dtype == torch.float16 and torch.equal(saved[k], v.half()), k


def test_gate_thresholds_given_at_each_packaging_add_up_in_the_bias_and_in_meta(tmp_path):
    """Repackaging a gated checkpoint with --gate-threshold raises the threshold already folded
    in; meta records the total a patch's gate logit must exceed, never only the last step."""
    torch.manual_seed(0)
    save_refiner(RefinerNet(RefinerConfig(input_size=64, gate=True)), tmp_path / "gated.pt", half=False)
    assert package_main([str(tmp_path / "gated.pt"), str(tmp_path / "t1.pt"), "--gate-threshold", "1.5"]) == 0
    assert package_main([str(tmp_path / "t1.pt"), str(tmp_path / "t2.pt"), "--gate-threshold", "-0.5"]) == 0
    bias = {name: load_refiner(tmp_path / name).gate.classifier.bias.float() for name in ("gated.pt", "t2.pt")}
    assert torch.allclose(bias["gated.pt"] - bias["t2.pt"], torch.tensor(1.0), atol=2e-3)  # fp16 weights
    assert torch.load(tmp_path / "t2.pt", weights_only=True)["meta"]["gate_threshold"] == 1.0


def test_a_fine_tuned_refiner_takes_the_gate_and_threshold_of_its_source(tmp_path):
    """bpr-train drops a fine-tuned refiner's gate; --gate-from gives it back the judge it had,
    its threshold included, while every refiner weight stays the fine-tuned one's."""
    torch.manual_seed(0)
    save_refiner(RefinerNet(RefinerConfig(input_size=64, gate=True, gate_width=8)), tmp_path / "judge.pt", half=False)
    assert package_main([str(tmp_path / "judge.pt"), str(tmp_path / "t.pt"), "--gate-threshold", "1.5"]) == 0
    save_refiner(RefinerNet(RefinerConfig(input_size=64, detail_head=True)), tmp_path / "tuned.pt", half=False)
    args = [str(tmp_path / "tuned.pt"), str(tmp_path / "out.pt"), "--gate-from", str(tmp_path / "t.pt")]
    assert package_main([*args, "--gate-threshold", "-0.5"]) == 0
    out, judge, tuned = (load_refiner(tmp_path / n) for n in ("out.pt", "t.pt", "tuned.pt"))
    assert out.config.gate and out.config.gate_width == 8 and out.config.detail_head
    for k, v in out.state_dict().items():
        source = judge if k.startswith("gate.") else tuned
        expected = source.state_dict()[k]
        if k == "gate.classifier.bias":
            expected = expected + 0.5
        assert torch.allclose(v.float(), expected.float(), atol=2e-3), k
    assert torch.load(tmp_path / "out.pt", weights_only=True)["meta"]["gate_threshold"] == 1.0
    assert (
        package_main([str(tmp_path / "tuned.pt"), str(tmp_path / "x.pt"), "--gate-from", str(tmp_path / "tuned.pt")])
        == 2
    )


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--change-margin", "0.7"], "change margin must be in [0, 0.5), got 0.7"),
        (["--gate-threshold", "1.5"], "has no quality gate; --gate-threshold needs one"),
        (["--flip-tta", "--gate-early-reject", "1"], "--gate-early-reject needs a quality gate and a second opinion"),
    ],
)
def test_packaging_refuses_bad_settings_in_one_line_and_writes_nothing(
    random_checkpoint, tmp_path, capsys, flags, message
):
    dst = tmp_path / "shipped.pt"
    assert package_main([str(random_checkpoint), str(dst), *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("bpr-package: error: ") and message in err and "\n" not in err
    assert not dst.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "config", [RefinerConfig(arch="hr18s", input_size=64), RefinerConfig(arch="hr18s", input_size=64, detail_head=True)]
)
def test_the_fused_inference_copy_computes_what_the_trained_network_does(config):
    """BatchNorm folded into the convolutions, channels-last: the same logits to float rounding."""
    torch.manual_seed(0)
    net = RefinerNet(config)
    with torch.no_grad():  # non-trivial BatchNorm statistics, as a trained network has
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    net.eval()
    fast = net.fused_for_inference()
    left = [n for n, m in fast.named_modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert left == ["inference_graph.backbone.bn1"]  # only the stem's, which follows a sum of two convolutions
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules()) > 50  # the original is untouched
    images = torch.rand(5, 3, 64, 64) * 255
    masks = (torch.rand(5, 1, 64, 64) > 0.5).float()
    with torch.inference_mode():
        expected, got = net.foreground_probability(images, masks), fast.foreground_probability(images, masks)
    assert got.shape == expected.shape == (5, 64, 64)
    assert (got - expected).abs().max() < 1e-4


def test_refiners_fuse_the_checkpoints_they_load_and_run_handed_in_networks_as_they_are(tmp_path):
    from bpr.refiner import Refiner

    torch.manual_seed(0)
    net = RefinerNet(RefinerConfig(input_size=64))
    path = tmp_path / "m.pt"
    save_refiner(net, path)
    loaded = Refiner(path, backend="torch")
    assert loaded.infer_net is not loaded.net and loaded.infer_net.inference_graph is not None
    handed_in = Refiner(net)
    assert handed_in.backend == "torch"  # auto never exports a module handed in
    assert handed_in.infer_net is handed_in.net is net  # your module, and later weight changes, are what run
    assert Refiner(path, fuse=False, backend="torch").infer_net.inference_graph is None
    assert Refiner(net, fuse=True).infer_net.inference_graph is not None

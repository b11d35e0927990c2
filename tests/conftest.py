"""Shared fixtures: real data from ../shared/data and small random-weight checkpoints."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from bpr.io.datasets import shared_data_root
from bpr.modeling import RefinerConfig, RefinerNet, save_refiner

REPO = Path(__file__).resolve().parent.parent
DATA = shared_data_root()  # BPR_SHARED_DATA, else ../shared/data from the current directory


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The Ray engine's tests run last. A local Ray instance leaves native state in the test
    process after ray.shutdown() (object-store memory maps behind zero-copy arrays, its own
    fatal-signal handlers, threads); whatever runs after it shares that process, so nothing does."""
    items.sort(key=lambda item: item.nodeid.startswith("tests/test_ray_engine.py"))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    assert DATA.is_dir(), f"the shared data sets are expected at {DATA}"
    return DATA


def make_checkpoint(path: Path) -> Path:
    """A random-init hr18s refiner at input 64 whose answers are not trivial.

    Plain random weights (seed 0) give foreground probabilities of 0.47-0.50 everywhere, so
    every patched pixel turns background and all refined masks come back empty: equality
    tests on them would prove little. Stretching the classifier's class difference spreads
    the probabilities over about 0.25-0.85, so refined masks depend on image and mask, and
    few pixels sit near the 0.5 threshold.
    """
    torch.manual_seed(0)
    net = RefinerNet(RefinerConfig(input_size=64))
    with torch.no_grad():
        w = net.decode_head.conv_seg.weight
        w[1] = w[0] + 30.0 * (w[1] - w[0])
    save_refiner(net, path, half=False)
    return path


@pytest.fixture(scope="session")
def random_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Random weights (see make_checkpoint): fast, and enough to exercise every path."""
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "random64.pt")


class IdentityNet(RefinerNet):
    """A 'refiner' that returns its input mask: reassembly must then reproduce the input exactly."""

    def foreground_probability(self, image_patches: torch.Tensor, mask_patches: torch.Tensor) -> torch.Tensor:
        return mask_patches[:, 0].clone()


class InvertNet(RefinerNet):
    """Returns the complement of its input: every covered pixel flips, uncovered ones cannot."""

    def foreground_probability(self, image_patches: torch.Tensor, mask_patches: torch.Tensor) -> torch.Tensor:
        return 1.0 - mask_patches[:, 0]


@pytest.fixture
def identity_net() -> RefinerNet:
    return IdentityNet(RefinerConfig(input_size=64))


def disk(h: int, w: int, cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def street_masks_and_an_empty_one(data_dir: Path, count: int) -> np.ndarray:
    """(N + 1, H, W) bool: the first ``count`` cityscapes-dev Mask R-CNN-like masks of the first
    image size among them, and an empty mask last."""
    from bpr.io.coco import decode_segmentation, load_json

    results = load_json(data_dir / "cityscapes-dev" / "maskrcnn28.json")[:count]
    h, w = results[0]["segmentation"]["size"]
    masks = [decode_segmentation(r["segmentation"], h, w) for r in results if r["segmentation"]["size"] == [h, w]]
    return np.stack([*masks, np.zeros((h, w), bool)])


@pytest.fixture
def signals_not_ignored() -> Iterator[None]:
    """Signal-handling tests assume a launcher that ignores none of SIGINT, SIGTERM and SIGHUP.
    Under ``nohup`` (SIGHUP ignored) or as a background job of a script (SIGINT ignored) the
    suite inherits ignored signals, and bpr rightly leaves those alone: such tests get the
    defaults back for their duration."""
    import signal

    defaults = {signal.SIGINT: signal.default_int_handler, signal.SIGTERM: signal.SIG_DFL}
    defaults[signal.SIGHUP] = signal.SIG_DFL
    previous = {s: signal.signal(s, h) for s, h in defaults.items() if signal.getsignal(s) is signal.SIG_IGN}
    yield
    for s, handler in previous.items():
        signal.signal(s, handler)


def davis_frame(data_dir: Path, index: int = 0, predictor: str = "osvos") -> tuple[np.ndarray, np.ndarray]:
    """Frame ``index`` of davis-dev-real and its real masks of one predictor (``osvos`` or
    ``rvos``): (H, W, 3) uint8, (N, H, W) bool."""
    from bpr.io.coco import decode_segmentation, load_json
    from bpr.io.images import read_image

    root = data_dir / "davis-dev-real"
    info = load_json(root / "gt.json")["images"][index]
    image = read_image(root / "images" / info["file_name"])
    results = [r for r in load_json(root / f"{predictor}.json") if r["image_id"] == info["id"]]
    masks = np.stack([decode_segmentation(r["segmentation"], info["height"], info["width"]) for r in results])
    return image, masks

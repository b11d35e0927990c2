"""Shared fixtures: real data from ../shared/data and small random-weight checkpoints."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from bpr.modeling import RefinerConfig, RefinerNet, save_refiner

REPO = Path(__file__).resolve().parent.parent
DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    assert DATA.is_dir(), f"the shared data sets are expected at {DATA}"
    return DATA


@pytest.fixture(scope="session")
def random_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight hr18s refiner at input 64: fast, and enough to exercise every path."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "random64.pt"
    save_refiner(RefinerNet(RefinerConfig(input_size=64)), path)
    return path


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

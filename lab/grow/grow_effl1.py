#!/usr/bin/env python
"""Grow a trained effl0 refiner into an effl1 one that computes exactly the same function.

Why: a Lite2 encoder from ImageNet needs the effl0 campaign's 2 M samples again (about 15 hours
here) before it can be compared with the shipped companion. EfficientNet-Lite1 has Lite0's widths
and one more block in each of stages 2-6; each such block is a stride-1 residual (input and
output widths equal), so with its last BatchNorm's scale and shift at zero it adds nothing, and
the grown network starts where the trained one is, with 0.77 M more parameters (4.22 M in all)
to fine-tune. The new blocks' other weights come from ImageNet (the Lite1 package), so they see
features once their scale grows.

    python lab/grow/grow_effl1.py lab/runs/s16_effl0_ctx16_maskhead/model.pt work/s17/grown_effl1.pt
"""

from __future__ import annotations

import argparse
import dataclasses

import torch

from bpr.modeling import RefinerNet, load_refiner, save_refiner
from bpr.modeling.efficientnet import VARIANTS, LiteVariant, imagenet_weights_path


def block_map(small: LiteVariant, large: LiteVariant) -> tuple[dict[int, int], list[int]]:
    """Lite0 block index -> Lite1 block index (the first blocks of each stage), and the Lite1
    blocks that are new (the extra repeats at the end of their stage)."""
    mapping: dict[int, int] = {}
    new: list[int] = []
    for old, grown, end_s, end_l in zip(small.stages, large.stages, small.stage_ends, large.stage_ends):
        start_s, start_l = end_s - old.repeats, end_l - grown.repeats
        for r in range(grown.repeats):
            if r < old.repeats:
                mapping[start_s + r] = start_l + r
            else:
                new.append(start_l + r)
    return mapping, new


def grow(net: RefinerNet) -> RefinerNet:
    if net.config.arch != "effl0" or net.companion is not None or net.gate is not None:
        raise SystemExit("grow_effl1: give a bare effl0 refiner (no companion, no gate)")
    large = RefinerNet(dataclasses.replace(net.config, arch="effl1"), recommended=net.recommended)
    mapping, new = block_map(VARIANTS["effl0"], VARIANTS["effl1"])
    imagenet = torch.load(imagenet_weights_path(VARIANTS["effl1"]), map_location="cpu", weights_only=True)
    state = {}
    for key, value in net.state_dict().items():
        if key.startswith("backbone._blocks."):
            _, _, index, rest = key.split(".", 3)
            key = f"backbone._blocks.{mapping[int(index)]}.{rest}"
        state[key] = value
    for index in new:
        prefix = f"_blocks.{index}."
        for key, value in imagenet.items():
            if key.startswith(prefix):
                state[f"backbone.{key}"] = value
        state[f"backbone._blocks.{index}._bn2.weight"] = torch.zeros_like(imagenet[f"{prefix}_bn2.weight"])
        state[f"backbone._blocks.{index}._bn2.bias"] = torch.zeros_like(imagenet[f"{prefix}_bn2.bias"])
        if not large.backbone._blocks[index].skip:
            raise SystemExit(f"block {index} has no identity skip: it cannot start as nothing")
    large.load_state_dict(state, strict=True)
    return large


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("small", help="a trained effl0 refiner (bpr checkpoint)")
    p.add_argument("out", help="where to write the grown effl1 refiner")
    args = p.parse_args()
    net = load_refiner(args.small).eval()
    large = grow(net).eval()
    torch.manual_seed(0)
    view = net.feed_size(net.config.patch_size + 2 * net.config.context, 0)
    image, mask = torch.randn(4, 3, view, view), torch.randn(4, 1, view, view).sign()
    with torch.inference_mode():
        gap = (net(image, mask) - large(image, mask)).abs().max().item()
    print(
        f"grown effl1: {sum(p.numel() for p in large.parameters()) / 1e6:.2f} M parameters; "
        f"largest logit difference from the effl0 refiner {gap:.2e}"
    )
    if gap > 1e-3:
        raise SystemExit("grow_effl1: the grown network does not compute the same function")
    save_refiner(large, args.out, meta={"grown_from": args.small}, half=False)


if __name__ == "__main__":
    main()

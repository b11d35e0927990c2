"""Refiner checkpoints: bpr's own format, and the original BPR (mmsegmentation) files.

bpr's format is a dict ``{"format": "bpr-refiner", "config": RefinerConfig dict (the
architecture), "recommended": how to refine with it (RefineOptions fields), "state_dict": ...,
"meta": ...}``, weights stored in fp16 to halve the file. Checkpoints written before the two
were apart keep their recommendations inside "config"; they load the same. An original BPR
checkpoint is an mmsegmentation file: a bare state dict or ``{"meta": ..., "state_dict": ...,
"optimizer": ...}`` with ``backbone.*`` / ``decode_head.*`` keys. Our modules use the same
names, so :func:`checkpoint_filter_fn` only drops wrappers and training-only heads, and the
architecture is read off the tensor shapes. A bpr-train run state (``last.pt``: ``model``,
``optimizer``, ``step``, ``config``) loads too, so a run stopped between exports can be
packaged and measured as it stands.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import torch

from bpr.errors import BprInputError, ModelNotAvailableError
from bpr.io.atomic import atomic_path
from bpr.modeling.refiner_net import EXTRA_RECOMMENDATIONS, RefinerConfig, RefinerNet
from bpr.options import option_infos

FORMAT = "bpr-refiner"


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map a foreign state dict onto RefinerNet's keys (timm-style key filter)."""
    out = {}
    for key, value in state_dict.items():
        if key.startswith("module."):  # saved from DataParallel / DistributedDataParallel
            key = key[len("module.") :]
        if key.startswith("auxiliary_head.") or not isinstance(value, torch.Tensor):
            continue
        out[key] = value.float() if value.is_floating_point() else value
    return out


def infer_config(state_dict: dict[str, torch.Tensor]) -> RefinerConfig:
    """Read the architecture of an mmseg-format state dict off its keys and shapes."""
    try:
        width = state_dict["backbone.transition1.0.0.weight"].shape[0]
    except KeyError:
        raise ModelNotAvailableError("not a BPR/HRNet checkpoint: no 'backbone.transition1.0.0.weight' key") from None
    stage3_modules = {k.split(".")[2] for k in state_dict if k.startswith("backbone.stage3.")}
    if width == 48:
        arch = "hr48"
    elif len(stage3_modules) == 3:
        arch = "hr18s"
    else:
        arch = "hr18"
    return RefinerConfig(arch=arch)


def recommendations(ckpt: dict[str, Any]) -> dict[str, Any]:
    """The inference settings a bpr checkpoint recommends: its "recommended" dict, or for a file
    written before that existed, the same names inside its "config". Names this version does
    not know are dropped (a newer file still loads, with the library's defaults for them)."""
    known = {name for name, info in option_infos().items() if info.recommended} | set(EXTRA_RECOMMENDATIONS)
    source = ckpt.get("recommended", ckpt.get("config", {}))
    return {k: v for k, v in source.items() if k in known}


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """A checkpoint file's contents (tensors only: ``weights_only``), or one-line errors for a
    missing, unreadable or non-dict file."""
    path = Path(path)
    if not path.is_file():
        raise ModelNotAvailableError(f"checkpoint not found: {path}")
    ckpt = _torch_load(path)
    if not isinstance(ckpt, dict):
        raise ModelNotAvailableError(f"{path} does not hold a state dict")
    return ckpt


def _torch_load(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for unreadable / unsafe pickles
        raise ModelNotAvailableError(f"cannot read checkpoint {path}: {str(exc).splitlines()[0]}") from None


def is_run_state(ckpt: dict[str, Any]) -> bool:
    """Whether a loaded file is a bpr-train run state (``last.pt``), not a refiner checkpoint."""
    return all(key in ckpt for key in ("model", "optimizer", "step", "config"))


def run_state_config(state: dict[str, Any], path: Path) -> RefinerConfig:
    """The network's config of a bpr-train run state. States carry it since 2026-12-04; in older
    ones the patch size is only in the run's patch manifest, read from where the run was started."""
    if "refiner_config" in state:
        return RefinerConfig.from_dict(state["refiner_config"])
    run = state["config"]
    manifest = Path(run["patches"][0]) / "manifest.json"
    try:
        patch_size = int(json.loads(manifest.read_text())["patch_size"])
    except (OSError, ValueError, KeyError) as exc:
        raise ModelNotAvailableError(
            f"{path}: a run state from before 2026-12-04 without its patch size; run from the directory the "
            f"training ran in, so that {manifest} is found ({exc})"
        ) from None
    return RefinerConfig(  # states older still have no arch or detail head: HRNet-W18s without one
        arch=run.get("arch", "hr18s"),
        input_size=run["input_size"],
        patch_size=patch_size,
        detail_head=run.get("detail_head", False),
    )


def load_refiner(
    path: str | os.PathLike,
    device: str | torch.device = "cpu",
    overrides: dict[str, Any] | None = None,
) -> RefinerNet:
    """Build a RefinerNet from a bpr or original-BPR checkpoint, in eval mode on ``device``.

    ``overrides`` replaces config fields (e.g. ``{"input_size": 64}`` or
    ``{"upsample_mode": "nearest"}`` for checkpoints trained with mmseg 0.x).
    """
    return build_refiner(read_checkpoint(path), path, device, overrides)


def build_refiner(
    ckpt: dict[str, Any],
    path: str | os.PathLike,
    device: str | torch.device = "cpu",
    overrides: dict[str, Any] | None = None,
) -> RefinerNet:
    """:func:`load_refiner` for a checkpoint already read (:func:`read_checkpoint`) from ``path``
    (named in errors): for a caller that also needs the file's other contents."""
    recommended: dict[str, Any] = {}
    if is_run_state(ckpt):  # the weights the run evaluates and exports: its moving average if it keeps one
        state_dict = checkpoint_filter_fn(ckpt.get("ema") or ckpt["model"])
        config = run_state_config(ckpt, Path(path))
    else:
        state_dict = checkpoint_filter_fn(ckpt.get("state_dict", ckpt))
        if ckpt.get("format") == FORMAT:
            config = RefinerConfig.from_dict(ckpt["config"])
            recommended = recommendations(ckpt)
        else:
            config = infer_config(state_dict)
    if overrides:
        config = RefinerConfig.from_dict({**config.to_dict(), **overrides})
    try:
        net = RefinerNet(config, recommended)
    except (ValueError, TypeError) as exc:  # an arch or option this version does not know
        raise ModelNotAvailableError(f"{path}: {exc}") from None
    missing, unexpected = net.load_state_dict(state_dict, strict=False)
    if missing or unexpected:
        raise ModelNotAvailableError(
            f"{path} does not match the {config.arch} refiner: "
            f"{len(missing)} missing keys (e.g. {missing[:2]}), "
            f"{len(unexpected)} unexpected keys (e.g. {unexpected[:2]})"
        )
    return net.to(device).eval()


def save_refiner(
    net: RefinerNet, path: str | os.PathLike, meta: dict[str, Any] | None = None, half: bool = True
) -> None:
    """Write a bpr checkpoint atomically; fp16 weights by default (BN statistics included)."""
    state = {
        k: (v.detach().half() if half and v.is_floating_point() else v.detach()).cpu()
        for k, v in net.state_dict().items()
    }
    payload = {
        "format": FORMAT,
        "version": 1,
        "config": net.config.to_dict(),
        "recommended": dict(net.recommended),
        "state_dict": state,
        "meta": meta or {},
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def with_companion(net: RefinerNet, companion: RefinerNet, weight: float) -> RefinerNet:
    """``net`` with ``companion`` as its second refiner (:attr:`RefinerConfig.companion`),
    averaged in with ``weight``: one checkpoint that holds both. The companion's own gate is
    left out (``net``'s judges the average); ``net`` keeps its recommendations."""
    if net.companion is not None or companion.companion is not None:
        raise BprInputError("cannot pair these refiners: one of them already has a companion")
    gateless = {k: v for k, v in companion.state_dict().items() if not k.startswith("gate.")}
    config = dataclasses.replace(
        net.config,
        companion=dataclasses.replace(companion.config, gate=False).to_dict(),
        companion_weight=weight,
    )
    try:
        both = RefinerNet(config, net.recommended)
    except ValueError as exc:
        raise BprInputError(f"cannot pair these refiners: {exc}") from None
    missing, unexpected = both.load_state_dict(net.state_dict(), strict=False)
    assert not unexpected and all(k.startswith("companion.") for k in missing), (missing, unexpected)
    assert both.companion is not None
    both.companion.load_state_dict(gateless)
    return both.eval()


def with_gate_of(net: RefinerNet, judge: RefinerNet) -> RefinerNet:
    """``net`` with ``judge``'s patch-quality gate (threshold folded into its bias as it is).
    The gate is a network of its own that looks at image, coarse mask and refined probability,
    not at the refiner's features, so a fine-tuned refiner can keep the judge it had; whether
    that judge still fits is for the dev table to say (bpr-train-gate trains a new one)."""
    if judge.gate is None:
        raise BprInputError("the checkpoint to take the gate from has no quality gate")
    config = dataclasses.replace(net.config, gate=True, gate_width=judge.config.gate_width)
    gated = RefinerNet(config, net.recommended)
    weights = {k: v for k, v in net.state_dict().items() if not k.startswith("gate.")}
    weights.update({k: v for k, v in judge.state_dict().items() if k.startswith("gate.")})
    gated.load_state_dict(weights)
    return gated.eval()

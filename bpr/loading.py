"""Loading: a checkpoint file -> the refiner network on a device, and how to run it there.

What :meth:`bpr.refiner.Refiner.from_checkpoint` (the one way to build a Refiner from a
checkpoint, as segment-anything's ``build_sam``) and the Refiner's constructor do before any
image is seen, one job per function:

* :func:`load_checkpoint`: which file (the bundled default model unless one is given) and the
  network in it;
* :func:`check_run_settings`: that the device, precision and batch size can work, before any
  time goes into exporting or compiling the network;
* :func:`choose_runtime`: what computes the probabilities (torch, fused torch, OpenVINO, ONNX
  Runtime: :mod:`bpr.backends`);
* :func:`recommended_options` / :func:`early_reject_margin`: what the checkpoint recommends.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import torch

from bpr.backends import ProbabilityNet, backend_from_env, cpu_has_native_bf16, select_backend
from bpr.errors import BprInputError, ModelNotAvailableError
from bpr.modeling.checkpoint import load_refiner
from bpr.modeling.refiner_net import RefinerNet
from bpr.options import RefineOptions, option_infos

# Package data (pyproject.toml), so a wheel refines with it too; its card: the repository's models/MODEL_CARD.md.
DEFAULT_CHECKPOINT = Path(__file__).resolve().parent / "models" / "bpr_default.pt"
PRECISIONS = ("auto", "fp32", "bf16", "fp16", "int8")


def default_checkpoint() -> Path:
    """The bundled default model (override with the BPR_DEFAULT_CHECKPOINT environment variable)."""
    return Path(os.environ.get("BPR_DEFAULT_CHECKPOINT", DEFAULT_CHECKPOINT))


def load_checkpoint(
    checkpoint: str | os.PathLike | None = None, *, input_size: int | None = None, device: str | torch.device = "cpu"
) -> tuple[RefinerNet, Path]:
    """The network of a bpr or original-BPR checkpoint, in eval mode on ``device``, and its path.

    checkpoint: the file; None = the bundled default model (:func:`default_checkpoint`), whose
        absence says "no model is bundled" rather than "file not found", since the caller named none.
    input_size: override the network input size the patch is resized to.
    """
    path = Path(checkpoint) if checkpoint is not None else default_checkpoint()
    if checkpoint is None and not path.is_file():
        raise ModelNotAvailableError(
            f"no trained model is bundled ({path} is missing); give a checkpoint "
            "(a bpr checkpoint from bpr-train, or an original BPR .pth)"
        )
    overrides = {"input_size": input_size} if input_size else None
    return load_refiner(path, device=torch.device(device), overrides=overrides), path


def check_run_settings(device: str | torch.device, precision: str, batch_size: int) -> torch.device:
    """The device to run on, once ``precision`` and ``batch_size`` are known to work there.

    Raises BprInputError for a combination that cannot run (fp16 on a CPU, CUDA without a
    CUDA device); warns for one that runs but slowly (bf16 on a CPU without native bf16).
    """
    device = torch.device(device)
    if precision not in PRECISIONS:
        raise BprInputError(f"precision must be auto, fp32, bf16, fp16 or int8, got {precision!r}")
    if precision == "fp16" and device.type != "cuda":
        raise BprInputError("fp16 precision needs a CUDA device; use bf16 on CPU")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BprInputError("the CUDA device was asked for, but PyTorch sees no CUDA device")
    if batch_size < 1:
        raise BprInputError(f"batch size must be at least 1, got {batch_size}")
    if precision == "bf16" and device.type == "cpu" and not cpu_has_native_bf16():
        warnings.warn(
            "bf16 was asked for, but this CPU has no native bf16 (no AVX512-BF16 / AMX): it runs emulated, "
            "about 10x slower than fp32 (measured on an AVX2 machine); use fp32",
            RuntimeWarning,
            stacklevel=3,  # the line that built the Refiner
        )
    return device


def choose_runtime(
    net: RefinerNet,
    backend: str | None,
    device: torch.device,
    patch_size: int,
    precision: str,
    fuse: bool | None,
    from_checkpoint: bool,
) -> tuple[str, ProbabilityNet, str]:
    """(backend name, the network that computes probabilities, precision) for ``net``.

    backend: "auto", "torch", "openvino", "onnxruntime", or None (``BPR_BACKEND``, else auto).
    fuse: run a BatchNorm-folded copy in torch (None: for bpr's own network only).
    from_checkpoint: ``net`` was loaded from a checkpoint. Only bpr's own network loaded so gets
        the automatic choice (an exported graph, or a fused copy); a module handed in runs as it
        is, so the caller's own module, and later changes to its weights, are what run.
    """
    own = from_checkpoint and type(net) is RefinerNet
    backend = backend_from_env(backend)
    if backend == "auto" and not own:
        backend = "torch"
    name, runtime, precision = select_backend(net, backend, device, patch_size, precision)
    if runtime is not None:
        return name, runtime, precision
    if fuse or (fuse is None and own):
        try:
            return name, net.fused_for_inference(), precision
        except Exception as exc:  # noqa: BLE001 - a module torch.fx cannot trace still runs, only slower
            if fuse:
                raise
            warnings.warn(f"running the unfused network ({type(exc).__name__}: {exc})", RuntimeWarning, stacklevel=3)
    return name, net, precision


def recommended_options(net: RefinerNet, **overrides: Any) -> RefineOptions:
    """The library's :class:`RefineOptions`, then what ``net``'s checkpoint recommends, then ``overrides``."""
    recommended = getattr(net, "recommended", {})
    return RefineOptions().updated(**{k: v for k, v in recommended.items() if k in option_infos()}).updated(**overrides)


def early_reject_margin(net: RefinerNet, wanted: bool) -> float | None:
    """The gate logit margin below which a patch skips its mirrored forward (None = never).

    Measured per gate, so it comes with the checkpoint (``gate_early_reject``); a network
    without a gate, or ``wanted`` False, runs every mirror.
    """
    if not (wanted and net.config.gate):
        return None
    return getattr(net, "recommended", {}).get("gate_early_reject")

"""Inference backends: which runtime turns patches into probabilities.

``torch`` runs the (BatchNorm-folded) torch network; ``openvino`` and ``onnxruntime`` run
the network exported to ONNX (bpr/backends/export.py, cached, never by hand). ``auto`` picks
the fastest one installed for the device: on a CPU OpenVINO, then ONNX Runtime, then torch;
on CUDA torch. Measured on the 2-core CPU (benchmarks/benchmark.py --backend): see docs/benchmarks.md.

Every runtime is checked against the torch network on a fixed probe batch when it loads: a
graph whose probabilities differ beyond :data:`TOLERANCE` is rebuilt once, then refused.
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from pathlib import Path
from typing import Protocol

import torch

from bpr.errors import BprInputError, ModelNotAvailableError
from bpr.modeling.refiner_net import RefinerNet

BACKENDS = ("auto", "torch", "openvino", "onnxruntime")
# How far a runtime's probabilities may sit from the torch network's on the probe batch: bounds
# on statistics of |p_runtime - p_torch|, per precision; a graph must keep every one. fp32 graphs
# agree to rounding, so their largest difference is bounded. Reduced precision moves single
# pixels of the random probe patches a long way (effl0 at step 31,000 in bf16: 0.051 at one
# pixel; in int8: 0.27), so bf16 and int8 bound the mean difference and its 99th percentile
# instead. Measured (work of 2026-12-04, effl0 with its moving average at step ~34,000 /
# the default model): bf16 mean 0.007 / 0.001, p99 0.039 / 0.005; int8 mean 0.018 / 0.009,
# p99 0.095 / 0.039. A foreign or corrupt graph differs by 0.25 and more on average; a fault
# in 1% of the pixels or more (a patch's border ring is 6%) moves the 99th percentile.
TOLERANCE: dict[str, dict[str, float]] = {
    "fp32": {"max": 1e-3},
    "bf16": {"mean": 0.03, "p99": 0.1},
    "int8": {"mean": 0.08, "p99": 0.25},
}


class ProbabilityNet(Protocol):
    def foreground_probability(self, image_patches: torch.Tensor, mask_patches: torch.Tensor) -> torch.Tensor: ...


def backend_from_env(name: str | None) -> str:
    """``name``, else ``BPR_BACKEND``, else ``auto``; a one-line error for an unknown name."""
    chosen = name or os.environ.get("BPR_BACKEND") or "auto"
    if chosen not in BACKENDS:
        raise BprInputError(f"backend must be one of {', '.join(BACKENDS)}, got {chosen!r}")
    return chosen


def installed(runtime: str) -> bool:
    return importlib.util.find_spec(runtime) is not None and importlib.util.find_spec("onnx") is not None


def automatic_backend(device: torch.device) -> str:
    """The backend ``auto`` means on ``device``: the fastest installed one (see module doc)."""
    if device.type != "cpu":
        return "torch"
    for runtime in ("openvino", "onnxruntime"):
        if installed(runtime):
            return runtime
    return "torch"


def cpu_has_native_bf16() -> bool:
    """Does this CPU run bf16 natively (AVX512-BF16 or AMX)? Without it bf16 is emulated and slow."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def automatic_precision(backend: str, device: torch.device) -> str:
    """What precision ``auto`` means for ``backend`` on ``device``.

    fp16 autocast on CUDA. bf16 for OpenVINO on a CPU with native bf16: with the default model
    J, F and every street-scene number of the dev table stay within 0.05 points of fp32 torch
    (within 0.02 for the session-14 default; the 89-frame per-frame AP of the DAVIS inputs moves
    by up to 0.14: lab/runs/dev_table_s14_torch_fp32.md, models/MODEL_CARD.md) at 1.6-1.8x the
    speed. fp32 everywhere else: torch's bf16 autocast has not been through the dev table, and emulated bf16 is slow.
    """
    if device.type == "cuda":
        return "fp16"
    if backend == "openvino" and cpu_has_native_bf16():
        return "bf16"
    return "fp32"


def probe_batch(patch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Four fixed patches with edges and a boundary: the same every time, any machine."""
    g = torch.Generator().manual_seed(0)
    images = torch.rand(4, 3, patch_size, patch_size, generator=g) * 255
    ramp = torch.arange(patch_size, dtype=torch.float32)
    masks = torch.stack(
        [
            (ramp[None, :] < patch_size / 2).expand(patch_size, patch_size),
            (ramp[:, None] < patch_size / 3).expand(patch_size, patch_size),
            (ramp[None, :] + ramp[:, None] < patch_size),
            torch.rand(patch_size, patch_size, generator=g) > 0.5,
        ]
    ).float()[:, None]
    return images, masks


def _kept_expectation(kept: Path | None, shape: torch.Size) -> torch.Tensor | None:
    """The torch probabilities stored in ``kept``, if it holds a float tensor of ``shape``."""
    if kept is None or not kept.is_file():
        return None
    try:
        stored = torch.load(kept, map_location="cpu", weights_only=True)
    except Exception:  # a truncated or foreign file: computed afresh and written again
        return None
    if isinstance(stored, torch.Tensor) and stored.dtype == torch.float32 and stored.shape == shape:
        return stored
    return None


def _keep_expectation(kept: Path, expected: torch.Tensor) -> None:
    from bpr.io.atomic import atomic_path

    try:
        with atomic_path(kept) as tmp:
            torch.save(expected.clone(), tmp)
    except OSError:  # a read-only cache: the next start computes them again
        pass


def mismatch(runtime: ProbabilityNet, net: RefinerNet, patch_size: int, kept: Path | None = None) -> dict[str, float]:
    """|p_runtime - p_torch| on the probe batch: its largest value (``max``), mean (``mean``)
    and 99th percentile (``p99``).

    ``kept``: a file beside the exported graph for the torch network's probabilities. The
    graph's name hashes the weights, so they are the same on every start; read from there,
    a start skips the torch network's forward pass on the probe batch."""
    images, masks = probe_batch(patch_size)
    with torch.inference_mode():
        got = runtime.foreground_probability(images, masks).float()
        expected = _kept_expectation(kept, got.shape)
        if expected is None:
            expected = net.foreground_probability(images, masks).float()
            if kept is not None:
                _keep_expectation(kept, expected)
        difference = (got - expected).abs().flatten()
    return {
        "max": float(difference.max()),
        "mean": float(difference.mean()),
        "p99": float(torch.quantile(difference, 0.99)),
    }


def _beyond(differences: dict[str, float], bounds: dict[str, float]) -> tuple[str, float, float] | None:
    """The first bounded statistic over its bound, as (statistic, value, bound); None if all keep."""
    for statistic, bound in bounds.items():
        if not differences[statistic] <= bound:  # NaN fails too
            return statistic, differences[statistic], bound
    return None


def probe_file(graph: Path) -> Path:
    """Where the torch network's probe probabilities are kept for ``graph`` (see mismatch)."""
    return graph.with_name(graph.stem + ".probe.pt")


def _open(runtime: str, graph: Path, threads: int, precision: str, keep_compiled: bool = True) -> ProbabilityNet:
    from bpr.backends.runtimes import OnnxRuntimeNet, OpenVinoNet

    if runtime == "openvino":
        return OpenVinoNet(graph, threads, precision, keep_compiled)
    return OnnxRuntimeNet(graph, threads)


def _graph(net: RefinerNet, patch_size: int, precision: str) -> Path:
    """The graph file a runtime opens: the exported float graph, or its int8 version."""
    from bpr.backends.export import cached_graph
    from bpr.backends.quantize import quantized_graph

    graph = cached_graph(net, patch_size)
    return quantized_graph(graph, patch_size) if precision == "int8" else graph


def load_runtime(
    net: RefinerNet, runtime: str, patch_size: int, precision: str, threads: int | None = None
) -> ProbabilityNet:
    """``net`` exported (or found in the cache) and opened by ``runtime``, checked on the probe
    batch; a graph that fails the check is exported again once, then refused."""
    if not installed(runtime):
        raise ModelNotAvailableError(f"the {runtime} backend is not installed: pip install {runtime} onnx")
    if runtime == "onnxruntime" and precision == "bf16":
        raise BprInputError("bf16 runs with the torch or openvino backend, not onnxruntime")
    threads = threads or torch.get_num_threads()
    bounds = TOLERANCE.get(precision, TOLERANCE["fp32"])
    graph = _graph(net, patch_size, precision)
    for attempt in range(2):
        try:
            # a retry also compiles afresh, in case OpenVINO's kept compilation is what failed
            opened = _open(runtime, graph, threads, precision, keep_compiled=attempt == 0)
            failed = _beyond(mismatch(opened, net, patch_size, probe_file(graph)), bounds)
        except ModelNotAvailableError:
            if attempt:
                raise
            failed = ("unreadable", float("inf"), 0.0)
        if failed is None:
            return opened
        if attempt == 0:  # a corrupt or foreign file under the right name: export afresh
            from bpr.backends.quantize import INT8_MARK

            for stale in {graph, graph.with_name(graph.stem.split(INT8_MARK)[0] + ".onnx")}:
                stale.unlink(missing_ok=True)
                probe_file(stale).unlink(missing_ok=True)
            graph = _graph(net, patch_size, precision)
    assert failed is not None  # the loop returned otherwise
    statistic, error, tolerance = failed
    raise ModelNotAvailableError(
        f"the exported graph ({graph}) disagrees with the torch network by {error:.3g} "
        f"({statistic}, tolerance {tolerance}); run with --backend torch"
    )


def select_backend(
    net: RefinerNet, name: str, device: torch.device, patch_size: int, precision: str = "auto"
) -> tuple[str, ProbabilityNet | None, str]:
    """(backend name, runtime or None for torch, precision), ``auto`` of either resolved.

    An ``auto`` backend falls back to torch with a warning where the runtime cannot load; an
    explicit choice that cannot load is a one-line error."""
    chosen = automatic_backend(device) if name == "auto" else name
    resolved = automatic_precision(chosen, device) if precision == "auto" else precision
    if chosen == "torch":
        if resolved == "int8":
            raise BprInputError("int8 runs with the openvino or onnxruntime backend, not torch")
        return "torch", None, resolved
    if device.type != "cpu":
        raise BprInputError(f"the {chosen} backend runs on the CPU; use --backend torch on {device}")
    try:
        return chosen, load_runtime(net, chosen, patch_size, resolved), resolved
    except (ModelNotAvailableError, BprInputError) as exc:
        if name != "auto":
            raise
        warnings.warn(
            f"running the torch network: the {chosen} backend did not load ({exc})", RuntimeWarning, stacklevel=3
        )
        return "torch", None, automatic_precision("torch", device) if precision == "auto" else precision

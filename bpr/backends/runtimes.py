"""The exported refiner graph run by OpenVINO or ONNX Runtime, behind the network's own door.

Each runtime object has :meth:`foreground_probability` with the torch network's signature,
so the Refiner's pass loop, gate and reassembly stay exactly as they are: only the function
that turns patches into probabilities changes. Both run on the CPU; on CUDA the torch network
(fp16 autocast) is the backend.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import torch

from bpr.errors import ModelNotAvailableError


def _numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().float().contiguous().cpu().numpy()


class OpenVinoNet:
    """The graph compiled by OpenVINO for the CPU: f32, or bf16 where the CPU has it natively."""

    name = "openvino"

    def __init__(self, graph: Path, threads: int, precision: str = "fp32", keep_compiled: bool = True) -> None:
        """keep_compiled: let OpenVINO keep the compiled graph in ``openvino/`` beside ``graph``
        and reuse it: compiling the default pair takes about 0.6 s of every start, reusing it
        0.15 (OpenVINO keys it on the graph's content and the settings). Off, or where the
        folder cannot be made, every start compiles."""
        try:
            import openvino as ov
        except ImportError:
            raise ModelNotAvailableError("the openvino backend needs OpenVINO: pip install openvino") from None
        hint = "bf16" if precision == "bf16" else "f32"
        config = {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": hint, "PERFORMANCE_HINT": "LATENCY"}
        if keep_compiled:
            compiled_dir = graph.parent / "openvino"
            try:
                compiled_dir.mkdir(parents=True, exist_ok=True)
                config["CACHE_DIR"] = str(compiled_dir)
            except OSError:
                pass  # a read-only cache: compile every time
        try:
            self.compiled = ov.Core().compile_model(str(graph), "CPU", config)
        except Exception as exc:  # noqa: BLE001 - OpenVINO raises its own RuntimeError types
            raise ModelNotAvailableError(f"OpenVINO cannot load {graph}: {str(exc).splitlines()[0]}") from None
        self.precision = precision if precision in ("bf16", "int8") else "fp32"
        self._local = threading.local()  # an infer request is not thread-safe: one per thread

    def foreground_probability(self, image_patches: torch.Tensor, mask_patches: torch.Tensor) -> torch.Tensor:
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self.compiled.create_infer_request()
        request.infer({0: _numpy(image_patches), 1: _numpy(mask_patches)})
        return torch.from_numpy(request.get_output_tensor(0).data.copy())


class OnnxRuntimeNet:
    """The graph run by ONNX Runtime's CPU provider (fp32)."""

    name = "onnxruntime"
    precision = "fp32"

    def __init__(self, graph: Path, threads: int) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise ModelNotAvailableError(
                "the onnxruntime backend needs ONNX Runtime: pip install onnxruntime"
            ) from None
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # no warnings on stderr for every session
        try:
            self.session = ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - ORT raises its own exception types
            raise ModelNotAvailableError(f"ONNX Runtime cannot load {graph}: {str(exc).splitlines()[0]}") from None

    def foreground_probability(self, image_patches: torch.Tensor, mask_patches: torch.Tensor) -> torch.Tensor:
        (prob,) = self.session.run(None, {"image_patches": _numpy(image_patches), "mask_patches": _numpy(mask_patches)})
        return torch.from_numpy(prob)

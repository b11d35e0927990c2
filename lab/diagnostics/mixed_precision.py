#!/usr/bin/env python
"""The default pair with each of its two networks at its own precision (issue 24).

int8 for both networks runs the benchmark's 1024x2048 image 1.2x faster than bf16 but moves two
street-scene numbers past the 0.05-point bound (session 11). Which network's quantization moves
them? This builds the default Refiner in bf16, swaps in an int8 graph for the first network
(``--first int8``) or the companion (``--companion int8``), times the benchmark's workloads
interleaved with the plain bf16 pair, and writes the whole dev table (bpr-dev-table's inputs and
scoring). An experiment, not in the library.

    python lab/diagnostics/mixed_precision.py --first int8 --companion bf16 --out work/s12/mixed_first_int8
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from benchmark import cityscapes_like, davis_frame, time_interleaved  # noqa: E402

from bpr.evaluate.dev_table import INPUTS, print_table, score_inputs  # noqa: E402
from bpr.io.datasets import shared_data_root  # noqa: E402
from bpr.loading import choose_runtime  # noqa: E402
from bpr.refiner import Refiner  # noqa: E402


def quantized_without_heads(graph: Path, patch_size: int) -> Path:
    """As bpr.backends.quantize.quantized_graph, but the decode and detail heads (the logits and
    the full-resolution convolutions after them) stay in float."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    from bpr.backends.quantize import INT8_MARK, calibration_digest, calibration_patches

    path = graph.with_name(f"{graph.stem}{INT8_MARK}heads-{calibration_digest()}.onnx")
    if path.is_file():
        return path
    names = [n.name for n in onnx.load(str(graph), load_external_data=False).graph.node]
    keep = [n for n in names if "detail_head" in n or "decode_head" in n or n.startswith("/net/Resize")]
    images, masks = calibration_patches(patch_size)

    class Patches(CalibrationDataReader):
        def __init__(self) -> None:
            self.start = 0

        def get_next(self) -> dict | None:
            if self.start >= len(images):
                return None
            a, self.start = self.start, self.start + 32
            return {"image_patches": images[a : a + 32].numpy(), "mask_patches": masks[a : a + 32].numpy()}

    quantize_static(
        str(graph),
        str(path),
        Patches(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        nodes_to_exclude=keep,
    )
    print(f"{len(keep)} head nodes left in float", flush=True)
    return path


def mixed(first: str, companion: str, heads_float: bool = False) -> Refiner:
    if heads_float:
        import bpr.backends.quantize as quantize

        quantize.quantized_graph = quantized_without_heads
    refiner = Refiner.from_checkpoint(None, backend="openvino", precision="bf16")
    net = refiner.net
    if first != "bf16":
        size = refiner.patch_size + 2 * net.config.context
        _, refiner.infer_net, _ = choose_runtime(net, "openvino", refiner.device, size, first, None, True)
    if companion != "bf16":
        assert net.companion is not None
        _, refiner.companion_net, _ = choose_runtime(
            net.companion, "openvino", refiner.device, refiner.view_size, companion, None, True
        )
    return refiner


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--first", default="bf16", choices=["bf16", "int8", "fp32"])
    p.add_argument("--companion", default="bf16", choices=["bf16", "int8", "fp32"])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--no-table", action="store_true")
    p.add_argument("--heads-float", action="store_true", help="int8 graphs keep their output heads in float")
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    candidate = mixed(a.first, a.companion, a.heads_float)
    refiners = {"bf16 pair": Refiner.from_checkpoint(None, backend="openvino", precision="bf16"), "mixed": candidate}
    times = {}
    for name, (image, masks) in {"davis": davis_frame(), "1024x2048": cityscapes_like()}.items():
        times[name] = time_interleaved(refiners, image, masks, a.repeats)
        print(name, {k: round(v["total"] * 1000, 1) for k, v in times[name].items()}, flush=True)
    (a.out / "times.json").write_text(json.dumps(times, indent=1))
    if not a.no_table:
        rows = score_inputs(candidate, INPUTS, shared_data_root(), Path("work/dev_inputs"))
        with open(a.out / "table.md", "w") as f:
            heads = ", heads in float" if a.heads_float else ""
            print(f"first network {a.first}, companion {a.companion}{heads} (OpenVINO)\n", file=f)
            print_table(rows, file=f)
        (a.out / "rows.json").write_text(json.dumps(rows, indent=1, default=float))
        print_table(rows)


if __name__ == "__main__":
    main()

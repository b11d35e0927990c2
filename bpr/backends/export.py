"""Export a refiner network to ONNX once, and find the exported graph again next time.

What is exported is :meth:`RefinerNet.foreground_probability` for one patch size: raw patches
in (image 0..255 RGB, mask 0/1), foreground probability at patch size out, with the resizing
and normalisation inside the graph, so a runtime does everything the torch network does.

The graph is cached under a name that hashes everything it depends on (the weights, the
config, the patch size, the export recipe and the torch that traced it), so a changed
checkpoint never meets an old graph; the same key is written into the graph's metadata and
checked on load, so a graph copied or corrupted under that name is rebuilt, not run.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from bpr.io.atomic import atomic_path
from bpr.modeling.refiner_net import RefinerNet

EXPORT_VERSION = 1  # bump when the exported graph's inputs, outputs or recipe change
OPSET = 17
KEY_FIELD = "bpr_graph_key"


class ProbabilityGraph(nn.Module):
    """The exported function: (image patches, mask patches) -> foreground probability."""

    def __init__(self, net: RefinerNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, image_patches: torch.Tensor, mask_patches: torch.Tensor) -> torch.Tensor:
        return self.net.foreground_probability(image_patches, mask_patches)


def graph_key(net: RefinerNet, patch_size: int) -> str:
    """A hash of everything the exported graph depends on (weights included)."""
    digest = hashlib.sha256()
    recipe = {
        "export": EXPORT_VERSION,
        "opset": OPSET,
        "torch": torch.__version__,
        "patch": patch_size,
        "config": net.config.to_dict(),
    }
    digest.update(json.dumps(recipe, sort_keys=True).encode())
    for name, tensor in net.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:32]


def cache_dir() -> Path:
    """``BPR_CACHE_DIR``, else ``$XDG_CACHE_HOME/bpr`` (``~/.cache/bpr``)."""
    if os.environ.get("BPR_CACHE_DIR"):
        return Path(os.environ["BPR_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "bpr"


def export_onnx(net: RefinerNet, patch_size: int, path: Path, key: str) -> Path:
    """Trace ``net`` (on the CPU) at ``patch_size``, batch dimension dynamic; written atomically."""
    import onnx

    graph = ProbabilityGraph(net).eval()
    images = torch.rand(2, 3, patch_size, patch_size) * 255
    masks = (torch.rand(2, 1, patch_size, patch_size) > 0.5).float()
    with atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about the fixed patch size: intended
        torch.onnx.export(
            graph,
            (images, masks),
            str(tmp),
            input_names=["image_patches", "mask_patches"],
            output_names=["probability"],
            opset_version=OPSET,
            dynamo=False,
            dynamic_axes={"image_patches": {0: "batch"}, "mask_patches": {0: "batch"}, "probability": {0: "batch"}},
        )
        model = onnx.load(str(tmp))
        model.metadata_props.add(key=KEY_FIELD, value=key)
        onnx.save(model, str(tmp))
    return path


def stored_key(path: Path) -> str | None:
    """The key written into a cached graph, or None when the file is not a readable ONNX graph.

    Read with :func:`model_metadata`, not the ``onnx`` package: importing ``onnx`` (and the
    ``ml_dtypes`` it pulls in) took 0.6 s of every start-up that only needed this one string.
    """
    try:
        return model_metadata(path.read_bytes()).get(KEY_FIELD)
    except (OSError, ValueError):
        return None


def model_metadata(data: bytes) -> dict[str, str]:
    """``metadata_props`` of a serialized ONNX ``ModelProto`` (field 14: repeated
    ``StringStringEntryProto`` with ``key`` = 1 and ``value`` = 2), read straight from the
    protobuf wire format: the top-level fields are walked and the graph (field 7) is skipped by
    its length, never parsed. ValueError when ``data`` is not a well-formed message."""
    props: dict[str, str] = {}
    for number, value in _fields(memoryview(data)):
        if number == 14 and isinstance(value, memoryview):
            entry: dict[int, bytes] = {}
            for n, v in _fields(value):
                if isinstance(v, memoryview):
                    entry.setdefault(n, bytes(v))
            key = entry.get(1, b"").decode("utf-8", "replace")
            # a key given twice: the first wins, as stored_key has always read it
            props.setdefault(key, entry.get(2, b"").decode("utf-8", "replace"))
    return props


def _fields(data: memoryview) -> Iterator[tuple[int, int | memoryview]]:
    """The (field number, value) pairs of one protobuf message, one at a time (a malformed file
    of many tiny fields costs no memory): varints and fixed-width values as ints,
    length-delimited ones as views into ``data`` (the graph is not copied)."""
    pos, end = 0, len(data)
    while pos < end:
        tag, pos = _varint(data, pos)
        number, wire = tag >> 3, tag & 7
        if number == 0:
            raise ValueError("field number 0")
        if wire == 0:
            value, pos = _varint(data, pos)
            yield number, value
        elif wire in (1, 5):
            width = 8 if wire == 1 else 4
            if pos + width > end:
                raise ValueError("truncated fixed-width field")
            yield number, int.from_bytes(data[pos : pos + width].tobytes(), "little")
            pos += width
        elif wire == 2:
            length, pos = _varint(data, pos)
            if pos + length > end:
                raise ValueError("truncated length-delimited field")
            yield number, data[pos : pos + length]
            pos += length
        else:
            raise ValueError(f"unsupported wire type {wire}")


def _varint(data: memoryview, pos: int) -> tuple[int, int]:
    """A base-128 varint at ``pos``: its value and the position after it."""
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError("truncated or overlong varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def cached_graph(net: RefinerNet, patch_size: int, directory: Path | None = None) -> Path:
    """The exported graph of ``net`` at ``patch_size``: from the cache when its key matches,
    else exported now (a few seconds, once). An unwritable cache folder falls back to a
    per-user temporary folder."""
    key = graph_key(net, patch_size)
    folder = directory or cache_dir()
    path = folder / f"refiner-{key}.onnx"
    if path.is_file() and stored_key(path) == key:
        return path
    try:
        return export_onnx(net, patch_size, path, key)
    except OSError:
        import tempfile

        fallback = Path(tempfile.gettempdir()) / f"bpr-cache-{os.getuid()}" / path.name
        if fallback.is_file() and stored_key(fallback) == key:
            return fallback
        return export_onnx(net, patch_size, fallback, key)

"""Inference backends: the exported graph computes what the torch network computes, bpr-refine
writes the same masks whichever runs, a stale or corrupt graph is rebuilt or refused, and the
automatic choice is pinned."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import bpr.backends as backends
from bpr.backends import automatic_backend, automatic_precision, load_runtime, select_backend
from bpr.backends.export import KEY_FIELD, cached_graph, graph_key, model_metadata, stored_key
from bpr.cli.refine import main as refine_main
from bpr.errors import BprInputError, ModelNotAvailableError
from bpr.io.coco import load_json
from bpr.io.images import read_image
from bpr.io.results import entries_to_masks
from bpr.modeling import RefinerConfig, RefinerNet, load_refiner, save_refiner
from bpr.patches import crop_rows
from bpr.refiner import Refiner, default_checkpoint

pytest.importorskip("openvino", reason="the openvino backend is not installed")
pytest.importorskip("onnxruntime", reason="the onnxruntime backend is not installed (the onnx extra)")

RUNTIMES = ["openvino", "onnxruntime"]


@pytest.fixture(autouse=True)
def graph_cache(tmp_path_factory, monkeypatch):
    """Every test exports into one fresh cache of this session, never into the user's."""
    monkeypatch.setenv("BPR_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "graph-cache"))


def real_patches(data_dir, count=4, views=False):
    """First-pass patches of real cityscapes-dev images with Mask R-CNN-like coarse masks (with
    ``views``: the 96 px views the default model sees around them)."""
    root = data_dir / "cityscapes-dev"
    info = {i["id"]: i for i in load_json(root / "gt.json")["images"]}
    entries: dict = {}
    for e in load_json(root / "maskrcnn28.json"):
        entries.setdefault(e["image_id"], []).append(e)
    cutter = Refiner(backend="torch", min_area=0)  # every instance, small ones too
    images, masks = [], []
    for key in list(entries)[:count]:
        im = info[key]
        job = cutter.start_numpy(
            read_image(root / "images" / im["file_name"]), entries_to_masks(entries[key], im["height"], im["width"])
        ).advance()
        if views:
            images.append(job.image_patches)
            masks.append(job.mask_patches)
        else:
            images.append(crop_rows(job.image_patches, job.view_offsets, 64))
            masks.append(crop_rows(job.mask_patches, job.view_offsets, 64))
    return torch.cat(images), torch.cat(masks)


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_the_exported_default_model_gives_the_torch_probabilities_on_real_views(runtime, data_dir):
    """The default refiner sees 16 px of context: it runs on the 96 px views around each patch."""
    images, masks = real_patches(data_dir, views=True)
    assert len(images) > 90 and images.shape[1:] == (3, 96, 96)
    net = load_refiner(default_checkpoint())
    assert net.config.context == 16
    with torch.inference_mode():
        expected = net.foreground_probability(images, masks)
    got = load_runtime(net, runtime, 96, "fp32").foreground_probability(images, masks)
    assert got.shape == expected.shape == (len(images), 96, 96)
    assert (got - expected).abs().max() < 1e-4
    assert ((got > 0.5) != (expected > 0.5)).float().mean() < 1e-5


@pytest.mark.parametrize(
    "config",
    [RefinerConfig(arch="effl0", input_size=64), RefinerConfig(arch="hr18s", input_size=128)],
    ids=["effl0-64", "hr18s-128-resized"],
)
def test_every_architecture_and_a_resizing_input_exports(config, data_dir):
    """The BPR reference runs 64 px patches at input 128: the resizes live inside the graph."""
    torch.manual_seed(0)
    net = RefinerNet(config).eval()
    images, masks = real_patches(data_dir, count=1)
    with torch.inference_mode():
        expected = net.foreground_probability(images, masks)
    got = load_runtime(net, "openvino", 64, "fp32").foreground_probability(images, masks)
    assert (got - expected).abs().max() < 1e-4


def test_bf16_stays_near_fp32_where_it_is_allowed(data_dir):
    images, masks = real_patches(data_dir, count=1, views=True)
    net = load_refiner(default_checkpoint())
    with torch.inference_mode():
        expected = net.foreground_probability(images, masks)
    got = load_runtime(net, "openvino", 96, "bf16").foreground_probability(images, masks)
    assert (got - expected).abs().max() < 0.05
    with pytest.raises(BprInputError, match="not onnxruntime"):
        load_runtime(net, "onnxruntime", 96, "bf16")


@pytest.mark.slow
def test_bpr_refine_writes_the_same_masks_with_every_backend(tmp_path, data_dir):
    """Stated tolerance, as a share of the pixels torch's refined masks hold: float graphs
    differ by at most 1 in 100,000 (measured: 0 on all of cityscapes-dev, OSVOS and RVOS),
    bf16 by at most 1 in 1,000 (measured: 264 of 3.8 M on cityscapes-dev), int8 by at most 2 in
    1,000 (measured on these six images with the session-19 default: 1.4 in 1,000)."""
    root = data_dir / "cityscapes-dev"
    results = load_json(root / "maskrcnn28.json")
    first = sorted({r["image_id"] for r in results})[:6]
    (tmp_path / "in.json").write_text(json.dumps([r for r in results if r["image_id"] in first]))
    info = {i["id"]: i for i in load_json(root / "gt.json")["images"]}
    masks = {}
    variants = [
        ("torch", "fp32"),
        ("openvino", "fp32"),
        ("onnxruntime", "fp32"),
        ("openvino", "bf16"),
        ("openvino", "int8"),
    ]
    for backend, precision in variants:
        out = tmp_path / f"{backend}-{precision}.json"
        assert (
            refine_main(
                [
                    str(tmp_path / "in.json"),
                    "--images",
                    str(root / "images"),
                    "--image-info",
                    str(root / "gt.json"),
                    "--out",
                    str(out),
                    "--backend",
                    backend,
                    "--precision",
                    precision,
                    "--quiet",
                    "--threads",
                    "1",
                ]
            )
            == 0
        )
        entries = load_json(out)
        masks[backend, precision] = np.concatenate(
            [
                entries_to_masks([e], info[e["image_id"]]["height"], info[e["image_id"]]["width"]).ravel()
                for e in entries
            ]
        )
    reference = masks["torch", "fp32"]
    assert reference.sum() > 100_000
    for (backend, precision), got in masks.items():
        share = (got != reference).sum() / reference.sum()
        assert share <= {"fp32": 1e-5, "bf16": 1e-3, "int8": 2e-3}[precision], (backend, precision, share)
    if backends.cpu_has_native_bf16():  # bf16 really ran: it moves a few pixels
        assert (masks["openvino", "bf16"] != reference).any()


def test_a_corrupt_or_foreign_cached_graph_is_rebuilt(tmp_path):
    torch.manual_seed(0)
    net = RefinerNet(RefinerConfig(input_size=64)).eval()
    path = cached_graph(net, 64, tmp_path)
    key = graph_key(net, 64)
    assert path.name == f"refiner-{key}.onnx" and stored_key(path) == key
    mtime = path.stat().st_mtime_ns
    assert cached_graph(net, 64, tmp_path) == path and path.stat().st_mtime_ns == mtime  # found, not re-exported
    path.write_bytes(b"\x00garbage")  # a torn or corrupted file
    assert stored_key(path) is None
    assert stored_key(cached_graph(net, 64, tmp_path)) == key
    torch.manual_seed(1)
    other = RefinerNet(RefinerConfig(input_size=64)).eval()
    foreign = cached_graph(other, 64, tmp_path)
    path.write_bytes(foreign.read_bytes())  # another network's graph under this one's name
    assert stored_key(path) == graph_key(other, 64) != key
    rebuilt = cached_graph(net, 64, tmp_path)
    assert stored_key(rebuilt) == key


def test_the_graph_key_is_read_without_onnx_as_onnx_wrote_it_and_a_torn_graph_has_none(tmp_path):
    """stored_key walks the protobuf itself (start-up without importing onnx): it must read every
    metadata entry exactly as onnx does, and a graph cut short anywhere has no key."""
    import onnx

    torch.manual_seed(0)
    path = cached_graph(RefinerNet(RefinerConfig(input_size=64)).eval(), 64, tmp_path)
    model = onnx.load(str(path))
    model.metadata_props.add(key="note", value="ünïcode and = signs")
    onnx.save(model, str(path))
    data = path.read_bytes()
    assert model_metadata(data) == {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert model_metadata(data)["note"] == "ünïcode and = signs"
    for cut in (1, 100, len(data) // 2, len(data) - 1):
        path.write_bytes(data[:cut])
        assert stored_key(path) is None, cut


@pytest.mark.parametrize(
    "data, props",
    [
        # a fixed64 (field 1) and a fixed32 (field 2) beside one entry: skipped by their widths
        (b"\x09" + bytes(8) + b"\x15" + bytes(4) + b"\x72\x06\x0a\x01k\x12\x01v", {"k": "v"}),
        # a varint field, then two entries with the same key: the first wins
        (b"\x08\x96\x01" + b"\x72\x06\x0a\x01k\x12\x01a" + b"\x72\x06\x0a\x01k\x12\x01b", {"k": "a"}),
        (b"", {}),
    ],
)
def test_the_metadata_reader_walks_every_wire_type(data, props):
    assert model_metadata(data) == props


@pytest.mark.parametrize(
    "data",
    [
        b"\x08" + b"\xff" * 11,  # a varint over 64 bits
        b"\x08\x80",  # a varint cut short
        b"\x0d\x00\x00",  # a fixed32 cut short
        b"\x09" + bytes(4),  # a fixed64 cut short
        b"\x0b",  # a group: not in ONNX
        b"\x00\x01",  # field number 0
        b"\x72\x10\x0a\x01k",  # an entry longer than the file
    ],
)
def test_the_metadata_reader_refuses_a_malformed_message(data):
    with pytest.raises(ValueError):
        model_metadata(data)


def test_loading_a_refiner_from_its_cached_graph_never_imports_onnx(tmp_path):
    code = (
        "import sys; from bpr.refiner import Refiner; Refiner.from_checkpoint(None, backend='openvino'); "
        "print('onnx' in sys.modules)"
    )
    env = {**os.environ, "BPR_CACHE_DIR": str(tmp_path)}
    subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True)  # exports (onnx)
    again = subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True, text=True)
    assert again.stdout.strip() == "False"


def test_openvino_keeps_its_compilation_beside_the_graph_and_reuses_it(data_dir):
    torch.manual_seed(0)
    net = RefinerNet(RefinerConfig(input_size=64)).eval()
    first = load_runtime(net, "openvino", 64, "fp32")
    kept = cached_graph(net, 64).parent / "openvino"
    blobs = {path: path.stat().st_mtime_ns for path in kept.iterdir()}
    assert blobs  # OpenVINO wrote its compiled graph there
    second = load_runtime(net, "openvino", 64, "fp32")
    assert {path: path.stat().st_mtime_ns for path in kept.iterdir()} == blobs  # read back, not compiled again
    images, masks = real_patches(data_dir, count=1)
    assert torch.equal(first.foreground_probability(images, masks), second.foreground_probability(images, masks))


def test_a_changed_weight_changes_the_key():
    torch.manual_seed(0)
    net = RefinerNet(RefinerConfig(input_size=64))
    key = graph_key(net, 64)
    assert graph_key(net, 96) != key
    with torch.no_grad():
        net.decode_head.conv_seg.bias[0] += 1e-3
    assert graph_key(net, 64) != key


def test_a_graph_that_disagrees_with_torch_is_rebuilt_once_then_refused(monkeypatch):
    torch.manual_seed(0)
    net = RefinerNet(RefinerConfig(input_size=64)).eval()
    real_open = backends._open
    opened = []

    class Wrong:
        def foreground_probability(self, images, masks):
            return torch.zeros(len(images), images.shape[-2], images.shape[-1])

    def flaky(runtime, graph, threads, precision, keep_compiled):  # wrong the first time only: a corrupt graph
        opened.append((graph, keep_compiled))
        return Wrong() if len(opened) == 1 else real_open(runtime, graph, threads, precision, keep_compiled)

    monkeypatch.setattr(backends, "_open", flaky)
    assert load_runtime(net, "openvino", 64, "fp32") is not None
    assert [keep for _, keep in opened] == [True, False]  # the retry compiles afresh, not from OpenVINO's kept copy
    monkeypatch.setattr(backends, "_open", lambda *a, **k: Wrong())
    with pytest.raises(
        ModelNotAvailableError, match=r"disagrees with the torch network by 0\.\d+ \(max, tolerance 0\.001\)"
    ) as err:
        load_runtime(net, "openvino", 64, "fp32")
    assert "\n" not in str(err.value)
    with pytest.raises(ModelNotAvailableError, match=r"\(mean, tolerance 0\.03\)"):
        load_runtime(net, "openvino", 64, "bf16")  # reduced precision: the mean difference is bounded


def test_a_warm_start_reads_the_torch_probe_answer_kept_beside_the_graph(monkeypatch, tmp_path):
    """The torch network's probabilities on the probe batch are a function of the graph's key,
    so they are kept beside the graph: a second start skips that forward pass. A kept answer
    that is torn or wrong is never trusted: computed afresh, or the graph rebuilt and checked."""
    monkeypatch.setenv("BPR_CACHE_DIR", str(tmp_path))
    torch.manual_seed(0)
    net = RefinerNet(RefinerConfig(input_size=64)).eval()
    calls = []
    forward = net.foreground_probability
    monkeypatch.setattr(net, "foreground_probability", lambda *a: calls.append(1) or forward(*a))
    load_runtime(net, "openvino", 64, "fp32")  # exports (one traced call) and checks (one call)
    kept = backends.probe_file(cached_graph(net, 64))
    assert len(calls) == 2 and kept.is_file()
    right = torch.load(kept, weights_only=True)
    assert torch.allclose(right, forward(*backends.probe_batch(64)))
    load_runtime(net, "openvino", 64, "fp32")
    assert len(calls) == 2  # the warm start ran the torch network not at all
    kept.write_bytes(kept.read_bytes()[:100])  # torn: read as absent, computed and kept again
    load_runtime(net, "openvino", 64, "fp32")
    assert len(calls) == 3 and torch.equal(torch.load(kept, weights_only=True), right)
    torch.save(torch.zeros_like(right), kept)  # a wrong answer fails the check: exported and checked afresh
    assert load_runtime(net, "openvino", 64, "fp32") is not None
    assert len(calls) == 5 and torch.equal(torch.load(kept, weights_only=True), right)


def test_reduced_precision_is_judged_by_mean_and_99th_percentile_and_faults_still_fail(monkeypatch, tmp_path):
    """bf16 moves a few probe pixels far (effl0 at step 31,000: 0.051 at one pixel, over the
    old max bound of 0.05) but little on average or at the 99th percentile; another network's
    graph differs by 0.25 and more on average; a fault confined to each patch's border ring (6%
    of the pixels, the decision flipped there) keeps the mean small but not the 99th percentile."""
    torch.manual_seed(0)
    net = RefinerNet(RefinerConfig(arch="effl0", input_size=64)).eval()
    other = RefinerNet(RefinerConfig(arch="effl0", input_size=64)).eval()

    class OnePixelOff:  # the torch network, one probe pixel moved by 0.2
        def foreground_probability(self, images, masks):
            p = net.foreground_probability(images, masks).clone()
            p[0, 0, 0] = (p[0, 0, 0] + 0.2) % 1
            return p

    class BorderRingFlipped:  # the torch network, its decision flipped on every patch's outer ring
        def foreground_probability(self, images, masks):
            p = net.foreground_probability(images, masks).clone()
            ring = torch.ones_like(p, dtype=torch.bool)
            ring[:, 1:-1, 1:-1] = False
            p[ring] = (p[ring] <= 0.5).float()
            return p

    one = backends.mismatch(OnePixelOff(), net, 64)
    assert one["max"] > 0.15 and one["mean"] < 1e-4 and one["p99"] < 1e-4
    assert backends.mismatch(other, net, 64)["mean"] > 0.1
    ring = backends.mismatch(BorderRingFlipped(), net, 64)
    assert ring["mean"] < backends.TOLERANCE["int8"]["mean"] and ring["p99"] > 0.4
    assert set(backends.TOLERANCE["bf16"]) == set(backends.TOLERANCE["int8"]) == {"mean", "p99"}
    monkeypatch.setattr(backends, "_graph", lambda *a: tmp_path / "unused.onnx")
    for fault, precision, statistic in ((OnePixelOff(), "fp32", "max"), (BorderRingFlipped(), "int8", "p99")):
        monkeypatch.setattr(backends, "_open", lambda *a, fault=fault, **k: fault)
        with pytest.raises(ModelNotAvailableError, match=rf"\({statistic}, tolerance"):
            load_runtime(net, "openvino", 64, precision)
    monkeypatch.setattr(backends, "_open", lambda *a, **k: OnePixelOff())
    assert isinstance(load_runtime(net, "openvino", 64, "bf16"), OnePixelOff)  # one pixel: kept


def test_the_automatic_choice_is_pinned(monkeypatch, random_checkpoint):
    assert automatic_backend(torch.device("cpu")) == "openvino"
    assert automatic_backend(torch.device("cuda")) == "torch"
    monkeypatch.setattr(backends, "installed", lambda runtime: runtime == "onnxruntime")
    assert automatic_backend(torch.device("cpu")) == "onnxruntime"
    monkeypatch.setattr(backends, "installed", lambda runtime: False)
    assert automatic_backend(torch.device("cpu")) == "torch"
    monkeypatch.undo()
    assert Refiner(random_checkpoint).backend == "openvino"  # a checkpoint the Refiner loads
    assert Refiner(load_refiner(random_checkpoint)).backend == "torch"  # a module handed in runs as it is
    monkeypatch.setenv("BPR_BACKEND", "onnxruntime")
    assert Refiner(random_checkpoint).backend == "onnxruntime"
    assert Refiner(random_checkpoint, backend="torch").backend == "torch"


def test_the_automatic_precision_is_pinned(monkeypatch, random_checkpoint):
    """bf16 only where the dev table allowed it: OpenVINO on a CPU with native bf16."""
    monkeypatch.setattr(backends, "cpu_has_native_bf16", lambda: True)
    assert automatic_precision("openvino", torch.device("cpu")) == "bf16"
    assert automatic_precision("onnxruntime", torch.device("cpu")) == "fp32"
    assert automatic_precision("torch", torch.device("cpu")) == "fp32"
    assert automatic_precision("torch", torch.device("cuda")) == "fp16"
    assert Refiner(random_checkpoint).precision == "bf16"
    assert Refiner(random_checkpoint, precision="fp32").precision == "fp32"
    monkeypatch.setattr(backends, "cpu_has_native_bf16", lambda: False)
    assert automatic_precision("openvino", torch.device("cpu")) == "fp32"
    assert Refiner(random_checkpoint).precision == "fp32"


def test_a_backend_that_cannot_load_is_one_line_or_a_warned_fallback(monkeypatch, random_checkpoint, capsys):
    net = load_refiner(random_checkpoint)
    monkeypatch.setattr(backends, "installed", lambda runtime: False)
    with pytest.raises(ModelNotAvailableError, match="openvino backend is not installed"):
        select_backend(net, "openvino", torch.device("cpu"), 64, "fp32")
    monkeypatch.setattr(backends, "automatic_backend", lambda device: "openvino")
    with pytest.warns(RuntimeWarning, match="running the torch network: the openvino backend did not load"):
        assert select_backend(net, "auto", torch.device("cpu"), 64, "fp32") == ("torch", None, "fp32")
        assert select_backend(net, "auto", torch.device("cpu"), 64, "auto") == ("torch", None, "fp32")
    with pytest.raises(BprInputError, match="runs on the CPU"):
        select_backend(net, "onnxruntime", torch.device("cuda"), 64, "fp32")
    monkeypatch.setenv("BPR_BACKEND", "tensorrt")
    assert refine_main(["x.json", "--images", "."]) == 2
    assert "backend must be one of auto, torch, openvino, onnxruntime, got 'tensorrt'" in capsys.readouterr().err


def test_the_exported_graph_carries_its_key_in_metadata(tmp_path):
    import onnx

    torch.manual_seed(0)
    net = RefinerNet(RefinerConfig(input_size=64)).eval()
    model = onnx.load(str(cached_graph(net, 64, tmp_path)))
    assert {p.key: p.value for p in model.metadata_props}[KEY_FIELD] == graph_key(net, 64)
    assert [i.name for i in model.graph.input] == ["image_patches", "mask_patches"]


def test_a_saved_effl0_checkpoint_runs_through_the_automatic_backend(tmp_path, data_dir):
    torch.manual_seed(0)
    net = RefinerNet(RefinerConfig(arch="effl0", input_size=64, patch_size=64))
    save_refiner(net, tmp_path / "e.pt")
    images, masks = real_patches(data_dir, count=1)
    refiner = Refiner(tmp_path / "e.pt", precision="fp32")
    assert refiner.backend == "openvino"
    with torch.inference_mode():
        expected = load_refiner(tmp_path / "e.pt").foreground_probability(images, masks)
    assert (refiner.infer_net.foreground_probability(images, masks) - expected).abs().max() < 1e-4


def test_int8_is_calibrated_on_real_patches_and_stays_near_fp32(data_dir, tmp_path):
    from bpr.backends.quantize import calibration_digest, calibration_patches, quantized_graph

    images, masks = calibration_patches(64)
    assert images.shape == (192, 3, 64, 64) and masks.shape == (192, 1, 64, 64)
    assert 0.2 < float(masks.mean()) < 0.8 and float(images.std()) > 20  # real boundary patches, not blanks
    # the shipped views carry 16 px of context: a patch refiner is calibrated on their centres, at
    # the scale it sees at inference, a context refiner on the whole view
    views, view_masks = calibration_patches(96)
    assert torch.equal(views[..., 16:80, 16:80], images) and torch.equal(view_masks[..., 16:80, 16:80], masks)
    assert torch.equal(calibration_patches(48)[0], views[..., 24:72, 24:72])
    large_images, large_masks = calibration_patches(128)  # beyond the views: resized
    assert large_images.shape[-1] == large_masks.shape[-1] == 128
    assert set(large_masks.unique().tolist()) <= {0.0, 1.0}
    net = load_refiner(default_checkpoint())
    runtime = load_runtime(net, "openvino", 96, "int8")  # the default sees 96 px views
    assert runtime.precision == "int8"
    images, masks = real_patches(data_dir, count=2, views=True)
    with torch.inference_mode():
        expected = net.foreground_probability(images, masks)
    got = runtime.foreground_probability(images, masks)
    assert (got - expected).abs().mean() < 0.01
    assert ((got > 0.5) != (expected > 0.5)).float().mean() < 0.005
    graph = cached_graph(net, 96)
    int8 = quantized_graph(graph, 96)
    assert int8.name == f"{graph.stem}-int8-{calibration_digest()}.onnx"  # new calibration, new graph
    mtime = int8.stat().st_mtime_ns
    assert quantized_graph(graph, 96).stat().st_mtime_ns == mtime  # cached, not quantized again
    with pytest.raises(BprInputError, match="int8 runs with the openvino or onnxruntime backend"):
        Refiner(backend="torch", precision="int8")

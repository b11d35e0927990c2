"""bpr-refine end to end on real data, and every bad input it must refuse cleanly."""

import json
import subprocess
import sys

import numpy as np
import pytest

from bpr.cli.refine import main
from bpr.io.coco import decode_segmentation, encode_mask
from bpr.io.images import read_image
from bpr.refiner import Refiner


@pytest.fixture
def davis_subset(data_dir, tmp_path):
    """Five OSVOS results with extra keys, polygons and list-count RLE mixed in."""
    res = json.loads((data_dir / "davis-dev-real" / "osvos.json").read_text())[:5]
    res[0]["my_field"] = {"keep": [1, 2]}
    res[1]["score"] = 0.42
    res[2]["category_id"] = 7
    h, w = res[3]["segmentation"]["size"]
    m = decode_segmentation(res[3]["segmentation"], h, w)
    flat = m.flatten(order="F").astype(np.uint8)
    changes = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1]]])))
    res[3]["segmentation"] = {"size": [h, w], "counts": np.diff(np.concatenate([[0], changes])).tolist()}
    res[4]["segmentation"] = [[100.0, 100.0, 300.0, 120.0, 280.0, 300.0, 120.0, 280.0]]
    path = tmp_path / "res.json"
    path.write_text(json.dumps(res))
    return path, res


def _args(data_dir, path, ckpt, *extra):
    return [
        str(path),
        "--images",
        str(data_dir / "davis-dev-real" / "images"),
        "--image-info",
        str(data_dir / "davis-dev-real" / "gt.json"),
        "--checkpoint",
        str(ckpt),
        "--quiet",
        *extra,
    ]


def test_refines_a_results_file_keeping_order_scores_categories_and_extra_keys(
    data_dir, davis_subset, random_checkpoint
):
    path, res = davis_subset
    assert main(_args(data_dir, path, random_checkpoint)) == 0
    out = json.loads(path.with_name("res.refined.json").read_text())
    assert len(out) == len(res)
    for before, after in zip(res, out):
        assert after["image_id"] == before["image_id"]
        assert after["score"] == before["score"] and after["category_id"] == before["category_id"]
        assert isinstance(after["segmentation"]["counts"], str)
        m = decode_segmentation(after["segmentation"], 480, 854)
        assert after["area"] == int(m.sum())
        ys, xs = np.nonzero(m)
        want = [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1] if m.any() else [0, 0, 0, 0]
        assert after["bbox"] == want
    assert out[0]["my_field"] == {"keep": [1, 2]}


def test_written_masks_are_the_library_s_refinement_of_each_input(data_dir, davis_subset, random_checkpoint):
    """What bpr-refine writes is exactly Refiner.refine of the decoded inputs, image by image."""
    path, res = davis_subset
    assert main(_args(data_dir, path, random_checkpoint)) == 0
    out = json.loads(path.with_name("res.refined.json").read_text())
    gt = json.loads((data_dir / "davis-dev-real" / "gt.json").read_text())
    names = {i["id"]: i["file_name"] for i in gt["images"]}
    refiner = Refiner.from_checkpoint(random_checkpoint)
    changed = 0
    for before, after in zip(res, out):
        image = read_image(data_dir / "davis-dev-real" / "images" / names[before["image_id"]])
        coarse = decode_segmentation(before["segmentation"], 480, 854)
        expected = refiner.refine(image, coarse[None])[0]
        got = decode_segmentation(after["segmentation"], 480, 854)
        assert np.array_equal(got, expected)
        changed += int((got != coarse).sum())
    assert changed > 1000  # the random network does change the masks, so equality means something


def test_image_ids_as_file_stems_without_image_info(data_dir, tmp_path, random_checkpoint):
    images = tmp_path / "imgs"
    images.mkdir()
    src = data_dir / "davis-dev-real" / "images" / "bmx-trees_00000.jpg"
    (images / "17.jpg").write_bytes(src.read_bytes())
    m = np.zeros((480, 854), bool)
    m[100:300, 200:500] = True
    (tmp_path / "r.json").write_text(
        json.dumps([{"image_id": 17, "category_id": 1, "score": 1.0, "segmentation": encode_mask(m)}])
    )
    assert (
        main(
            [
                str(tmp_path / "r.json"),
                "--images",
                str(images),
                "--checkpoint",
                str(random_checkpoint),
                "--quiet",
                "--out",
                str(tmp_path / "o.json"),
            ]
        )
        == 0
    )
    assert len(json.loads((tmp_path / "o.json").read_text())) == 1


def _write(tmp_path, obj, name="r.json"):
    p = tmp_path / name
    p.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return p


@pytest.mark.parametrize(
    "case, message",
    [
        ("not-json", "not valid JSON"),
        ("empty", "empty"),
        ("unknown-image", "not in"),
        ("bad-rle", "malformed"),
        ("size-mismatch", "does not match the image size"),
        ("missing-image-file", "image file not found"),
        ("not-a-list", "JSON list"),
        ("score-a-word", "'score' must be a finite number, got 'high'"),
        ("score-null", "'score' must be a finite number, got None"),
        ("category-float", "'category_id' must be an int"),
        ("huge-polygon", "polygon vertex out of range"),
    ],
)
def test_bad_input_gives_one_line_and_no_output(case, message, data_dir, tmp_path, random_checkpoint, capsys):
    good = json.loads((data_dir / "davis-dev-real" / "osvos.json").read_text())[:2]
    info = data_dir / "davis-dev-real" / "gt.json"
    if case == "not-json":
        path = _write(tmp_path, "[{oops")
    elif case == "empty":
        path = _write(tmp_path, [])
    elif case == "unknown-image":
        path = _write(tmp_path, [{**good[0], "image_id": 99999}])
    elif case == "bad-rle":
        path = _write(tmp_path, [{**good[0], "segmentation": {"size": [480, 854], "counts": "!!bad"}}])
    elif case == "size-mismatch":
        path = _write(tmp_path, [{**good[0], "segmentation": encode_mask(np.ones((10, 10), bool))}])
    elif case == "missing-image-file":
        info = _write(tmp_path, {"images": [{"id": good[0]["image_id"], "file_name": "gone.jpg"}]}, "info.json")
        path = _write(tmp_path, good[:1])
    elif case == "score-a-word":
        path = _write(tmp_path, [good[0], {**good[1], "score": "high"}])
    elif case == "score-null":
        path = _write(tmp_path, [{**good[0], "score": None}])
    elif case == "category-float":
        path = _write(tmp_path, [{**good[0], "category_id": 1.5}])
    elif case == "huge-polygon":
        path = _write(tmp_path, [{**good[0], "segmentation": [[0, 0, 1e300, 0, 1e300, 1e300]]}])
    else:
        path = _write(tmp_path, {"image_id": 1})
    out = tmp_path / "out.json"
    code = main(
        [
            str(path),
            "--images",
            str(data_dir / "davis-dev-real" / "images"),
            "--image-info",
            str(info),
            "--checkpoint",
            str(random_checkpoint),
            "--quiet",
            "--out",
            str(out),
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("bpr-refine: error:") and message in err and "\n" not in err
    assert not out.exists()


def test_refuses_to_overwrite_its_input(data_dir, davis_subset, random_checkpoint, capsys):
    path, _ = davis_subset
    assert main(_args(data_dir, path, random_checkpoint, "--out", str(path))) == 2
    assert "overwrite" in capsys.readouterr().err


def test_python_dash_m_bpr_is_the_same_command(data_dir, davis_subset, random_checkpoint, tmp_path):
    path, _ = davis_subset
    out = tmp_path / "m.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bpr", *_args(data_dir, path, random_checkpoint, "--out", str(out))],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    main(_args(data_dir, path, random_checkpoint, "--out", str(tmp_path / "direct.json")))
    assert json.loads(out.read_text()) == json.loads((tmp_path / "direct.json").read_text())


@pytest.mark.parametrize("case", ["read-only folder", "parent is a file", "under /proc", "a directory"])
def test_an_unwritable_output_is_refused_before_any_work(
    case, data_dir, davis_subset, random_checkpoint, tmp_path, capsys, monkeypatch
):
    path, _ = davis_subset
    if case == "read-only folder":
        if hasattr(__import__("os"), "geteuid") and __import__("os").geteuid() == 0:
            pytest.skip("root writes into read-only folders")
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        out = ro / "out.json"
    elif case == "parent is a file":
        out = path / "out.json"
    elif case == "under /proc":
        out = __import__("pathlib").Path("/proc/bpr-test/out.json")
    else:
        out = tmp_path
    work = []
    monkeypatch.setattr("bpr.spec.RefinerSpec.build", lambda self: work.append(1))  # no refiner may be built
    assert main(_args(data_dir, path, random_checkpoint, "--out", str(out))) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("bpr-refine: error:") and "\n" not in err and str(out) in err
    assert not work


def test_every_command_has_a_version(capsys):
    """Every console script of pyproject.toml answers --version with its own name."""
    import importlib
    import re

    from conftest import REPO

    from bpr import __version__

    pyproject = (REPO / "pyproject.toml").read_text()
    section = pyproject.split("[project.scripts]\n", 1)[1].split("\n[", 1)[0]
    scripts = dict(re.findall(r'^(bpr-[\w-]+) = "([\w.]+):main"', section, re.MULTILINE))
    assert set(scripts) == {
        "bpr-refine",
        "bpr-eval",
        "bpr-build-patches",
        "bpr-train",
        "bpr-train-gate",
        "bpr-package",
        "bpr-dev-table",
        "bpr-serve",  # lives with the service: service.cli
    }
    for name, module in scripts.items():
        with pytest.raises(SystemExit) as info:
            importlib.import_module(module).build_parser().parse_args(["--version"])
        assert info.value.code == 0
        assert capsys.readouterr().out.strip() == f"{name} {__version__}"


@pytest.mark.parametrize(
    "script, command",
    [("train_gate", "bpr-train-gate"), ("package_model", "bpr-package"), ("dev_table", "bpr-dev-table")],
)
def test_the_old_script_paths_run_the_commands(script, command, monkeypatch, capsys):
    """scripts/<tool>.py, which older command lines and jobs call, runs the package command."""
    import runpy

    from conftest import REPO

    from bpr import __version__

    monkeypatch.setattr(sys, "argv", [f"scripts/{script}.py", "--version"])
    with pytest.raises(SystemExit) as info:
        runpy.run_path(str(REPO / "scripts" / f"{script}.py"), run_name="__main__")
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"{command} {__version__}"


def test_threads_sets_the_network_threads(data_dir, davis_subset, random_checkpoint, tmp_path, capsys):
    import torch

    path, _ = davis_subset
    before = torch.get_num_threads()
    try:
        assert main(_args(data_dir, path, random_checkpoint, "--threads", "1", "--out", str(tmp_path / "t.json"))) == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    assert main(_args(data_dir, path, random_checkpoint, "--threads", "0")) == 2
    assert "--threads must be at least 1" in capsys.readouterr().err


def test_threads_default_to_the_services_setting(
    data_dir, davis_subset, random_checkpoint, tmp_path, capsys, monkeypatch
):
    """BPR_TORCH_THREADS serves bpr-refine as it serves bpr-serve; --threads wins over it."""
    import torch

    path, _ = davis_subset
    before = torch.get_num_threads()
    monkeypatch.setenv("BPR_TORCH_THREADS", "1")
    try:
        torch.set_num_threads(2)
        assert main(_args(data_dir, path, random_checkpoint, "--out", str(tmp_path / "t.json"), "--quiet")) == 0
        assert torch.get_num_threads() == 1
        assert (
            main(
                _args(data_dir, path, random_checkpoint, "--threads", "2", "--out", str(tmp_path / "t.json"), "--quiet")
            )
            == 0
        )
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    monkeypatch.setenv("BPR_TORCH_THREADS", "many")
    assert main(_args(data_dir, path, random_checkpoint)) == 2
    assert (
        capsys.readouterr().err.strip()
        == "bpr-refine: error: BPR_TORCH_THREADS must be a whole number of threads, got 'many'"
    )

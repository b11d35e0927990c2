"""bpr-refine --engine ray on a local Ray instance, against the local engine, on real images.

The contract: the same output file byte for byte; a run killed midway, a deleted shard or a
killed worker still ends with every instance exactly once; bad input gives the local
engine's one-line error and exit code, with no output. Skips where Ray is not installed.
"""

from __future__ import annotations

import gc
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import make_checkpoint

from bpr.cli.refine import main as refine_cli
from bpr.distributed.shards import STAT_FIELDS, WorkDir, plan_shards, refine_shard
from bpr.io.datasets import shared_data_root

ray = pytest.importorskip("ray", reason="ray is not installed (the ray extra: pip install '.[ray]')")
pytest.importorskip("ray.data", reason="ray[data] is not installed (the ray extra: pip install '.[ray]')")

REPO = Path(__file__).resolve().parents[1]
DATA = shared_data_root()
DAVIS = DATA / "davis-dev-real"
pytestmark = [
    pytest.mark.skipif(not (DAVIS / "gt.json").is_file(), reason=f"shared data not found at {DATA}"),
    pytest.mark.slow,
]


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    """One local Ray instance for the module (2 CPUs); its address for subprocess drivers."""
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=1 << 29, logging_level="WARNING")
    yield ray.get_runtime_context().gcs_address
    gc.collect()  # object refs and zero-copy arrays still in cycles die while Ray can release them
    ray.shutdown()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "bpr64.pt")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """8 DAVIS frames with their real OSVOS masks (own copy of the images, so tests may break them);
    entries carry extra keys that must come back unchanged."""
    root = tmp_path_factory.mktemp("davis")
    gt = json.loads((DAVIS / "gt.json").read_text())
    results = json.loads((DAVIS / "osvos.json").read_text())
    ids = list(dict.fromkeys(e["image_id"] for e in results))[::10][:8]
    entries = [
        {**e, "id": f"obj-{k}", "track": {"k": k}} for k, e in enumerate(r for r in results if r["image_id"] in ids)
    ]
    images = root / "images"
    images.mkdir()
    records = [i for i in gt["images"] if i["id"] in ids]
    for record in records:
        shutil.copy(DAVIS / "images" / record["file_name"], images / record["file_name"])
    (root / "info.json").write_text(json.dumps({"images": records}))
    (root / "results.json").write_text(json.dumps(entries))
    return {"root": root, "images": images, "info": root / "info.json", "results": root / "results.json"}


def args_for(data: dict[str, Path], out: Path, checkpoint: Path, *extra: str) -> list[str]:
    return [
        str(data["results"]),
        "--images",
        str(data["images"]),
        "--image-info",
        str(data["info"]),
        "--checkpoint",
        str(checkpoint),
        "--out",
        str(out),
        *extra,
    ]


@pytest.fixture(scope="module")
def local_output(dataset: dict[str, Path], checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> bytes:
    out = tmp_path_factory.mktemp("local") / "refined.json"
    assert refine_cli(args_for(dataset, out, checkpoint, "--quiet")) == 0
    return out.read_bytes()


def test_ray_output_equals_the_local_engines_byte_for_byte(
    cluster: str, dataset: dict[str, Path], checkpoint: Path, local_output: bytes, tmp_path: Path, capsys: Any
) -> None:
    out = tmp_path / "refined.json"
    assert refine_cli(args_for(dataset, out, checkpoint, "--engine", "ray", "--images-per-shard", "3")) == 0
    assert out.read_bytes() == local_output
    assert not (tmp_path / "refined.json.parts").exists()  # the default work dir goes once the output is whole
    summary = capsys.readouterr().err.strip().splitlines()[-1]
    assert summary.startswith("bpr-refine (ray): 8 images, 8 instances,") and "0 of 3 shards reused" in summary
    refined = json.loads(local_output)
    assert [e["id"] for e in refined] == [f"obj-{k}" for k in range(8)] and refined[3]["track"] == {"k": 3}


def test_images_from_a_uri_prefix(
    cluster: str, dataset: dict[str, Path], checkpoint: Path, local_output: bytes, tmp_path: Path, capsys: Any
) -> None:
    """--images as a URI (here fsspec's local:// scheme, read by the workers as s3:// would be)."""
    pytest.importorskip("fsspec", reason="fsspec is not installed")
    out = tmp_path / "refined.json"
    argv = args_for(dataset, out, checkpoint, "--engine", "ray", "--quiet")
    argv[argv.index("--images") + 1] = f"local://{dataset['images']}"
    assert refine_cli(argv) == 0
    assert out.read_bytes() == local_output
    without_info = [a for a in argv if a not in ("--image-info", str(dataset["info"]))]
    assert refine_cli(without_info) == 2
    assert "--images is a URI: pass --image-info" in capsys.readouterr().err


def _ray_driver(cluster: str, argv: list[str]) -> subprocess.Popen:
    """bpr-refine --engine ray as a separate driver process, joined to the test's Ray instance."""
    return subprocess.Popen(
        [sys.executable, "-m", "bpr.cli.refine", *argv, "--engine", "ray", "--address", cluster],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def _wait_for_shards(work: Path, n: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while len(list(work.glob("shard-*.json"))) < n:
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        assert time.monotonic() < deadline, "no shard finished in time"
        time.sleep(0.1)


def test_a_run_killed_midway_resumes_exactly_once(
    cluster: str, dataset: dict[str, Path], checkpoint: Path, local_output: bytes, tmp_path: Path, capsys: Any
) -> None:
    out, work = tmp_path / "refined.json", tmp_path / "work"
    argv = args_for(dataset, out, checkpoint, "--work-dir", str(work), "--images-per-shard", "1", "--num-workers", "1")
    proc = _ray_driver(cluster, argv)
    _wait_for_shards(work, 2, proc)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver dies mid-run, as on Ctrl-C twice or a lost head node
    proc.wait(30)
    assert not out.exists()  # no partial output
    kept = len(list(work.glob("shard-*.json")))
    assert 2 <= kept < 8

    assert refine_cli([*argv, "--engine", "ray"]) == 0
    assert out.read_bytes() == local_output
    assert f"{kept} of 8 shards reused" in capsys.readouterr().err

    (work / "shard-000005.json").unlink()  # a lost shard is redone alone
    out.unlink()
    assert refine_cli([*argv, "--engine", "ray"]) == 0
    assert out.read_bytes() == local_output
    assert "7 of 8 shards reused" in capsys.readouterr().err
    assert work.is_dir()  # an explicit --work-dir is kept


def test_a_killed_worker_is_retried_by_ray(
    cluster: str, dataset: dict[str, Path], checkpoint: Path, local_output: bytes, tmp_path: Path
) -> None:
    out, work = tmp_path / "refined.json", tmp_path / "work"
    argv = args_for(dataset, out, checkpoint, "--work-dir", str(work), "--images-per-shard", "1", "--num-workers", "1")
    proc = _ray_driver(cluster, argv)
    _wait_for_shards(work, 1, proc)
    actors = _processes_titled("ShardWorker")
    assert actors, "no refiner actor alive"
    os.kill(actors[0], signal.SIGKILL)
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, output
    assert out.read_bytes() == local_output  # every instance, once


def _processes_titled(word: str) -> list[int]:
    """PIDs whose command line (Ray sets it to the actor's class) holds ``word``."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if word.encode() in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


@pytest.mark.parametrize("fault", ["missing image", "malformed entry"])
def test_bad_input_gives_the_local_engines_error(
    cluster: str, dataset: dict[str, Path], checkpoint: Path, tmp_path: Path, capsys: Any, fault: str
) -> None:
    data = {**dataset, "images": tmp_path / "images", "results": tmp_path / "results.json"}
    shutil.copytree(dataset["images"], data["images"])
    entries = json.loads(dataset["results"].read_text())
    if fault == "missing image":
        next(data["images"].iterdir()).unlink()
    else:
        entries[5]["segmentation"] = {"size": [10, 10], "counts": "PP"}
    data["results"].write_text(json.dumps(entries))
    codes, errors = [], []
    for engine in ("local", "ray"):
        out = tmp_path / f"{engine}.json"
        codes.append(refine_cli(args_for(data, out, checkpoint, "--engine", engine, "--quiet")))
        errors.append(capsys.readouterr().err.strip().splitlines()[-1])
        assert not out.exists()
    assert codes == [2, 2]
    assert errors[0] == errors[1] and errors[0].startswith("bpr-refine: error: ")


def test_a_worker_failure_names_the_image(dataset: dict[str, Path]) -> None:
    """Whatever breaks inside a worker comes back as the shard's error, naming its image."""

    class Broken:
        stats = type("S", (), dict.fromkeys(STAT_FIELDS, 0))()

        def refine_many(self, items: Any) -> Iterator[np.ndarray]:
            for _ in items:
                raise RuntimeError("CUDA error: device-side assert triggered")
            yield from ()

    results = json.loads(dataset["results"].read_text())
    groups = {results[0]["image_id"]: [0]}
    shard = plan_shards(results, groups, {results[0]["image_id"]: "/data/frame.jpg"}, 4)[0]
    shard = type(shard)(shard.number, ({**shard.images[0], "path": str(next(dataset["images"].iterdir()))},))
    got = refine_shard(Broken(), shard.payload())
    assert got["error"].startswith(f"image_id {results[0]['image_id']!r} (")
    assert "RuntimeError: CUDA error" in got["error"]


def test_a_work_dir_of_another_run_is_refused(dataset: dict[str, Path], tmp_path: Path) -> None:
    results = json.loads(dataset["results"].read_text())
    groups = {results[0]["image_id"]: [0]}
    shards = plan_shards(results, groups, {results[0]["image_id"]: "a.jpg"}, 1)
    WorkDir(tmp_path / "w", "fingerprint-a", shards)
    from bpr.errors import BprInputError

    with pytest.raises(BprInputError, match="holds shards of another run"):
        WorkDir(tmp_path / "w", "fingerprint-b", shards)
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "mine.txt").write_text("user data")
    with pytest.raises(BprInputError, match="not empty and holds no bpr manifest"):
        WorkDir(tmp_path / "x", "fingerprint-a", shards)


def test_ray_flags_without_the_ray_engine_are_refused(
    dataset: dict[str, Path], checkpoint: Path, tmp_path: Path, capsys: Any
) -> None:
    assert refine_cli(args_for(dataset, tmp_path / "o.json", checkpoint, "--num-workers", "2")) == 2
    assert capsys.readouterr().err.strip() == "bpr-refine: error: --num-workers only apply with --engine ray"


def test_the_local_engine_never_imports_ray() -> None:
    code = "import sys, bpr.cli.refine, bpr.refiner, service.app; print('ray' in sys.modules)"
    assert (
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO).stdout.strip() == "False"
    )


def test_refine_dataset_door_equals_the_refiner(cluster: str, dataset: dict[str, Path], checkpoint: Path) -> None:
    from bpr.distributed.ray_engine import refine_dataset
    from bpr.io.images import read_image
    from bpr.io.results import entries_to_masks, refined_entry
    from bpr.refiner import Refiner
    from bpr.spec import RefinerSpec

    results = json.loads(dataset["results"].read_text())
    info = {i["id"]: i["file_name"] for i in json.loads(dataset["info"].read_text())["images"]}
    rows = []
    for k, (image_id, name) in enumerate(info.items()):
        entries = [e for e in results if e["image_id"] == image_id]
        image = read_image(dataset["images"] / name)
        row = {"key": name, "instances": json.dumps(entries)}
        row.update({"image": image} if k % 2 else {"image_path": str(dataset["images"] / name)})  # both ways in
        rows.append(row)
    rows_by_kind = [[r for r in rows if "image" in r], [r for r in rows if "image_path" in r]]
    refiner = Refiner.from_checkpoint(checkpoint)
    for kind in rows_by_kind:
        ds = ray.data.from_items(kind)
        got = {
            r["key"]: json.loads(r["instances"])
            for r in refine_dataset(ds, RefinerSpec(checkpoint=checkpoint), images_per_call=3).take_all()
        }
        assert len(got) == len(kind)
        for row in kind:
            image = read_image(dataset["images"] / row["key"])
            entries = json.loads(row["instances"])
            masks = refiner.refine(image, entries_to_masks(entries, *image.shape[:2]))
            assert got[row["key"]] == [refined_entry(e, m) for e, m in zip(entries, masks)]

"""bpr-refine as strict as the service: deep JSON, image bombs, too many masks per image and
termination signals all end in one line (exit 2) or a clean exit, never a traceback or a
leftover temporary file."""

from __future__ import annotations

import json
import os
import signal

import bombs
import pytest

from bpr.cli.refine import main


def _run(tmp_path, results, images, info, ckpt, capsys, *extra: str) -> tuple[int, str]:
    path = tmp_path / "r.json"
    path.write_text(results if isinstance(results, str) else json.dumps(results))
    code = main(
        [
            str(path),
            "--images",
            str(images),
            "--image-info",
            str(info),
            "--checkpoint",
            str(ckpt),
            "--quiet",
            "--out",
            str(tmp_path / "out.json"),
            *extra,
        ]
    )
    return code, capsys.readouterr().err.strip()


def _one_line(code: int, err: str, words: str) -> None:
    assert code == 2, err
    assert err.startswith("bpr-refine: error:") and words in err and "\n" not in err, err


def _davis(data_dir):
    root = data_dir / "davis-dev-real"
    return json.loads((root / "osvos.json").read_text()), root / "images", root / "gt.json"


def test_deeply_nested_json_is_one_line(data_dir, tmp_path, random_checkpoint, capsys):
    _, images, info = _davis(data_dir)
    code, err = _run(tmp_path, "[" * 100_000 + "]" * 100_000, images, info, random_checkpoint, capsys)
    _one_line(code, err, "is not valid JSON: nested too deeply")
    assert not (tmp_path / "out.json").exists()


@pytest.mark.parametrize(
    "name,build",
    [("bomb.png", bombs.png_claiming), ("bomb.tif", bombs.tiff_claiming), ("bomb.jpg", bombs.jpeg_claiming)],
)
def test_an_image_bomb_is_one_line_with_the_services_words(name, build, data_dir, tmp_path, random_checkpoint, capsys):
    good, _, _ = _davis(data_dir)
    images = tmp_path / "images"
    images.mkdir()
    (images / name).write_bytes(build(30000, 30000))
    info = tmp_path / "info.json"
    info.write_text(json.dumps({"images": [{"id": 1, "file_name": name}]}))
    entry = {**good[0], "image_id": 1, "segmentation": [[1.0, 1.0, 20.0, 1.0, 20.0, 20.0]]}
    code, err = _run(tmp_path, [entry], images, info, random_checkpoint, capsys)
    _one_line(code, err, "30000x30000 pixels is over the limit of 25000000 pixels (BPR_MAX_PIXELS)")


def test_too_many_masks_for_one_image_is_refused_before_any_image_is_read(
    data_dir, tmp_path, random_checkpoint, capsys
):
    """700 RLEs of 854x480 for one image are 287 M mask pixels (2.6 GiB at the issue's 862k
    entries): refused up front from the RLE sizes, as the service refuses such a request."""
    good, images, info = _davis(data_dir)
    code, err = _run(tmp_path, [good[0]] * 700, images, info, random_checkpoint, capsys)
    _one_line(
        code,
        err,
        f"results for image_id {good[0]['image_id']!r}: 700 instances of 854x480 pixels is over "
        "the limit of 256000000 mask pixels (BPR_MAX_MASK_PIXELS)",
    )


def test_the_mask_limit_also_holds_for_polygons_once_the_image_is_read(
    data_dir, tmp_path, random_checkpoint, capsys, monkeypatch
):
    good, images, info = _davis(data_dir)
    poly = {**good[0], "segmentation": [[1.0, 1.0, 20.0, 1.0, 20.0, 20.0]]}
    monkeypatch.setenv("BPR_MAX_MASK_PIXELS", str(2 * 854 * 480))
    code, err = _run(tmp_path, [poly] * 3, images, info, random_checkpoint, capsys)
    _one_line(code, err, "3 instances of 854x480 pixels is over the limit of 819840 mask pixels (BPR_MAX_MASK_PIXELS)")
    code, err = _run(tmp_path, [poly] * 2, images, info, random_checkpoint, capsys)
    assert code == 0, err


@pytest.mark.usefixtures("signals_not_ignored")
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_a_signal_while_the_output_is_written_leaves_no_file(
    signum, data_dir, tmp_path, random_checkpoint, capsys, monkeypatch
):
    """The signal arrives after part of the output is on disk (inside json.dump): like SIGINT,
    the run ends with a line and 128 + the signal, and neither the output nor its hidden
    temporary file is left."""
    import bpr.io.coco as coco

    real_dump = coco.json.dump

    def dump_then_signal(obj, f, **kw):
        f.write("[")
        f.flush()
        os.kill(os.getpid(), signum)
        real_dump(obj, f, **kw)

    monkeypatch.setattr(coco.json, "dump", dump_then_signal)
    good, images, info = _davis(data_dir)
    before = signal.getsignal(signum)
    code, err = _run(tmp_path, good[:2], images, info, random_checkpoint, capsys)
    assert code == 128 + signum and err.endswith(f"bpr-refine: terminated ({signal.Signals(signum).name})"), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]
    assert signal.getsignal(signum) == before  # the handler is the command's only while it runs


@pytest.mark.usefixtures("signals_not_ignored")
def test_a_signal_the_launcher_ignores_stays_ignored_while_a_command_runs():
    """nohup ignores SIGHUP so that a closed terminal does not end a long run: the command must
    not take the signal back; the signals the launcher left alone are the command's."""
    from bpr.cli.common import run_cli

    seen = {}

    @run_cli("bpr-probe")
    def probe(argv):
        seen.update({s: signal.getsignal(s) for s in (signal.SIGHUP, signal.SIGTERM)})
        return 0

    before = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        assert probe([]) == 0
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, before)
    assert seen[signal.SIGHUP] is signal.SIG_IGN
    assert seen[signal.SIGTERM] not in (signal.SIG_IGN, signal.SIG_DFL)  # SIGTERM unwinds the command


def _dispositions() -> dict[str, str]:
    names = {signal.SIG_DFL: "default", signal.SIG_IGN: "ignored"}
    return {s.name: names.get(signal.getsignal(s), "handler") for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)}


@pytest.mark.usefixtures("signals_not_ignored")
def test_a_commands_worker_processes_take_sigterm_by_default_and_leave_ctrl_c_to_the_command():
    """A forked worker inherits the command's handlers, and a pool ends its workers with
    SIGTERM on close: with the command's handler each would print a traceback. Workers take
    SIGTERM and SIGHUP by default again (one the launcher ignored stays ignored) and ignore
    Ctrl-C, which the command itself handles by closing its pool."""
    import multiprocessing as mp

    from bpr.cli.common import run_cli
    from bpr.signals import worker_defaults

    seen = {}

    @run_cli("bpr-probe")
    def probe(argv):
        with mp.get_context("fork").Pool(1, initializer=worker_defaults) as pool:
            seen["worker"] = pool.apply(_dispositions)
        seen["command"] = _dispositions()
        return 0

    before = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        assert probe([]) == 0
    finally:
        signal.signal(signal.SIGHUP, before)
    assert seen["command"] == {"SIGTERM": "handler", "SIGHUP": "ignored", "SIGINT": "handler"}
    assert seen["worker"] == {"SIGTERM": "default", "SIGHUP": "ignored", "SIGINT": "ignored"}

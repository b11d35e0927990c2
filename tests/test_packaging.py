"""The package as users get it: the library stands without the service, and a wheel refines.

- nothing under bpr/ imports service (the service depends on the library, never the reverse);
- ``import bpr`` (and the refine CLI) loads no web framework;
- a wheel installed into a fresh virtual environment refines the bundled example with the
  bundled model, from a folder outside the repository (the model ships inside the package).
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
from conftest import REPO

WEB_FRAMEWORKS = {"fastapi", "starlette", "uvicorn", "pydantic_settings", "multipart", "httpx"}


def _imported_top_level_names(source: str, filename: str) -> set[str]:
    """Top-level module names of every import statement, however deep in the file."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source, filename=filename)):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_nothing_under_bpr_imports_the_service() -> None:
    files = sorted((REPO / "bpr").rglob("*.py"))
    assert len(files) > 20, "the scan found too few files to mean anything"
    offenders = [
        str(f.relative_to(REPO))
        for f in files
        if "service" in _imported_top_level_names(f.read_text(encoding="utf-8"), str(f))
    ]
    assert offenders == [], f"the library imports the service in {offenders} (bpr-serve lives in service/cli.py)"


def test_the_import_scan_sees_imports_inside_functions() -> None:
    """The scan above must catch the lazy form bpr-serve once used (inside main)."""
    lazy = "def main():\n    import uvicorn\n    from service.app import create_app\n"
    assert "service" in _imported_top_level_names(lazy, "<lazy>")
    assert "service" not in _imported_top_level_names("from .service import x\nimport services\n", "<other>")


def test_importing_the_library_loads_no_web_framework() -> None:
    code = (
        "import bpr, bpr.refiner, bpr.cli.refine; import sys; "
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {sorted(WEB_FRAMEWORKS)!r}))"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env, cwd=REPO)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]", f"import bpr loaded web frameworks: {r.stdout.strip()}"


def test_bpr_serve_is_the_services_command() -> None:
    """The console script points into service/, and its module answers --help without the app."""
    from importlib.metadata import entry_points

    (serve,) = [e for e in entry_points(group="console_scripts") if e.name == "bpr-serve"]
    assert serve.value == "service.cli:main"
    r = subprocess.run(
        [sys.executable, "-m", "service.cli", "--help"], capture_output=True, text=True, timeout=120, cwd=REPO
    )
    assert r.returncode == 0 and "usage: bpr-serve" in r.stdout and "BPR_CHECKPOINT" in r.stdout


def _run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, **kwargs)
    assert r.returncode == 0, f"{cmd} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


@pytest.mark.slow
def test_a_wheel_in_a_fresh_venv_refines_the_example_with_the_bundled_model(tmp_path: Path) -> None:
    """What a PyPI user gets: the wheel alone (no checkout, no editable install) refines with its model.

    The wheel is built from a copy of the package sources, installed into a new venv without
    pip or system site-packages; the dependencies (torch, OpenVINO, ...) are borrowed from this
    interpreter's site-packages through a plain path entry, whose .pth files (the editable
    install's hook among them) Python does not run. The refined file must be byte for byte what
    the checkout writes.
    """
    src = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in ("bpr", "service"):
        shutil.copytree(REPO / name, src / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)

    # Build: without isolation where setuptools is here (no index needed), else pip's default.
    isolation = [] if importlib.util.find_spec("setuptools") is None else ["--no-build-isolation"]
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", *isolation, "-w", str(tmp_path / "dist"), str(src)])
    (wheel,) = (tmp_path / "dist").glob("bpr_refine-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
    assert {"bpr/models/bpr_default.pt", "bpr/py.typed", "service/cli.py"} <= names
    assert not any(n.startswith(("models/", "tests/", "examples/")) for n in names)

    venv = tmp_path / "V"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    py = venv / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--no-deps", "--no-index", str(wheel)])
    site = Path(_run([str(py), "-I", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    here = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (site / "zz_test_dependencies.pth").write_text("".join(f"{p}\n" for p in sorted(here)))

    run_dir = tmp_path / "run"  # outside the repository: nothing there to import or read
    shutil.copytree(REPO / "examples" / "davis", run_dir)
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("PYTHON") and k not in {"BPR_CHECKPOINT", "BPR_DEFAULT_CHECKPOINT"}
    }
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", BPR_TORCH_THREADS="1", BPR_CACHE_DIR=str(tmp_path / "cache"))

    where = json.loads(
        _run(
            [
                str(py),
                "-I",
                "-c",
                (
                    "import json, sys, bpr, service, bpr.refiner as r; "
                    "print(json.dumps([bpr.__file__, service.__file__, str(r.default_checkpoint()), sys.path]))"
                ),
            ],
            cwd=run_dir,
            env=env,
        ).stdout
    )
    bpr_file, service_file, checkpoint, path = where
    for f in (bpr_file, service_file, checkpoint):
        assert Path(f).is_relative_to(site), f"{f} does not come from the wheel installed in {site}"
    assert Path(checkpoint).is_file() and Path(checkpoint).name == "bpr_default.pt"
    assert not any(
        Path(p).resolve().is_relative_to(REPO) and Path(p).resolve() not in {Path(h).resolve() for h in here}
        for p in path
        if p
    ), f"the repository is on the fresh venv's path: {path}"

    args = ["osvos.json", "--images", "images", "--image-info", "image_info.json", "--quiet"]
    _run([str(venv / "bin" / "bpr-refine"), *args], cwd=run_dir, env=env)
    out = run_dir / "osvos.refined.json"
    refined = json.loads(out.read_text())
    given = json.loads((run_dir / "osvos.json").read_text())
    assert len(refined) == len(given) == 4
    assert [e["image_id"] for e in refined] == [e["image_id"] for e in given]
    assert all(e["segmentation"]["counts"] and e["area"] > 1000 for e in refined)

    # The checkout (this interpreter, editable install) writes the same bytes from the same inputs.
    _run([sys.executable, "-m", "bpr", *args, "--out", "checkout.json"], cwd=run_dir, env=env)
    assert out.read_bytes() == (run_dir / "checkout.json").read_bytes()

    serve = _run([str(venv / "bin" / "bpr-serve"), "--help"], cwd=run_dir, env=env)
    assert "usage: bpr-serve" in serve.stdout

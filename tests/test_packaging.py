"""The package as users get it: the library stands without the service, and a wheel refines.

- nothing under bpr/ imports service (the service depends on the library, never the reverse);
- ``import bpr`` (and the refine CLI) loads no web framework;
- a wheel installed into a fresh virtual environment refines the bundled example with the
  bundled model, from a folder outside the repository (the model ships inside the package).
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import sysconfig
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

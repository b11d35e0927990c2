"""A bounded schemathesis run against the live server's OpenAPI schema: no answer may be a 5xx.

Every operation is fuzzed with generated (valid and invalid) multipart bodies, query
parameters and headers; besides "no server error", answers must use the status codes,
content types and JSON shapes the schema documents. /segment has the ``results`` detector,
so its 503 (no detector) does not hide the paths behind it.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

# hypothesis keeps a cache folder; keep it out of the work tree
os.environ.setdefault("HYPOTHESIS_STORAGE_DIRECTORY", os.path.join(tempfile.gettempdir(), "bpr-hypothesis"))
schemathesis = pytest.importorskip("schemathesis", reason="pip install schemathesis (test extra)")
from conftest_service import DAVIS, checkpoint, needs_data, serve  # noqa: E402,F401
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

pytestmark = needs_data
MAX_EXAMPLES = 80


@pytest.fixture(scope="module")
def live_url(checkpoint: Path):
    with serve(
        checkpoint,
        detector="results",
        results_file=DAVIS / "osvos.json",
        results_image_info=DAVIS / "gt.json",
        max_upload_bytes=2_000_000,
        request_timeout_s=120,
    ) as live:
        yield live.url


@pytest.fixture(scope="module")
def api_schema(live_url: str):
    return schemathesis.openapi.from_url(f"{live_url}/openapi.json")


OPERATIONS = [
    ("POST", "/refine"),
    ("POST", "/segment"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/v1/models"),
    ("GET", "/metrics"),
]
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


def test_every_operation_is_fuzzed(api_schema) -> None:
    found = {(r.ok().method.upper(), r.ok().path) for r in api_schema.get_all_operations()}
    assert found == set(OPERATIONS)


# schemathesis' own pytest plugin (schema.parametrize / from_fixture) does not run under
# pytest 9 here, so each operation's strategy is driven by hypothesis directly.
CASES = [(m, p, GenerationMode.POSITIVE) for m, p in OPERATIONS] + [
    ("POST", "/refine", GenerationMode.NEGATIVE),  # only these take input that can be invalid
    ("POST", "/segment", GenerationMode.NEGATIVE),
]
STATUSES: dict[str, list[int]] = {}


@pytest.mark.parametrize("method,path,mode", CASES, ids=[f"{m} {p} {g.value}" for m, p, g in CASES])
def test_no_input_gets_a_server_error(api_schema, method: str, path: str, mode: GenerationMode) -> None:
    operation = api_schema[path][method]
    statuses = STATUSES.setdefault(f"{method} {path} {mode.value}", [])

    strategy = operation.as_strategy(generation_mode=mode)
    if mode == GenerationMode.POSITIVE and method == "POST":  # also the schema's examples: valid instances
        strategy = st.one_of(strategy, *api_schema.get_strategies_from_examples(operation))

    @given(case=strategy)
    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        derandomize=True,
        database=None,
    )
    def run(case) -> None:
        response = case.call_and_validate(checks=CHECKS, timeout=60)
        statuses.append(response.status_code)

    run()
    assert statuses, "hypothesis generated no request"
    if path == "/refine" and mode == GenerationMode.POSITIVE:
        assert 200 in statuses, "no generated request reached the refiner"

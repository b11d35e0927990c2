"""Coverage-guided property tests of the parsers every door shares: whatever a results file or an
instance holds, decoding returns an HxW bool mask or raises BprInputError, in bounded time
and memory; nothing else escapes (no TypeError, no MemoryError, no segfault in pycocotools).

Bounded: a fixed number of examples per property, small images (the cost checks scale with
the image, so these are also the cheapest places for a regression to show).
"""

from __future__ import annotations

import json
import os
import tempfile

import numpy as np
import pytest

os.environ.setdefault("HYPOTHESIS_STORAGE_DIRECTORY", os.path.join(tempfile.gettempdir(), "bpr-hypothesis"))
hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from bpr.errors import BprInputError  # noqa: E402
from bpr.io.coco import decode_segmentation  # noqa: E402
from bpr.io.results import load_results  # noqa: E402

H, W = 24, 32
FUZZ = settings(max_examples=300, deadline=2000, suppress_health_check=[HealthCheck.too_slow], derandomize=True)

numbers = st.one_of(
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, 1, W, H, -W, 2 * W, 2 * H, 1e300, -1e12, 10**400]),
)
json_leaf = st.one_of(st.none(), st.booleans(), numbers, st.text(max_size=12))
json_value = st.recursive(
    json_leaf,
    lambda inner: st.one_of(st.lists(inner, max_size=6), st.dictionaries(st.text(max_size=6), inner, max_size=4)),
    max_leaves=30,
)
polygons = st.lists(st.lists(numbers, min_size=0, max_size=14), max_size=4)
rles = st.fixed_dictionaries(
    {
        "size": st.one_of(st.just([H, W]), st.lists(st.integers(-5, 50), max_size=3), json_value),
        "counts": st.one_of(
            st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=40),
            st.lists(st.integers(-3, H * W + 3), max_size=8),
            json_value,
        ),
    }
)
segmentations = st.one_of(polygons, rles, json_value)


def _decodes_or_refuses(seg) -> None:
    try:
        mask = decode_segmentation(seg, H, W, what="fuzz")
    except BprInputError as exc:
        assert "\n" not in str(exc)
        return
    assert mask.shape == (H, W) and mask.dtype == bool


@FUZZ
@given(segmentations)
def test_any_segmentation_decodes_or_is_refused(seg):
    _decodes_or_refuses(seg)


@FUZZ
@given(
    st.lists(
        st.lists(st.tuples(st.floats(-1024, W + 1024), st.floats(-1024, H + 1024)), min_size=3, max_size=6),
        min_size=1,
        max_size=3,
    )
)  # at most 18 edges of <= 2080 px: inside the outline budget
def test_valid_polygons_decode_like_pycocotools(vertex_lists):
    """Anything within one image size of the image is accepted, and rasterised as pycocotools does."""
    from pycocotools import mask as mask_utils

    polys = [[c for xy in vertices for c in xy] for vertices in vertex_lists]

    got = decode_segmentation(polys, H, W)
    want = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(polys, H, W))).astype(bool)
    assert np.array_equal(got, want)


@settings(
    max_examples=150,
    deadline=2000,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    derandomize=True,
)
@given(
    st.one_of(
        json_value,
        st.lists(
            st.one_of(
                json_value,
                st.fixed_dictionaries(
                    {"image_id": json_leaf, "segmentation": segmentations},
                    optional={"score": json_leaf, "category_id": json_leaf, "id": json_leaf},
                ),
            ),
            max_size=4,
        ),
    )
)
def test_any_results_file_loads_or_is_refused(tmp_path, content):
    path = tmp_path / "r.json"
    path.write_text(json.dumps(content))
    try:
        entries = load_results(path)
    except BprInputError as exc:
        assert "\n" not in str(exc)
        return
    for entry in entries:
        _decodes_or_refuses(entry["segmentation"])

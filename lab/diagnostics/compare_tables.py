"""Every number of a full dev table where a candidate is worse than a reference.

"Judge every change on all dev inputs at once": for each candidate table, the numbers better
and every AP / boundary AP / AP per size / J / F that went down or "worse" share or emptied
count that went up against the reference (``bpr-dev-table --json`` files of the same backend).
``bpr-dev-table --against REFERENCE.json`` prints the same for the run it makes.

    python lab/diagnostics/compare_tables.py REFERENCE.json CANDIDATE.json [...]
"""

from __future__ import annotations

import sys

from bpr.evaluate.dev_table import regressions
from bpr.io.coco import load_json

reference = load_json(sys.argv[1])["rows"]
for path in sys.argv[2:]:
    better, worse = regressions(reference, load_json(path)["rows"])
    print(f"{path}: {better} better, {len(worse)} worse: " + "; ".join(worse))

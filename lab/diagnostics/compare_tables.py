"""Every number of a full dev table where a candidate is worse than a reference.

"Judge every change on all dev inputs at once": this lists, per candidate, each input's
AP / boundary AP / AP per size / J / F that went down and each "worse" share or emptied count
that went up against the reference (two ``bpr-dev-table --json`` files of the same backend).

    python lab/diagnostics/compare_tables.py REFERENCE.json CANDIDATE.json [...]
"""

from __future__ import annotations

import json
import sys

HIGHER_IS_BETTER = ("AP", "bAP", "AP_S", "AP_M", "AP_L", "bAP_L", "bAP_S", "J", "F")
LOWER_IS_BETTER = ("worse", "worse_S", "worse_M", "worse_L", "emptied")


def regressions(reference: dict, candidate: dict) -> tuple[int, list[str]]:
    """(numbers better, descriptions of the numbers worse) of ``candidate``'s rows against ``reference``'s."""
    better, worse = 0, []
    for name, ref in reference.items():
        cand = candidate[name]
        for key in HIGHER_IS_BETTER:
            if ref.get(key) is None or ref[key][1] is None:
                continue
            delta = 100 * (cand[key][1] - ref[key][1])
            if delta < -1e-9:
                worse.append(f"{name} {key} {delta:+.2f}")
            elif delta > 1e-9:
                better += 1
        for key in LOWER_IS_BETTER:
            if ref.get(key) is None:
                continue
            delta = cand[key] - ref[key]
            if delta > 1e-12:
                worse.append(f"{name} {key} +{delta if key == 'emptied' else 100 * delta:.2f}")
            elif delta < -1e-12:
                better += 1
    return better, worse


def main(paths: list[str]) -> None:
    reference = json.load(open(paths[0]))["rows"]
    for path in paths[1:]:
        better, worse = regressions(reference, json.load(open(path))["rows"])
        print(f"{path}: {better} better, {len(worse)} worse: " + "; ".join(worse))


if __name__ == "__main__":
    main(sys.argv[1:])

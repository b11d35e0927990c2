#!/usr/bin/env python
"""One model-card row per bpr-dev-table json (--json): the columns of the issue-21 candidate
tables (changes in points, after-values for cs-bottomup boundary AP_L and davis-near F).

    python lab/diagnostics/dev_table_row.py lab/runs/candidates/ens_s10_*.json
"""

import json
import sys
from pathlib import Path

HEADER = (
    "| candidate | cs-maskrcnn28 AP / bAP / worse | cs-bottomup AP | cs-near J / worse | OSVOS J / F / worse "
    "| RVOS J / F / worse | davis-near J / worse | cs-bottomup bAP_L | davis-near F | gated |"
)


def gain(row: dict, key: str) -> str:
    return f"{(row[key][1] - row[key][0]) * 100:+.2f}"


def worse(row: dict) -> str:
    return f"{row['worse'] * 100:.1f}%"


def cells(rows: dict) -> list[str]:
    cs, bu, near = rows["cs-maskrcnn28"], rows["cs-bottomup"], rows["cs-near"]
    osvos, rvos, dnear = rows["davis-osvos"], rows["davis-rvos"], rows["davis-near"]
    gated = sum(r["run"].get("gated", 0) for r in rows.values())
    patches = sum(r["run"]["patches"] for r in rows.values())
    return [
        f"{gain(cs, 'AP')} / {gain(cs, 'bAP')} / {worse(cs)}",
        gain(bu, "AP"),
        f"{gain(near, 'J')} / {worse(near)}",
        f"{gain(osvos, 'J')} / {gain(osvos, 'F')} / {worse(osvos)}",
        f"{gain(rvos, 'J')} / {gain(rvos, 'F')} / {worse(rvos)}",
        f"{gain(dnear, 'J')} / {worse(dnear)}",
        f"{bu['bAP_L'][1] * 100:.2f}",
        f"{dnear['F'][1] * 100:.2f}",
        f"{gated}/{patches}",
    ]


def main() -> None:
    print(HEADER)
    for path in sys.argv[1:]:
        rows = json.loads(Path(path).read_text())["rows"]
        print(f"| {Path(path).stem} | " + " | ".join(cells(rows)) + " |")


if __name__ == "__main__":
    main()

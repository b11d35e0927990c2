#!/usr/bin/env python
"""The ``ungated_shift`` rule composed from refined outputs, scored as a dev table json.

Each instance takes the ungated refined answer where it changes at least T pixels per pixel of
the coarse boundary, else the gated answer (or the coarse mask: ``coarse``). The ungated answer
here is the refiner's whole answer without its gate (every second opinion run), so this is the
rule's ceiling; the library's version counts patches the gate rejected early with the first
network alone. Session 14 (issue 21).

    python lab/diagnostics/instance_shift_compose.py OUT.json T UNGATED_DIR GATED_DIR|coarse [ANSWER_DIR]

ANSWER_DIR: the chosen instances take this dir's answer instead (the shift is still measured
on UNGATED_DIR's): what refining them harder (no margin, two passes) would add. With
``--removals-only`` they keep or lose their coarse pixels as ANSWER_DIR says and gain pixels
only as UNGATED_DIR says: the refiners trusted to take pixels away from a mask they move far,
not to add to it (session 14; composed from masks, so overlaps and fallbacks are approximate).

    python lab/diagnostics/instance_shift_compose.py OUT.json 0.6 work/s12/refined_nogate \
        work/s12/refined_ship work/s14/refined_ng_m0_kt4 --removals-only
    python lab/diagnostics/dev_table_row.py OUT.json
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from bpr.evaluate.dev_table import INPUTS, input_files, score
from bpr.io.coco import decode_segmentation, load_json, write_json_atomic
from bpr.io.datasets import shared_data_root
from bpr.io.results import refined_entry
from bpr.reassemble import boundary_length


def main() -> None:
    args = [a for a in sys.argv[1:] if a != "--removals-only"]
    removals_only = len(args) < len(sys.argv) - 1
    out, shift, ungated_dir, gated = Path(args[0]), float(args[1]), Path(args[2]), args[3]
    answer_dir = Path(args[4]) if len(args) > 4 else ungated_dir
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in INPUTS:
            gt_path, _, coarse_path = input_files(name, shared_data_root(), Path("work/dev_inputs"))
            sizes = {i["id"]: (i["height"], i["width"]) for i in load_json(gt_path)["images"]}
            coarse = load_json(coarse_path)
            free = load_json(ungated_dir / f"{name}.refined.json")
            answers = load_json(answer_dir / f"{name}.refined.json")
            kept = (
                [{**c, "area": 1} for c in coarse]
                if gated == "coarse"
                else load_json(Path(gated) / f"{name}.refined.json")
            )
            chosen, taken = [], 0
            for c, f, g, answer in zip(coarse, free, kept, answers, strict=True):
                h, w = sizes[c["image_id"]]
                before = decode_segmentation(c["segmentation"], h, w)
                ungated = decode_segmentation(f["segmentation"], h, w)
                if (ungated ^ before).sum() >= shift * max(1, boundary_length(before)):
                    if removals_only:  # kept or lost as the answer says, gained as the ungated answer says
                        kept_or_lost = before & decode_segmentation(answer["segmentation"], h, w)
                        answer = refined_entry(f, kept_or_lost | (~before & ungated))
                    chosen.append(answer)
                    taken += 1
                else:
                    chosen.append(g)
            path = Path(tmp) / f"{name}.json"
            write_json_atomic(path, chosen)
            rows[name] = score(gt_path, coarse_path, path)
            rows[name]["run"] = {"patches": 0, "gated": taken}  # "gated": here, instances given the ungated answer
            print(name, f"{taken} of {len(coarse)} instances ungated", flush=True)
    out.write_text(json.dumps({"rows": rows}))


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""Trust the refiners to take pixels away from a mask they move far, not to add to it: each
instance ``ungated_shift`` (t = 0.6) would pick keeps or loses its coarse pixels as REMOVE_DIR's
answer says (a run at a lower change margin, keep-thin or not: refine_variant.py) and gains pixels
only as the ungated answer at the default margin says (work/s12/refined_nogate); every other
instance keeps the gated answer (work/s12/refined_ship). Composed from masks, so overlaps and the
fallback rule are approximate. Session 14 (issue 21), measured and not built.

    python lab/diagnostics/instance_shift_asym.py OUT.json work/s14/refined_ng_m0_kt4
"""

import json
import sys
import tempfile
from pathlib import Path

from bpr.evaluate.dev_table import INPUTS, input_files, score
from bpr.io.coco import decode_segmentation, encode_mask, load_json, mask_to_bbox, write_json_atomic
from bpr.io.datasets import shared_data_root
from bpr.reassemble import boundary_length

out, remove_dir = Path(sys.argv[1]), Path(sys.argv[2])
rows = {}
with tempfile.TemporaryDirectory() as tmp:
    for name in INPUTS:
        gt_path, _, coarse_path = input_files(name, shared_data_root(), Path("work/dev_inputs"))
        sizes = {i["id"]: (i["height"], i["width"]) for i in load_json(gt_path)["images"]}
        coarse = load_json(coarse_path)
        ng = load_json(Path("work/s12/refined_nogate") / f"{name}.refined.json")
        ship = load_json(Path("work/s12/refined_ship") / f"{name}.refined.json")
        rem = load_json(remove_dir / f"{name}.refined.json")
        chosen = []
        for c, a, g, r in zip(coarse, ng, ship, rem, strict=True):
            h, w = sizes[c["image_id"]]
            cm = decode_segmentation(c["segmentation"], h, w)
            am = decode_segmentation(a["segmentation"], h, w)
            if (am ^ cm).sum() >= 0.6 * max(1, boundary_length(cm)):
                rm = decode_segmentation(r["segmentation"], h, w)
                m = (cm & rm) | (~cm & am)
                chosen.append({**a, "segmentation": encode_mask(m), "bbox": mask_to_bbox(m), "area": int(m.sum())})
            else:
                chosen.append(g)
        p = Path(tmp) / f"{name}.json"
        write_json_atomic(p, chosen)
        rows[name] = score(gt_path, coarse_path, p)
        rows[name]["run"] = {"patches": 0, "gated": 0}
out.write_text(json.dumps({"rows": rows}))

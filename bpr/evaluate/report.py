"""An Evaluation as text (the table bpr-eval prints) and as a json-ready dict (--json).

Text shows percentages with two decimals; the json keeps every number as a fraction in
[0, 1] at full precision, with ``null`` where a metric is undefined (e.g. AP_S when the
ground truth has no small objects: COCOeval's -1).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

from bpr.evaluate.evaluator import Evaluation, FileSummary

_AP_ROWS = (("AP", "AP"), ("AP50", "AP50"), ("AP75", "AP75"), ("APs", "AP_S"), ("APm", "AP_M"), ("APl", "AP_L"))


def _span(values: set[int]) -> str:
    lo, hi = min(values), max(values)
    return f"{lo} px" if lo == hi else f"{lo}-{hi} px"


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.2f}"


def _delta(v: float | None, base: float | None) -> str:
    return "-" if v is None or base is None else f"{100 * (v - base):+.2f}"


def _rows(ev: Evaluation) -> list[tuple[str, Callable[[FileSummary], float | None]]]:
    af_tol = _span(ev.scores.af_tolerances)
    rows: list[tuple[str, Callable[[FileSummary], float | None]]] = []
    for key, label in _AP_ROWS:
        rows.append((f"mask {label}", lambda f, key=key: f.mask_ap[key]))
    for key, label in _AP_ROWS:
        rows.append((f"boundary {label}", lambda f, key=key: f.boundary_ap[key]))
    rows.append((f"AF (tol {af_tol})", lambda f: f.af))
    if ev.single_instance:
        f_tol = _span(ev.scores.f_tolerances)
        rows.append(("J (mean IoU)", lambda f: f.single.j if f.single else None))
        rows.append((f"F (contour, tol {f_tol})", lambda f: f.single.f if f.single else None))
        rows.append(("J&F", lambda f: (f.single.j + f.single.f) / 2 if f.single else None))
        if ev.has_groups:
            rows.append(("J (mean of groups)", lambda f: f.single.j_groups if f.single else None))
            rows.append(("F (mean of groups)", lambda f: f.single.f_groups if f.single else None))
    else:
        rows.append(("instance mIoU (best match)", lambda f: f.instance_miou))
    return rows


def _table(header: Sequence[str], body: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    fmt = lambda r: "  ".join(c.ljust(widths[0]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(r))  # noqa: E731
    return [fmt(header), "  ".join("-" * w for w in widths), *(fmt(r) for r in body)]


def format_report(ev: Evaluation) -> str:
    """The human-readable report: settings, main table, per-group J/F, improved/worsened."""
    gt, s, files = ev.gt, ev.settings, ev.summaries
    names = [f.name for f in files]
    kind = "single-instance data (DAVIS-style): J / F per image" if ev.single_instance else "instance data"
    lines = [
        f"bpr-eval: {len(gt.images)} images, {gt.n_instances} instances"
        + (f" (+{gt.n_crowd} crowd regions)" if gt.n_crowd else "")
        + f", {kind}",
        f"boundary band d = {_span(ev.scores.band_widths)} ({s.boundary_ratio:g} x diagonal); "
        f"AF tolerance {_span(ev.scores.af_tolerances)} ({s.af_ratio:g} x diagonal, ceil)"
        + (
            f"; F tolerance {_span(ev.scores.f_tolerances)} ({s.f_ratio:g} x diagonal, ceil)"
            if ev.single_instance
            else ""
        ),
        "all numbers in percent" + (f"; deltas against the first file ({names[0]})" if len(names) > 1 else ""),
        "",
    ]
    header = ["metric", *names, *(f"{n} - {names[0]}" for n in names[1:])]
    body = []
    for label, get in _rows(ev):
        values = [get(f) for f in files]
        body.append([label, *(_pct(v) for v in values), *(_delta(v, values[0]) for v in values[1:])])
    lines += _table(header, body)

    if ev.has_groups:
        groups = list(files[0].single.groups)
        lines += ["", "per group (file-name prefix before the last '_'): J / F"]
        header = ["group", "images"]
        for n in names:
            header += [f"J {n}", f"F {n}"]
        for n in names[1:]:
            header += [f"dJ {n}", f"dF {n}"]
        body = []
        for g in groups:
            per = [f.single.groups[g] for f in files]
            row = [g, str(per[0].images)]
            for p in per:
                row += [_pct(p.j), _pct(p.f)]
            for p in per[1:]:
                row += [_delta(p.j, per[0].j), _delta(p.f, per[0].f)]
            body.append(row)
        lines += _table(header, body)
    if ev.single_instance:
        merged = [f"{f.name}: {f.single.merged_images}" for f in files if f.single.merged_images]
        if merged:
            lines.append("images whose several predictions were merged (union) for J / F: " + ", ".join(merged))

    if len(files) > 1:
        unit, n_units = ev.unit_kind, ev.unit_ious.shape[1]
        lines += ["", f"per {unit} IoU against {names[0]} ({n_units} {unit}s)"]
        header = ["file", "improved", "worsened", "worse by >1 pt", "mean dIoU"]
        body = []
        for f in files[1:]:
            c = f.vs_baseline
            if c is None:
                body.append([f.name, "-", "-", "-", "-"])
            else:
                body.append(
                    [
                        f.name,
                        f"{100 * c.improved:.1f}%",
                        f"{100 * c.worsened:.1f}%",
                        f"{100 * c.worse_by_1pt:.1f}%",
                        f"{100 * c.mean_delta_iou:+.2f}",
                    ]
                )
        lines += _table(header, body)
    return "\n".join(lines)


def report_json(ev: Evaluation) -> dict[str, Any]:
    """Every number of the evaluation, machine-readable (fractions in [0, 1])."""
    s = ev.settings
    files_out = []
    for f, fs in zip(ev.summaries, ev.scores.files):
        entry: dict[str, Any] = {
            "name": f.name,
            "path": f.path,
            "detections": f.detections,
            "mask_ap": f.mask_ap,
            "boundary_ap": f.boundary_ap,
            "af": f.af,
            "instance_miou": f.instance_miou,
        }
        if f.single is not None:
            entry["single_instance"] = {
                "J": f.single.j,
                "F": f.single.f,
                "JF": (f.single.j + f.single.f) / 2,
                "J_mean_of_groups": f.single.j_groups,
                "F_mean_of_groups": f.single.f_groups,
                "merged_images": f.single.merged_images,
                "groups": {name: dataclasses.asdict(g) for name, g in f.single.groups.items()},
                "images": [
                    {
                        "image_id": image_id,
                        "file_name": ev.gt.file_name(image_id),
                        "group": ev.gt.group(image_id),
                        "J": fs.image_j[image_id],
                        "F": fs.image_f[image_id],
                    }
                    for image_id in ev.gt.images
                ],
            }
        entry["instances"] = [
            {
                "gt_id": ann["id"],
                "image_id": ann["image_id"],
                "iou": fs.instances[ann["id"]].iou,
                "af_f": fs.instances[ann["id"]].f,
                "detection_index": fs.instances[ann["id"]].partner,
            }
            for ann in ev.gt.dataset["annotations"]
            if not ann["iscrowd"]
        ]
        if f.vs_baseline is not None:
            entry["vs_baseline"] = dataclasses.asdict(f.vs_baseline) | {"unit": ev.unit_kind}
        files_out.append(entry)
    return {
        "ground_truth": str(ev.gt.path),
        "images": len(ev.gt.images),
        "instances": ev.gt.n_instances,
        "crowd_regions": ev.gt.n_crowd,
        "single_instance": ev.single_instance,
        "settings": {
            "boundary_ratio": s.boundary_ratio,
            "af_ratio": s.af_ratio,
            "f_ratio": s.f_ratio,
            "band_width_px": sorted(ev.scores.band_widths),
            "af_tolerance_px": sorted(ev.scores.af_tolerances),
            "f_tolerance_px": sorted(ev.scores.f_tolerances),
            "worse_by_threshold": 0.01,
        },
        "scale": "fractions in [0, 1]; null = undefined (COCOeval -1)",
        "seconds": ev.seconds,
        "files": files_out,
    }

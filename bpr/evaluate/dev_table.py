"""The dev table: a refiner scored on every dev input at once, per input and per object size.

    bpr-dev-table --checkpoint bpr/models/bpr_default.pt [--iterations 1] [--json out.json]

A change that helps one input and harms another is a regression, so a candidate is judged
on all of these together:

* ``cs-maskrcnn28``: cityscapes-dev with its Mask R-CNN-like 28x28 coarse masks (multi-instance);
* ``cs-bottomup``: cityscapes-dev ground truth predicted over the whole image at stride 4-8
  and upsampled, as bottom-up models (SOLO, semantic heads) do; objects that vanish are dropped;
* ``cs-near``: cityscapes-dev ground truth squeezed through half resolution: right to a pixel;
* ``davis-osvos`` / ``davis-rvos``: REAL predictions of two video segmenters (davis-dev-real);
* ``davis-near``: davis-dev-real ground truth through half resolution.

``--extra-input NAME=RESULTS`` adds a row for any COCO results file on one of the two sets
(``cs-...`` names score against cityscapes-dev, ``davis-...`` against davis-dev-real): your own
model's predictions, or the mask head of ``lab/maskhead`` (a real network's errors on streets).

The data sets are read from ``--data`` (default: ``BPR_SHARED_DATA``, else ``../shared/data``).
The derived inputs are built from the ground truth with fixed seeds and cached under
``--cache``. Refinement runs the library's own ``Refiner.refine_many`` (bpr-refine's path),
scoring runs ``bpr.evaluate`` (bpr-eval's). Columns: mask AP, boundary AP and AP_S/M/L
(multi-instance inputs), J (mean IoU per image, or per instance) and F (DAVIS contour F, or
AF per instance), and the share of units (frames / instances) worse by more than 1 IoU
point, overall and per COCO size (small < 32^2 px, medium < 96^2, large).
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

import cv2
import numpy as np

from bpr.errors import BprInputError
from bpr.evaluate.evaluator import evaluate
from bpr.io.coco import decode_segmentation, encode_mask, load_json, mask_to_bbox, write_json_atomic
from bpr.io.images import read_image
from bpr.io.results import entries_to_masks, group_by_image, refined_entry
from bpr.refiner import Refiner

CACHE = Path("work/dev_inputs")  # relative to the current directory, as bpr-dev-table's --cache default
INPUTS = ("cs-maskrcnn28", "cs-bottomup", "cs-near", "davis-osvos", "davis-rvos", "davis-near")
SIZES = (("S", 0, 32**2), ("M", 32**2, 96**2), ("L", 96**2, float("inf")))


def near_perfect(mask: np.ndarray) -> np.ndarray:
    """The mask through half resolution and back: every boundary within a pixel or so."""
    h, w = mask.shape
    small = cv2.resize(mask.astype(np.float32), (max(1, w // 2), max(1, h // 2)), interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR) > 0.5


def bottom_up(mask: np.ndarray, stride: float) -> np.ndarray:
    """The mask as a whole-image head at ``stride`` predicts it: area-downsampled, bilinear up."""
    h, w = mask.shape
    sh, sw = max(1, int(round(h / stride))), max(1, int(round(w / stride)))
    small = cv2.resize(mask.astype(np.float32), (sw, sh), interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR) > 0.5


def derived_input(gt_path: Path, kind: str, seed: int = 0) -> list[dict[str, Any]]:
    """A results list made from the ground truth: ``near`` or ``bottomup`` masks with their boxes,
    score 1 - tiny noise."""
    gt = load_json(gt_path)
    sizes = {i["id"]: (i["height"], i["width"]) for i in gt["images"]}
    rng = np.random.default_rng(seed)
    out = []
    for ann in gt["annotations"]:
        if ann.get("iscrowd"):
            continue
        h, w = sizes[ann["image_id"]]
        m = decode_segmentation(ann["segmentation"], h, w)
        coarse = near_perfect(m) if kind == "near" else bottom_up(m, rng.uniform(4, 8))
        if not coarse.any():
            continue  # a bottom-up model would not report a vanished object
        score = float(1.0 - 0.01 * rng.random())
        # with a box, as detectors write them: pycocotools then takes every detection's area
        # from its box, before refinement as after (bpr-refine writes boxes), so AP_S/M/L compare like with like
        out.append(
            {
                "image_id": ann["image_id"],
                "category_id": ann["category_id"],
                "segmentation": encode_mask(coarse),
                "bbox": mask_to_bbox(coarse),
                "score": score,
            }
        )
    return out


def parse_extra_input(text: str) -> tuple[str, Path]:
    """'cs-mine=results.json' -> ('cs-mine', Path('results.json')): a results file scored as one more
    dev input; its name's prefix picks the ground truth (``cs-``: cityscapes-dev, ``davis-``:
    davis-dev-real). A one-line error for a malformed text, a built-in name or a missing file."""
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise BprInputError(f"--extra-input {text!r}: expected NAME=RESULTS.json")
    if not name.startswith(("cs-", "davis-")):
        raise BprInputError(f"--extra-input {name}: the name must start with cs- or davis- (which set it scores)")
    if name in INPUTS:
        raise BprInputError(f"--extra-input {name}: that name is a built-in input")
    if not Path(path).is_file():
        raise BprInputError(f"--extra-input {name}: no such file {path}")
    return name, Path(path)


def parse_extra_inputs(texts: list[str]) -> dict[str, Path]:
    """Every ``--extra-input`` (:func:`parse_extra_input`), in order; a name given twice is a
    one-line error, not a row silently scored from the last file."""
    extra: dict[str, Path] = {}
    for text in texts:
        name, path = parse_extra_input(text)
        if name in extra:
            raise BprInputError(f"--extra-input {name}: given twice ({extra[name]} and {path})")
        extra[name] = path
    return extra


def input_files(name: str, data: Path, cache: Path, extra: Mapping[str, Path] | None = None) -> tuple[Path, Path, Path]:
    """(gt.json, images dir, coarse results json) of a dev input, building derived ones once;
    ``extra``: results files of inputs beyond the built-in ones, by name."""
    root = data / ("cityscapes-dev" if name.startswith("cs-") else "davis-dev-real")
    gt_path = root / "gt.json"
    if extra and name in extra:
        return gt_path, root / "images", extra[name]
    kind = name.split("-", 1)[1]
    if kind in ("maskrcnn28", "osvos", "rvos"):
        return gt_path, root / "images", root / f"{kind}.json"
    path = cache / f"{name}.v2.json"  # v2: with boxes
    if not path.is_file():
        write_json_atomic(path, derived_input(gt_path, kind))
    return gt_path, root / "images", path


def subset(gt_path: Path, coarse_path: Path, max_images: int | None, tmp: Path) -> tuple[Path, Path]:
    """``max_images`` images spread evenly over a dev input (gt and coarse both cut), for quick
    checks: every k-th image, so a subset of DAVIS frames spans all its sequences."""
    if not max_images:
        return gt_path, coarse_path
    gt = load_json(gt_path)
    step = max(1, len(gt["images"]) // max_images)
    keep = {i["id"] for i in gt["images"][::step][:max_images]}
    small_gt = {
        **gt,
        "images": [i for i in gt["images"] if i["id"] in keep],
        "annotations": [a for a in gt["annotations"] if a["image_id"] in keep],
    }
    coarse = [e for e in load_json(coarse_path) if e["image_id"] in keep]
    gt_out, coarse_out = tmp / f"{coarse_path.stem}.gt.json", tmp / f"{coarse_path.stem}.coarse.json"
    write_json_atomic(gt_out, small_gt)
    write_json_atomic(coarse_out, coarse)
    return gt_out, coarse_out


def refine_file(refiner: Refiner, gt_path: Path, images: Path, coarse_path: Path, out: Path) -> dict[str, float]:
    """Refine every entry of ``coarse_path`` (grouped per image) into ``out``; returns timing and counts."""
    gt = load_json(gt_path)
    info = {i["id"]: i for i in gt["images"]}
    entries = load_json(coarse_path)
    groups = group_by_image(entries)

    def items() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for image_id, idx in groups.items():
            img = info[image_id]
            yield (
                read_image(images / img["file_name"]),
                entries_to_masks([entries[k] for k in idx], img["height"], img["width"]),
            )

    counted = ("fallbacks", "small", "patches", "gated", "early_gated", "ungated")
    before = {name: getattr(refiner.stats, name) for name in counted}
    t0 = time.perf_counter()
    refined: list[dict[str, Any] | None] = [None] * len(entries)
    for idx, masks in zip(groups.values(), refiner.refine_many(items())):
        for k, m in zip(idx, masks):
            refined[k] = refined_entry(entries[k], m)
    seconds = time.perf_counter() - t0
    write_json_atomic(out, refined)
    counts = {name: getattr(refiner.stats, name) - before[name] for name in counted}
    return {"seconds": seconds, "images": len(groups), "instances": len(entries), **counts}


def score(gt_path: Path, coarse: Path, refined: Path) -> dict[str, Any]:
    """Before / after numbers of one input, overall and per object size."""
    ev = evaluate(gt_path, [coarse, refined], names=["coarse", "refined"])
    b, a = ev.summaries
    row: dict[str, Any] = {"single": ev.single_instance}
    for key, getter in (
        ("AP", lambda s: s.mask_ap["AP"]),
        ("bAP", lambda s: s.boundary_ap["AP"]),
        ("AP_S", lambda s: s.mask_ap["APs"]),
        ("AP_M", lambda s: s.mask_ap["APm"]),
        ("AP_L", lambda s: s.mask_ap["APl"]),
        ("bAP_L", lambda s: s.boundary_ap["APl"]),
        ("bAP_S", lambda s: s.boundary_ap["APs"]),
    ):
        row[key] = [getter(b), getter(a)]
    if ev.single_instance:
        row["J"], row["F"] = [b.single.j, a.single.j], [b.single.f, a.single.f]
    else:
        row["J"], row["F"] = [b.instance_miou, a.instance_miou], [b.af, a.af]
    delta = ev.unit_ious[1] - ev.unit_ious[0]
    row["worse"] = float(np.mean(delta < -0.01 - 1e-12))
    row["emptied"] = 0
    areas = _unit_areas(ev)
    for label, lo, hi in SIZES:
        sel = (areas >= lo) & (areas < hi)
        row[f"n_{label}"] = int(sel.sum())
        row[f"worse_{label}"] = float(np.mean(delta[sel] < -0.01 - 1e-12)) if sel.any() else None
        row[f"dJ_{label}"] = float(np.mean(delta[sel])) if sel.any() else None
    row["emptied"] = _emptied(coarse, refined)
    row["most_harmed"] = _most_harmed(ev, delta)
    return row


def _most_harmed(ev: Any, delta: np.ndarray, count: int = 5) -> list[dict[str, Any]]:
    """The units (instances, or frames of single-object data) whose IoU refinement lowered
    most, worst first: where to look when a "worse" share or a size column moves."""
    order = np.argsort(delta, kind="stable")[:count]
    out = []
    for k in order:
        if delta[k] >= 0:
            break
        image_id, ann_id = ev.unit_keys[k]
        out.append(
            {
                "image_id": image_id.item() if isinstance(image_id, np.generic) else image_id,
                "annotation_id": ann_id.item() if isinstance(ann_id, np.generic) else ann_id,
                "iou": [float(ev.unit_ious[0][k]), float(ev.unit_ious[1][k])],
            }
        )
    return out


def _unit_areas(ev: Any) -> np.ndarray:
    anns = {a["id"]: a for a in ev.gt.dataset["annotations"]}
    by_image: dict[Any, float] = {}
    for a in ev.gt.dataset["annotations"]:
        if not a["iscrowd"]:
            by_image[a["image_id"]] = by_image.get(a["image_id"], 0.0) + float(a["area"])
    return np.array([by_image[i] if ann is None else float(anns[ann]["area"]) for i, ann in ev.unit_keys])


def _emptied(coarse: Path, refined: Path) -> int:
    """Entries that went in non-empty and came out empty."""
    a, b = load_json(coarse), load_json(refined)
    return sum(1 for x, y in zip(a, b) if y["area"] == 0 and _area(x) > 0)


def _area(entry: dict[str, Any]) -> int:
    h, w = entry["segmentation"]["size"]
    return int(decode_segmentation(entry["segmentation"], h, w).sum())


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.2f}"


def _gated_cell(run: dict[str, Any]) -> str:
    """Patches the gate kept coarse, of all patches; how many of them skipped their second opinion;
    how many instances got their ungated answer all the same (``ungated_shift``)."""
    notes = [f"{run['early_gated']} early"] if run.get("early_gated") else []
    if run.get("ungated"):
        notes.append(f"{run['ungated']} instance{'s' if run['ungated'] != 1 else ''} ungated")
    cell = f"{run.get('gated', 0)} / {run['patches']}"
    return cell + f" ({'; '.join(notes)})" if notes else cell


def print_table(rows: dict[str, dict[str, Any]], file: TextIO | None = None) -> None:
    """The markdown table of :func:`score_inputs`' rows (on stdout by default)."""
    file = file or sys.stdout
    print(
        "| input | mask AP | boundary AP | AP_S | AP_M | AP_L | boundary AP_L | J | F | worse >1pt | S / M / L "
        "worse | emptied | fallbacks | patches gated | s/image |",
        file=file,
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | ---: | --- | ---: | ---: | ---: | ---: |", file=file)
    for name, r in rows.items():

        def pair(key: str, r: dict[str, Any] = r) -> str:
            before, after = r[key]
            if before is None or after is None or before < 0:
                return "-"
            return f"{_pct(before)} -> {_pct(after)}"

        multi = not r["single"]
        size_worse = " / ".join(_pct(r[f"worse_{label}"]) for label, _, _ in SIZES)
        cells = [
            pair("AP") if multi else "-",
            pair("bAP") if multi else "-",
            pair("AP_S") if multi else "-",
            pair("AP_M") if multi else "-",
            pair("AP_L") if multi else "-",
            pair("bAP_L") if multi else "-",
            pair("J"),
            pair("F"),
            f"{100 * r['worse']:.1f}%",
            size_worse,
            str(r["emptied"]),
            str(r["run"]["fallbacks"]),
            _gated_cell(r["run"]),
            f"{r['run']['seconds'] / max(1, r['run']['images']):.2f}",
        ]
        print(f"| {name} | " + " | ".join(cells) + " |", file=file)


def score_inputs(
    refiner: Refiner,
    inputs: Sequence[str],
    data: Path,
    cache: Path,
    max_images: int | None = None,
    extra: Mapping[str, Path] | None = None,
) -> dict[str, dict[str, Any]]:
    """Refine and score each dev input in ``inputs`` (names from :data:`INPUTS`), then each of
    ``extra`` (name -> results file, :func:`parse_extra_input`): one row of before / after numbers
    per input, with its run's timing and counts under ``"run"``.

    data: the shared data sets' folder (``cityscapes-dev``, ``davis-dev-real``).
    cache: where derived inputs are built once and kept (the folder must exist).
    max_images: only this many images of each input, spread evenly (quick checks).
    """
    rows: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        for name in [*inputs, *(extra or {})]:
            gt_path, images, coarse = input_files(name, data, cache, extra)
            gt_path, coarse = subset(gt_path, coarse, max_images, tmp)
            out = tmp / f"{name}.refined.json"
            run = refine_file(refiner, gt_path, images, coarse, out)
            rows[name] = {**score(gt_path, coarse, out), "run": run}
            print(f"{name}: done in {run['seconds']:.0f} s", file=sys.stderr)
    return rows


HIGHER_IS_BETTER = ("AP", "bAP", "AP_S", "AP_M", "AP_L", "bAP_L", "bAP_S", "J", "F")
LOWER_IS_BETTER = ("worse", "worse_S", "worse_M", "worse_L", "emptied")


def regressions(reference: dict[str, dict[str, Any]], rows: dict[str, dict[str, Any]]) -> tuple[int, list[str]]:
    """How ``rows`` compare with ``reference`` (both :func:`score_inputs` rows), number by number,
    over the inputs both hold: (how many numbers are better, one line per number that is worse,
    in points; "emptied" in instances). A model change is judged on every input at once: one
    number worse on one input is a regression, whatever the others gain."""
    better, worse = 0, []
    for name in (n for n in rows if n in reference):
        ref, new = reference[name], rows[name]
        for key in HIGHER_IS_BETTER:
            if ref.get(key) is None or new.get(key) is None or ref[key][1] is None or new[key][1] is None:
                continue
            delta = 100 * (new[key][1] - ref[key][1])
            if delta < -1e-9:
                worse.append(f"{name} {key} {ref[key][1] * 100:.2f} -> {new[key][1] * 100:.2f} ({delta:+.2f})")
            better += delta > 1e-9
        for key in LOWER_IS_BETTER:
            if ref.get(key) is None or new.get(key) is None:
                continue
            scale = 1 if key == "emptied" else 100
            delta = scale * (new[key] - ref[key])
            if delta > 1e-9:
                worse.append(f"{name} {key} {ref[key] * scale:.2f} -> {new[key] * scale:.2f} (+{delta:.2f})")
            better += delta < -1e-9
    return better, worse


def report(refiner: Refiner, rows: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Every number of a dev table with what produced it (bpr-dev-table --json)."""
    return {
        "checkpoint": refiner.checkpoint,
        "backend": refiner.backend,
        "precision": refiner.precision,
        "options": refiner.options.__dict__,
        "rows": rows,
    }

"""bpr-eval's engine: ground truth + results files in, every metric out (no printing).

``evaluate()`` is what the CLI calls; it is usable from Python too::

    from bpr.evaluate import evaluate
    ev = evaluate("gt.json", ["coarse.json", "coarse.refined.json"])
    ev.summaries[1].boundary_ap["AP"]
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bpr.errors import BprInputError
from bpr.evaluate.coco_eval import boundary_ap, build_gt, load_detections, mask_ap
from bpr.evaluate.data import GroundTruth, ResultsFile, load_ground_truth, load_results_file
from bpr.evaluate.scoring import PassResult, ScoringSettings, score_images

WORSE_BY = 0.01  # "worse by more than 1 IoU point", an acceptance criterion elsewhere


@dataclass
class GroupScore:
    j: float
    f: float
    images: int


@dataclass
class SingleInstanceSummary:
    """DAVIS-style region similarity J and contour accuracy F (fractions, not percent)."""

    j: float  # mean over images
    f: float
    j_groups: float  # mean over groups of the group means (the DAVIS way of averaging)
    f_groups: float
    groups: dict[str, GroupScore]
    merged_images: int  # images where several predictions were merged into one mask


@dataclass
class Comparison:
    """How one results file's per-unit IoU moved against the baseline (the first file)."""

    units: int
    improved: float  # fraction with IoU up by more than 0
    worsened: float  # fraction with IoU down by more than 0
    worse_by_1pt: float  # fraction with IoU down by more than 1 point (0.01)
    mean_delta_iou: float


@dataclass
class FileSummary:
    name: str
    path: str
    detections: int
    mask_ap: dict[str, float | None]
    boundary_ap: dict[str, float | None]
    af: float | None  # mean boundary F (AF tolerance) over non-crowd GT instances
    instance_miou: float | None  # mean best-match IoU over non-crowd GT instances
    single: SingleInstanceSummary | None
    vs_baseline: Comparison | None


@dataclass
class Evaluation:
    gt: GroundTruth
    files: list[ResultsFile]
    settings: ScoringSettings
    single_instance: bool
    scores: PassResult
    summaries: list[FileSummary]
    unit_keys: list[tuple[Any, Any]]  # (image_id, GT annotation id or None for a whole image)
    unit_ious: np.ndarray  # (files, units) per-unit IoU, the basis of improved / worsened
    seconds: float

    @property
    def has_groups(self) -> bool:
        """Single-instance data whose file names group images into sequences (some group > 1 image)."""
        return self.single_instance and len({self.gt.group(i) for i in self.gt.images}) < len(self.gt.images)

    @property
    def unit_kind(self) -> str:
        return "image" if self.single_instance else "instance"


def _units(gt: GroundTruth, scores: PassResult, single: bool) -> tuple[list[tuple[Any, Any]], np.ndarray]:
    if single:
        keys = [(image_id, None) for image_id in gt.images]
        values = [[fs.image_j[image_id] for image_id, _ in keys] for fs in scores.files]
    else:
        keys = [(a["image_id"], a["id"]) for a in gt.dataset["annotations"] if not a["iscrowd"]]
        values = [[fs.instances[ann_id].iou for _, ann_id in keys] for fs in scores.files]
    return keys, np.asarray(values, dtype=float).reshape(len(scores.files), len(keys))


def _single_summary(gt: GroundTruth, j: dict[Any, float], f: dict[Any, float], merged: int) -> SingleInstanceSummary:
    by_group: dict[str, list[Any]] = {}
    for image_id in gt.images:
        by_group.setdefault(gt.group(image_id), []).append(image_id)
    groups = {
        name: GroupScore(float(np.mean([j[i] for i in ids])), float(np.mean([f[i] for i in ids])), len(ids))
        for name, ids in sorted(by_group.items())
    }
    return SingleInstanceSummary(
        j=float(np.mean(list(j.values()))),
        f=float(np.mean(list(f.values()))),
        j_groups=float(np.mean([g.j for g in groups.values()])),
        f_groups=float(np.mean([g.f for g in groups.values()])),
        groups=groups,
        merged_images=merged,
    )


def _compare(base: np.ndarray, other: np.ndarray) -> Comparison | None:
    if base.size == 0:
        return None
    delta = other - base
    return Comparison(
        units=int(base.size),
        improved=float(np.mean(delta > 0)),
        worsened=float(np.mean(delta < 0)),
        worse_by_1pt=float(np.mean(delta < -WORSE_BY - 1e-12)),  # exactly 1 point is not "more than"
        mean_delta_iou=float(np.mean(delta)),
    )


def _unique_names(paths: Sequence[os.PathLike | str], names: Sequence[str] | None) -> list[str]:
    """Column names: the given ones, else file stems, made unique with the parent folder or a number."""
    if names:
        return list(names)
    stems = [Path(p).stem for p in paths]
    out = []
    for p, stem in zip(paths, stems):
        name = stem if stems.count(stem) == 1 else f"{Path(p).parent.name}/{stem}"
        while name in out:
            name += "'"
        out.append(name)
    return out


def evaluate(
    gt_path: str | os.PathLike,
    results_paths: Sequence[str | os.PathLike],
    settings: ScoringSettings | None = None,
    single_instance: bool | None = None,
    names: Sequence[str] | None = None,
    progress: Callable[[int], Callable[[], None]] | None = None,
) -> Evaluation:
    """Evaluate every results file against the ground truth; the first file is the baseline.

    ``single_instance`` None decides from the data (every image has exactly one non-crowd
    annotation). ``progress(total)`` may return a callback called once per image.
    """
    start = time.perf_counter()
    settings = settings or ScoringSettings()  # not a default argument: one shared instance per call site is a trap
    if not results_paths:
        raise BprInputError("at least one results file is needed")
    if names is not None and len(names) != len(results_paths):
        raise BprInputError(f"{len(names)} names for {len(results_paths)} results files; give one per file")
    gt = load_ground_truth(gt_path)
    labels = _unique_names(results_paths, names)
    files = [load_results_file(p, gt, name) for p, name in zip(results_paths, labels)]
    single = gt.is_single_instance() if single_instance is None else single_instance
    tick = progress(len(gt.images)) if progress is not None else None
    scores = score_images(gt, files, settings, single, tick)

    coco_gt = build_gt(gt.dataset)
    keys, unit_ious = _units(gt, scores, single)
    summaries = []
    for k, (rf, fs) in enumerate(zip(files, scores.files)):
        coco_dt = load_detections(coco_gt, rf.entries)
        instances = list(fs.instances.values())
        summaries.append(
            FileSummary(
                name=rf.name,
                path=str(rf.path),
                detections=len(rf.entries),
                mask_ap=mask_ap(coco_gt, coco_dt),
                boundary_ap=boundary_ap(coco_gt, coco_dt, scores.gt_bands, fs.bands),
                af=float(np.mean([s.f for s in instances])) if instances else None,
                instance_miou=float(np.mean([s.iou for s in instances])) if instances else None,
                single=_single_summary(gt, fs.image_j, fs.image_f, fs.merged_images) if single else None,
                vs_baseline=_compare(unit_ious[0], unit_ious[k]) if k > 0 else None,
            )
        )
    return Evaluation(gt, files, settings, single, scores, summaries, keys, unit_ious, time.perf_counter() - start)

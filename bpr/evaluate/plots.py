"""PNG plots of an Evaluation: a bar chart of the metrics, per-unit IoU before vs after, and a
gallery of the most improved and most worsened instances with their outlines.

matplotlib is imported here only, and only its object API (Figure + Agg canvas) is used: no
pyplot global state, no backend switching, nothing slow at CLI start-up.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from pycocotools import mask as mask_utils

from bpr.errors import BprInputError
from bpr.evaluate.evaluator import Evaluation
from bpr.io.atomic import atomic_path
from bpr.io.coco import mask_bounds
from bpr.io.images import read_image

GT_COLOR, BEFORE_COLOR, AFTER_COLOR = "#ffd400", "#e8412c", "#1fb4ff"


def _save(fig: Figure, path: Path) -> Path:
    FigureCanvasAgg(fig)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    return path


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "results"


def _metric_values(ev: Evaluation) -> list[tuple[str, list[float | None]]]:
    rows: list[tuple[str, list[float | None]]] = []
    for key, label in (("AP", "mask AP"), ("AP50", "mask AP50"), ("AP75", "mask AP75")):
        rows.append((label, [f.mask_ap[key] for f in ev.summaries]))
    for key, label in (("AP", "boundary AP"), ("AP50", "boundary AP50"), ("AP75", "boundary AP75")):
        rows.append((label, [f.boundary_ap[key] for f in ev.summaries]))
    rows.append(("AF", [f.af for f in ev.summaries]))
    if ev.single_instance:
        rows.append(("J", [f.single.j if f.single else None for f in ev.summaries]))
        rows.append(("F", [f.single.f if f.single else None for f in ev.summaries]))
    else:
        rows.append(("instance mIoU", [f.instance_miou for f in ev.summaries]))
    return rows


def plot_metrics(ev: Evaluation, path: Path) -> Path:
    """Grouped bars: one group per metric, one bar per results file, value printed on each bar."""
    rows = _metric_values(ev)
    n_files = len(ev.summaries)
    fig = Figure(figsize=(max(8.0, 1.1 * len(rows) * (0.6 + 0.25 * n_files)), 4.8))
    ax = fig.subplots()
    width = 0.8 / n_files
    x = np.arange(len(rows))
    for k, summary in enumerate(ev.summaries):
        values = [np.nan if r[1][k] is None else 100 * r[1][k] for r in rows]
        bars = ax.bar(x + (k - (n_files - 1) / 2) * width, values, width, label=summary.name)
        ax.bar_label(bars, labels=["n/a" if np.isnan(v) else f"{v:.1f}" for v in values], fontsize=7, padding=2)
    ax.set_xticks(x, [r[0] for r in rows], rotation=20, ha="right")
    ax.set_ylabel("percent")
    ax.set_ylim(0, 105)
    ax.set_title("bpr-eval: metrics per results file")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def plot_iou_scatter(ev: Evaluation, path: Path) -> Path:
    """Per-unit IoU of the baseline (x) against each other file (y); above the diagonal = better."""
    base = ev.unit_ious[0]
    others = ev.summaries[1:]
    fig = Figure(figsize=(4.6 * len(others), 4.8))
    axes = np.atleast_1d(fig.subplots(1, len(others), squeeze=False)[0])
    for ax, k in zip(axes, range(1, len(ev.summaries))):
        after = ev.unit_ious[k]
        delta = after - base
        colors = np.where(delta > 0, "#2a9d3a", np.where(delta < 0, BEFORE_COLOR, "#888888"))
        ax.plot([0, 1], [0, 1], "--", color="black", linewidth=1, label="no change")
        ax.scatter(base, after, s=12, c=colors, alpha=0.75, linewidths=0)
        c = ev.summaries[k].vs_baseline
        stats = f"\nimproved {100 * c.improved:.0f}%, worsened {100 * c.worsened:.0f}%" if c else ""
        ax.set_title(f"{ev.summaries[k].name} vs {ev.summaries[0].name}{stats}", fontsize=10)
        ax.set_xlabel(f"IoU {ev.summaries[0].name} (per {ev.unit_kind})")
        ax.set_ylabel(f"IoU {ev.summaries[k].name}")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_aspect("equal")
        ax.grid(alpha=0.3)
    return _save(fig, path)


def _decode_union(rles: list[dict[str, Any]], h: int, w: int) -> np.ndarray:
    mask = np.zeros((h, w), dtype=bool)
    for rle in rles:
        mask |= mask_utils.decode(rle).astype(bool)
    return mask


def _unit_masks(ev: Evaluation, unit: int, files: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(GT, baseline, other) masks of one unit, as the metrics saw them."""
    image_id, ann_id = ev.unit_keys[unit]
    info = ev.gt.images[image_id]
    h, w = info["height"], info["width"]
    anns = ev.gt.anns_by_image.get(image_id, [])
    if ann_id is None:  # single-instance data: all non-crowd GT, all predictions, merged
        gt = _decode_union([a["segmentation"] for a in anns if not a["iscrowd"]], h, w)
        preds = [
            _decode_union(
                [ev.files[k].entries[i]["segmentation"] for i in ev.files[k].by_image.get(image_id, [])], h, w
            )
            for k in files
        ]
    else:
        gt = _decode_union([a["segmentation"] for a in anns if a["id"] == ann_id], h, w)
        preds = []
        for k in files:
            partner = ev.scores.files[k].instances[ann_id].partner
            rles = [] if partner is None else [ev.files[k].entries[partner]["segmentation"]]
            preds.append(_decode_union(rles, h, w))
    return gt, preds[0], preds[1]


def _crop_box(masks: tuple[np.ndarray, ...], h: int, w: int) -> tuple[int, int, int, int]:
    bounds = mask_bounds(np.logical_or.reduce(masks))
    if bounds is None:
        return 0, h, 0, w
    y0, y1, x0, x1 = bounds
    margin = max(16, int(0.15 * max(y1 - y0, x1 - x0)))
    return max(0, y0 - margin), min(h, y1 + margin), max(0, x0 - margin), min(w, x1 + margin)


def _outline(ax: Any, mask: np.ndarray, color: str, width: float) -> None:
    if mask.any() and not mask.all():
        ax.contour(mask.astype(np.float32), levels=[0.5], colors=[color], linewidths=width)


def plot_gallery(ev: Evaluation, k: int, images_dir: Path, path: Path, per_row: int = 6) -> Path | None:
    """Two rows of crops: the units that file ``k`` improved most and worsened most over the
    baseline, with the GT, baseline and file-``k`` outlines. None when nothing changed."""
    delta = ev.unit_ious[k] - ev.unit_ious[0]
    order = np.argsort(-delta, kind="stable")
    best = [int(u) for u in order[:per_row] if delta[u] > 0]
    worst = [int(u) for u in order[::-1][:per_row] if delta[u] < 0]
    if not best and not worst:
        return None
    rows = [(f"most improved by {ev.summaries[k].name}", best), (f"most worsened by {ev.summaries[k].name}", worst)]
    rows = [r for r in rows if r[1]]
    fig = Figure(figsize=(2.7 * per_row, 3.0 * len(rows) + 0.6))
    axes = fig.subplots(len(rows), per_row, squeeze=False)
    for r, (title, units) in enumerate(rows):
        axes[r][0].set_ylabel(title, fontsize=9)
        for c in range(per_row):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= len(units):
                ax.axis("off")
                continue
            u = units[c]
            image_id, _ = ev.unit_keys[u]
            image = read_image(images_dir / ev.gt.file_name(image_id))
            h, w = ev.gt.images[image_id]["height"], ev.gt.images[image_id]["width"]
            if image.shape[:2] != (h, w):
                raise BprInputError(
                    f"{images_dir / ev.gt.file_name(image_id)} is {image.shape[1]}x{image.shape[0]}, "
                    f"the ground truth says {w}x{h}"
                )
            gt, before, after = _unit_masks(ev, u, (0, k))
            y0, y1, x0, x1 = _crop_box((gt, before, after), h, w)
            ax.imshow(image[y0:y1, x0:x1])
            _outline(ax, gt[y0:y1, x0:x1], GT_COLOR, 1.0)
            _outline(ax, before[y0:y1, x0:x1], BEFORE_COLOR, 1.4)
            _outline(ax, after[y0:y1, x0:x1], AFTER_COLOR, 1.4)
            b, a = ev.unit_ious[0][u], ev.unit_ious[k][u]
            ax.set_title(
                f"{100 * (a - b):+.1f} IoU ({100 * b:.1f} -> {100 * a:.1f})\n{ev.gt.file_name(image_id)}", fontsize=8
            )
    handles = [
        Line2D([], [], color=GT_COLOR, label="ground truth"),
        Line2D([], [], color=BEFORE_COLOR, label=ev.summaries[0].name),
        Line2D([], [], color=AFTER_COLOR, label=ev.summaries[k].name),
    ]
    fig.legend(handles=handles, loc="upper center", ncol=3, fontsize=9, frameon=False)
    fig.subplots_adjust(top=0.88, wspace=0.05, hspace=0.35)
    return _save(fig, path)


def write_plots(
    ev: Evaluation, out_dir: str | os.PathLike, images_dir: str | os.PathLike | None, per_row: int = 6
) -> list[Path]:
    """Write every plot that applies to ``out_dir``; returns the files written.

    The scatter and the gallery need at least two results files; the gallery needs the images.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [plot_metrics(ev, out_dir / "metrics.png")]
    if len(ev.summaries) < 2 or ev.unit_ious.shape[1] == 0:
        return written
    written.append(plot_iou_scatter(ev, out_dir / "iou_scatter.png"))
    if images_dir is None:
        raise BprInputError("the gallery plot needs the images: pass --images DIR")
    for k in range(1, len(ev.summaries)):
        gallery = plot_gallery(ev, k, Path(images_dir), out_dir / f"gallery_{_slug(ev.summaries[k].name)}.png", per_row)
        if gallery is not None:
            written.append(gallery)
    return written

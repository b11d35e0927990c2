"""Synthetic coarse masks: realistic segmenter errors made from a ground-truth mask.

A refiner learns to fix the errors it sees in training, so the mix of errors decides whether
it helps on real predictions. Grid resampling alone (the Mask R-CNN 28x28 error) is not
enough: real segmenters also follow similar colours, shift stretches of boundary, cut thin
parts and add blobs. Each recipe below makes one kind of error; ``synthesize`` draws a
recipe from a weighted mix and usually adds a second, lighter error on top.

All recipes take (image HxWx3 uint8 RGB, gt HxW bool, rng) and return an HxW bool mask.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable

import cv2
import numpy as np

from bpr.io.coco import mask_bounds

Recipe = Callable[[np.ndarray, np.ndarray, np.random.Generator], np.ndarray]


def _disk(radius: int) -> np.ndarray:
    """Elliptical (disk) structuring element of the given radius, for OpenCV morphology."""
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


def _smooth_noise(shape: tuple[int, int], cell: float, rng: np.random.Generator) -> np.ndarray:
    """Zero-mean, unit-std noise that varies smoothly over about ``cell`` pixels."""
    h, w = shape
    gh, gw = max(2, int(round(h / cell)) + 2), max(2, int(round(w / cell)) + 2)
    noise = cv2.resize(rng.standard_normal((gh, gw)).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
    return noise / (noise.std() + 1e-6)


def grid_resample(image: np.ndarray, gt: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Mask R-CNN's blob: the mask squeezed through a small grid inside a jittered box."""
    y0, y1, x0, x1 = mask_bounds(gt)  # type: ignore[misc]  # never empty: the caller draws from objects
    h, w = y1 - y0, x1 - x0
    jy, jx = 0.08 * h, 0.08 * w
    y0 = int(np.clip(y0 + rng.normal(0, jy), 0, gt.shape[0] - 2))
    x0 = int(np.clip(x0 + rng.normal(0, jx), 0, gt.shape[1] - 2))
    y1 = int(np.clip(y1 + rng.normal(0, jy), y0 + 2, gt.shape[0]))
    x1 = int(np.clip(x1 + rng.normal(0, jx), x0 + 2, gt.shape[1]))
    grid = int(rng.choice([12, 16, 20, 28, 28, 40]))
    crop = gt[y0:y1, x0:x1].astype(np.float32)
    small = cv2.resize(crop, (grid, grid), interpolation=cv2.INTER_AREA)
    big = cv2.resize(small, (x1 - x0, y1 - y0), interpolation=cv2.INTER_LINEAR)
    out = np.zeros_like(gt)
    out[y0:y1, x0:x1] = big > rng.uniform(0.4, 0.6)
    return out


def _warp(
    gt: np.ndarray, rng: np.random.Generator, amplitude_px: tuple[float, float], cell_px: tuple[float, float]
) -> np.ndarray:
    h, w = gt.shape
    scale = max(h, w) / 480
    amplitude = rng.uniform(*amplitude_px) * scale
    cell = rng.uniform(*cell_px) * scale
    dx = _smooth_noise((h, w), cell, rng) * amplitude
    dy = _smooth_noise((h, w), cell, rng) * amplitude
    xs, ys = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    warped = cv2.remap(gt.astype(np.float32), xs + dx, ys + dy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return warped > 0.5


def smooth_warp(image: np.ndarray, gt: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Whole stretches of boundary shifted by a few pixels: a smooth random displacement field."""
    return _warp(gt, rng, (1.5, 6.0), (30, 120))


def smooth_warp_large(image: np.ndarray, gt: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The same displacement field at 5-14 px (at 480 px): the shifts a video segmenter makes
    when an object moves or deforms, and the ones the boundary F-score counts."""
    return _warp(gt, rng, (5.0, 14.0), (40, 160))


def through_resolution(gt: np.ndarray, factor: float) -> np.ndarray:
    """``gt`` as a model working at 1/``factor`` of the resolution sees it: area-downsampled
    (at least 2 x 2), bilinear back up; a float map the recipes threshold at their own level."""
    h, w = gt.shape
    sh, sw = max(2, int(round(h / factor))), max(2, int(round(w / factor)))
    small = cv2.resize(gt.astype(np.float32), (sw, sh), interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


def low_resolution(image: np.ndarray, gt: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A whole-image decoder at 1/8-1/24 resolution (RVOS-like): rounded corners, thin parts
    lost, smooth boundaries that cut across detail."""
    factor = rng.uniform(8, 24) * max(gt.shape) / 480
    return through_resolution(gt, factor) > rng.uniform(0.35, 0.65)


def boundary_chunks(image: np.ndarray, gt: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Parts bitten off and background chunks swallowed: ellipses of 6-30 px (at 480 px)
    centred on the boundary, cut out of or added to the mask."""
    h, w = gt.shape
    scale = max(h, w) / 480
    m = gt.astype(np.uint8)
    edge = np.argwhere(m & ~cv2.erode(m, np.ones((3, 3), np.uint8)).astype(bool))
    if len(edge) == 0:
        return gt.copy()
    out = m.copy()
    for _ in range(int(rng.integers(1, 6))):
        cy, cx = edge[rng.integers(len(edge))]
        axes = (int(rng.uniform(6, 30) * scale) + 1, int(rng.uniform(6, 30) * scale) + 1)
        cv2.ellipse(out, (int(cx), int(cy)), axes, float(rng.uniform(0, 180)), 0, 360, int(rng.random() < 0.5), -1)
    return out.astype(bool)


def dilate_erode(image: np.ndarray, gt: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A mask grown or shrunk by a few pixels, with a noisy edge."""
    r = int(rng.integers(1, 6))
    kernel = _disk(r)
    m = gt.astype(np.uint8)
    m = cv2.dilate(m, kernel) if rng.random() < 0.5 else cv2.erode(m, kernel)
    return boundary_noise(image, m.astype(bool), rng)


def boundary_noise(image: np.ndarray, gt: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Ragged edge: smooth noise added to a blurred mask, only in a band around the boundary."""
    sigma = rng.uniform(1.0, 4.0)
    soft = cv2.GaussianBlur(gt.astype(np.float32), (0, 0), sigma)
    noise = _smooth_noise(gt.shape, rng.uniform(4, 16), rng) * rng.uniform(0.1, 0.3)
    r = int(3 * sigma) + 2
    kernel = _disk(r)
    m = gt.astype(np.uint8)
    band = (cv2.dilate(m, kernel) - cv2.erode(m, kernel)).astype(bool)
    out = gt.copy()
    out[band] = (soft + noise)[band] > 0.5
    return out


def _colour_leak(image: np.ndarray, gt: np.ndarray, rng: np.random.Generator, width_px: tuple[int, int]) -> np.ndarray:
    """Within ``width_px`` (at 480 px) of the boundary, pixels take the label whose colour they resemble."""
    h, w = gt.shape
    width = int(rng.integers(*width_px) * max(h, w) / 480) + 1
    kernel = _disk(width)
    m = gt.astype(np.uint8)
    band = (cv2.dilate(m, kernel) - cv2.erode(m, kernel)).astype(bool)
    lab = cv2.cvtColor(cv2.GaussianBlur(image, (0, 0), rng.uniform(0.5, 2.0)), cv2.COLOR_RGB2LAB).astype(np.float32)
    inner = band & gt
    outer = band & ~gt
    if inner.sum() < 10 or outer.sum() < 10:
        return boundary_noise(image, gt, rng)
    fg_mean = lab[inner].mean(axis=0)
    bg_mean = lab[outer].mean(axis=0)
    d_fg = np.linalg.norm(lab - fg_mean, axis=2)
    d_bg = np.linalg.norm(lab - bg_mean, axis=2)
    bias = rng.normal(0, 0.15) * (np.linalg.norm(fg_mean - bg_mean) + 1)
    vote = (d_fg + bias < d_bg).astype(np.float32)
    vote = cv2.GaussianBlur(vote, (0, 0), 1.5 * max(1.0, width / 16)) > 0.5
    out = gt.copy()
    out[band] = vote[band]
    return out


def colour_leak(image: np.ndarray, gt: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Near the boundary (4-16 px), pixels take the label whose colour they resemble: leaks along similar colours."""
    return _colour_leak(image, gt, rng, (4, 16))


def colour_leak_large(image: np.ndarray, gt: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The colour leak over 12-40 px: real segmenters swallow whole similar-looking background
    regions and drop dissimilar object parts, errors far beyond F's 8 px tolerance."""
    return _colour_leak(image, gt, rng, (12, 40))


def grabcut(image: np.ndarray, gt: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """GrabCut from a perturbed mask: boundaries that snap to colour edges, right or wrong."""
    y0, y1, x0, x1 = mask_bounds(gt)  # type: ignore[misc]  # never empty: the caller draws from objects
    pad = 20
    ys, xs = max(0, y0 - pad), max(0, x0 - pad)
    ye, xe = min(gt.shape[0], y1 + pad), min(gt.shape[1], x1 + pad)
    crop_img = np.ascontiguousarray(image[ys:ye, xs:xe, ::-1])  # GrabCut wants BGR
    seed = smooth_warp(image, gt, rng)[ys:ye, xs:xe]
    r = 4
    kernel = _disk(r)
    sure_fg = cv2.erode(seed.astype(np.uint8), kernel, iterations=2).astype(bool)
    maybe_fg = cv2.dilate(seed.astype(np.uint8), kernel, iterations=2).astype(bool)
    gc = np.full(seed.shape, cv2.GC_BGD, dtype=np.uint8)
    gc[maybe_fg] = cv2.GC_PR_BGD
    gc[seed] = cv2.GC_PR_FGD
    gc[sure_fg] = cv2.GC_FGD
    if not (gc == cv2.GC_FGD).any() or not (gc == cv2.GC_BGD).any():
        return boundary_noise(image, gt, rng)
    bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    # GrabCut seeds its colour models from OpenCV's global RNG, whose state depends on every
    # earlier call in the process (which images a pool worker happened to get): seeded from the
    # inputs, a draw is the same whichever worker makes it, without touching ``rng``'s stream
    cv2.setRNGSeed((zlib.crc32(gc.tobytes()) ^ zlib.crc32(crop_img.tobytes())) & 0x7FFFFFFF)
    cv2.grabCut(crop_img, gc, None, bgd, fgd, 2, cv2.GC_INIT_WITH_MASK)
    out = np.zeros_like(gt)
    out[ys:ye, xs:xe] = (gc == cv2.GC_FGD) | (gc == cv2.GC_PR_FGD)
    return out


def blobs_and_cuts(image: np.ndarray, gt: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Small false blobs beside the object, and thin parts (legs, poles) cut off."""
    out = gt.copy()
    y0, y1, x0, x1 = mask_bounds(gt)  # type: ignore[misc]  # never empty: the caller draws from objects
    size = max(y1 - y0, x1 - x0)
    if rng.random() < 0.6:  # cut thin parts with an opening
        r = int(rng.integers(2, max(3, size // 25)))
        kernel = _disk(r)
        out = cv2.morphologyEx(out.astype(np.uint8), cv2.MORPH_OPEN, kernel).astype(bool)
    ring = cv2.dilate(gt.astype(np.uint8), _disk(15)).astype(bool) & ~gt
    candidates = np.argwhere(ring)
    for _ in range(int(rng.integers(1, 4))):
        if len(candidates) == 0:
            break
        cy, cx = candidates[rng.integers(len(candidates))]
        axes = (int(rng.integers(3, max(4, size // 12))), int(rng.integers(3, max(4, size // 12))))
        blob = np.zeros(gt.shape, np.uint8)
        cv2.ellipse(blob, (int(cx), int(cy)), axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
        out |= blob.astype(bool)
    return out


def thin_parts_lost(image: np.ndarray, gt: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Legs, wheels, poles and lines missed: an opening of radius 3-12 px (at 480 px) removes
    every part thinner than its diameter; half the time the segmenter kept their first
    5-25 px next to the body, as real ones do."""
    scale = max(gt.shape) / 480
    r = max(2, int(rng.uniform(3, 12) * scale))
    kernel = _disk(r)
    m = gt.astype(np.uint8)
    opened = cv2.morphologyEx(m, cv2.MORPH_OPEN, kernel)
    if not opened.any():
        return boundary_noise(image, gt, rng)
    if rng.random() < 0.5:
        reach = max(1, int(rng.uniform(5, 25) * scale))
        near = cv2.dilate(opened, _disk(reach))
        opened = opened | (m & near)
    return opened.astype(bool)


def nearly_right(image: np.ndarray, gt: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A mask that is already right to a pixel or so (a strong detector's, or an annotator's):
    a third of the time the ground truth itself, otherwise a faint 1-2 px ragged edge. The
    refiner must learn to leave such a boundary where it is."""
    if rng.random() < 1 / 3:
        return gt.copy()
    sigma = rng.uniform(0.5, 1.2)
    soft = cv2.GaussianBlur(gt.astype(np.float32), (0, 0), sigma)
    noise = _smooth_noise(gt.shape, rng.uniform(3, 10), rng) * rng.uniform(0.05, 0.2)
    m = gt.astype(np.uint8)
    band = (cv2.dilate(m, _disk(2)) - cv2.erode(m, _disk(2))).astype(bool)
    out = gt.copy()
    out[band] = (soft + noise)[band] > 0.5
    return out


def nearly_right_lowres(image: np.ndarray, gt: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A strong segmenter's mask predicted at 1/1.5-1/3 of the image's resolution (a stride-2
    head, a mask drawn on a downscaled frame): right to a pixel along smooth boundaries, but
    thin parts (cords, lines, spokes, bike frames) come through thinned or in dashes and narrow
    gaps close. The plain ``near`` draw keeps thin parts whole, so a refiner trained on it alone
    learns that a thin coarse part is an error and erases it; here the target keeps them."""
    factor = rng.uniform(1.5, 3.0)
    out = through_resolution(gt, factor) > rng.uniform(0.4, 0.6)
    return out if out.any() else gt.copy()


def stride_resample(image: np.ndarray, gt: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A bottom-up model's mask (SOLO, BlendMask, a semantic head): predicted over the whole
    image at stride 4-8 in image pixels and upsampled, so the error is the same few pixels for
    every object and grows relative to small ones."""
    stride = rng.uniform(4, 8)
    return through_resolution(gt, stride) > rng.uniform(0.4, 0.6)


def neighbour_bleed(image: np.ndarray, gt: np.ndarray, rng: np.random.Generator, others: np.ndarray) -> np.ndarray:
    """Touching and occluding neighbours: the mask runs 2-8 px into the instances it touches,
    or stops short of them, as box-based heads do where objects meet. ``others`` holds every
    other instance of the scene; without a touching one this is a grid blob."""
    r = int(rng.integers(2, 9))
    m = gt.astype(np.uint8)
    grown = cv2.dilate(m, _disk(r)).astype(bool)
    touching = grown & others
    if touching.sum() < 4:
        return grid_resample(image, gt, rng)
    if rng.random() < 0.6:
        out = gt | touching
    else:
        near_others = cv2.dilate(others.astype(np.uint8), _disk(r)).astype(bool)
        out = gt & ~near_others
        if out.sum() < 0.5 * gt.sum():
            out = gt | touching
    return boundary_noise(image, out, rng) if rng.random() < 0.5 else out


RECIPES: dict[str, Recipe] = {
    "grid": grid_resample,
    "warp": smooth_warp,
    "morph": dilate_erode,
    "noise": boundary_noise,
    "colour": colour_leak,
    "grabcut": grabcut,
    "blobs": blobs_and_cuts,
    "warp_large": smooth_warp_large,
    "colour_large": colour_leak_large,
    "lowres": low_resolution,
    "chunks": boundary_chunks,
    "thin": thin_parts_lost,
    "near": nearly_right,
    "near_lowres": nearly_right_lowres,
    "stride": stride_resample,
}

# Draws that are already right: no second error is stacked on them.
NEARLY_RIGHT = frozenset({"near", "near_lowres"})

# Recipes that need the rest of the scene: called with ``others``, the union of every other
# instance's ground truth in the image (empty for single-object data).
SCENE_RECIPES: dict[str, Callable[..., np.ndarray]] = {"neighbour": neighbour_bleed}

DEFAULT_MIX: dict[str, float] = {
    "grid": 0.25,
    "warp": 0.2,
    "morph": 0.1,
    "colour": 0.2,
    "grabcut": 0.15,
    "blobs": 0.1,
}


# Errors beyond the boundary F-score's 8 px tolerance, mixed with DEFAULT_MIX's finer ones:
# half of the real OSVOS / RVOS boundary errors on davis-dev-real are > 8 px, and missed thin
# parts (legs, wheels, lines) are the commonest of those (see models/MODEL_CARD.md).
LARGE_MIX: dict[str, float] = {
    **{name: weight / 2 for name, weight in DEFAULT_MIX.items()},
    "thin": 0.15,
    "warp_large": 0.1,
    "colour_large": 0.1,
    "lowres": 0.1,
    "chunks": 0.05,
}

# Multi-instance street scenes (Cityscapes-like): Mask R-CNN blobs in a box, bottom-up
# stride-4-8 masks, touching neighbours, and a fifth of draws already right, so the refiner
# sees whole small objects, neighbours, and boundaries it must leave alone. No "blobs": on
# a street a small separate blob is usually another object, not an error to delete.
SCENE_MIX: dict[str, float] = {
    "grid": 0.3,
    "near": 0.2,
    "stride": 0.15,
    "neighbour": 0.1,
    "warp": 0.1,
    "morph": 0.1,
    "noise": 0.05,
}

# Salient-object data for the same model: the large-error mix, with nearly right draws.
SALIENT_MIX: dict[str, float] = {**{name: 0.75 * weight for name, weight in LARGE_MIX.items()}, "near": 0.25}

NAMED_MIXES: dict[str, dict[str, float]] = {
    "default": DEFAULT_MIX,
    "large": LARGE_MIX,
    "scene": SCENE_MIX,
    "salient": SALIENT_MIX,
}


def parse_mix(text: str) -> dict[str, float]:
    """'grid=2,warp=1' -> {'grid': 2.0, 'warp': 1.0}; names must be recipes. A named mix
    ('default', 'large') stands for its weights."""
    if text.strip() in NAMED_MIXES:
        return dict(NAMED_MIXES[text.strip()])
    mix = {}
    for part in text.split(","):
        name, _, weight = part.partition("=")
        name = name.strip()
        if name not in RECIPES and name not in SCENE_RECIPES:
            raise ValueError(f"unknown recipe {name!r}; choose from {sorted([*RECIPES, *SCENE_RECIPES])}")
        mix[name] = float(weight) if weight else 1.0
    if sum(mix.values()) <= 0:
        raise ValueError("recipe weights must sum to more than zero")
    return mix


def synthesize(
    image: np.ndarray,
    gt: np.ndarray,
    rng: np.random.Generator,
    mix: dict[str, float] | None = None,
    second_error: float = 0.5,
    others: np.ndarray | None = None,
) -> tuple[np.ndarray, str]:
    """One coarse mask for ``gt``: a recipe drawn from ``mix``, sometimes followed by a second,
    lighter one (warp or noise). ``others``: the scene's other instances (for the scene
    recipes). Nearly right draws get no second error: they stay nearly right. Returns
    (mask, recipe name(s))."""
    mix = mix or DEFAULT_MIX
    names = list(mix)
    weights = np.array([mix[n] for n in names], dtype=np.float64)
    name = names[rng.choice(len(names), p=weights / weights.sum())]
    if name in SCENE_RECIPES:
        scene = others if others is not None else np.zeros_like(gt)
        out = SCENE_RECIPES[name](image, gt, rng, scene & ~gt)
    else:
        out = RECIPES[name](image, gt, rng)
    if name not in NEARLY_RIGHT and rng.random() < second_error and out.any():
        extra = "warp" if rng.random() < 0.5 else "noise"
        out = RECIPES[extra](image, out, rng)
        name = f"{name}+{extra}"
    return out, name

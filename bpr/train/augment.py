"""Batch augmentation in torch: flips, quarter turns and photometric distortion, per sample, no
Python loop over samples."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# RGB <-> YIQ: hue is a rotation of the (I, Q) plane.
_RGB2YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_YIQ2RGB = torch.linalg.inv(_RGB2YIQ)


def random_flip(
    images: torch.Tensor, coarse: torch.Tensor, target: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Horizontal flip of half the samples (image, coarse and target together)."""
    flip = torch.rand(images.shape[0], generator=generator) < 0.5
    f = flip.to(images.device).view(-1, 1, 1, 1)
    return (
        torch.where(f, images.flip(-1), images),
        torch.where(f, coarse.flip(-1), coarse),
        torch.where(f[:, 0], target.flip(-1), target),
    )


def random_quarter_turn(
    images: torch.Tensor, coarse: torch.Tensor, target: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Turn each sample by 0, 90, 180 or 270 degrees (image, coarse and target together); with
    :func:`random_flip`, every symmetry of the square. A boundary's right place does not depend
    on its direction, and a refiner that saw each training image four ways round has less to gain
    from remembering it (the salient sets are a thousand images, seen for many epochs)."""
    turns = torch.randint(0, 4, (images.shape[0],), generator=generator).to(images.device)
    images, coarse, target = images.clone(), coarse.clone(), target.clone()
    for k in (1, 2, 3):
        rows = turns == k
        if bool(rows.any()):
            images[rows] = torch.rot90(images[rows], k, dims=(-2, -1))
            coarse[rows] = torch.rot90(coarse[rows], k, dims=(-2, -1))
            target[rows] = torch.rot90(target[rows], k, dims=(-2, -1))
    return images, coarse, target


def photometric(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Brightness, contrast, saturation and hue jitter on (B, 3, S, S) float RGB in 0..255."""
    b = images.shape[0]
    dev = images.device

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return (torch.rand(b, generator=generator) * (hi - lo) + lo).to(dev).view(b, 1, 1, 1)

    x = images + uniform(-32, 32)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * uniform(0.5, 1.5) + mean
    grey = (x * torch.tensor([0.299, 0.587, 0.114], device=dev).view(1, 3, 1, 1)).sum(1, keepdim=True)
    x = (x - grey) * uniform(0.5, 1.5) + grey
    theta = uniform(-18, 18).view(b) * math.pi / 180
    cos, sin = torch.cos(theta), torch.sin(theta)
    rot = torch.zeros(b, 3, 3, device=dev)
    rot[:, 0, 0] = 1
    rot[:, 1, 1], rot[:, 1, 2], rot[:, 2, 1], rot[:, 2, 2] = cos, -sin, sin, cos
    m = _YIQ2RGB.to(dev) @ rot @ _RGB2YIQ.to(dev)  # (B, 3, 3)
    x = torch.einsum("bij,bjhw->bihw", m, x)
    return x.clamp(0, 255)


def random_rotate_zoom(
    images: torch.Tensor,
    coarse: torch.Tensor,
    target: torch.Tensor,
    generator: torch.Generator,
    max_degrees: float = 30.0,
    max_zoom: float = 1.3,
    share: float = 0.5,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Turn ``share`` of the samples by an angle within +-``max_degrees`` and magnify them by 1 to
    ``max_zoom`` about the view's centre (image, coarse and target together, one resampling of
    the whole batch). Quarter turns give four views of each stored sample; this gives a continuum,
    so a refiner cannot remember a training image pixel by pixel: the salient sets are about a
    thousand images seen for many epochs, and the one thing known to narrow that memorisation
    was more views of them (quarter turns, session 18).

    Magnification only (zoom >= 1): the stored view has no pixels beyond its border, and even so
    the corners of a turned view fall outside it: they are mirrored back in (reflection), which
    touches only the context ring of a 96-px view up to 30 degrees at zoom 1 (the 64-px patch's
    corners reach 45 px from the centre; the view's border is 48 px away). Masks are resampled
    bilinearly and thresholded at 0.5, so they stay binary as at inference."""
    b = images.shape[0]
    dev = images.device
    chosen = torch.rand(b, generator=generator) < share
    theta = (torch.rand(b, generator=generator) * 2 - 1) * max_degrees * math.pi / 180
    zoom = 1 + torch.rand(b, generator=generator) * (max_zoom - 1)
    if not bool(chosen.any()):
        return images, coarse, target
    cos, sin = torch.cos(theta) / zoom, torch.sin(theta) / zoom
    affine = torch.zeros(b, 2, 3)
    affine[:, 0, 0], affine[:, 0, 1], affine[:, 1, 0], affine[:, 1, 1] = cos, -sin, sin, cos
    grid = F.affine_grid(affine.to(dev), list(images.shape), align_corners=False)
    stacked = torch.cat([images, coarse.float(), target[:, None].float()], dim=1)
    warped = F.grid_sample(stacked, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    warped = torch.where(chosen.to(dev).view(b, 1, 1, 1), warped, stacked)  # the others exactly as they were
    out_coarse = (warped[:, 3:4] > 0.5).to(coarse.dtype)
    out_target = (warped[:, 4] > 0.5).to(target.dtype)
    return warped[:, :3], out_coarse, out_target

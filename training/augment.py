"""Batch augmentations for uint8 NHWC scene images, vectorised so that they cost little on a CPU.

Each returns float NHWC images on the 0..255 scale, which `training.cnn.Normalize` accepts like uint8.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.transforms import v2


def _uniform(n: int, low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=generator)


def flip_crop(images: torch.Tensor, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random horizontal flips and random crops of the image padded by reflection."""
    x = images.permute(0, 3, 1, 2).float()
    n, _, h, w = x.shape
    flips = torch.rand(n, generator=generator) < 0.5
    x = torch.where(flips.view(-1, 1, 1, 1), x.flip(3), x)
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    rows = (dy.view(-1, 1) + torch.arange(h)).view(n, 1, h, 1).expand(n, 3, h, w + 2 * pad)
    x = padded.gather(2, rows)
    cols = (dx.view(-1, 1) + torch.arange(w)).view(n, 1, 1, w).expand(n, 3, h, w)
    return x.gather(3, cols).permute(0, 2, 3, 1)


def resized_crop_jitter(
    images: torch.Tensor, generator: torch.Generator, scale=(0.35, 1.0), ratio=(3 / 4, 4 / 3), jitter: float = 0.3
) -> torch.Tensor:
    """Random resized crops (area fraction in `scale`, aspect in `ratio`) with flips, by one affine resampling
    of the whole batch; then brightness, contrast and saturation each scaled by a factor in 1 +- jitter."""
    x = images.permute(0, 3, 1, 2).float()
    n = len(x)
    area = _uniform(n, *scale, generator)
    aspect = torch.exp(_uniform(n, *torch.log(torch.tensor(ratio)).tolist(), generator))
    sx, sy = torch.sqrt(area * aspect).clamp(max=1), torch.sqrt(area / aspect).clamp(max=1)
    tx, ty = (1 - sx) * _uniform(n, -1, 1, generator), (1 - sy) * _uniform(n, -1, 1, generator)
    flip = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = sx * flip, tx, sy, ty
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    if jitter:
        factors = _uniform(3 * n, 1 - jitter, 1 + jitter, generator).view(3, n, 1, 1, 1)
        x = x * factors[0]
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) * factors[1] + mean
        gray = (x * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
        x = (x - gray) * factors[2] + gray
    return x.clamp(0, 255).permute(0, 2, 3, 1)


def flip_crop_cutout(images: torch.Tensor, generator: torch.Generator, size: int = 16) -> torch.Tensor:
    """Flips and padded crops, then cutout (DeVries and Taylor, 2017): one `size` x `size` square per image,
    centred anywhere in it (so partly outside near the edges), filled with the batch's mean colour."""
    x = flip_crop(images, generator)
    n, h, w, _ = x.shape
    cy = torch.randint(0, h, (n, 1), generator=generator)
    cx = torch.randint(0, w, (n, 1), generator=generator)
    rows = ((torch.arange(h) - cy + size // 2) % (h + size) < size).view(n, h, 1)
    cols = ((torch.arange(w) - cx + size // 2) % (w + size) < size).view(n, 1, w)
    hole = (rows & cols).unsqueeze(3)
    return torch.where(hole, x.mean(dim=(0, 1, 2)), x)


TRIVIAL_AUGMENT = v2.TrivialAugmentWide()


def flip_crop_trivial(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Flips and padded crops, then torchvision's TrivialAugmentWide (one random photometric or geometric
    operation of random strength per image). It draws from torch's global generator, not `generator`."""
    x = flip_crop(images, generator).round().to(torch.uint8).permute(0, 3, 1, 2)
    return torch.stack([TRIVIAL_AUGMENT(image) for image in x]).permute(0, 2, 3, 1).float()


AUGMENTATIONS = {
    "none": None,
    "flip-crop": flip_crop,
    "resized-crop": resized_crop_jitter,
    "flip-crop-trivial": flip_crop_trivial,
    "flip-crop-cutout": flip_crop_cutout,
}


def mixed_targets(labels: torch.Tensor, order: torch.Tensor, classes: int, weight: float) -> torch.Tensor:
    """Each one-hot label with weight `weight`, the label of its partner `order` with the rest."""
    targets = F.one_hot(labels, classes).float()
    return weight * targets + (1 - weight) * targets[order]


def mixup(images: torch.Tensor, labels: torch.Tensor, classes: int, alpha: float, generator: torch.Generator):
    """Blend each image and its one-hot label with another of the batch, weight ~ Beta(alpha, alpha)."""
    weight = torch.distributions.Beta(alpha, alpha).sample().item() if alpha > 0 else 1.0
    order = torch.randperm(len(images), generator=generator)
    return weight * images + (1 - weight) * images[order], mixed_targets(labels, order, classes, weight)


def cutmix(images: torch.Tensor, labels: torch.Tensor, classes: int, alpha: float, generator: torch.Generator):
    """CutMix (Yun et al., 2019): paste into each NHWC image one box of another of the batch, the same box for
    all, of area fraction 1 - weight with weight ~ Beta(alpha, alpha) and centred anywhere (clipped at the edges);
    the one-hot labels mix by the area actually kept."""
    weight = torch.distributions.Beta(alpha, alpha).sample().item()
    order = torch.randperm(len(images), generator=generator)
    _, h, w, _ = images.shape
    box_h, box_w = round(h * (1 - weight) ** 0.5), round(w * (1 - weight) ** 0.5)
    cy, cx = (torch.randint(0, size, (1,), generator=generator).item() for size in (h, w))
    top, bottom = max(cy - box_h // 2, 0), min(cy - box_h // 2 + box_h, h)
    left, right = max(cx - box_w // 2, 0), min(cx - box_w // 2 + box_w, w)
    mixed = images.clone()
    mixed[:, top:bottom, left:right] = images[order, top:bottom, left:right]
    kept = 1 - (bottom - top) * (right - left) / (h * w)
    return mixed, mixed_targets(labels, order, classes, kept)

"""Strong augmentation of normalised image batches on their device (DACS): colour jitter
and Gaussian blur, with random parameters drawn per sample."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)


def _stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mean = torch.tensor(IMAGENET_MEAN, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return mean, std


def _uniform(n: int, low: float, high: float, device) -> torch.Tensor:
    return (torch.rand(n) * (high - low) + low).to(device).view(n, 1, 1, 1)


def _gray(rgb: torch.Tensor) -> torch.Tensor:
    r, g, b = rgb.unbind(1)
    return (0.299 * r + 0.587 * g + 0.114 * b).unsqueeze(1)


def _rgb_to_hsv(rgb: torch.Tensor) -> torch.Tensor:
    r, g, b = rgb.unbind(1)
    high, argmax = rgb.max(1)
    low = rgb.min(1).values
    delta = high - low
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    hue = torch.stack([((g - b) / safe) % 6, (b - r) / safe + 2, (r - g) / safe + 4], 1)
    hue = hue.gather(1, argmax.unsqueeze(1)).squeeze(1) / 6.0
    hue = torch.where(delta > 0, hue, torch.zeros_like(hue))
    sat = torch.where(high > 0, delta / torch.where(high > 0, high, torch.ones_like(high)), high)
    return torch.stack([hue % 1.0, sat, high], 1)


def _hsv_to_rgb(hsv: torch.Tensor) -> torch.Tensor:
    h, s, v = hsv.unbind(1)
    k = torch.stack([(5 + h * 6) % 6, (3 + h * 6) % 6, (1 + h * 6) % 6], 1)
    return v.unsqueeze(1) - (v * s).unsqueeze(1) * torch.clamp(torch.minimum(k, 4 - k), 0, 1)


def color_jitter(images: torch.Tensor, strength: float = 0.2, p: float = 0.2) -> torch.Tensor:
    """Brightness, contrast, saturation (factors in [1-s, 1+s]) and hue (shift in [-s, s]).

    As in DACS, ``p`` is the probability of *skipping*: each sample is jittered when a uniform
    draw exceeds ``p`` (so with probability 0.8 at the published p = 0.2).
    """
    n = images.shape[0]
    apply = (torch.rand(n) > p).to(images.device).view(n, 1, 1, 1)
    brightness = _uniform(n, 1 - strength, 1 + strength, images.device)
    contrast = _uniform(n, 1 - strength, 1 + strength, images.device)
    saturation = _uniform(n, 1 - strength, 1 + strength, images.device)
    hue = _uniform(n, -strength, strength, images.device).view(n, 1, 1)
    mean, std = _stats(images)
    rgb = ((images * std + mean) / 255.0).clamp(0, 1).float()
    out = (rgb * brightness).clamp(0, 1)
    out = (
        (out - _gray(out).mean((2, 3), keepdim=True)) * contrast
        + _gray(out).mean((2, 3), keepdim=True)
    ).clamp(0, 1)
    out = ((out - _gray(out)) * saturation + _gray(out)).clamp(0, 1)
    hsv = _rgb_to_hsv(out)
    hsv = torch.stack([(hsv[:, 0] + hue) % 1.0, hsv[:, 1], hsv[:, 2]], 1)
    out = _hsv_to_rgb(hsv).to(images.dtype)
    jittered = (out * 255.0 - mean) / std
    return torch.where(apply, jittered, images)


def _kernel_size(length: int) -> int:
    """DACS's kernel size: about 10 % of the side, odd."""
    ten = math.ceil(0.1 * length)
    return math.floor(ten - 0.5 + ten % 2)


def gaussian_blur(
    images: torch.Tensor, prob: float = 0.5, sigma: tuple[float, float] = (0.15, 1.15)
) -> torch.Tensor:
    """Blur each sample with probability ``prob`` and a sigma drawn uniformly per sample."""
    n, c, h, w = images.shape
    apply = (torch.rand(n) < prob).to(images.device).view(n, 1, 1, 1)
    sigmas = (torch.rand(n) * (sigma[1] - sigma[0]) + sigma[0]).to(images.device)
    out = images
    for axis, length in ((2, h), (3, w)):
        size = max(_kernel_size(length), 1)
        offsets = torch.arange(size, device=images.device, dtype=images.dtype) - (size - 1) / 2
        kernel = torch.exp(-(offsets[None] ** 2) / (2 * sigmas[:, None] ** 2))
        kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(c, 0)
        shape = (n * c, 1, size, 1) if axis == 2 else (n * c, 1, 1, size)
        pad = (
            (0, 0, size // 2, (size - 1) // 2) if axis == 2 else (size // 2, (size - 1) // 2, 0, 0)
        )
        flat = F.pad(
            out.reshape(1, n * c, h, w),
            pad,
            mode="reflect" if size // 2 < min(h, w) else "replicate",
        )
        out = F.conv2d(flat, kernel.view(shape), groups=n * c).view(n, c, h, w)
    return torch.where(apply, out, images)


def strong_augment(
    images: torch.Tensor, jitter_strength: float = 0.2, jitter_p: float = 0.2, blur: bool = True
) -> torch.Tensor:
    """DACS's strong augmentation of a mixed batch: colour jitter, then Gaussian blur."""
    out = color_jitter(images, jitter_strength, jitter_p)
    return gaussian_blur(out) if blur else out

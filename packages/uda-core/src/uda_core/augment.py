"""Strong augmentation of normalised image batches on their device (DACS): kornia's colour
jitter and Gaussian blur, each behind a U(0,1) gate, as the DACS/DAFormer/MIC reference
(MIC 2f932a9 ``seg/mmseg/models/utils/dacs_transforms.py``) applies them."""

from __future__ import annotations

import functools
import math
from typing import Literal

import torch
from kornia.augmentation import ColorJiggle
from kornia.filters import gaussian_blur2d

IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)

BLUR_SIGMA = (0.15, 1.15)


def _stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mean = torch.tensor(IMAGENET_MEAN, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return mean, std


def color_jitter(images: torch.Tensor, strength: float = 0.2) -> torch.Tensor:
    """kornia's ``ColorJiggle(s, s, s, s)`` on the images in [0, 1]: brightness ``x + (f - 1)``,
    contrast ``x * f``, saturation scaled in HSV, hue shifted by ``f`` turns (factors per image,
    in [1 - s, 1 + s] and [-s, s]), the four in one random order per call. This is kornia 0.5.8's
    ``ColorJitter``, which the reference calls (``dacs_transforms.py:52-66``)."""
    mean, std = _stats(images.float())
    rgb = (images.float() * std + mean) / 255.0
    out = _jiggle(strength)(rgb)
    return ((out * 255.0 - mean) / std).to(images.dtype)


@functools.lru_cache(maxsize=8)
def _jiggle(strength: float) -> ColorJiggle:
    """One ``ColorJiggle`` per strength, made once: building it checks and stores its ranges
    as tensors (212 operator dispatches), and it keeps no state between calls that changes
    what it draws (its factors and order come from the global generator at each call)."""
    return ColorJiggle(strength, strength, strength, strength)


def blur_kernel_size(length: int) -> int:
    """The reference's kernel side: ``floor(ceil(0.1 L) - 0.5 + ceil(0.1 L) % 2)``, odd."""
    ten = math.ceil(0.1 * length)
    return math.floor(ten - 0.5 + ten % 2)


def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """kornia's Gaussian blur (reflect border) with one ``sigma`` on both axes and the
    reference's kernel size per axis (``dacs_transforms.py:69-87``)."""
    size = (blur_kernel_size(images.shape[-2]), blur_kernel_size(images.shape[-1]))
    return gaussian_blur2d(images.float(), size, (sigma, sigma)).to(images.dtype)


def strong_augment(
    images: torch.Tensor,
    jitter_strength: float = 0.2,
    jitter_p: float = 0.2,
    blur: bool = True,
    *,
    gates: Literal["batch", "image"] = "batch",
    per_image_calls: bool = False,
) -> torch.Tensor:
    """DACS's strong augmentation: colour jitter when ``U(0,1) > jitter_p``, then (``blur``) a
    Gaussian blur with ``sigma ~ U(0.15, 1.15)`` when ``U(0,1) > 0.5``.

    ``gates``: ``batch`` draws one jitter gate and one blur gate for the whole batch (the
    reference, ``dacs.py:331-339``); ``image`` draws them for each image, with its own jitter
    order and sigma. ``per_image_calls``: with batch gates, each image still gets its own
    jitter order and blur sigma (the reference's mixed step transforms one image per call,
    ``dacs.py:400-409``); without, the batch shares one order and one sigma (MIC's masked
    image, ``masking_consistency_module.py:118-130``).
    """
    if gates == "image":
        return torch.cat([strong_augment(x[None], jitter_strength, jitter_p, blur) for x in images])
    jitter_on = torch.rand(()).item() > jitter_p
    blur_on = blur and torch.rand(()).item() > 0.5
    parts = []
    for part in images.split(1) if per_image_calls else (images,):
        if jitter_on:
            part = color_jitter(part, jitter_strength)
        if blur_on:
            low, high = BLUR_SIGMA
            part = gaussian_blur(part, torch.empty(()).uniform_(low, high).item())
        parts.append(part)
    return torch.cat(parts)

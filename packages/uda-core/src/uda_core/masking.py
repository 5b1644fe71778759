"""Block masks for masked image consistency (MIC, Hoyer et al., CVPR 2023)."""

from __future__ import annotations

import math

import torch


def block_mask(
    batch: int,
    height: int,
    width: int,
    block: int,
    ratio: float,
    device: torch.device | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """B x 1 x H x W float mask, 0 on whole ``block`` x ``block`` squares dropped with
    probability ``ratio`` each, 1 elsewhere (squares at the right and bottom edges may be cut)."""
    rows, cols = math.ceil(height / block), math.ceil(width / block)
    keep = (torch.rand(batch, 1, rows, cols, generator=generator) >= ratio).float()
    keep = keep.repeat_interleave(block, dim=2).repeat_interleave(block, dim=3)
    return keep[..., :height, :width].to(device)


def mask_image(image: torch.Tensor, block: int, ratio: float) -> torch.Tensor:
    """The image with random blocks set to 0 (the mean colour of a normalised image)."""
    b, _, h, w = image.shape
    return image * block_mask(b, h, w, block, ratio, image.device).to(image.dtype)

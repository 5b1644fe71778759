"""Block masks for masked image consistency (MIC, Hoyer et al., CVPR 2023)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def block_mask(
    batch: int,
    height: int,
    width: int,
    block: int,
    ratio: float,
    device: torch.device | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """B x 1 x H x W float mask, 0 on cells dropped with probability ``ratio`` each, 1 elsewhere.

    As the reference (MIC 2f932a9 ``seg/mmseg/models/utils/masking_transforms.py:27-36``): a
    ``round(H / block)`` x ``round(W / block)`` grid kept where ``U(0,1) > ratio``, resized to
    H x W by nearest neighbour (whole ``block`` squares when the sides are multiples of it).
    """
    rows, cols = round(height / block), round(width / block)
    keep = (torch.rand(batch, 1, rows, cols, generator=generator) > ratio).float()
    return F.interpolate(keep, size=(height, width), mode="nearest").to(device)


def mask_image(image: torch.Tensor, block: int, ratio: float) -> torch.Tensor:
    """The image with random blocks set to 0 (the mean colour of a normalised image)."""
    b, _, h, w = image.shape
    return image * block_mask(b, h, w, block, ratio, image.device).to(image.dtype)

"""Losses shared by every method."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def seg_cross_entropy(
    logits: torch.Tensor,
    label: torch.Tensor,
    pixel_weight: torch.Tensor | None = None,
    ignore_index: int = 255,
) -> torch.Tensor:
    """Cross-entropy of logits (upsampled to the label's size) with optional per-pixel weights.

    The mean runs over all non-ignored pixels, weighted pixels included, as in DACS/DAFormer.
    Computed in fp32 whatever the autocast precision.
    """
    if logits.shape[-2:] != label.shape[-2:]:
        logits = F.interpolate(logits, label.shape[-2:], mode="bilinear", align_corners=False)
    loss = F.cross_entropy(
        logits.float(), label.long(), ignore_index=ignore_index, reduction="none"
    )
    if pixel_weight is not None:
        loss = loss * pixel_weight
    valid = (label != ignore_index).sum().clamp(min=1)
    return loss.sum() / valid

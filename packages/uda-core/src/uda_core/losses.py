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
    logits = logits.float()  # before upsampling: bf16 logits are not interpolated in bf16
    if logits.shape[-2:] != label.shape[-2:]:
        logits = F.interpolate(logits, label.shape[-2:], mode="bilinear", align_corners=False)
    loss = F.cross_entropy(logits, label.long(), ignore_index=ignore_index, reduction="none")
    if pixel_weight is not None:
        loss = loss * pixel_weight
    valid = (label != ignore_index).sum().clamp(min=1)
    return loss.sum() / valid


def downscale_label_ratio(
    label: torch.Tensor, factor: int, min_ratio: float, num_classes: int, ignore_index: int = 255
) -> torch.Tensor:
    """Labels of ``factor`` x ``factor`` cells: the majority class where it covers at least
    ``min_ratio`` of the cell, else ignore. B x H x W -> B x H/f x W/f."""
    valid = label != ignore_index
    onehot = F.one_hot(torch.where(valid, label, num_classes).long(), num_classes + 1)
    onehot = onehot.permute(0, 3, 1, 2)[:, :num_classes].float()
    share = F.avg_pool2d(onehot, factor)
    ratio, cls = share.max(dim=1)
    return torch.where(ratio >= min_ratio, cls, torch.full_like(cls, ignore_index))


def feature_distance(
    student: torch.Tensor, reference: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean over (masked) positions of the L2 distance between two B x C x h x w feature maps."""
    dist = torch.norm(student.float() - reference.float().detach(), dim=1)
    if mask is None:
        return dist.mean()
    if not mask.any():
        return dist.sum() * 0.0
    return dist[mask].mean()

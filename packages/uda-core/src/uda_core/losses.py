"""Losses shared by every method."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F


def seg_cross_entropy(
    logits: torch.Tensor,
    label: torch.Tensor,
    pixel_weight: torch.Tensor | None = None,
    ignore_index: int = 255,
    mean_over: Literal["all", "valid"] = "valid",
) -> torch.Tensor:
    """Cross-entropy of logits (upsampled to the label's size) with optional per-pixel weights.

    ``mean_over``: ``all`` divides the (weighted) sum by every pixel, ignored ones counting as 0
    (the reference: mmseg's ``reduction='mean'`` without ``avg_non_ignore``, MIC 2f932a9
    ``seg/mmseg/models/losses/utils.py:48-77``); ``valid`` by the non-ignored pixels only.
    Computed in fp32 whatever the autocast precision.
    """
    logits = logits.float()  # before upsampling: bf16 logits are not interpolated in bf16
    if logits.shape[-2:] != label.shape[-2:]:
        logits = F.interpolate(logits, label.shape[-2:], mode="bilinear", align_corners=False)
    loss = F.cross_entropy(logits, label.long(), ignore_index=ignore_index, reduction="none")
    if pixel_weight is not None:
        loss = loss * pixel_weight
    if mean_over == "all":
        return loss.mean()
    return loss.sum() / (label != ignore_index).sum().clamp(min=1)


def downscale_label_ratio(
    label: torch.Tensor, factor: int, min_ratio: float, num_classes: int, ignore_index: int = 255
) -> torch.Tensor:
    """Labels of ``factor`` x ``factor`` cells: the majority among the classes and the ignore
    value, kept where it covers at least ``min_ratio`` of the cell, else ignore (MIC 2f932a9
    ``seg/mmseg/utils/utils.py:18-39``). B x H x W -> B x H/f x W/f."""
    label = torch.where(label == ignore_index, num_classes, label).long()
    onehot = F.one_hot(label, num_classes + 1).permute(0, 3, 1, 2).float()
    ratio, cls = F.avg_pool2d(onehot, factor).max(dim=1)
    keep = (ratio >= min_ratio) & (cls != num_classes)
    return torch.where(keep, cls, torch.full_like(cls, ignore_index))


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

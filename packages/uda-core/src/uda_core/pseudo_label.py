"""Pseudo-labels from teacher logits, with their confidence as a pixel-weight map."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class PseudoLabels:
    """``label`` B x H x W (argmax of the teacher), ``weight`` B x H x W float pixel weights."""

    label: torch.Tensor
    weight: torch.Tensor
    confidence: torch.Tensor


def pseudo_labels(
    logits: torch.Tensor, threshold: float = 0.968, per_image: bool = False
) -> PseudoLabels:
    """Argmax labels; the weight is the share of pixels with max prob >= threshold, over the
    whole batch (one scalar, the reference: MIC 2f932a9 ``seg/mmseg/models/uda/dacs.py:264-272``)
    or, with ``per_image``, over each image.

    The weight is expanded to a per-pixel map so later steps (margins, plugins) can change
    it pixel by pixel.
    """
    probs = torch.softmax(logits.float(), dim=1)
    confidence, label = probs.max(dim=1)
    confident = (confidence >= threshold).float()
    share = confident.mean(dim=(1, 2), keepdim=True) if per_image else confident.mean()
    share = share.expand_as(confidence)
    return PseudoLabels(label, share.clone(), confidence)


def ignore_rows(weight: torch.Tensor, top: int = 0, bottom: int = 0) -> torch.Tensor:
    """Zero the weight of the top and bottom rows (DAFormer: the ego car and the sky border)."""
    out = weight.clone()
    if top > 0:
        out[:, :top] = 0
    if bottom > 0:
        out[:, out.shape[1] - bottom :] = 0
    return out

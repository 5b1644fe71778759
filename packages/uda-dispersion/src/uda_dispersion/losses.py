"""Losses of the multi-task head, and the pixel-weight hook on pseudo-labels.

All computed in fp32 whatever the autocast precision.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

MeanOver = Literal["all", "valid"]

DISPERSION_IGNORE = -1.0
"""Value of dispersion targets where the dispersion is undefined (see ``dispersion_map``)."""


def _to_size(prediction: torch.Tensor, size: torch.Size) -> torch.Tensor:
    """``prediction`` in fp32 (first, so that bf16 logits are not upsampled in bf16) at
    ``size``."""
    prediction = prediction.float()
    if prediction.shape[-2:] != size:
        prediction = F.interpolate(prediction, size, mode="bilinear", align_corners=False)
    return prediction


def berhu_loss(
    prediction: torch.Tensor,
    target: torch.Tensor,
    threshold_ratio: float = 0.2,
    detach_threshold: bool = False,
) -> torch.Tensor:
    """Reverse Huber loss of a B x 1 x h x w prediction (upsampled) against a B x [1 x] H x W
    target, averaged over the pixels whose target is not ``DISPERSION_IGNORE``.

    With residuals d and c = ``threshold_ratio`` x max |d| over the valid pixels of the whole
    batch: |d| where |d| <= c, (d^2 + c^2) / (2c + 1e-6) above, as the published
    ``BerHuLoss`` (Dispersion ``mmseg/models/losses/berhu_loss.py:26-48``), whose c carries a
    gradient to the pixel of the largest residual; ``detach_threshold`` (ours) cuts it. Zero,
    still connected to the graph, when no pixel is valid.
    """
    target = target.reshape(target.shape[0], -1, *target.shape[-2:]).float()
    valid = target != DISPERSION_IGNORE
    # masked rather than indexed: no host synchronisation, no gather of the valid pixels
    residual = torch.where(valid, (_to_size(prediction, target.shape[-2:]) - target).abs(), 0.0)
    c = threshold_ratio * residual.max()
    if detach_threshold:
        c = c.detach()
    loss = torch.where(residual <= c, residual, (residual**2 + c**2) / (2 * c + 1e-6))
    return (loss * valid).sum() / valid.sum().clamp(min=1)


def weighted_cross_entropy(
    logits: torch.Tensor,
    label: torch.Tensor,
    pixel_weight: torch.Tensor | None = None,
    ignore_index: int = 255,
    mean_over: MeanOver = "all",
) -> torch.Tensor:
    """Cross-entropy of B x K x h x w logits (upsampled) against B x H x W labels, each pixel
    multiplied by ``pixel_weight``. ``mean_over``: ``"all"`` divides by every pixel, the ignored
    ones counted as 0 (mmseg's ``reduction='mean'``, as published); ``"valid"`` by the
    non-ignored pixels."""
    loss = F.cross_entropy(
        _to_size(logits, label.shape[-2:]),
        label.long(),
        ignore_index=ignore_index,
        reduction="none",
    )
    if pixel_weight is not None:
        loss = loss * pixel_weight
    if mean_over == "all":
        return loss.mean()
    return loss.sum() / (label != ignore_index).sum().clamp(min=1)


def head_losses(
    outputs: dict[str, torch.Tensor],
    label: torch.Tensor,
    dispersion: torch.Tensor,
    pixel_weight: torch.Tensor | None = None,
    loss_weight: float = 0.005,
    berhu_ratio: float = 0.2,
    seg_init_mean: MeanOver = "all",
    detach_threshold: bool = False,
) -> dict[str, torch.Tensor]:
    """The ``DispersionHead`` outputs' losses besides the final segmentation's: cross-entropy
    of the initial segmentation (pixel-weighted like the final one, weight 1) and BerHu of the
    initial and final dispersion, x ``loss_weight`` (the published ``BaseDecodeHead.losses``
    run on (S, D) and (S_init, D_init), Dispersion ``decode_head.py:236-271``)."""
    return {
        "seg_init": weighted_cross_entropy(
            outputs["seg_init"], label, pixel_weight, mean_over=seg_init_mean
        ),
        "disp_init": loss_weight
        * berhu_loss(outputs["disp_init"], dispersion, berhu_ratio, detach_threshold),
        "disp": loss_weight
        * berhu_loss(outputs["disp"], dispersion, berhu_ratio, detach_threshold),
    }


def agreement_weights(
    weight: torch.Tensor,
    pseudo_label: torch.Tensor,
    auxiliary_label: torch.Tensor,
    alpha: float = 1.2,
    beta: float = 0.6,
    clip: bool = False,
) -> torch.Tensor:
    """The pixel-weight hook: ``weight`` x ``alpha`` where the auxiliary network's label equals
    the pseudo-label, x ``beta`` elsewhere (B x H x W each); with ``clip``, at most 1."""
    adjusted = weight * torch.where(auxiliary_label == pseudo_label, alpha, beta)
    return adjusted.clamp(max=1.0) if clip else adjusted

"""Losses of the multi-task head, and the pixel-weight hook on pseudo-labels.

All computed in fp32 whatever the autocast precision.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

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
    prediction: torch.Tensor, target: torch.Tensor, threshold_ratio: float = 0.2
) -> torch.Tensor:
    """Reverse Huber loss of a B x 1 x h x w prediction (upsampled) against a B x [1 x] H x W
    target, over pixels whose target is not ``DISPERSION_IGNORE``.

    With residuals d and c = ``threshold_ratio`` x max |d| over the valid pixels (no gradient
    through c): |d| where |d| <= c, (d^2 + c^2) / 2c above. Zero, still connected to the
    graph, when no pixel is valid.
    """
    target = target.reshape(target.shape[0], -1, *target.shape[-2:]).float()
    valid = target != DISPERSION_IGNORE
    # masked rather than indexed: no host synchronisation, no gather of the valid pixels
    residual = torch.where(valid, (_to_size(prediction, target.shape[-2:]) - target).abs(), 0.0)
    c = (threshold_ratio * residual.max()).detach().clamp(min=1e-6)
    loss = torch.where(residual <= c, residual, (residual**2 + c**2) / (2 * c))
    return (loss * valid).sum() / valid.sum().clamp(min=1)


def weighted_cross_entropy(
    logits: torch.Tensor,
    label: torch.Tensor,
    pixel_weight: torch.Tensor | None = None,
    ignore_index: int = 255,
) -> torch.Tensor:
    """Cross-entropy of B x K x h x w logits (upsampled) against B x H x W labels, each pixel
    multiplied by ``pixel_weight``; the mean runs over the non-ignored pixels."""
    loss = F.cross_entropy(
        _to_size(logits, label.shape[-2:]),
        label.long(),
        ignore_index=ignore_index,
        reduction="none",
    )
    if pixel_weight is not None:
        loss = loss * pixel_weight
    return loss.sum() / (label != ignore_index).sum().clamp(min=1)


def head_losses(
    outputs: dict[str, torch.Tensor],
    label: torch.Tensor,
    dispersion: torch.Tensor,
    pixel_weight: torch.Tensor | None = None,
    loss_weight: float = 0.005,
    berhu_ratio: float = 0.2,
) -> dict[str, torch.Tensor]:
    """The ``DispersionHead`` outputs' losses besides the final segmentation's: cross-entropy
    of the initial segmentation (pixel-weighted like the final one) and BerHu of the initial
    and final dispersion, x ``loss_weight``."""
    return {
        "seg_init": weighted_cross_entropy(outputs["seg_init"], label, pixel_weight),
        "disp_init": loss_weight * berhu_loss(outputs["disp_init"], dispersion, berhu_ratio),
        "disp": loss_weight * berhu_loss(outputs["disp"], dispersion, berhu_ratio),
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

"""ClassMix (DACS): paste half of the classes of a source image onto a target image."""

from __future__ import annotations

import torch


def class_mix_masks(labels: torch.Tensor, ignore_index: int = 255, generator=None) -> torch.Tensor:
    """B x H x W bool masks: per sample, a random half (rounded up) of its labelled classes.

    The DACS reference draws from the classes of the whole batch, ignore value included;
    here each mask is drawn from its own image's classes, the ignore value excluded.
    """
    masks = torch.zeros_like(labels, dtype=torch.bool)
    for i, label in enumerate(labels):
        classes = torch.unique(label)
        classes = classes[classes != ignore_index]
        if len(classes) == 0:
            continue
        chosen = torch.randperm(len(classes), generator=generator)[: (len(classes) + 1) // 2]
        masks[i] = torch.isin(label, classes[chosen.to(classes.device)])
    return masks


def mix(mask: torch.Tensor, source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Source where ``mask`` (B x H x W) is set, target elsewhere; any B x [C x] H x W tensors."""
    if source.dim() == mask.dim() + 1:
        mask = mask.unsqueeze(1)
    return torch.where(mask, source, target.to(source.dtype))

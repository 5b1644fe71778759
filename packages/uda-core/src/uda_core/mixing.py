"""ClassMix (DACS): paste half of the classes of a source image onto a target image."""

from __future__ import annotations

import torch


def class_mix_masks(labels: torch.Tensor, ignore_index: int = 255, generator=None) -> torch.Tensor:
    """B x H x W bool masks: per sample, a random half (rounded up) of its labelled classes.

    Ours: each mask is drawn from its own image's classes, the ignore value excluded; the
    reference's draw is ``batch_class_mix_masks``.
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


def batch_class_mix_masks(labels: torch.Tensor, generator=None) -> torch.Tensor:
    """B x H x W bool masks as the reference draws them (MIC 2f932a9
    ``seg/mmseg/models/utils/dacs_transforms.py:90-106``): the classes of the whole label batch
    (``torch.unique``, the ignore value included), half of them rounded up drawn for each image."""
    classes = torch.unique(labels)
    masks = []
    for label in labels:
        chosen = torch.randperm(len(classes), generator=generator)[: (len(classes) + 1) // 2]
        masks.append(torch.isin(label, classes[chosen.to(classes.device)]))
    return torch.stack(masks)


def mix(mask: torch.Tensor, source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Source where ``mask`` (B x H x W) is set, target elsewhere; any B x [C x] H x W tensors."""
    if source.dim() == mask.dim() + 1:
        mask = mask.unsqueeze(1)
    return torch.where(mask, source, target.to(source.dtype))

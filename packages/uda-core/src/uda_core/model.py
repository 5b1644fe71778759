"""What a segmentation model returns, so losses and evaluation read outputs by name."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class SegOutput:
    """Segmentation logits (B x C x h x w, usually 1/4 of the input) plus named extras.

    ``features`` are the decoder's fused features that plugin heads read; ``aux`` holds the
    outputs that plugin heads add, by name.
    """

    logits: torch.Tensor
    features: torch.Tensor | None = None
    aux: dict[str, torch.Tensor] = field(default_factory=dict)


def logits_of(output: SegOutput | torch.Tensor) -> torch.Tensor:
    return output.logits if isinstance(output, SegOutput) else output

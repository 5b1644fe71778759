"""What a segmentation model returns, so losses and evaluation read outputs by name."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class SegOutput:
    """Segmentation logits (B x C x h x w, usually 1/4 of the input) plus named extras.

    ``features`` are the decoder's fused features that plugin heads read; ``aux`` holds the
    outputs that plugin heads add, by name; ``encoder_features`` the encoder's levels, finest
    first (feature distance reads the last).
    """

    logits: torch.Tensor
    features: torch.Tensor | None = None
    aux: dict[str, torch.Tensor] = field(default_factory=dict)
    encoder_features: list[torch.Tensor] | None = None


def logits_of(output: SegOutput | torch.Tensor) -> torch.Tensor:
    return output.logits if isinstance(output, SegOutput) else output

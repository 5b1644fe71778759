"""The shape every model takes: an encoder of multi-level features and a decoder on top.

``encoder(image)`` returns feature maps finest first, the last one being the bottleneck.
A decoder fuses them into one map (what plugin heads read) and classifies that map.
Parameters under ``encoder`` train at the base learning rate, all others at the decoder's.
"""

from __future__ import annotations

import torch
from torch import nn

from uda_core.model import SegOutput


class Decoder(nn.Module):
    """Base of every decoder: ``channels`` is the width of the fused map."""

    channels: int

    def fuse(self, features: list[torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def classify(self, fused: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, features: list[torch.Tensor]) -> SegOutput:
        fused = self.fuse(features)
        return SegOutput(self.classify(fused), features=fused)


class Segmenter(nn.Module):
    """Encoder + decoder, and plugin heads between the decoder's fusion and its classifier.

    Each head in ``heads`` reads the fused features, may refine them for the classifier and
    adds outputs of its own to ``SegOutput.aux``. A head whose outputs hold ``"logits"`` makes
    the segmentation itself (the published dispersion head does): that map becomes
    ``SegOutput.logits``, is not kept in ``aux``, and the decoder's classifier does not run.
    """

    def __init__(self, encoder: nn.Module, decoder: Decoder) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.heads = nn.ModuleDict()

    def forward(self, image: torch.Tensor) -> SegOutput:
        features = self.encoder(image)
        fused = self.decoder.fuse(features)
        aux: dict[str, torch.Tensor] = {}
        logits = None
        for head in self.heads.values():
            fused, outputs = head(fused)
            outputs = dict(outputs)
            logits = outputs.pop("logits", logits)
            aux |= outputs
        if logits is None:
            logits = self.decoder.classify(fused)
        return SegOutput(logits, features=fused, aux=aux, encoder_features=features)

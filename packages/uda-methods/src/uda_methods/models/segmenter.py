"""The shape every model takes: an encoder of multi-level features and a decoder on top.

``encoder(image)`` returns feature maps finest first, the last one being the bottleneck.
A decoder fuses them into one map (what plugin heads read) and classifies that map.
Parameters under ``encoder`` train at the base learning rate, all others at the decoder's.
"""

from __future__ import annotations

import torch
from torch import nn

from uda_core.ema import is_stochastic
from uda_core.model import SegOutput


def encodes_per_image(module: nn.Module) -> bool:
    """Whether, in its current mode, ``module`` computes each image's output from that image
    alone and draws no random numbers, so that images may be batched together or apart (the
    same result within float rounding): no BatchNorm that normalises over the batch (training
    mode, or no running statistics), no active dropout or stochastic depth, no layer that
    adds images to the batch (SHADE's style hallucination in training)."""
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            if m.training or not m.track_running_stats:
                return False
        elif is_stochastic(m):
            # Dropout in any mode: timm's fused attention reads its attn_drop's p in a
            # training parent. Stochastic depth in training.
            active = m.training or isinstance(m, nn.modules.dropout._DropoutNd)
            if active and getattr(m, "p", getattr(m, "drop_prob", 1.0)) > 0:
                return False
        elif m.training and getattr(m, "mixes_batch", False):
            return False
    return True


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
        return self.decode(self.encoder(image))

    def decode(self, features: list[torch.Tensor]) -> SegOutput:
        """The decoder and the heads on the encoder's ``features``."""
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

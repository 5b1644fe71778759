"""A timm encoder with a light FPN-style decoder: a small, fast model for CPU runs and tests.

Any timm backbone that supports ``features_only`` works as the encoder. The decoder projects
each level to a common width, upsamples to the finest level (1/4 for most backbones), sums,
fuses with one 3x3 conv-BN-ReLU and classifies with a 1x1 conv.
"""

from __future__ import annotations

from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from torch import nn

from uda_methods.models.segmenter import Decoder
from uda_methods.models.weights import load_checked, read_state_dict


class TimmEncoder(nn.Module):
    """The features of a timm backbone at strides 4 and coarser, finest first.

    ``pretrained`` downloads timm's ImageNet weights (needs a reachable hub); ``kwargs`` go to
    ``timm.create_model`` (e.g. ``output_stride=8``).
    """

    def __init__(self, name: str, pretrained: bool = False, **kwargs) -> None:
        super().__init__()
        self.body = timm.create_model(name, features_only=True, pretrained=pretrained, **kwargs)
        reductions = self.body.feature_info.reduction()
        self.levels = [i for i, r in enumerate(reductions) if r >= 4]
        self.channels: list[int] = [self.body.feature_info.channels()[i] for i in self.levels]
        self.strides: list[int] = [reductions[i] for i in self.levels]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = self.body(x)
        return [features[i] for i in self.levels]

    def load_pretrained(self, path: Path) -> None:
        """Load ImageNet weights from a local timm (or, for ResNets, torchvision) state dict."""
        load_checked(self.body, read_state_dict(path), path)


class LightDecoder(Decoder):
    """Lateral 1x1 projections, sum at the finest level, one 3x3 fusion, dropout, classifier."""

    def __init__(
        self, in_channels: list[int], num_classes: int, channels: int = 128, dropout: float = 0.1
    ):
        super().__init__()
        self.channels = channels
        self.lateral = nn.ModuleList(nn.Conv2d(c, channels, 1) for c in in_channels)
        self.fusion = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
        )
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def fuse(self, features: list[torch.Tensor]) -> torch.Tensor:
        size = features[0].shape[-2:]
        summed = sum(
            F.interpolate(lat(f), size, mode="bilinear", align_corners=False) if i else lat(f)
            for i, (lat, f) in enumerate(zip(self.lateral, features, strict=True))
        )
        return self.fusion(summed)

    def classify(self, fused: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(fused))

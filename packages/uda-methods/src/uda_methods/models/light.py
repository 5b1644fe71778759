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

from uda_core.errors import UdaError
from uda_core.model import SegOutput


class TimmEncoder(nn.Module):
    """The features of a timm backbone at strides 4 and coarser, finest first."""

    def __init__(self, name: str, **kwargs) -> None:
        super().__init__()
        self.body = timm.create_model(name, features_only=True, pretrained=False, **kwargs)
        reductions = self.body.feature_info.reduction()
        self.levels = [i for i, r in enumerate(reductions) if r >= 4]
        self.channels: list[int] = [self.body.feature_info.channels()[i] for i in self.levels]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = self.body(x)
        return [features[i] for i in self.levels]


class LightDecoder(nn.Module):
    """Lateral 1x1 projections, sum at the finest level, one 3x3 fusion, dropout, classifier."""

    def __init__(
        self, in_channels: list[int], num_classes: int, channels: int = 128, dropout: float = 0.1
    ):
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(c, channels, 1) for c in in_channels)
        self.fuse = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
        )
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, features: list[torch.Tensor]) -> SegOutput:
        size = features[0].shape[-2:]
        fused = sum(
            F.interpolate(lat(f), size, mode="bilinear", align_corners=False) if i else lat(f)
            for i, (lat, f) in enumerate(zip(self.lateral, features, strict=True))
        )
        fused = self.fuse(fused)
        return SegOutput(self.classifier(self.dropout(fused)), features=fused)


class Segmenter(nn.Module):
    """Encoder + decoder. Parameters under ``encoder`` train at the base learning rate."""

    def __init__(self, encoder: nn.Module, decoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder

    def forward(self, image: torch.Tensor) -> SegOutput:
        return self.decoder(self.encoder(image))


def load_encoder_weights(encoder: TimmEncoder, path: Path) -> None:
    """Load ImageNet weights of the backbone from a local timm/torchvision state dict."""
    if not path.is_file():
        raise UdaError(
            f"model.pretrained: {path} does not exist; give the path of the backbone weights"
        )
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = state.get("state_dict", state.get("model", state))
    missing, _ = encoder.body.load_state_dict(state, strict=False)
    if len(missing) == len(encoder.body.state_dict()):
        raise UdaError(
            f"model.pretrained: {path} holds no weights of {type(encoder.body).__name__}"
        )

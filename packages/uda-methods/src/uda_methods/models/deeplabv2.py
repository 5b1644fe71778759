"""ResNet-101 + DeepLabV2: the classic baseline of UDA for semantic segmentation.

Chen et al., "DeepLab: Semantic Image Segmentation with Deep Convolutional Nets, Atrous
Convolution, and Fully Connected CRFs", TPAMI 2018. The encoder is a ResNet-101 whose last two
stages are dilated (output stride 8); the classifier is ASPP in its original form: four dilated
3x3 convolutions (dilations 6, 12, 18, 24) straight to class scores, summed.
"""

from __future__ import annotations

import torch
from torch import nn

from uda_methods.models.light import TimmEncoder
from uda_methods.models.segmenter import Decoder

DILATIONS = (6, 12, 18, 24)


def resnet101(pretrained: bool = False) -> TimmEncoder:
    """timm's ResNet-101 (torchvision's layout) with dilated layer3 and layer4: stride 8."""
    return TimmEncoder("resnet101", pretrained=pretrained, output_stride=8)


class DeepLabV2Decoder(Decoder):
    """Sum of dilated 3x3 class-score convolutions on the encoder's last feature map.

    There is no fusion layer: the fused map is the encoder's last feature map itself.
    """

    def __init__(
        self, in_channels: list[int], num_classes: int, dilations: tuple[int, ...] = DILATIONS
    ) -> None:
        super().__init__()
        self.channels = in_channels[-1]
        self.branches = nn.ModuleList(
            nn.Conv2d(self.channels, num_classes, 3, padding=d, dilation=d) for d in dilations
        )
        for branch in self.branches:
            nn.init.normal_(branch.weight, std=0.01)
            nn.init.zeros_(branch.bias)

    def fuse(self, features: list[torch.Tensor]) -> torch.Tensor:
        return features[-1]

    def classify(self, fused: torch.Tensor) -> torch.Tensor:
        return sum(branch(fused) for branch in self.branches)

"""ResNet-101 + DeepLabV2: the classic baseline of UDA for semantic segmentation.

Chen et al., "DeepLab: Semantic Image Segmentation with Deep Convolutional Nets, Atrous
Convolution, and Fully Connected CRFs", TPAMI 2018. The encoder is a ResNet-101 whose last two
stages are dilated (output stride 8); the classifier is ASPP in its original form: dilated
3x3 convolutions (dilations 6, 12, 18, 24) straight to class scores, summed.

The UDA references (DAFormer, HRDA, MIC: ``deeplabv2red_r50-d8.py`` with ``r101v1c``) use
mmseg's ResNetV1c: the deep stem of three 3x3 convolutions (32, 32, 64 channels), strides in
the 3x3 convolutions, no average pooling in the shortcuts, layer3/layer4 dilated 2/4 with the
first block of each at half the dilation (``contract_dilation``), and only the dilations 6 and
12 in the classifier. timm's ``resnet101c`` has exactly this layout (``resnet101d`` adds
average-pooled shortcuts, which the reference does not have); ``v1c_to_timm`` renames
open-mmlab's ``resnet101_v1c`` ImageNet checkpoint, the reference's initialisation, to it.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from uda_methods.models.light import TimmEncoder
from uda_methods.models.segmenter import Decoder
from uda_methods.models.weights import KeyRule, load_checked, read_state_dict, rename

DILATIONS = (6, 12, 18, 24)


def resnet101(pretrained: bool = False) -> TimmEncoder:
    """timm's ResNet-101 (torchvision's layout) with dilated layer3 and layer4: stride 8."""
    return TimmEncoder("resnet101", pretrained=pretrained, output_stride=8)


V1C_KEYS: tuple[KeyRule, ...] = (
    KeyRule("stem.0.{rest}", "conv1.0.{rest}"),
    KeyRule("stem.1.{rest}", "conv1.1.{rest}"),
    KeyRule("stem.3.{rest}", "conv1.3.{rest}"),
    KeyRule("stem.4.{rest}", "conv1.4.{rest}"),
    KeyRule("stem.6.{rest}", "conv1.6.{rest}"),
    KeyRule("stem.7.{rest}", "bn1.{rest}"),
    KeyRule("backbone.{rest}", "{rest}"),
)
"""mmseg ResNetV1c's stem (conv-BN-ReLU x 3 in ``stem``) -> timm's deep stem (``conv1`` with
the first two BNs inside, the last one ``bn1``); the layers share their names. A ``backbone.``
prefix (a whole segmentor's checkpoint) is dropped."""


def v1c_to_timm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An mmseg/open-mmlab ResNetV1c state dict (or one in timm's names) in timm's names."""
    out = {}
    for key, value in state.items():
        key = rename(key, V1C_KEYS[-1:]) or key
        out[rename(key, V1C_KEYS[:-1]) or key] = value
    return out


class ResNetV1c(TimmEncoder):
    """The references' dilated ResNetV1c (timm ``resnet<depth>c``, output stride 8)."""

    def __init__(self, depth: int = 101, pretrained: bool = False) -> None:
        super().__init__(f"resnet{depth}c", pretrained=pretrained, output_stride=8)

    def load_pretrained(self, path: Path) -> None:
        """Load open-mmlab's ``resnet101_v1c`` ImageNet weights (or timm's)."""
        load_checked(self.body, v1c_to_timm(read_state_dict(path)), path)


def resnet101_v1c(pretrained: bool = False) -> ResNetV1c:
    return ResNetV1c(101, pretrained=pretrained)


class DeepLabV2Decoder(Decoder):
    """Sum of dilated class-score convolutions on the encoder's last feature map.

    There is no fusion layer: the fused map is the encoder's last feature map itself. Each
    branch is a 3x3 convolution with padding = dilation (1x1 for dilation 1, as mmseg's
    ``ASPPModule``), with bias, initialised N(0, 0.01) with zero bias (the references'
    ``init_cfg=dict(type='Normal', std=0.01, override=dict(name='aspp_modules'))``).
    """

    def __init__(
        self, in_channels: list[int], num_classes: int, dilations: tuple[int, ...] = DILATIONS
    ) -> None:
        super().__init__()
        self.channels = in_channels[-1]
        self.branches = nn.ModuleList(
            nn.Conv2d(self.channels, num_classes, 1)
            if d == 1
            else nn.Conv2d(self.channels, num_classes, 3, padding=d, dilation=d)
            for d in dilations
        )
        for branch in self.branches:
            nn.init.normal_(branch.weight, std=0.01)
            nn.init.zeros_(branch.bias)

    def fuse(self, features: list[torch.Tensor]) -> torch.Tensor:
        return features[-1]

    def classify(self, fused: torch.Tensor) -> torch.Tensor:
        return sum(branch(fused) for branch in self.branches)


class DeepLabV2Attention(nn.Module):
    """HRDA's scale attention on a DeepLabV2 model: a second DeepLabV2 classifier on the
    context's last feature map, then a sigmoid (MIC ``hrda_head.py:52-75,143-148``: the
    attention head is built from the single-scale head's config, ``DLV2Head``, dilations and
    N(0, 0.01) initialisation included)."""

    def __init__(
        self, in_channels: list[int], out_channels: int, dilations: tuple[int, ...] = DILATIONS
    ) -> None:
        super().__init__()
        self.classifier = DeepLabV2Decoder(in_channels, out_channels, dilations)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        return torch.sigmoid(self.classifier.classify(features[-1]))

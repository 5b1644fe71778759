"""The auxiliary geometric network: semantic labels from depth and dispersion alone.

A timm ResNet (ResNet-50 as published) with a 2-channel input (depth, dispersion), read at its
third stage (1024 channels for ResNet-50, stride 16), four conv-BN-ReLU decoder blocks that
halve the width (1024 -> 512 -> 256 -> 128 -> 64), a 1x1 classifier and bilinear upsampling
to the input size. Unlike the published network it keeps the stem's ReLU and max-pool.

It sees geometry only, so where its label agrees with a pseudo-label the pseudo-label is
geometrically plausible; the pixel-weight hook (``agreement_weights``) uses exactly that.
It needs timm (``pip install uda-dispersion[aux]``).
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import nn

DEPTH_SCALE = 255.0
"""Depth maps in the loaders' encoding span 0..255; the network sees depth / 255."""


def conv_bn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class AuxiliaryNet(nn.Module):
    """``forward(x)``: B x 2 x H x W (depth / ``DEPTH_SCALE``, dispersion) -> B x K x H x W."""

    def __init__(self, num_classes: int = 19, backbone: str = "resnet50") -> None:
        super().__init__()
        import timm

        self.backbone_name = backbone
        self.encoder = timm.create_model(
            backbone, pretrained=False, in_chans=2, features_only=True, out_indices=(3,)
        )
        width = self.encoder.feature_info.channels()[-1]
        widths = [width, width // 2, width // 4, width // 8, width // 16]
        self.decoder = nn.Sequential(*(conv_bn_relu(a, b) for a, b in itertools.pairwise(widths)))
        self.classifier = nn.Conv2d(widths[-1], num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.classifier(self.decoder(self.encoder(x)[-1]))
        return F.interpolate(logits, x.shape[-2:], mode="bilinear", align_corners=False)


def geometric_input(depth: torch.Tensor, dispersion: torch.Tensor) -> torch.Tensor:
    """The network's input from B x [1 x] H x W depth (loader encoding) and dispersion maps."""
    depth = depth.reshape(depth.shape[0], 1, *depth.shape[-2:]).float() / DEPTH_SCALE
    dispersion = dispersion.reshape(dispersion.shape[0], 1, *dispersion.shape[-2:]).float()
    return torch.cat([depth, dispersion], dim=1)


@torch.no_grad()
def auxiliary_labels(
    net: nn.Module,
    depth: torch.Tensor,
    dispersion: torch.Tensor,
    input_size: tuple[int, int] | None = None,
) -> torch.Tensor:
    """The frozen network's labels (B x H x W) at the maps' size, the network run at
    ``input_size`` (width, height) when given, as it was pre-trained."""
    x = geometric_input(depth, dispersion)
    size = x.shape[-2:]
    if input_size is not None:
        x = F.interpolate(x, (input_size[1], input_size[0]), mode="bilinear", align_corners=False)
    logits = net(x)
    if logits.shape[-2:] != size:
        logits = F.interpolate(logits.float(), size, mode="bilinear", align_corners=False)
    return logits.argmax(1)

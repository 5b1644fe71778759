"""The multi-task head: segmentation and dispersion predicted together, each refining the other.

On the decoder's fused features (B x C x h x w), as in the pipeline figure:

1. task features: two bottleneck blocks per task (segmentation, dispersion);
2. initial predictions: segmentation from the fused features through a multi-dilation
   classifier, dispersion from its task features through a 1x1 convolution;
3. cross-task distillation: each task's features plus the other task's features gated by a
   spatial attention map (``SpatialGate``);
4. final predictions: dispersion through a multi-dilation classifier; the refined
   segmentation features go back to the host network, whose own classifier makes the final
   segmentation, so the head fits any decoder.

Every parameter is used: the published multi-dilation classifier returns inside its loop and
never runs two of its four convolutions; ``MultiDilationClassifier`` sums all of them.
"""

from __future__ import annotations

import torch
from torch import nn


class Bottleneck(nn.Module):
    """ResNet bottleneck (1x1 reduce, 3x3, 1x1 expand, residual), width preserved or projected."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        mid = max(out_channels // 4, 1)
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, mid, 1, bias=False),
            nn.BatchNorm2d(mid),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid, mid, 3, padding=1, bias=False),
            nn.BatchNorm2d(mid),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        )
        self.shortcut = (
            nn.Identity()
            if in_channels == out_channels
            else nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels)
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.shortcut(x))


class MultiDilationClassifier(nn.Module):
    """Sum of 3x3 convolutions at several dilations (DeepLab-v2's classifier), all of them."""

    def __init__(
        self, in_channels: int, out_channels: int, dilations: tuple[int, ...] = (6, 12, 18, 24)
    ) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Conv2d(in_channels, out_channels, 3, padding=d, dilation=d) for d in dilations
        )
        for conv in self.branches:
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sum(branch(x) for branch in self.branches)


class SpatialGate(nn.Module):
    """Features of another task, gated per pixel and channel by a sigmoid attention map."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.attention = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.features = nn.Conv2d(channels, channels, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x) * torch.sigmoid(self.attention(x))


class DispersionHead(nn.Module):
    """Multi-task head on fused features; returns (refined segmentation features, outputs).

    ``outputs`` holds ``seg_init`` (B x num_classes x h x w logits), ``disp_init`` and
    ``disp`` (B x 1 x h x w dispersion predictions). The refined features have the input's
    width, ready for the host network's segmentation classifier. In training mode without
    gradients (a self-training teacher) ``outputs`` is empty and only the segmentation path
    runs; in eval mode (evaluation, prediction) every output is computed.
    """

    def __init__(
        self,
        channels: int,
        num_classes: int,
        width: int | None = None,
        dilations: tuple[int, ...] = (6, 12, 18, 24),
    ) -> None:
        super().__init__()
        width = width or channels
        self.seg_features = nn.Sequential(Bottleneck(channels, width), Bottleneck(width, width))
        self.disp_features = nn.Sequential(Bottleneck(channels, width), Bottleneck(width, width))
        self.seg_init = MultiDilationClassifier(channels, num_classes, dilations)
        self.disp_init = nn.Conv2d(width, 1, 1)
        self.disp_to_seg = SpatialGate(width)
        self.seg_to_disp = SpatialGate(width)
        self.disp_final = MultiDilationClassifier(width, 1, dilations)
        self.project = nn.Identity() if width == channels else nn.Conv2d(width, channels, 1)

    def forward(self, fused: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        seg, disp = self.seg_features(fused), self.disp_features(fused)
        refined = self.project(seg + self.disp_to_seg(disp))
        if self.training and not torch.is_grad_enabled():
            # a training-mode network without gradients is the EMA teacher making pseudo-labels,
            # which reads the segmentation only: skip the outputs nothing reads
            return refined, {}
        outputs = {"seg_init": self.seg_init(fused), "disp_init": self.disp_init(disp)}
        outputs["disp"] = self.disp_final(disp + self.seg_to_disp(seg))
        return refined, outputs

"""The DAFormer decoder: context-aware fusion of multi-level features.

Hoyer et al., "DAFormer: Improving Network Architectures and Training Strategies for
Domain-Adaptive Semantic Segmentation", CVPR 2022 (Sec. 3.2, Fig. 3).

Each encoder level is embedded to a common width by a linear layer, upsampled to the finest
level (1/4) and concatenated. A depthwise-separable ASPP without image pooling (dilations 1,
6, 12, 18, each branch BN + ReLU) and a 3x3 bottleneck fuse the stack; the fused map is what
plugin heads read. Dropout and a 1x1 classifier give the logits.

The published heads (MIC 2f932a9 ``seg/mmseg/models/decode_heads/daformer_head.py:125-185``,
the same in DAFormer and HRDA) start from mmcv's initialisation, ``init="mmcv"``: every
``ConvModule`` convolution Kaiming normal (fan_out, ReLU), BatchNorm weight 1 and bias 0 (mmcv
1.3 ``cnn/bricks/conv_module.py``, ``ConvModule.init_weights``), the classifier ``conv_seg``
N(0, 0.01) with bias 0 (``decode_head.py:72-73``, ``init_cfg``), the linear embeddings
PyTorch's default. ``init="normal"`` is the dispersion head's: Dispersion 604e8ea
``mmseg/models/decode_heads/dispersion_daformer_head.py:314-320`` re-draws every convolution of
the head, the ASPP included, from N(0, 0.01). ``"pytorch"`` keeps PyTorch's defaults (ours
before the published initialisation was reproduced).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from uda_methods.models.segmenter import Decoder

DILATIONS = (1, 6, 12, 18)
HeadInit = Literal["mmcv", "normal", "pytorch"]


def init_head(head: nn.Module, classifier: nn.Conv2d, init: HeadInit) -> None:
    """Initialise a decode head's convolutions, BatchNorms and ``classifier`` as ``init`` says
    (see the module docstring); linear layers keep PyTorch's default, as in mmcv."""
    if init == "pytorch":
        return
    for module in head.modules():
        if isinstance(module, nn.Conv2d):
            if init == "mmcv":
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            else:
                nn.init.normal_(module.weight, 0.0, 0.01)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
    nn.init.normal_(classifier.weight, 0.0, 0.01)
    nn.init.zeros_(classifier.bias)


class ConvBNReLU(nn.Sequential):
    """Conv (no bias, BN follows), BatchNorm, ReLU."""

    def __init__(
        self, in_ch: int, out_ch: int, kernel: int, dilation: int = 1, groups: int = 1
    ) -> None:
        padding = dilation * (kernel // 2)
        super().__init__(
            nn.Conv2d(
                in_ch, out_ch, kernel, padding=padding, dilation=dilation, groups=groups, bias=False
            ),
            nn.BatchNorm2d(out_ch),
            nn.ReLU(inplace=True),
        )


class SeparableConvBNReLU(nn.Sequential):
    """A dilated 3x3 depthwise conv and a 1x1 pointwise conv, each with BN and ReLU."""

    def __init__(self, in_ch: int, out_ch: int, dilation: int) -> None:
        super().__init__(
            ConvBNReLU(in_ch, in_ch, 3, dilation=dilation, groups=in_ch),
            ConvBNReLU(in_ch, out_ch, 1),
        )


class SeparableASPP(nn.Module):
    """ASPP without image pooling: a 1x1 branch for dilation 1, separable 3x3 branches for the
    others, concatenated and reduced by a 3x3 bottleneck."""

    def __init__(self, in_ch: int, out_ch: int, dilations: tuple[int, ...] = DILATIONS) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            ConvBNReLU(in_ch, out_ch, 1) if d == 1 else SeparableConvBNReLU(in_ch, out_ch, d)
            for d in dilations
        )
        self.bottleneck = ConvBNReLU(len(dilations) * out_ch, out_ch, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bottleneck(torch.cat([branch(x) for branch in self.branches], dim=1))


class LevelEmbedding(nn.ModuleList):
    """Each encoder level embedded to ``channels`` by a linear layer, upsampled to the finest
    level and concatenated (len(in_channels) x channels wide)."""

    def __init__(self, in_channels: list[int], channels: int) -> None:
        super().__init__(nn.Linear(c, channels) for c in in_channels)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        size = features[0].shape[-2:]
        levels = []
        for embed, f in zip(self, features, strict=True):
            x = embed(f.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
            if x.shape[-2:] != size:
                x = F.interpolate(x, size, mode="bilinear", align_corners=False)
            levels.append(x)
        return torch.cat(levels, dim=1)


class DAFormerDecoder(Decoder):
    """Linear embedding per level, upsample to the finest level, concatenate, separable ASPP."""

    def __init__(
        self,
        in_channels: list[int],
        num_classes: int,
        channels: int = 256,
        dropout: float = 0.1,
        dilations: tuple[int, ...] = DILATIONS,
        init: HeadInit = "pytorch",
    ) -> None:
        super().__init__()
        self.channels = channels
        self.embed = LevelEmbedding(in_channels, channels)
        self.aspp = SeparableASPP(len(in_channels) * channels, channels, dilations)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, 1)
        init_head(self, self.classifier, init)

    def fuse(self, features: list[torch.Tensor]) -> torch.Tensor:
        return self.aspp(self.embed(features))

    def classify(self, fused: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(fused))

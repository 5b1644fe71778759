"""HRDA's multi-resolution segmenter: a low-resolution context and a high-resolution detail.

Hoyer et al., "HRDA: Context-Aware High-Resolution Domain-Adaptive Semantic Segmentation",
ECCV 2022 (Sec. 3.2-3.4, Fig. 2).

The context branch segments the whole crop at ``context_scale`` (0.5); the detail branch a
crop of it at full resolution (training) or every overlapping detail window (inference). A
scale-attention head, a lighter DAFormer head on the context's encoder features, predicts per
class how much to trust the detail. Inside the detail box::

    fused = attention * detail + (1 - attention) * context

and the context alone outside it. Both branches share the encoder, decoder and plugin heads;
plugin outputs are fused the same way and also kept per branch (``HRDAOutput.context``,
``HRDAOutput.detail``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from uda_core.evaluation import slide_average
from uda_core.model import SegOutput
from uda_methods.models.daformer import ConvBNReLU, LevelEmbedding
from uda_methods.models.segmenter import Segmenter


@dataclass(frozen=True)
class Box:
    """A rectangle of an image in pixels."""

    top: int
    left: int
    height: int
    width: int

    def crop(self, x: torch.Tensor) -> torch.Tensor:
        """The box of any ... x H x W tensor."""
        return x[..., self.top : self.top + self.height, self.left : self.left + self.width]

    def scaled(self, factor: int) -> Box:
        """The box on a grid ``factor`` times coarser (coordinates must divide evenly)."""
        return Box(
            self.top // factor, self.left // factor, self.height // factor, self.width // factor
        )


def random_detail_box(
    height: int,
    width: int,
    size: tuple[int, int],
    divisible: int = 8,
    generator: torch.Generator | None = None,
) -> Box:
    """A random box of ``size`` (width, height; clipped to the image) whose top-left corner lies
    on multiples of ``divisible``, so that the detail's features align with the context's."""
    w, h = min(size[0], width), min(size[1], height)

    def offset(free: int) -> int:
        return int(torch.randint(free // divisible + 1, (1,), generator=generator)) * divisible

    return Box(offset(height - h), offset(width - w), h, w)


def fuse_scales(
    context: torch.Tensor, detail: torch.Tensor, attention: torch.Tensor, box: Box
) -> torch.Tensor:
    """``attention * detail + (1 - attention) * context`` inside ``box``, context outside.

    ``context`` (B x [C x] h x w) and ``attention`` (B x C or 1 x h' x w', already masked to
    the box or not) are resized to the output grid, whose size is the attention's; ``detail``
    covers ``box`` of that grid. Maps with another channel count than the attention use its
    mean over classes.
    """
    flat = context.dim() == 3
    if flat:
        context, detail = context[:, None], detail[:, None]
    if attention.shape[1] != context.shape[1]:
        attention = attention.mean(1, keepdim=True)
    size = attention.shape[-2:]
    context = F.interpolate(context, size, mode="bilinear", align_corners=False)
    pad = (box.left, size[1] - box.left - box.width, box.top, size[0] - box.top - box.height)
    fused = attention * F.pad(detail, pad) + (1 - attention) * context
    return fused[:, 0] if flat else fused


class ScaleAttentionHead(nn.Module):
    """A lighter DAFormer head: each encoder level embedded by a linear layer, upsampled to
    the finest level, concatenated and fused by a 1x1 conv (no ASPP); sigmoid outputs."""

    def __init__(
        self, in_channels: list[int], out_channels: int, channels: int = 256, dropout: float = 0.1
    ) -> None:
        super().__init__()
        self.embed = LevelEmbedding(in_channels, channels)
        self.fuse = ConvBNReLU(len(in_channels) * channels, channels, 1)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, out_channels, 1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        fused = self.fuse(self.embed(features))
        return torch.sigmoid(self.classifier(self.dropout(fused)))


@dataclass
class HRDAOutput(SegOutput):
    """The fused prediction (``logits``, ``aux``) on the grid of the full-resolution input,
    the branches' own outputs, and the attention used (zero outside ``box``).

    ``encoder_features`` are the context's (feature distance reads the low resolution);
    ``features`` is None: each branch has its own in ``context`` and ``detail``.
    """

    context: SegOutput | None = None
    detail: SegOutput | None = None
    attention: torch.Tensor | None = None
    box: Box | None = None


class HRDASegmenter(Segmenter):
    """A Segmenter run at two resolutions, with a scale-attention head on the context.

    ``forward(image, detail_box)`` trains on the detail crop ``detail_box``; without a box it
    runs the detail branch over overlapping windows of ``detail_crop`` (stride
    ``slide_stride``, default half the window) and fuses everywhere (pseudo-labels, eval).
    """

    def __init__(
        self,
        segmenter: Segmenter,
        num_classes: int,
        context_scale: float = 0.5,
        detail_crop: tuple[int, int] = (512, 512),
        attention_channels: int = 256,
        attention_classwise: bool = True,
        slide_stride: tuple[int, int] | None = None,
        batched_slide: bool = True,
        dropout: float = 0.1,
    ) -> None:
        super().__init__(segmenter.encoder, segmenter.decoder)
        self.heads = segmenter.heads
        self.context_scale = context_scale
        self.detail_crop = tuple(detail_crop)
        self.slide_stride = tuple(slide_stride or (detail_crop[0] // 2, detail_crop[1] // 2))
        self.batched_slide = batched_slide
        self.scale_attention = ScaleAttentionHead(
            segmenter.encoder.channels,
            num_classes if attention_classwise else 1,
            attention_channels,
            dropout,
        )

    def forward(self, image: torch.Tensor, detail_box: Box | None = None) -> HRDAOutput:
        context_image = F.interpolate(
            image, scale_factor=self.context_scale, mode="bilinear", align_corners=False
        )
        context = super().forward(context_image)
        if detail_box is None:
            detail = self._slide_detail(image)
            box = Box(0, 0, *image.shape[-2:])
        else:
            detail = super().forward(detail_box.crop(image))
            box = detail_box
        stride = box.width // detail.logits.shape[-1]
        grid = (image.shape[-2] // stride, image.shape[-1] // stride)
        grid_box = box.scaled(stride)
        attention = F.interpolate(
            self.scale_attention(context.encoder_features),
            grid,
            mode="bilinear",
            align_corners=False,
        )
        attention = attention * F.pad(
            attention.new_ones(1, 1, grid_box.height, grid_box.width),
            (
                grid_box.left,
                grid[1] - grid_box.left - grid_box.width,
                grid_box.top,
                grid[0] - grid_box.top - grid_box.height,
            ),
        )
        logits = fuse_scales(context.logits, detail.logits, attention, grid_box)
        aux = {
            k: fuse_scales(v, detail.aux[k], attention, grid_box) for k, v in context.aux.items()
        }
        return HRDAOutput(
            logits,
            aux=aux,
            encoder_features=context.encoder_features,
            context=context,
            detail=detail,
            attention=attention,
            box=box,
        )

    def _slide_detail(self, image: torch.Tensor) -> SegOutput:
        def predict(crops: torch.Tensor) -> dict[str, torch.Tensor]:
            out = Segmenter.forward(self, crops)
            return {"logits": out.logits, **out.aux}

        maps = slide_average(
            predict, image, self.detail_crop, self.slide_stride, self.batched_slide
        )
        return SegOutput(maps.pop("logits"), aux=maps)

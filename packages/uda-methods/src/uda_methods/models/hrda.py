"""HRDA's multi-resolution segmenter: a low-resolution context and a high-resolution detail.

Hoyer et al., "HRDA: Context-Aware High-Resolution Domain-Adaptive Semantic Segmentation",
ECCV 2022 (Sec. 3.2-3.4, Fig. 2).

The context branch segments the whole crop at ``context_scale`` (0.5); the detail branch a
crop of it at full resolution (training) or every overlapping detail window (inference). A
scale-attention head, a lighter DAFormer head on the context's encoder features, predicts per
class how much to trust the detail. Inside the detail box::

    fused = attention * detail + (1 - attention) * context

and the context alone outside it. Both branches share the encoder, decoder and plugin heads.

Where the fusion happens (``fusion``):

- ``"weight-then-upsample"``, as published (MIC 2f932a9
  ``seg/mmseg/models/decode_heads/hrda_head.py:150-191``): the attention is masked to the
  detail box and ``(1 - attention) * context`` formed at the context's resolution, then both
  are upsampled x2 (bilinear): ``fused = up(att) * detail + up((1 - att) * context)``;
- ``"upsample-then-weight"`` (ours before): the attention and the context are upsampled to the
  output grid first, the attention masked there.

Plugin outputs (``aux_fusion``): ``"context"``, as published (Dispersion 604e8ea
``mmseg/models/decode_heads/dispersion_head.py:176-182``), takes them from the context pass,
upsampled x2 without attention; ``"fused"`` (ours before) fuses them like the logits (maps with
another channel count than the attention use its mean over classes). Either way each branch's
own outputs stay in ``HRDAOutput.context`` and ``HRDAOutput.detail``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from uda_core.evaluation import slide_average, slide_windows, split_windows, stitch_windows
from uda_core.model import SegOutput
from uda_methods.models.daformer import ConvBNReLU, HeadInit, LevelEmbedding, init_head
from uda_methods.models.segmenter import Segmenter, encodes_per_image

Fusion = Literal["weight-then-upsample", "upsample-then-weight"]
AuxFusion = Literal["context", "fused"]


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

    def scaled(self, factor: float) -> Box:
        """The box on a grid ``factor`` times coarser, each corner ``int(coordinate / factor)``
        as the reference scales its boxes (``hrda_head.py:23-33``)."""
        top, left = int(self.top / factor), int(self.left / factor)
        bottom = int((self.top + self.height) / factor)
        right = int((self.left + self.width) / factor)
        return Box(top, left, bottom - top, right - left)

    def mask(self, like: torch.Tensor) -> torch.Tensor:
        """B x 1 x h x w: 1 inside the box, 0 outside, on the grid of ``like``."""
        mask = like.new_zeros(like.shape[0], 1, *like.shape[-2:])
        self.crop(mask).fill_(1)
        return mask


def random_detail_box(
    height: int,
    width: int,
    size: tuple[int, int],
    divisible: int = 8,
    generator: torch.Generator | None = None,
    last_offset: bool = True,
) -> Box:
    """A random box of ``size`` (width, height; clipped to the image) whose top-left corner lies
    on multiples of ``divisible``, so that the detail's features align with the context's.

    ``last_offset=False`` draws as the reference (``hrda_encoder_decoder.py:19-32``,
    ``randint(0, (margin + 1) // divisible) * divisible``), which leaves out the last aligned
    offset unless margin + 1 is a multiple of ``divisible``: a 512 detail in a 1024 crop never
    touches the crop's bottom or right edge. ``True`` (ours) draws every aligned offset."""
    w, h = min(size[0], width), min(size[1], height)

    def offset(free: int) -> int:
        choices = free // divisible + 1 if last_offset else max((free + 1) // divisible, 1)
        return int(torch.randint(choices, (1,), generator=generator)) * divisible

    return Box(offset(height - h), offset(width - w), h, w)


def paste(x: torch.Tensor, box: Box, size: tuple[int, int]) -> torch.Tensor:
    """``x`` (B x C x h x w) placed with its corner at ``box``'s on a zero grid of ``size``."""
    top, left = box.top, box.left
    return F.pad(x, (left, size[1] - left - x.shape[-1], top, size[0] - top - x.shape[-2]))


def _class_maps(
    context: torch.Tensor, detail: torch.Tensor, attention: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, bool]:
    """B x C x h x w views of B x h x w maps, and the attention matched to their channels."""
    flat = context.dim() == 3
    if flat:
        context, detail = context[:, None], detail[:, None]
    if attention.shape[1] not in (1, context.shape[1]):
        attention = attention.mean(1, keepdim=True)
    return context, detail, attention, flat


def fuse_weight_then_upsample(
    context: torch.Tensor,
    detail: torch.Tensor,
    attention: torch.Tensor,
    box: Box,
    upscale: float,
) -> torch.Tensor:
    """The published fusion, ``up(att) * detail + up((1 - att) * context)``.

    ``context`` (B x [C x] h x w) and ``attention`` (B x C or 1 x h x w, already masked to the
    detail box) are on the context's grid; both are upsampled by ``upscale`` (bilinear,
    align_corners False, by scale factor as ``hrda_head.py:104-108``); ``detail`` covers
    ``box`` of the output grid.
    """
    context, detail, attention, flat = _class_maps(context, detail, attention)
    weighted = F.interpolate(
        (1 - attention) * context, scale_factor=upscale, mode="bilinear", align_corners=False
    )
    attention = F.interpolate(attention, scale_factor=upscale, mode="bilinear", align_corners=False)
    fused = attention * paste(detail, box, weighted.shape[-2:]) + weighted
    return fused[:, 0] if flat else fused


def fuse_upsample_then_weight(
    context: torch.Tensor, detail: torch.Tensor, attention: torch.Tensor, box: Box
) -> torch.Tensor:
    """Ours before: ``attention * detail + (1 - attention) * up(context)`` on the output grid.

    ``attention`` (B x C or 1 x h' x w', already upsampled to the output grid and masked to the
    box) sets that grid; ``context`` (B x [C x] h x w) is resized to it; ``detail`` covers
    ``box`` of it.
    """
    context, detail, attention, flat = _class_maps(context, detail, attention)
    size = attention.shape[-2:]
    context = F.interpolate(context, size, mode="bilinear", align_corners=False)
    fused = attention * paste(detail, box, size) + (1 - attention) * context
    return fused[:, 0] if flat else fused


def upsample_context(value: torch.Tensor, upscale: float) -> torch.Tensor:
    """A context-pass map (B x [C x] h x w) upsampled by ``upscale``, bilinear, no attention."""
    flat = value.dim() == 3
    up = F.interpolate(
        value[:, None] if flat else value,
        scale_factor=upscale,
        mode="bilinear",
        align_corners=False,
    )
    return up[:, 0] if flat else up


class ScaleAttentionHead(nn.Module):
    """A lighter DAFormer head: each encoder level embedded by a linear layer, upsampled to
    the finest level, concatenated and fused by a 1x1 conv (no ASPP); sigmoid outputs."""

    def __init__(
        self,
        in_channels: list[int],
        out_channels: int,
        channels: int = 256,
        dropout: float = 0.1,
        init: HeadInit = "pytorch",
    ) -> None:
        super().__init__()
        self.embed = LevelEmbedding(in_channels, channels)
        self.fuse = ConvBNReLU(len(in_channels) * channels, channels, 1)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, out_channels, 1)
        init_head(self, self.classifier, init)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        fused = self.fuse(self.embed(features))
        return torch.sigmoid(self.classifier(self.dropout(fused)))


@dataclass
class HRDAOutput(SegOutput):
    """The fused prediction (``logits``, ``aux``) on the grid of the full-resolution input,
    the branches' own outputs, and the attention that weighs the detail, on the output grid
    (masked to ``box``: zero outside it, or, as published, masked on the context's grid and
    then upsampled, so it fades over one context cell at the border).

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
    ``slide_stride``, default half the window) and fuses everywhere (pseudo-labels, eval);
    ``shared_encoder_pass`` lets the context and those windows share one encoder pass where
    that gives the same features (``_context_and_windows``).
    ``fusion`` and ``aux_fusion``: see the module docstring; ``attention_init`` the
    scale-attention head's initialisation (``models.daformer.init_head``); ``attention`` a
    head of another kind (encoder features -> sigmoid maps) instead of ``ScaleAttentionHead``.
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
        shared_encoder_pass: bool = False,
        dropout: float = 0.1,
        fusion: Fusion = "upsample-then-weight",
        aux_fusion: AuxFusion = "fused",
        attention_init: HeadInit = "pytorch",
        attention: nn.Module | None = None,
    ) -> None:
        super().__init__(segmenter.encoder, segmenter.decoder)
        self.heads = segmenter.heads
        self.context_scale = context_scale
        self.detail_crop = tuple(detail_crop)
        self.slide_stride = tuple(slide_stride or (detail_crop[0] // 2, detail_crop[1] // 2))
        self.batched_slide = batched_slide
        self.shared_encoder_pass = shared_encoder_pass
        self.fusion = fusion
        self.aux_fusion = aux_fusion
        if attention is None:
            attention = ScaleAttentionHead(
                segmenter.encoder.channels,
                num_classes if attention_classwise else 1,
                attention_channels,
                dropout,
                attention_init,
            )
        self.scale_attention = attention

    def forward(self, image: torch.Tensor, detail_box: Box | None = None) -> HRDAOutput:
        context_image = F.interpolate(
            image, scale_factor=self.context_scale, mode="bilinear", align_corners=False
        )
        if detail_box is None:
            context, detail = self._context_and_windows(image, context_image)
            box = Box(0, 0, *image.shape[-2:])
        else:
            context = super().forward(context_image)
            detail = super().forward(detail_box.crop(image))
            box = detail_box
        stride = max(1, round(context_image.shape[-1] / context.logits.shape[-1]))
        attention = self.scale_attention(context.encoder_features)
        upscale = 1 / self.context_scale
        grid_box = box.scaled(stride)
        if self.fusion == "weight-then-upsample":
            if detail_box is not None:
                attention = attention * box.scaled(stride / self.context_scale).mask(attention)

            def fuse(c: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
                return fuse_weight_then_upsample(c, d, attention, grid_box, upscale)

            fused_attention = F.interpolate(
                attention, scale_factor=upscale, mode="bilinear", align_corners=False
            )
        else:
            grid = (image.shape[-2] // stride, image.shape[-1] // stride)
            attention = F.interpolate(attention, grid, mode="bilinear", align_corners=False)
            attention = attention * grid_box.mask(attention)
            fused_attention = attention

            def fuse(c: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
                return fuse_upsample_then_weight(c, d, attention, grid_box)

        logits = fuse(context.logits, detail.logits)
        if self.aux_fusion == "context":
            aux = {k: upsample_context(v, upscale) for k, v in context.aux.items()}
        else:
            aux = {k: fuse(v, detail.aux[k]) for k, v in context.aux.items()}
        return HRDAOutput(
            logits,
            aux=aux,
            encoder_features=context.encoder_features,
            context=context,
            detail=detail,
            attention=fused_attention,
            box=box,
        )

    def _context_and_windows(
        self, image: torch.Tensor, context_image: torch.Tensor
    ) -> tuple[SegOutput, SegOutput]:
        """The context pass and the detail over every window. With ``shared_encoder_pass``,
        batched windows of the context image's size and an encoder that encodes each image on
        its own in its current mode (``encodes_per_image``: the EMA teacher, eval), the context
        image and the windows go through the encoder in one batch; the decoder and heads still
        run on each apart, the context first (BatchNorm in training mode normalises over its
        own batch, as in two passes). Otherwise, and on a CUDA out-of-memory error, two
        passes (the reference's)."""
        # Every window is the detail crop clipped to the image (evaluation._windows).
        (width, height), (h, w) = self.detail_crop, image.shape[-2:]
        window = (min(height, h), min(width, w))
        if (
            self.shared_encoder_pass
            and self.batched_slide
            and tuple(context_image.shape[-2:]) == window
            and encodes_per_image(self.encoder)
        ):
            try:
                return self._shared_pass(image, context_image)
            except torch.cuda.OutOfMemoryError:
                torch.cuda.empty_cache()
        return Segmenter.forward(self, context_image), self._slide_detail(image)

    def _shared_pass(
        self, image: torch.Tensor, context_image: torch.Tensor
    ) -> tuple[SegOutput, SegOutput]:
        starts, crops = slide_windows(image, self.detail_crop, self.slide_stride)
        n = context_image.shape[0]
        features = self.encoder(torch.cat([context_image, *crops]))
        context = self.decode([f[:n] for f in features])
        windows = self.decode([f[n:] for f in features])
        maps = split_windows({"logits": windows.logits, **windows.aux}, len(crops))
        maps = stitch_windows(starts, crops, maps, image.shape[-2:])
        return context, SegOutput(maps.pop("logits"), aux=maps)

    def _slide_detail(self, image: torch.Tensor) -> SegOutput:
        """The detail over overlapping windows (``hrda_encoder_decoder.py:99-121``): all
        windows of all images in one batch, crop-major; each window's maps pasted at its box
        scaled with ``int()`` and divided by the overlap count (``hrda_head.py:110-140``)."""

        def predict(crops: torch.Tensor) -> dict[str, torch.Tensor]:
            out = Segmenter.forward(self, crops)
            return {"logits": out.logits, **out.aux}

        maps = slide_average(
            predict, image, self.detail_crop, self.slide_stride, self.batched_slide
        )
        return SegOutput(maps.pop("logits"), aux=maps)

"""The multi-task head: segmentation and dispersion predicted together, each refining the other.

On the decoder's fused features (B x C x h x w), as in the pipeline figure and as the
published ``DispDAFormerHead`` computes after the DAFormer fusion (Dispersion
``mmseg/models/decode_heads/dispersion_daformer_head.py:350-363``):

1. task features: two bottleneck blocks per task (segmentation, dispersion);
2. initial predictions: segmentation from the fused features through a multi-dilation
   classifier, dispersion from its task features through a 1x1 convolution;
3. cross-task distillation: each task's features plus the other task's features gated by a
   spatial attention map (``SpatialGate``);
4. final predictions: segmentation and dispersion, each through a multi-dilation classifier
   on its distilled features. The segmentation goes out as ``outputs["logits"]``, and the host
   network then skips its own classifier. With ``final_segmentation="host"`` (ours) the
   distilled segmentation features go back to the host network's classifier instead, so the
   head fits any decoder.

The published multi-dilation classifier returns inside its loop (lines 157-161) and sums only
its first two convolutions (dilations 6 and 12); ``summed`` keeps that, or sums them all.
``published_state`` maps the published head's keys onto this module's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import torch
from torch import nn

FinalSegmentation = Literal["head", "host"]
Init = Literal["normal", "pytorch"]


class Bottleneck(nn.Module):
    """ResNet bottleneck in torchvision's layout (v1.5: the stride on the 3x3 convolution):
    1x1 reduce to a quarter, 3x3, 1x1 expand, residual through ``downsample`` where the shape
    changes. Also the published head's ``BottleneckPad`` (lines 65-103) at stride 1."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        mid = max(out_channels // 4, 1)
        self.conv1 = nn.Conv2d(in_channels, mid, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = (
            nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )
            if stride != 1 or in_channels != out_channels
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(out + shortcut)


class MultiDilationClassifier(nn.Module):
    """3x3 convolutions at several dilations (DeepLab-v2's classifier); the first ``summed``
    of them are summed (all when None). The published one sums the first two."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        dilations: Sequence[int] = (6, 12, 18, 24),
        summed: int | None = None,
    ) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Conv2d(in_channels, out_channels, 3, padding=d, dilation=d) for d in dilations
        )
        self.summed = len(self.branches) if summed is None else min(summed, len(self.branches))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sum(branch(x) for branch in self.branches[: self.summed])


class SpatialGate(nn.Module):
    """Features of another task, gated per pixel and channel by a sigmoid attention map (the
    published ``SABlock``, lines 106-117)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.attention = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.features = nn.Conv2d(channels, channels, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x) * torch.sigmoid(self.attention(x))


def init_like_reference(module: nn.Module) -> None:
    """The published head's initialisation of everything it holds (lines 315-321): every
    convolution's weight N(0, 0.01), biases left at PyTorch's default, BatchNorm 1 and 0.

    The published head also holds the DAFormer fusion (ASPP and bottleneck), so the reference
    initialises the host decoder's fusion this way too: uda-methods' ``model.decoder_init``
    ``"normal"``, which the published dispersion presets set.
    """
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, std=0.01)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class DispersionHead(nn.Module):
    """Multi-task head on fused features; returns (features, outputs).

    ``outputs`` holds ``seg_init`` (B x num_classes x h x w logits), ``disp_init`` and
    ``disp`` (B x 1 x h x w dispersion predictions) and, with ``final_segmentation="head"``,
    ``logits``: the final segmentation. The returned features are the input unchanged then;
    with ``"host"`` they are the distilled segmentation features at the input's width, for
    the host network's classifier.

    In training mode without gradients (a self-training teacher) only the segmentation path
    runs: ``outputs`` holds ``logits`` alone ("head") or nothing ("host"). In eval mode
    (evaluation, prediction) every output is computed.
    """

    def __init__(
        self,
        channels: int,
        num_classes: int,
        width: int | None = None,
        dilations: Sequence[int] = (6, 12, 18, 24),
        summed: int | None = 2,
        final_segmentation: FinalSegmentation = "head",
        init: Init = "normal",
    ) -> None:
        super().__init__()
        width = width or channels

        def classifier(in_channels: int, out_channels: int) -> MultiDilationClassifier:
            made = MultiDilationClassifier(in_channels, out_channels, dilations, summed)
            if init == "pytorch":  # ours: N(0, 0.01) and zero bias, drawn right here
                for conv in made.branches:
                    nn.init.normal_(conv.weight, std=0.01)
                    nn.init.zeros_(conv.bias)
            return made

        self.seg_features = nn.Sequential(Bottleneck(channels, width), Bottleneck(width, width))
        self.disp_features = nn.Sequential(Bottleneck(channels, width), Bottleneck(width, width))
        self.seg_init = classifier(channels, num_classes)
        self.disp_init = nn.Conv2d(width, 1, 1)
        self.disp_to_seg = SpatialGate(width)
        self.seg_to_disp = SpatialGate(width)
        self.disp_final = classifier(width, 1)
        if final_segmentation == "head":
            self.seg_final = classifier(width, num_classes)
            self.project = None
        else:
            self.seg_final = None
            self.project = nn.Identity() if width == channels else nn.Conv2d(width, channels, 1)
        if init == "normal":
            init_like_reference(self)

    def forward(self, fused: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        seg, disp = self.seg_features(fused), self.disp_features(fused)
        seg_distilled = seg + self.disp_to_seg(disp)
        if self.seg_final is not None:
            features, outputs = fused, {"logits": self.seg_final(seg_distilled)}
        else:
            features, outputs = self.project(seg_distilled), {}
        if self.training and not torch.is_grad_enabled():
            # a training-mode network without gradients is the EMA teacher making pseudo-labels,
            # which reads the segmentation only: skip the outputs nothing reads
            return features, outputs
        outputs["seg_init"] = self.seg_init(fused)
        outputs["disp_init"] = self.disp_init(disp)
        outputs["disp"] = self.disp_final(disp + self.seg_to_disp(seg))
        return features, outputs


PUBLISHED_NAMES = {
    "initial_task_prediction_heads.layers.S.": "seg_features.",
    "initial_task_prediction_heads.layers.D.": "disp_features.",
    "initial_task_prediction_heads.conv_out.S.conv2d_list.": "seg_init.branches.",
    "initial_task_prediction_heads.conv_out.D.": "disp_init.",
    "multi_modal_distillation.self_attention.S.D.attention.0.": "disp_to_seg.attention.",
    "multi_modal_distillation.self_attention.S.D.conv.": "disp_to_seg.features.",
    "multi_modal_distillation.self_attention.D.S.attention.0.": "seg_to_disp.attention.",
    "multi_modal_distillation.self_attention.D.S.conv.": "seg_to_disp.features.",
    "heads.S.conv2d_list.": "seg_final.branches.",
    "heads.D.conv2d_list.": "disp_final.branches.",
}
"""Key prefixes of the published ``DispDAFormerHead`` (relative to it) -> ours."""


def fitted(tensor: object, shape: torch.Size) -> torch.Tensor | None:
    """``tensor`` in ``shape`` if it fits, else None: the same shape, or one element for a
    scalar, which ``load_state_dict`` accepts too (files that store ``num_batches_tracked``
    as a 1-element vector)."""
    if not isinstance(tensor, torch.Tensor):
        return None
    if tensor.shape == shape:
        return tensor
    return tensor.reshape(()) if shape == () and tensor.shape == (1,) else None


def _shape(tensor: object) -> object:
    return tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__


def _renamed(key: str, names: Mapping[str, str]) -> str | None:
    return next((new + key[len(old) :] for old, new in names.items() if key.startswith(old)), None)


def published_state(
    substate: Mapping[str, torch.Tensor], head: nn.Module
) -> dict[str, torch.Tensor]:
    """The published head's tensors (keys relative to ``DispDAFormerHead``, under
    ``PUBLISHED_NAMES``) as ``head``'s state dict, every key and shape checked.

    Raises a one-line ``ValueError`` naming the first key that does not fit.
    """
    expected = head.state_dict()
    ours_to_published = {new: old for old, new in PUBLISHED_NAMES.items()}
    out: dict[str, torch.Tensor] = {}
    for key, tensor in substate.items():
        name = _renamed(key, PUBLISHED_NAMES)
        if name is None:
            raise ValueError(
                f"dispersion head: {key!r} is not a key of the published head's task modules "
                "(initial_task_prediction_heads., multi_modal_distillation., heads.)"
            )
        if name not in expected:
            raise ValueError(
                f"dispersion head: the published {key!r} has no place in this head ({name!r}); "
                "the published head needs final_segmentation='head', dilations (6, 12, 18, 24) "
                "and head_width 256 or absent"
            )
        fit = fitted(tensor, expected[name].shape)
        if fit is None:
            raise ValueError(
                f"dispersion head: the published {key!r} has shape {_shape(tensor)}, this "
                f"head's {name!r} {tuple(expected[name].shape)}"
            )
        out[name] = fit
    for name in expected:
        if name not in out:
            published = _renamed(name, ours_to_published) or name
            raise ValueError(f"dispersion head: the published state lacks {published!r} ({name!r})")
    return out

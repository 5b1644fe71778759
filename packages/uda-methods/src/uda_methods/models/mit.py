"""Mix Transformer (MiT) encoders of SegFormer, as timm's PVTv2 with MLP ratio 4.

Xie et al., "SegFormer: Simple and Efficient Design for Semantic Segmentation with
Transformers", NeurIPS 2021. DAFormer and its successors use MiT-B5 as the encoder.

MiT and PVTv2 share one architecture: overlapping patch embeddings, efficient self-attention
with spatial reduction (ratios 8, 4, 2, 1) and Mix-FFN (a 3x3 depthwise conv inside the MLP).
timm's ``pvt_v2_bN`` equals MiT-BN once every stage uses MLP ratio 4 (timm's B0-B4 use 8 in
the first two stages). The converter below renames the original SegFormer ImageNet checkpoints
(``mit_b5.pth`` ...) to timm's names, so both sources load into the same module.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from uda_methods.models.light import TimmEncoder
from uda_methods.models.weights import KeyRule, load_checked, read_state_dict, rename

MLP_RATIOS = (4, 4, 4, 4)


class MiTEncoder(TimmEncoder):
    """MiT-B``size``: four feature maps at strides 4, 8, 16, 32, finest first.

    ``drop_path_rate`` is the stochastic depth of the last block (SegFormer trains with 0.1),
    rising linearly from 0 over all blocks.
    """

    def __init__(self, size: int, drop_path_rate: float = 0.1) -> None:
        super().__init__(f"pvt_v2_b{size}", mlp_ratios=MLP_RATIOS, drop_path_rate=drop_path_rate)
        self.size = size
        skip_zero_dropout(self.body)

    def load_pretrained(self, path: Path) -> None:
        """Load a SegFormer ImageNet checkpoint (or one already in timm's names)."""
        load_checked(self.body, segformer_to_timm(read_state_dict(path)), path)


def skip_zero_dropout(module: nn.Module) -> int:
    """Replace the ``nn.Dropout(p=0)`` layers of ``module`` (MiT's projection and MLP
    dropouts, called three times per block, all 0 in SegFormer, DAFormer, HRDA and MIC) by
    ``nn.Identity``: the same output, one operator dispatch fewer a call (156 per MiT-B5 forward).
    Attention's ``attn_drop`` stays (timm reads its ``p`` for the fused attention). Returns how
    many were replaced."""
    replaced = 0
    for parent in module.modules():
        for name, child in list(parent.named_children()):
            if type(child) is nn.Dropout and child.p == 0 and name != "attn_drop":
                setattr(parent, name, nn.Identity())
                replaced += 1
    return replaced


def _stage_rules(k: int) -> tuple[KeyRule, ...]:
    """SegFormer's names of stage ``k`` (1-4) -> timm's, the depthwise conv's double name first."""
    stage = f"stages_{k - 1}"
    embed = "patch_embed" if k == 1 else f"{stage}.downsample"
    block = f"{stage}.blocks.{{j}}"
    return (
        KeyRule(f"patch_embed{k}.{{rest}}", f"{embed}.{{rest}}"),
        KeyRule(f"block{k}.{{j}}.mlp.dwconv.dwconv.{{p}}", f"{block}.mlp.dwconv.{{p}}"),
        KeyRule(f"block{k}.{{j}}.{{rest}}", f"{block}.{{rest}}"),
        KeyRule(f"norm{k}.{{rest}}", f"{stage}.norm.{{rest}}"),
    )


SEGFORMER_KEYS: tuple[KeyRule, ...] = tuple(r for k in (1, 2, 3, 4) for r in _stage_rules(k))
"""SegFormer's MiT names (also the published DAFormer/HRDA/MIC ``backbone.*``) -> timm's
``features_only`` names: ``patch_embed1`` -> ``patch_embed``, ``patch_embedK`` ->
``stages_{K-1}.downsample``, ``blockK.J`` -> ``stages_{K-1}.blocks.J`` (``mlp.dwconv.dwconv``
-> ``mlp.dwconv``), ``normK`` -> ``stages_{K-1}.norm``."""

_TIMM_FULL_MODEL = (KeyRule("stages.{i}.{rest}", "stages_{i}.{rest}"),)


def segformer_to_timm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a SegFormer MiT state dict to timm's ``pvt_v2`` features_only names
    (``SEGFORMER_KEYS``); the ImageNet classifier ``head.*`` is dropped. Keys already in
    timm's names (features_only or full model) pass through unchanged."""
    out = {}
    for key, value in state.items():
        if key.startswith("head."):
            continue
        out[rename(key, SEGFORMER_KEYS + _TIMM_FULL_MODEL) or key] = value
    return out


def mit_b0(**kwargs) -> MiTEncoder:
    """Depths 2, 2, 2, 2; widths 32, 64, 160, 256 (3.3M parameters): for CPU runs."""
    return MiTEncoder(0, **kwargs)


def mit_b1(**kwargs) -> MiTEncoder:
    """Depths 2, 2, 2, 2; widths 64, 128, 320, 512."""
    return MiTEncoder(1, **kwargs)


def mit_b2(**kwargs) -> MiTEncoder:
    """Depths 3, 4, 6, 3; widths 64, 128, 320, 512."""
    return MiTEncoder(2, **kwargs)


def mit_b3(**kwargs) -> MiTEncoder:
    """Depths 3, 4, 18, 3; widths 64, 128, 320, 512."""
    return MiTEncoder(3, **kwargs)


def mit_b4(**kwargs) -> MiTEncoder:
    """Depths 3, 8, 27, 3; widths 64, 128, 320, 512."""
    return MiTEncoder(4, **kwargs)


def mit_b5(**kwargs) -> MiTEncoder:
    """Depths 3, 6, 40, 3; widths 64, 128, 320, 512: the encoder of DAFormer, HRDA and MIC."""
    return MiTEncoder(5, **kwargs)

"""HRDA: DAFormer's self-training on a multi-resolution model.

Hoyer et al., "HRDA: Context-Aware High-Resolution Domain-Adaptive Semantic Segmentation",
ECCV 2022. The step is DAFormer's (``uda_methods.methods.daformer``); what changes is how the
student is trained on a batch and which features the feature distance reads:

- every student pass draws a detail box (coordinates on multiples of
  ``hrda_crop_divisible``), runs ``HRDASegmenter`` on the crop at both scales and adds the
  losses of the fused output (weight 1 - detail - context weights), of the detail output
  against the label and every dense map cropped to the box (``hrda_detail_loss_weight``) and,
  if weighted, of the context output; plugin losses come from the fused output at weight 1,
  as published, or from every branch weighted like its segmentation (``hrda_plugin_losses``);
- the teacher's pseudo-labels come from its inference mode: overlapping detail windows fused
  with the context; target margins come from the loader's ``valid`` map;
- the feature distance compares the context's (low-resolution) bottleneck features with the
  ImageNet encoder's on the image at the context scale.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from uda_core.errors import UdaError
from uda_core.model import SegOutput
from uda_methods.methods.daformer import DAFormer
from uda_methods.methods.hooks import Batch, plugin_losses
from uda_methods.models.hrda import HRDASegmenter, random_detail_box


class HRDA(DAFormer):
    """DAFormer (ClassMix, RCS, feature distance) with multi-resolution training."""

    name = "hrda"

    def __init__(self, model, accelerator, cfg, plugins=None) -> None:
        super().__init__(model, accelerator, cfg, plugins)
        self.multi_resolution = cfg.multi_resolution
        if self.multi_resolution != isinstance(accelerator.unwrap_model(model), HRDASegmenter):
            raise UdaError(
                f"method {self.name}: the model must be an HRDASegmenter exactly when "
                "method.multi_resolution (build it with uda_methods.registry.build_method_model)"
            )

    def _student_losses(
        self, batch: Batch, pixel_weight: torch.Tensor | None, prefix: str
    ) -> tuple[dict[str, torch.Tensor], SegOutput]:
        if not self.multi_resolution:
            return super()._student_losses(batch, pixel_weight, prefix)
        cfg = self.cfg
        height, width = batch["image"].shape[-2:]
        box = random_detail_box(
            height,
            width,
            cfg.hrda_detail_crop,
            cfg.hrda_crop_divisible,
            last_offset=cfg.hrda_detail_last_offset,
        )
        output = self.model(batch["image"], detail_box=box)
        batch = self._loss_targets(batch)
        detail_batch = {k: box.crop(v) for k, v in batch.items()}
        detail_weight = None if pixel_weight is None else box.crop(pixel_weight)
        branches = [
            (
                output,
                batch,
                pixel_weight,
                "",
                1 - cfg.hrda_detail_loss_weight - cfg.hrda_context_loss_weight,
            ),
            (output.detail, detail_batch, detail_weight, "detail.", cfg.hrda_detail_loss_weight),
            (output.context, batch, pixel_weight, "context.", cfg.hrda_context_loss_weight),
        ]
        losses = {}
        for out, targets, weight, branch, factor in branches:
            if factor == 0:
                continue
            terms = {"seg": factor * self._seg_loss(out.logits, targets["label"], weight)}
            terms |= self._plugin_terms(out, targets, weight, factor, fused=out is output)
            losses |= {f"{prefix}{branch}{k}": v for k, v in terms.items()}
        return losses, output

    def _plugin_terms(
        self,
        out: SegOutput,
        targets: Batch,
        weight: torch.Tensor | None,
        factor: float,
        fused: bool,
    ) -> dict[str, torch.Tensor]:
        """One branch's plugin losses (``method.hrda_plugin_losses``): ``"fused"``, as
        published, the fused output's alone at weight 1 (Dispersion ``dispersion_head.py:
        257-297`` scales only the segmentation terms by 0.9 and 0.1, and computes no
        detail-scale dispersion term); ``"per-branch"`` every branch's, x ``factor``."""
        if self.cfg.hrda_plugin_losses == "fused":
            return plugin_losses(self.plugins, out, targets, weight) if fused else {}
        return {k: factor * v for k, v in plugin_losses(self.plugins, out, targets, weight).items()}

    def _feature_distance_input(self, image: torch.Tensor) -> torch.Tensor:
        if not self.multi_resolution:
            return image
        return F.interpolate(
            image, scale_factor=self.cfg.hrda_context_scale, mode="bilinear", align_corners=False
        )

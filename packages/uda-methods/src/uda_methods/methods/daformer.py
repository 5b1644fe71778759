"""DACS and DAFormer: self-training with an EMA teacher, ClassMix and strong augmentation.

DAFormer (Hoyer et al., CVPR 2022) adds to DACS (Tranheden et al., WACV 2021) rare class
sampling in the source loader (configured in the data section) and an ImageNet feature
distance on thing classes. One iteration, as ``_self_training_step`` reads:

1. source: supervised loss (+ feature distance, + plugin losses); backward
2. target: teacher pseudo-labels and their pixel weights (+ plugin adjustments and targets)
3. ClassMix of source and target, over the image and every dense map; strong augmentation
4. mixed: pixel-weighted loss (+ plugin losses); backward
5. (engine) optimiser step; then ``after_optimizer_step`` updates the EMA teacher
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F

from uda_core.augment import strong_augment
from uda_core.ema import EMATeacher
from uda_core.losses import downscale_label_ratio, feature_distance, seg_cross_entropy
from uda_core.method import Method, UDABatch
from uda_core.mixing import batch_class_mix_masks, class_mix_masks, mix
from uda_core.model import SegOutput
from uda_core.pseudo_label import ignore_rows, pseudo_labels
from uda_methods.methods.hooks import (
    Batch,
    add_source_targets,
    add_target_targets,
    adjust_weights,
    plugin_logs,
    plugin_losses,
)

NUM_CLASSES = 19


class DACS(Method):
    """Self-training with ClassMix; no feature distance, no rare class sampling."""

    name = "dacs"
    uses_feature_distance = False
    uses_teacher = True

    def __init__(self, model, accelerator, cfg, plugins=None) -> None:
        super().__init__(model, accelerator, cfg, plugins)
        student = accelerator.unwrap_model(model)
        self.teacher = None
        if self.uses_teacher:
            self.teacher = EMATeacher(student, cfg.ema_alpha, cfg.ema_buffers)
        self.imagenet_encoder = None
        if self.uses_feature_distance and cfg.fd_lambda > 0:
            self.imagenet_encoder = copy.deepcopy(student.encoder).eval().requires_grad_(False)

    def train_step(self, batch: UDABatch, iteration: int) -> dict[str, torch.Tensor]:
        logs, _, _ = self._self_training_step(batch)
        return logs

    def _self_training_step(self, batch: UDABatch) -> tuple[dict[str, torch.Tensor], Batch, Batch]:
        """1-4, as the module docstring lists them. Also the source batch (with the plugins'
        targets) and the pseudo-labelled target, for a step added after them (MIC's)."""
        source = add_source_targets(self.plugins, batch.source)
        logs = self._source_step(source)
        target, logs["pseudo_weight"] = self._pseudo_label(batch.target)
        logs |= plugin_logs(self.plugins)
        logs |= self._mixed_step(source, target)
        return logs, source, target

    def _source_step(self, source: Batch) -> dict[str, torch.Tensor]:
        """1. Supervised loss (+ feature distance, + plugin losses) on the source; backward."""
        losses, _ = self._source_losses(source)
        self.backward(sum(losses.values()))
        return {k: v.detach() for k, v in losses.items()}

    def _source_losses(self, source: Batch) -> tuple[dict[str, torch.Tensor], SegOutput]:
        losses, output = self._student_losses(source, None, prefix="src.")
        if self.imagenet_encoder is not None:
            targets = self._loss_targets(source)
            losses["src.feat_dist"] = self.cfg.fd_lambda * self._feature_distance(output, targets)
        return losses, output

    def _pseudo_label(self, target: Batch) -> tuple[Batch, torch.Tensor]:
        """2. The target with the teacher's pseudo-labels, the plugins' target-side dense
        targets and the pixel weights (margins, then plugin adjustments, which may read those
        targets); and the mean share of confident pixels (a tensor: no host sync)."""
        cfg, target = self.cfg, dict(target)
        self.teacher.train(self.model.training)
        with self.accelerator.autocast():  # the student's precision; softmax in fp32 below
            teacher_logits = self.teacher(target["image"]).logits
        teacher_logits = F.interpolate(
            teacher_logits.float(), target["image"].shape[-2:], mode="bilinear", align_corners=False
        )
        pseudo = pseudo_labels(
            teacher_logits, cfg.pseudo_threshold, per_image=cfg.pseudo_weight_scope == "image"
        )
        weight = ignore_rows(pseudo.weight, cfg.pseudo_ignore_top, cfg.pseudo_ignore_bottom)
        if "valid" in target:
            weight = weight * target["valid"]
        target = add_target_targets(self.plugins, target, pseudo.label)
        weight = adjust_weights(self.plugins, target, pseudo.label, weight)
        target["label"], target["weight"] = pseudo.label, weight
        return target, pseudo.weight[:, 0, 0].mean()

    def _mixed_step(self, source: Batch, target: Batch) -> dict[str, torch.Tensor]:
        """3-4. ClassMix over the image and every dense map both sides have, strong
        augmentation, pixel-weighted loss (+ plugin losses) on the mixed batch; backward."""
        cfg = self.cfg
        source = source | {"weight": torch.ones_like(target["weight"])}
        if cfg.classmix_classes == "batch":
            mask = batch_class_mix_masks(source["label"])
        else:
            mask = class_mix_masks(source["label"])
        mixed = {k: mix(mask, source[k], target[k]) for k in source.keys() & target.keys()}
        mixed["image"] = strong_augment(
            mixed["image"],
            cfg.color_jitter_strength,
            cfg.color_jitter_p,
            cfg.blur,
            gates=cfg.augment_gates,
            per_image_calls=True,
        )
        losses, out_mix = self._student_losses(mixed, mixed["weight"], prefix="mix.")
        self.backward(sum(losses.values()))
        logs = {k: v.detach() for k, v in losses.items()}
        if self.debug:
            self.panels = self._panels(source, target, mixed, out_mix)
        return logs

    def _student_losses(
        self, batch: Batch, pixel_weight: torch.Tensor | None, prefix: str
    ) -> tuple[dict[str, torch.Tensor], SegOutput]:
        """The student on ``batch["image"]``: (pixel-weighted) segmentation loss and plugin
        losses against the batch's label and dense maps."""
        output = self.model(batch["image"])
        batch = self._loss_targets(batch)
        losses = {f"{prefix}seg": self._seg_loss(output.logits, batch["label"], pixel_weight)}
        losses |= plugin_losses(self.plugins, output, batch, pixel_weight, prefix=prefix)
        return losses, output

    def _loss_targets(self, batch: Batch) -> Batch:
        """The labels and dense maps the student's output is scored against (the batch)."""
        return batch

    def _seg_loss(
        self, logits: torch.Tensor, label: torch.Tensor, pixel_weight: torch.Tensor | None
    ) -> torch.Tensor:
        """Pixel-weighted cross-entropy, averaged as ``method.seg_loss_mean`` says."""
        return seg_cross_entropy(logits, label, pixel_weight, mean_over=self.cfg.seg_loss_mean)

    def _feature_distance(self, output, source) -> torch.Tensor:
        """Distance of the student's bottleneck features to the frozen ImageNet encoder's, on
        cells where thing classes cover at least ``fd_min_ratio``."""
        with torch.no_grad(), self.accelerator.autocast():
            reference = self.imagenet_encoder(self._feature_distance_input(source["image"]))[-1]
        features = output.encoder_features[-1]
        factor = source["label"].shape[-1] // features.shape[-1]
        cells = downscale_label_ratio(source["label"], factor, self.cfg.fd_min_ratio, NUM_CLASSES)
        classes = torch.tensor(self.cfg.fd_classes, device=cells.device)
        return feature_distance(features, reference, torch.isin(cells, classes))

    def _feature_distance_input(self, image: torch.Tensor) -> torch.Tensor:
        """The image the frozen ImageNet encoder sees, at the student's feature resolution."""
        return image

    def _panels(self, source, target, mixed, out_mix) -> dict[str, torch.Tensor]:
        panels = {
            "source": source["image"],
            "source label": source["label"],
            "target": target["image"],
            "pseudo-label": target["label"],
            "pseudo weight": target["weight"],
            "mixed": mixed["image"],
            "mixed label": mixed["label"],
            "mixed prediction": out_mix.logits.argmax(1),
        }
        for name, plugin in self.plugins.items():
            panels |= {f"{name}: {k}": v for k, v in plugin.debug_panels(mixed, out_mix).items()}
        return {k: v.detach() for k, v in panels.items()}

    def after_optimizer_step(self, iteration: int) -> None:
        if self.teacher is not None:
            self.teacher.update(self.accelerator.unwrap_model(self.model), iteration + 1)

    def frozen_modules(self) -> list[torch.nn.Module]:
        frozen = [self.teacher.model] if self.teacher is not None else []
        return frozen + ([self.imagenet_encoder] if self.imagenet_encoder is not None else [])

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        if self.teacher is not None:
            state["teacher"] = self.teacher.model.state_dict()
        if self.imagenet_encoder is not None:
            state["imagenet_encoder"] = self.imagenet_encoder.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        if self.teacher is not None:
            self.teacher.model.load_state_dict(state["teacher"])
        if self.imagenet_encoder is not None and "imagenet_encoder" in state:
            self.imagenet_encoder.load_state_dict(state["imagenet_encoder"])


class DAFormer(DACS):
    """DACS + ImageNet feature distance + rare class sampling."""

    name = "daformer"
    uses_feature_distance = True
    uses_rcs = True

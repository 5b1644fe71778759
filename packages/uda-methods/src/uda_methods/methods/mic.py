"""MIC: masked image consistency on top of HRDA (or DAFormer).

Hoyer et al., "MIC: Masked Image Consistency for Context-Enhanced Domain Adaptation",
CVPR 2023. After the base method's source and mixed steps, the student also learns to predict
the teacher's pseudo-labels from the colour-augmented target image with random square blocks
masked out, which forces it to use context:

5. masked: strong augmentation of the target image, ``mic_mask_ratio`` of its
   ``mic_mask_block`` px blocks set to 0; the same pseudo-labels, pixel weights (margins and
   plugin adjustments included) and plugin targets as the mixed step; loss x ``mic_lambda``
   (the fused segmentation loss only, as published, or every masked loss:
   ``mic_lambda_scope``; on HRDA: with a detail crop of its own); backward. With
   ``mic_mask_mode: separate`` (the reference's Cityscapes -> ACDC and Dark Zurich runs) the
   masked batch is half source (its labels, weight 1) and half target, not augmented.

``method.mic_base`` picks the base: ``hrda`` (the published MIC) or ``daformer``; ``advseg``
and ``minent`` (``uda_methods.methods.advseg``, ``minent``) take the masked step from
``MaskedConsistency`` with an EMA teacher of their own.
"""

from __future__ import annotations

import torch

from uda_core.augment import strong_augment
from uda_core.masking import mask_image
from uda_core.method import UDABatch
from uda_methods.methods.hooks import Batch, plugin_logs
from uda_methods.methods.hrda import HRDA


class MaskedConsistency:
    """MIC's masked step, for a method with an EMA teacher's pseudo-labels (a ``DACS``)."""

    def _pseudo_labelled_masked_step(self, source: Batch, target: Batch) -> dict[str, torch.Tensor]:
        """MIC on a base without self-training (AdvSeg, MinEnt): the EMA teacher's
        pseudo-labels of the target (``DACS._pseudo_label``), then the masked step."""
        target, weight = self._pseudo_label(target)
        return (
            {"pseudo_weight": weight}
            | plugin_logs(self.plugins)
            | self._masked_step(source, target)
        )

    def _masked_step(self, source: Batch, target: Batch) -> dict[str, torch.Tensor]:
        """5. The pseudo-labelled target (``separate``: half source, half target),
        colour-augmented (not with ``separate``) and block-masked; backward."""
        cfg = self.cfg
        if cfg.mic_mask_mode == "separate":
            images = separate_batch(source, target)
        else:
            image = strong_augment(
                target["image"],
                cfg.color_jitter_strength,
                cfg.color_jitter_p,
                cfg.blur,
                gates=cfg.augment_gates,
            )
            images = target | {"image": image}
        block, ratio = cfg.mic_mask_block, cfg.mic_mask_ratio
        masked = images | {"image": mask_image(images["image"], block, ratio)}
        losses, output = self._student_losses(masked, masked["weight"], prefix="mask.")
        scaled = {"mask.seg"} if cfg.mic_lambda_scope == "fused-seg" else losses.keys()
        losses = {k: cfg.mic_lambda * v if k in scaled else v for k, v in losses.items()}
        self.backward(sum(losses.values()))
        if self.debug:
            self.panels |= {
                "masked": masked["image"].detach(),
                "masked prediction": output.logits.argmax(1).detach(),
            }
        return {k: v.detach() for k, v in losses.items()}


class MIC(MaskedConsistency, HRDA):
    """HRDA (or DAFormer, with ``mic_base: daformer``) + masked image consistency."""

    name = "mic"

    def train_step(self, batch: UDABatch, iteration: int) -> dict[str, torch.Tensor]:
        logs, source, target = self._self_training_step(batch)  # HRDA's (DAFormer's) steps 1-4
        return logs | self._masked_step(source, target)


def separate_batch(source: Batch, target: Batch) -> Batch:
    """MIC's ``separate`` batch: the first half of the source (its labels, pixel weight 1)
    then as many target images (pseudo-labels and weights), over the dense maps both have."""
    n = source["image"].shape[0] // 2
    source = source | {"weight": torch.ones_like(target["weight"])}
    rest = target["image"].shape[0] - n
    return {k: torch.cat([source[k][:n], target[k][:rest]]) for k in source.keys() & target.keys()}

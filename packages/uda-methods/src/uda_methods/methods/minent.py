"""MinEnt: entropy minimisation on the target, and MIC on top of it.

Vu et al., "ADVENT: Adversarial Entropy Minimization for Domain Adaptation in Semantic
Segmentation", CVPR 2019, as the MIC reference runs it (``seg/mmseg/models/uda/minent.py``,
``seg/configs/_base_/uda/minent.py``; DeepLabV2 in ``experiments.py`` id 81). One iteration:

1. source: supervised loss (+ plugin losses); backward
2. target: the student's class probabilities at the image's resolution (logits upsampled
   bilinearly, then softmax); their entropy, normalised by log C and averaged over pixels
   (``entropy``), x ``method.ent_lambda``; backward
3. (engine) optimiser step

``MICMinEnt`` (``--method mic --set method.mic_base=minent``) adds MIC's masked step with an
EMA teacher of its own (the reference's ``MaskingConsistencyModule(require_teacher=True)``):

4. target: the teacher's pseudo-labels and weights; the masked target's pixel-weighted loss
   x ``mic_lambda``; backward; after the optimiser step, the teacher's EMA update
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from uda_core.method import UDABatch
from uda_methods.methods.daformer import DACS
from uda_methods.methods.hooks import Batch, add_source_targets
from uda_methods.methods.mic import MaskedConsistency


def entropy(probs: torch.Tensor) -> torch.Tensor:
    """Mean over pixels of the entropy of B x C x H x W probabilities, divided by log C (so 1
    for uniform predictions): ``-sum(p * log2(p + 1e-30)) / (B * H * W * log2(C))`` (MIC
    ``minent.py:31-40``)."""
    n, c, h, w = probs.shape
    return -(probs * torch.log2(probs + 1e-30)).sum() / (n * h * w * math.log2(c))


def image_probabilities(logits: torch.Tensor, size: torch.Size) -> torch.Tensor:
    """Softmax of logits upsampled (bilinear, corners not aligned) to the image's ``size``, in
    fp32: what the reference's ``forward_with_aux`` hands to the target losses."""
    logits = F.interpolate(logits.float(), size, mode="bilinear", align_corners=False)
    return logits.softmax(dim=1)


class MinEnt(DACS):
    """Source supervision + the target's normalised entropy; no teacher (DACS's student
    passes and losses, none of its self-training)."""

    name = "minent"
    uses_teacher = False

    def train_step(self, batch: UDABatch, iteration: int) -> dict[str, torch.Tensor]:
        source = add_source_targets(self.plugins, batch.source)
        return self._source_step(source) | self._entropy_step(batch.target)

    def _entropy_step(self, target: Batch) -> dict[str, torch.Tensor]:
        """2. ``ent_lambda`` x the normalised entropy of the target prediction; backward."""
        image = target["image"]
        probs = image_probabilities(self.model(image).logits, image.shape[-2:])
        loss = self.cfg.ent_lambda * entropy(probs)
        self.accelerator.backward(loss)
        return {"trg.ent": loss.detach()}


class MICMinEnt(MaskedConsistency, MinEnt):
    """MinEnt + MIC's masked image consistency, with an EMA teacher of MIC's own."""

    name = "mic"
    uses_teacher = True

    def train_step(self, batch: UDABatch, iteration: int) -> dict[str, torch.Tensor]:
        source = add_source_targets(self.plugins, batch.source)
        logs = self._source_step(source) | self._entropy_step(batch.target)
        return logs | self._pseudo_labelled_masked_step(source, batch.target)

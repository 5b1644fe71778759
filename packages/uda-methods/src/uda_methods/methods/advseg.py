"""AdvSeg: output-space adversarial training, and MIC on top of it.

Tsai et al., "Learning to Adapt Structured Output Space for Semantic Segmentation", CVPR
2018 (AdaptSegNet), as the MIC reference runs it (``seg/mmseg/models/uda/advseg.py``,
``fcdiscriminator.py``, ``seg/configs/_base_/uda/advseg.py``; DeepLabV2 in
``experiments.py`` id 81): one fully convolutional discriminator on the class probabilities
of the main output (the reference adds a second one only for an auxiliary head, which none
of our models has), a least-squares loss. One iteration:

1. source: supervised loss (+ plugin losses); backward
2. target: the student's probabilities at the image's resolution; the discriminator (its
   weights frozen) should take them for source (label 0): ``adv_lambda`` x its loss; backward
3. discriminator: source probabilities (detached) labelled 0, target ones labelled 1, each
   loss halved; backward; Adam step at the poly-decayed ``disc_lr``
4. (engine) the segmentation network's optimiser step

Precision: the reference trains in fp32 (no ``fp16`` config, ``optimizer_config=None`` for
AdvSeg, MIC ``experiments.py:282-283``), as the published presets do (``runtime.precision``
no). Under ``bf16`` or ``fp16`` the discriminator runs in Accelerate's autocast like the
segmentation network, its loss in fp32. Its optimiser is its own, so Accelerate's loss
scaler (``fp16`` only) does not cover it: it has a ``torch.amp.GradScaler`` of its own
(scaled backward, unscaled step, skipped when a gradient overflows), on exactly when
Accelerate scales the network's losses; ``bf16`` has fp32's range and needs none.

``MICAdvSeg`` (``--method mic --set method.mic_base=advseg``) adds MIC's masked step with an
EMA teacher of its own, between 2 and 3 as in the reference.
"""

from __future__ import annotations

from itertools import pairwise
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from uda_core.method import UDABatch
from uda_methods.methods.daformer import DACS, NUM_CLASSES
from uda_methods.methods.hooks import Batch, add_source_targets
from uda_methods.methods.mic import MaskedConsistency
from uda_methods.methods.minent import image_probabilities

SOURCE_LABEL, TARGET_LABEL = 0.0, 1.0


class FCDiscriminator(nn.Module):
    """Five 4x4 convolutions of stride 2 (padding 1): C -> 64 -> 128 -> 256 -> 512 -> 1, each
    but the last followed by LeakyReLU(0.2); one logit per 32x32 patch (MIC
    ``fcdiscriminator.py:8-32``). PyTorch's default initialisation, as the reference."""

    def __init__(self, num_classes: int, width: int = 64) -> None:
        super().__init__()
        widths = [num_classes, width, 2 * width, 4 * width, 8 * width]
        self.convs = nn.ModuleList(
            nn.Conv2d(a, b, 4, stride=2, padding=1) for a, b in pairwise(widths)
        )
        self.classifier = nn.Conv2d(widths[-1], 1, 4, stride=2, padding=1)

    def forward(self, probs: torch.Tensor) -> torch.Tensor:
        x = probs
        for conv in self.convs:
            x = F.leaky_relu(conv(x), negative_slope=0.2)
        return self.classifier(x)


def discriminator_loss(logits: torch.Tensor, label: float, kind: str) -> torch.Tensor:
    """The mean over patches of the least-squares loss ``(d - label)^2`` (the reference's
    ``'LS'``: ``MSELoss``) or of BCE with logits (``'Vanilla'``), in fp32."""
    logits = logits.float()
    target = torch.full_like(logits, label)
    if kind == "least-squares":
        return F.mse_loss(logits, target)
    return F.binary_cross_entropy_with_logits(logits, target)


def discriminator_lr(cfg: Any, iteration: int) -> float:
    """``(disc_lr - disc_lr_min) * (1 - i / N) ** disc_lr_power + disc_lr_min``, N the run's
    iterations (MIC ``advseg.py:103-107``); no warm-up."""
    coeff = (1 - iteration / cfg.disc_lr_iterations) ** cfg.disc_lr_power
    return (cfg.disc_lr - cfg.disc_lr_min) * coeff + cfg.disc_lr_min


class AdvSeg(DACS):
    """Source supervision + an output-space discriminator; no teacher (DACS's student passes
    and losses, none of its self-training)."""

    name = "advseg"
    uses_teacher = False

    def __init__(self, model, accelerator, cfg, plugins=None) -> None:
        super().__init__(model, accelerator, cfg, plugins)
        discriminator = FCDiscriminator(NUM_CLASSES).to(accelerator.device)
        self.d_optimizer = torch.optim.Adam(
            discriminator.parameters(), lr=cfg.disc_lr, betas=cfg.disc_betas
        )
        self.d_scaler = torch.amp.GradScaler(
            accelerator.device.type, enabled=accelerator.scaler is not None
        )
        """fp16's loss scaling for the discriminator's own step (see the module docstring)."""
        # wrapped for data parallelism (its gradients are averaged over processes); the
        # generator's pass uses the plain module, frozen, so no gradient reaches its weights
        self.discriminator = accelerator.prepare_model(discriminator)
        self.d_module = discriminator

    def train_step(self, batch: UDABatch, iteration: int) -> dict[str, torch.Tensor]:
        source = add_source_targets(self.plugins, batch.source)
        logs, source_probs = self._source_step_with_probs(source)
        target_logs, target_probs = self._adversarial_step(batch.target)
        logs |= target_logs
        logs |= self._discriminator_step(source_probs, target_probs, iteration)
        return logs

    def _source_step_with_probs(self, source: Batch) -> tuple[dict, torch.Tensor]:
        """1. Supervised loss (+ plugin losses); backward. Also the source probabilities."""
        losses, output = self._student_losses(source, None, prefix="src.")
        self.accelerator.backward(sum(losses.values()))
        probs = image_probabilities(output.logits.detach(), source["image"].shape[-2:])
        return {k: v.detach() for k, v in losses.items()}, probs

    def _adversarial_step(self, target: Batch) -> tuple[dict, torch.Tensor]:
        """2. ``adv_lambda`` x the frozen discriminator's loss of the target probabilities
        against the source label; backward. Also those probabilities, detached."""
        image = target["image"]
        probs = image_probabilities(self.model(image).logits, image.shape[-2:])
        self.d_module.requires_grad_(False)
        d_out = self.d_module(probs)
        self.d_module.requires_grad_(True)
        loss = self.cfg.adv_lambda * discriminator_loss(d_out, SOURCE_LABEL, self.cfg.adv_loss)
        self.accelerator.backward(loss)
        return {"trg.adv": loss.detach()}, probs.detach()

    def _discriminator_step(
        self, source_probs: torch.Tensor, target_probs: torch.Tensor, iteration: int
    ) -> dict[str, torch.Tensor]:
        """3. Source labelled 0, target 1, each loss / 2; one pass over both (the
        discriminator has no normalisation: the same as two); backward; Adam step."""
        for group in self.d_optimizer.param_groups:
            group["lr"] = discriminator_lr(self.cfg, iteration)
        n = source_probs.shape[0]
        d_out = self.discriminator(torch.cat([source_probs, target_probs]))
        kind = self.cfg.adv_loss
        d_src = discriminator_loss(d_out[:n], SOURCE_LABEL, kind) / 2
        d_trg = discriminator_loss(d_out[n:], TARGET_LABEL, kind) / 2
        self.d_scaler.scale(d_src + d_trg).backward()
        self.d_scaler.step(self.d_optimizer)
        self.d_scaler.update()
        self.d_optimizer.zero_grad(set_to_none=True)
        return {"disc.src": d_src.detach(), "disc.trg": d_trg.detach()}

    def state_dict(self) -> dict[str, Any]:
        return super().state_dict() | {
            "discriminator": self.d_module.state_dict(),
            "discriminator_optimizer": self.d_optimizer.state_dict(),
            "discriminator_scaler": self.d_scaler.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.d_module.load_state_dict(state["discriminator"])
        self.d_optimizer.load_state_dict(state["discriminator_optimizer"])
        scaler = state.get("discriminator_scaler")  # empty when saved without fp16
        if scaler and self.d_scaler.is_enabled():
            self.d_scaler.load_state_dict(scaler)


class MICAdvSeg(MaskedConsistency, AdvSeg):
    """AdvSeg + MIC's masked image consistency, with an EMA teacher of MIC's own."""

    name = "mic"
    uses_teacher = True

    def train_step(self, batch: UDABatch, iteration: int) -> dict[str, torch.Tensor]:
        source = add_source_targets(self.plugins, batch.source)
        logs, source_probs = self._source_step_with_probs(source)
        target_logs, target_probs = self._adversarial_step(batch.target)
        logs |= target_logs | self._pseudo_labelled_masked_step(source, batch.target)
        logs |= self._discriminator_step(source_probs, target_probs, iteration)
        return logs

"""Domain generalisation: DAFormer's and HRDA's source step alone, with SHADE.

Hoyer et al., "Domain Adaptive and Generalizable Network Architectures and Training
Strategies for Semantic Image Segmentation", TPAMI 2023: HRDA's ``dg`` branch trains on the
source alone with DACS in ``source_only`` mode (``experiments.py:589-620``, ``dacs.py:
303-407``): no teacher, no target images; the source step of DAFormer (rare class sampling,
ImageNet feature distance on thing classes) or HRDA (multi-resolution crops), plus SHADE's
style hallucination and style consistency (``uda_methods.models.shade``). One iteration:

1. at iteration 0 and every ``method.style_interval``: base styles from the first-stage
   features of one pass over the source set (its training transforms, the model in eval
   mode; HRDA: the image at the context scale), ``StyleHallucination.set_styles``
2. source: the student's encoder runs each image twice after its first stage (own and
   hallucinated style), so every label and dense map is doubled; segmentation loss (+ HRDA's
   detail loss), feature distance (the ImageNet encoder sees the image twice), style
   consistency of the two halves' logits x ``style_consistency_lambda``, plugin losses;
   one backward of their sum (``share_src_backward``)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F

from uda_core.errors import UdaError
from uda_core.model import SegOutput
from uda_methods.methods.daformer import DAFormer
from uda_methods.methods.hooks import Batch, add_source_targets, plugin_logs
from uda_methods.methods.hrda import HRDA
from uda_methods.models.shade import StyleHallucination, style_statistics

StyleSource = Callable[[int], Iterable[torch.Tensor]]
"""Pass number -> the source set's normalised image batches, each image once, freshly
transformed for that pass."""


def style_consistency(logits: torch.Tensor) -> torch.Tensor:
    """SHADE's consistency of a 2B batch of logits, first half original, second half
    hallucinated (HRDA dg ``dacs.py:258-279``): with p, q their per-pixel softmax and
    m = clamp((p + q) / 2, 1e-7, 1), (KL(q || m) + KL(p || m)) / 2, each summed over classes
    and averaged over pixels (``kl_div(log m, ., 'batchmean')`` on pixels x classes)."""
    prob = F.softmax(logits.float(), dim=1)
    own, styled = (p.permute(0, 2, 3, 1).reshape(-1, p.shape[1]) for p in prob.chunk(2))
    log_mixture = ((own + styled) / 2).clamp(1e-7, 1).log()
    return (
        F.kl_div(log_mixture, styled, reduction="batchmean")
        + F.kl_div(log_mixture, own, reduction="batchmean")
    ) / 2


class _SourceOnlyDG:
    """The DG step over a DAFormer-family method (mixed in before it)."""

    needs_target = False
    uses_teacher = False
    trains_with_styles = True
    """The student's labels follow a style-hallucinating encoder's doubled batch."""

    def __init__(self, model, accelerator, cfg, plugins=None) -> None:
        super().__init__(model, accelerator, cfg, plugins)
        student = accelerator.unwrap_model(model)
        self.style: StyleHallucination | None = getattr(
            student.encoder, "style_hallucination", None
        )
        self.style_source: StyleSource | None = None
        """Set by ``uda_methods.run.build_trainer`` when the model hallucinates styles."""

    def train_step(self, batch, iteration: int) -> dict[str, torch.Tensor]:
        if self.style is not None and iteration % self.cfg.style_interval == 0:
            self._refresh_styles(iteration // self.cfg.style_interval)
        source = add_source_targets(self.plugins, batch.source)
        losses, output = self._source_losses(source)
        self.backward(sum(losses.values()))
        if self.debug:
            self.panels = {
                "source": source["image"],
                "source label": source["label"],
                "prediction": output.logits.argmax(1)[: len(source["image"])].detach(),
            }
        return {k: v.detach() for k, v in losses.items()} | plugin_logs(self.plugins)

    def _source_losses(self, source: Batch) -> tuple[dict[str, torch.Tensor], SegOutput]:
        losses, output = super()._source_losses(source)
        lam = self.cfg.style_consistency_lambda
        if lam > 0:
            losses["src.style_consistency"] = lam * style_consistency(output.logits)
        return losses, output

    def _loss_targets(self, batch: Batch) -> Batch:
        """Every map twice (original, hallucinated) while the encoder hallucinates styles."""
        if self.style is None or not self.style.training:
            return batch
        return {k: torch.cat((v, v)) for k, v in batch.items()}

    @torch.no_grad()
    def _refresh_styles(self, pass_number: int) -> None:
        """Base styles from one pass over the source set, the model in eval mode
        (``style_hallucination_hook.py:21-54``)."""
        if self.style_source is None:
            raise UdaError(
                f"method {self.name}: style hallucination needs the source set; build the "
                "method with uda_methods.run.build_trainer (it sets method.style_source)"
            )
        student = self.accelerator.unwrap_model(self.model)
        training = student.training
        student.eval()
        statistics = []
        with self.accelerator.autocast():
            for images in self.style_source(pass_number):
                images = self._feature_distance_input(images.to(self.accelerator.device))
                statistics.append(style_statistics(student.encoder, images).float())
        student.train(training)
        if not statistics:
            raise UdaError(
                f"method.style_batch_size: the source set has fewer images than "
                f"{self.cfg.style_batch_size}; no batch for the base styles"
            )
        self.style.set_styles(torch.cat(statistics))

    def after_optimizer_step(self, iteration: int) -> None:
        """No teacher to update."""


class DAFormerDG(_SourceOnlyDG, DAFormer):
    """DAFormer's source step alone (rare class sampling, feature distance), with SHADE."""

    name = "dg-daformer"


class HRDADG(_SourceOnlyDG, HRDA):
    """HRDA's multi-resolution source step alone (feature distance at the context scale),
    with SHADE on both scales' encoder passes."""

    name = "dg-hrda"

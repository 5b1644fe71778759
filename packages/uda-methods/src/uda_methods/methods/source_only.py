"""Source-only training: supervised cross-entropy on the labelled source domain."""

from __future__ import annotations

import torch

from uda_core.losses import seg_cross_entropy
from uda_core.method import Method, UDABatch
from uda_methods.methods.hooks import add_source_targets, plugin_losses


class SourceOnly(Method):
    """The lower bound every adaptation method is measured against (plugins still train)."""

    name = "source-only"
    needs_target = False

    def train_step(self, batch: UDABatch, iteration: int) -> dict[str, torch.Tensor]:
        source = add_source_targets(self.plugins, batch.source)
        output = self.model(source["image"])
        loss = seg_cross_entropy(output.logits, source["label"], mean_over=self.cfg.seg_loss_mean)
        losses = {"loss": loss}
        losses |= plugin_losses(self.plugins, output, source, None)
        self.backward(sum(losses.values()))
        return {k: v.detach() for k, v in losses.items()}  # read by the engine's loss log

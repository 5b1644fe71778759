"""Source-only training: supervised cross-entropy on the labelled source domain."""

from __future__ import annotations

from uda_core.losses import seg_cross_entropy
from uda_core.method import Method, UDABatch


class SourceOnly(Method):
    """The lower bound every adaptation method is measured against."""

    name = "source-only"
    needs_target = False

    def train_step(self, batch: UDABatch, iteration: int) -> dict[str, float]:
        output = self.model(batch.source["image"])
        loss = seg_cross_entropy(output.logits, batch.source["label"])
        self.accelerator.backward(loss)
        return {"loss": loss.item()}

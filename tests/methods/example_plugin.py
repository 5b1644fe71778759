"""A tiny plugin for the tests: an auxiliary depth-regression head.

It proves the plugin protocol is not dispersion-shaped: it needs depth, derives a dense
target, adds a head with outputs of its own and a loss, keeps state and draws a panel.
"""

from __future__ import annotations

from typing import ClassVar

import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn


class DepthHeadConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    weight: float = Field(0.5, gt=0, description="Loss weight of the depth regression.")


class DepthHead(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.predict = nn.Conv2d(channels, 1, 1)

    def forward(self, fused):
        return fused, {"depth": self.predict(fused)[:, 0]}


class DepthHeadPlugin:
    name = "depth-head"
    needs = frozenset({"depth"})
    dense_targets: ClassVar[dict[str, float]] = {"depth_norm": -1.0}

    def __init__(self, settings: dict) -> None:
        self.config = DepthHeadConfig(**settings)
        self.batches_seen = 0

    def build_head(self, channels: int, num_classes: int) -> nn.Module:
        return DepthHead(channels)

    def source_targets(self, source):
        return {"depth_norm": source["depth"] / 255.0}

    def target_targets(self, target, pseudo_label):
        return {"depth_norm": target["depth"] / 255.0}

    def adjust_weights(self, target, pseudo_label, weight):
        return weight

    def losses(self, output, targets, pixel_weight):
        self.batches_seen += 1
        truth = targets["depth_norm"]
        pred = F.interpolate(output.aux["depth"][:, None], truth.shape[-2:], mode="bilinear")[:, 0]
        valid = truth >= 0
        return {"depth": self.config.weight * (pred - truth).abs()[valid].mean()}

    def state_dict(self):
        return {"batches_seen": self.batches_seen}

    def load_state_dict(self, state):
        self.batches_seen = state["batches_seen"]

    def debug_panels(self, batch, output):
        return {"depth": output.aux["depth"]}


def create(settings: dict) -> DepthHeadPlugin:
    return DepthHeadPlugin(settings)

"""Calls into the plugins, shared by every method's step."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from uda_core.model import SegOutput
from uda_core.plugin import Plugin

Batch = dict[str, torch.Tensor]


def add_source_targets(plugins: Mapping[str, Plugin], source: Mapping[str, torch.Tensor]) -> Batch:
    out = dict(source)
    for plugin in plugins.values():
        out |= plugin.source_targets(out)
    return out


def add_target_targets(
    plugins: Mapping[str, Plugin], target: Mapping[str, torch.Tensor], pseudo_label: torch.Tensor
) -> Batch:
    out = dict(target)
    for plugin in plugins.values():
        out |= plugin.target_targets(out, pseudo_label)
    return out


def adjust_weights(
    plugins: Mapping[str, Plugin], target: Batch, pseudo_label: torch.Tensor, weight: torch.Tensor
) -> torch.Tensor:
    for plugin in plugins.values():
        weight = plugin.adjust_weights(target, pseudo_label, weight)
    return weight


def plugin_losses(
    plugins: Mapping[str, Plugin],
    output: SegOutput,
    targets: Mapping[str, torch.Tensor],
    pixel_weight: torch.Tensor | None,
    prefix: str = "",
) -> dict[str, torch.Tensor]:
    losses = {}
    for name, plugin in plugins.items():
        for key, value in plugin.losses(output, targets, pixel_weight).items():
            losses[f"{prefix}{name}.{key}"] = value
    return losses


def plugin_logs(plugins: Mapping[str, Plugin]) -> dict[str, torch.Tensor | float]:
    """Scalars from plugins with the optional ``log_values`` hook, prefixed by their names."""
    logs = {}
    for name, plugin in plugins.items():
        if hasattr(plugin, "log_values"):
            logs |= {f"{name}.{k}": v for k, v in plugin.log_values().items()}
    return logs

"""The plugin protocol: how an add-on method (such as dispersion) takes part in self-training.

A plugin is a separately installed package that registers a factory under the entry-point
group ``uda.plugins``::

    [project.entry-points."uda.plugins"]
    depth-head = "my_package:create"

``create(settings: dict) -> Plugin`` validates ``settings`` with the plugin's own pydantic
model (``Plugin.config``) and returns the plugin. The protocol is structural: a plugin does
not import ``uda_core``.

Where each hook runs in one self-training iteration:

1. ``source_targets(source)``: dense targets from ground truth (and e.g. depth), added to the
   source batch under the names in ``dense_targets``.
2. The student runs with the plugin's head attached (``build_head``); ``losses`` adds terms
   on the head's outputs and the source targets.
3. The teacher predicts pseudo-labels on the target; ``target_targets`` derives dense
   targets from them; ``adjust_weights`` then changes their pixel-weight map (the target
   batch it gets holds those dense targets).
4. The core crops, mixes (ClassMix) and masks those targets exactly like labels, each with
   its own ignore value; ``losses`` runs again on the mixed (and masked) batches.
5. ``state_dict`` is checkpointed; ``debug_panels`` adds pictures to the debug images.

Two hooks are optional: ``prepare(context)`` runs once before training (on the main process
first) with a ``PrepareContext``, for plugins that need a component of their own trained or
loaded (dispersion's auxiliary network); ``log_values()`` adds scalars to each iteration's log.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from pydantic import BaseModel, ValidationError
from torch import nn

from uda_core.config import describe_validation_error
from uda_core.errors import UdaError
from uda_core.model import SegOutput

PLUGIN_GROUP = "uda.plugins"


@runtime_checkable
class Head(Protocol):
    """A module on the decoder's fused features (B x C x h x w).

    Returns the features the segmentation classifier should use (refined or unchanged) and
    the head's own outputs by name (they land in ``SegOutput.aux``).

    An output named ``"logits"`` (B x num_classes x h x w) is the segmentation itself: the
    model uses it as ``SegOutput.logits`` in place of the decoder's classifier, which then does
    not run, and it is not kept in ``aux``. Heads that make the final segmentation from
    features of their own (the published dispersion head) return it; the others leave it out.
    Under HRDA ``logits`` is fused with the scale attention; the other outputs come, as
    published, from the context pass upsampled to the fused grid, or are fused the same way
    (``method.hrda_aux_fusion``); each branch's own stay in ``HRDAOutput.context``/``.detail``.
    """

    def __call__(self, fused: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]: ...


@runtime_checkable
class Plugin(Protocol):
    """What a plugin provides. Every hook may be a no-op."""

    name: str
    config: BaseModel
    """The plugin's validated settings; saved in the run config under ``plugins.<name>``."""

    needs: frozenset[str]
    """Inputs the loaders must provide, e.g. ``{"depth"}``; nothing else is loaded for it."""

    dense_targets: Mapping[str, float]
    """Names of the dense targets it derives, each with the ignore value used to pad them."""

    def build_head(self, channels: int, num_classes: int) -> nn.Module | None:
        """A ``Head`` on the fused features (``channels`` wide), or None."""

    def source_targets(self, source: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Dense targets (B x H x W) for the labelled source batch (``image``, ``label``, ...)."""

    def target_targets(
        self, target: Mapping[str, torch.Tensor], pseudo_label: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Dense targets (B x H x W) for the target batch from the teacher's pseudo-labels."""

    def adjust_weights(
        self, target: Mapping[str, torch.Tensor], pseudo_label: torch.Tensor, weight: torch.Tensor
    ) -> torch.Tensor:
        """The pseudo-labels' pixel-weight map (B x H x W), changed or returned as it is."""

    def losses(
        self,
        output: SegOutput,
        targets: Mapping[str, torch.Tensor],
        pixel_weight: torch.Tensor | None,
    ) -> dict[str, torch.Tensor]:
        """Loss terms (already weighted) on the head's outputs in ``output.aux``.

        ``targets`` holds the batch's dense maps (label, the plugin's targets, ...) at image
        resolution; ``pixel_weight`` is None on source batches.
        """

    def state_dict(self) -> dict[str, Any]:
        """State to checkpoint besides the head's weights (which live in the model)."""

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned."""

    def debug_panels(
        self, batch: Mapping[str, torch.Tensor], output: SegOutput
    ) -> dict[str, torch.Tensor]:
        """Pictures for the debug image: B x H x W maps or B x 3 x H x W images, by title."""


@dataclass
class PrepareContext:
    """What the run offers a plugin's ``prepare`` hook: data streams, a cache and a device."""

    source_batches: Callable[[int, int, int], Iterator[dict[str, torch.Tensor]]]
    """``(batch_size, start, stop)``: labelled source batches (``image``, ``label`` and the
    inputs the plugin needs) for iterations ``start`` to ``stop``, the same on every call."""
    val_batches: Callable[[], Iterable[dict[str, torch.Tensor]]]
    """Labelled target validation batches, ``label`` at the size of the other maps."""
    cache_dir: Path
    data_key: str
    """Identifies the datasets and transforms behind the streams, for cache keys."""
    device: torch.device
    log: Callable[[str], None]
    progress: Callable[[int, int, float], None] | None = None
    """``(done, total, loss)`` after each step of a long preparation."""


def available_plugins() -> dict[str, Any]:
    """Installed plugins by name (entry points of the group ``uda.plugins``)."""
    return {ep.name: ep for ep in entry_points(group=PLUGIN_GROUP)}


def load_plugin(name: str, settings: dict[str, Any]) -> Plugin:
    """Create the plugin ``name`` from its settings; unknown names list the installed ones."""
    found = available_plugins()
    if name not in found:
        listed = ", ".join(sorted(found)) or "none installed"
        raise UdaError(f"unknown plugin {name!r}; available: {listed}")
    try:
        plugin = found[name].load()(dict(settings))
    except ValidationError as exc:
        raise UdaError(f"config: {describe_validation_error(exc, f'plugins.{name}.')}") from None
    missing = [m for m in ("build_head", "source_targets", "losses") if not hasattr(plugin, m)]
    if missing:
        raise UdaError(f"plugin {name!r} does not implement {', '.join(missing)}")
    return plugin


def load_plugins(settings: Mapping[str, dict[str, Any]]) -> dict[str, Plugin]:
    return {name: load_plugin(name, values) for name, values in settings.items()}

"""The contract between the training engine and a UDA strategy (source-only, DAFormer, ...)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from accelerate import Accelerator
from torch import nn

from uda_core.plugin import Plugin


@dataclass
class UDABatch:
    """One iteration's data: a labelled source batch and, for adaptation, a target batch.

    Each side maps names to batched tensors: ``image`` (B x 3 x H x W, normalised) and dense
    maps aligned with it (``label`` B x H x W with 255 = ignore, ``depth`` B x H x W, ...).
    """

    source: dict[str, torch.Tensor]
    target: dict[str, torch.Tensor] | None = None

    def to(self, device: torch.device) -> UDABatch:
        def move(side):
            return (
                None
                if side is None
                else {k: v.to(device, non_blocking=True) for k, v in side.items()}
            )

        return UDABatch(move(self.source), move(self.target))


class Method(ABC):
    """A training strategy. The engine owns the optimiser; the method owns what one step does.

    ``train_step`` runs the forward passes and calls ``backward`` on each pass's loss (it may
    call it several times, gradients accumulate); the engine then calls ``finish_backward``,
    clips, steps the optimiser and the schedule, and calls ``after_optimizer_step`` (EMA
    updates go there).
    """

    name: ClassVar[str]
    needs_target: ClassVar[bool] = True
    uses_rcs: ClassVar[bool] = False
    """Sample the source with rare class sampling when the data config enables it."""

    def __init__(
        self,
        model: nn.Module,
        accelerator: Accelerator,
        cfg: Any = None,
        plugins: Mapping[str, Plugin] | None = None,
    ) -> None:
        self.model = model
        self.accelerator = accelerator
        self.cfg = cfg
        self.plugins = dict(plugins or {})
        self.debug = False
        self.panels: dict[str, torch.Tensor] = {}
        """Pictures of the last step, filled when the engine sets ``debug`` before a step."""
        self.backward_once = False
        """``runtime.backward: once``: ``backward`` sums the step's losses and
        ``finish_backward`` runs one backward pass over their sum (set by the engine)."""
        self._pending: torch.Tensor | None = None

    def backward(self, loss: torch.Tensor) -> None:
        """Backward of one pass's loss: at once (``runtime.backward: per-pass``, the
        reference's order, each pass's graph freed after it), or added to the step's sum for
        ``finish_backward`` (``once``: the same gradients up to float rounding; each weight's
        gradient accumulated and cast once instead of once per pass; every pass's activations
        held until the end of the step)."""
        if not self.backward_once:
            self.accelerator.backward(loss)
        elif self._pending is None:
            self._pending = loss
        else:
            self._pending = self._pending + loss

    def finish_backward(self) -> None:
        """The deferred backward of ``runtime.backward: once`` (nothing to do otherwise)."""
        if self._pending is not None:
            pending, self._pending = self._pending, None
            self.accelerator.backward(pending)

    @abstractmethod
    def train_step(self, batch: UDABatch, iteration: int) -> dict[str, torch.Tensor | float]:
        """Forward and backward for one iteration; returns scalar logs by name, as detached
        0-dim tensors (``loss.detach()``, not ``loss.item()``: reading a value on the host
        waits for the device; the engine reads them every ``runtime.log_interval``)."""

    def after_optimizer_step(self, iteration: int) -> None:  # noqa: B027 (optional hook)
        """Called after each optimiser step."""

    def frozen_modules(self) -> list[nn.Module]:
        """The networks besides the student that each step runs (an EMA teacher, a frozen
        ImageNet encoder): ``runtime.compile`` compiles them too."""
        return []

    def eval_model(self) -> nn.Module:
        """The network that evaluation and the saved "model" weights use."""
        return self.model

    def state_dict(self) -> dict[str, Any]:
        """Extra state to checkpoint (e.g. the EMA teacher), plugins' state included."""
        return {"plugins": {n: p.state_dict() for n, p in self.plugins.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned."""
        for name, plugin_state in state.get("plugins", {}).items():
            if name in self.plugins:
                self.plugins[name].load_state_dict(plugin_state)

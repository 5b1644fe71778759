"""The mean teacher: an exponential moving average of the student that makes pseudo-labels."""

from __future__ import annotations

import copy
from typing import Literal

import torch
from accelerate import PartialState
from accelerate.utils import reduce
from torch import nn

_STOCHASTIC = (nn.modules.dropout._DropoutNd,)


def is_stochastic(module: nn.Module) -> bool:
    """Dropout of any kind or timm's stochastic depth (``DropPath``, which has no common base
    class with dropout: matched by name)."""
    return isinstance(module, _STOCHASTIC) or type(module).__name__ == "DropPath"


@torch.no_grad()
def average_buffers(module: nn.Module) -> None:
    """Average the floating buffers (BatchNorm statistics) of ``module`` over all processes.

    Data-parallel replicas normalise different batches, so their running statistics drift
    apart while their parameters stay equal; averaging after each step keeps them equal too.
    A no-op in a single process.
    """
    if PartialState().num_processes == 1:
        return
    buffers = [b for b in module.buffers() if b.dtype.is_floating_point]
    if not buffers:
        return
    mean = reduce(torch.cat([b.reshape(-1).float() for b in buffers]), "mean")
    for buffer, value in zip(buffers, mean.split([b.numel() for b in buffers]), strict=True):
        buffer.copy_(value.view_as(buffer))


class EMATeacher(nn.Module):
    """A frozen copy of the student, updated as ``teacher = a * teacher + (1 - a) * student``.

    ``a_t = min(1 - 1 / (t + 1), alpha)``: early on the teacher follows the student closely,
    later it averages over about ``1 / (1 - alpha)`` steps. Parameters are averaged in place.
    ``buffers``: ``own`` leaves the teacher's buffers (BatchNorm statistics) to its own forward
    passes (the reference averages parameters only, MIC 2f932a9
    ``seg/mmseg/models/uda/dacs.py:122-135``); ``average`` averages the floating ones like the
    parameters and copies the integer ones. Dropout and
    drop-path are off in the teacher; normalisation layers keep the student's mode, as in
    DACS/DAFormer. With several processes the teacher's buffers, which its own forward passes
    in training mode update on each process's batch, are averaged after each update, so every
    process keeps the same teacher.
    """

    def __init__(
        self,
        student: nn.Module,
        alpha: float = 0.999,
        buffers: Literal["average", "own"] = "average",
    ) -> None:
        super().__init__()
        if not 0.0 <= alpha < 1.0:
            raise ValueError(f"EMA alpha must be in [0, 1), got {alpha}")
        self.alpha = alpha
        self.buffers_mode = buffers
        self.model = copy.deepcopy(student)
        self.model.requires_grad_(False)
        self._silence_stochastic_layers()

    def _silence_stochastic_layers(self) -> None:
        for module in self.model.modules():
            if is_stochastic(module):
                module.eval()

    def train(self, mode: bool = True) -> EMATeacher:
        super().train(mode)
        self._silence_stochastic_layers()
        return self

    def alpha_at(self, step: int) -> float:
        return min(1.0 - 1.0 / (step + 1), self.alpha)

    @torch.no_grad()
    def update(self, student: nn.Module, step: int) -> None:
        """Blend the student in after its ``step``-th update (1 for the first).

        Multi-tensor (``torch._foreach_*``) operations over all parameters at once: a handful
        of dispatches instead of two per tensor, the same arithmetic as a per-tensor
        ``t.mul_(a).add_(s, alpha=1 - a)``.
        """
        a = self.alpha_at(step)
        pairs = list(zip(self.model.parameters(), student.parameters(), strict=True))
        if self.buffers_mode == "average":
            buffers = list(zip(self.model.buffers(), student.buffers(), strict=True))
            pairs += [(t, s) for t, s in buffers if t.dtype.is_floating_point]
            counters = [(t, s) for t, s in buffers if not t.dtype.is_floating_point]
            if counters:
                torch._foreach_copy_([t for t, _ in counters], [s for _, s in counters])
        teacher = [t for t, _ in pairs]
        torch._foreach_mul_(teacher, a)
        torch._foreach_add_(teacher, [s for _, s in pairs], alpha=1.0 - a)  # under no_grad
        average_buffers(self.model)

    @torch.no_grad()
    def forward(self, image: torch.Tensor):
        return self.model(image)

"""Reading encoder checkpoints, renaming foreign keys, loading with every key and shape checked.

A wrong file should fail at once with the key that does not fit, not train from a half-loaded
backbone. Keys of layers the encoder does not have at all (the ImageNet classifier, which
``features_only`` removes) are ignored; everything else must match exactly.

Foreign names (SegFormer's, the published mmseg checkpoints') are renamed by ``KeyRule``s:
templates such as ``("block1.{j}.{rest}", "stages_0.blocks.{j}.{rest}")`` that read both ways,
so a loader can also say which foreign key it lacks for one of ours.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import torch
from torch import nn

from uda_core.checkpoint import read_weights_only
from uda_core.errors import UdaError


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint file, unwrapped from a ``state_dict`` or ``model`` entry."""
    state = read_weights_only(path, "model.pretrained: encoder weights")
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not state:
        raise UdaError(f"model.pretrained: {path} holds no state dict")
    return state


def load_checked(module: nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    """Load ``state`` into ``module``; raise a one-line UdaError at the first key that differs."""
    expected = module.state_dict()
    children = {name for name, _ in module.named_children()}
    for key, value in expected.items():
        if key.endswith("num_batches_tracked") and key not in state:
            continue  # older torchvision checkpoints lack these counters
        if key not in state:
            raise UdaError(
                f"model.pretrained: {path} lacks {key!r} (expected shape {list(value.shape)})"
            )
        if state[key].shape != value.shape:
            raise UdaError(
                f"model.pretrained: {path}: {key!r} has shape {list(state[key].shape)}, "
                f"expected {list(value.shape)}"
            )
    for key in state:
        if key not in expected and key.split(".")[0] in children:
            raise UdaError(
                f"model.pretrained: {path} has {key!r}, which {type(module).__name__} lacks"
            )
    module.load_state_dict({k: v for k, v in state.items() if k in expected}, strict=False)


@dataclass(frozen=True)
class KeyRule:
    """A renaming between two key templates. ``{rest}`` stands for the rest of a key (dots
    included), any other ``{name}`` for one dot-free part; the same names appear on both sides."""

    theirs: str
    ours: str

    @staticmethod
    def _pattern(template: str) -> re.Pattern[str]:
        parts = re.split(r"\{(\w+)\}", template)
        regex = "".join(
            re.escape(part) if i % 2 == 0 else f"(?P<{part}>{'.+' if part == 'rest' else '[^.]+'})"
            for i, part in enumerate(parts)
        )
        return re.compile(regex)

    @cached_property
    def _theirs(self) -> re.Pattern[str]:
        return self._pattern(self.theirs)

    @cached_property
    def _ours(self) -> re.Pattern[str]:
        return self._pattern(self.ours)

    def to_ours(self, key: str) -> str | None:
        match = self._theirs.fullmatch(key)
        return None if match is None else self.ours.format(**match.groupdict())

    def to_theirs(self, key: str) -> str | None:
        match = self._ours.fullmatch(key)
        return None if match is None else self.theirs.format(**match.groupdict())


def rename(key: str, rules: Sequence[KeyRule], inverse: bool = False) -> str | None:
    """``key`` renamed by the first rule that matches it (ours -> theirs with ``inverse``)."""
    for rule in rules:
        renamed = rule.to_theirs(key) if inverse else rule.to_ours(key)
        if renamed is not None:
            return renamed
    return None

"""The names users type, mapped to plain constructors. Add a model or a method here."""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import entry_points

import timm
from torch import nn

from uda_core.errors import UdaError
from uda_core.method import Method
from uda_methods.config import ModelConfig
from uda_methods.methods.source_only import SourceOnly
from uda_methods.models.light import LightDecoder, Segmenter, TimmEncoder, load_encoder_weights

METHODS: dict[str, type[Method]] = {
    "source-only": SourceOnly,
}


def _light(cfg: ModelConfig, num_classes: int) -> nn.Module:
    encoder = TimmEncoder(cfg.encoder)
    if cfg.pretrained is not None:
        load_encoder_weights(encoder, cfg.pretrained)
    return Segmenter(
        encoder, LightDecoder(encoder.channels, num_classes, cfg.channels, cfg.dropout)
    )


DECODERS: dict[str, Callable[[ModelConfig, int], nn.Module]] = {
    "light": _light,
}

PLUGIN_GROUP = "uda.plugins"


def _unknown(kind: str, name: str, known) -> UdaError:
    listed = ", ".join(sorted(known)) or "none installed"
    return UdaError(f"unknown {kind} {name!r}; available: {listed}")


def method_class(name: str) -> type[Method]:
    if name not in METHODS:
        raise _unknown("method", name, METHODS)
    return METHODS[name]


def build_model(cfg: ModelConfig, num_classes: int) -> nn.Module:
    if cfg.decoder not in DECODERS:
        raise _unknown("decoder", cfg.decoder, DECODERS)
    if not timm.is_model(cfg.encoder):
        raise UdaError(
            f"model.encoder: {cfg.encoder!r} is not a timm model; see timm.list_models()"
        )
    return DECODERS[cfg.decoder](cfg, num_classes)


def available_plugins() -> dict[str, object]:
    return {ep.name: ep for ep in entry_points(group=PLUGIN_GROUP)}


def check_plugins(names: list[str]) -> None:
    found = available_plugins()
    for name in names:
        if name not in found:
            raise _unknown("plugin", name, found)

"""The names users type, mapped to plain constructors. Add a model or a method here."""

from __future__ import annotations

from collections.abc import Callable

import timm
from torch import nn

from uda_core.errors import UdaError
from uda_core.method import Method
from uda_methods.config import MethodConfig, ModelConfig
from uda_methods.methods.advseg import AdvSeg, MICAdvSeg
from uda_methods.methods.daformer import DACS, DAFormer
from uda_methods.methods.dg import HRDADG, DAFormerDG
from uda_methods.methods.hrda import HRDA
from uda_methods.methods.mic import MIC
from uda_methods.methods.minent import MICMinEnt, MinEnt
from uda_methods.methods.source_only import SourceOnly
from uda_methods.models.daformer import DAFormerDecoder
from uda_methods.models.deeplabv2 import (
    DeepLabV2Attention,
    DeepLabV2Decoder,
    resnet101,
    resnet101_v1c,
)
from uda_methods.models.hrda import HRDASegmenter
from uda_methods.models.light import LightDecoder, TimmEncoder
from uda_methods.models.mit import mit_b0, mit_b1, mit_b2, mit_b3, mit_b4, mit_b5
from uda_methods.models.segmenter import Segmenter
from uda_methods.models.shade import attach_style_hallucination, keep_styles_per_process

METHODS: dict[str, type[Method]] = {
    "source-only": SourceOnly,
    "dacs": DACS,
    "daformer": DAFormer,
    "hrda": HRDA,
    "mic": MIC,
    "advseg": AdvSeg,
    "minent": MinEnt,
    "dg-daformer": DAFormerDG,
    "dg-hrda": HRDADG,
}


def _mit(constructor: Callable[..., TimmEncoder]) -> Callable[[ModelConfig], TimmEncoder]:
    def build(cfg: ModelConfig) -> TimmEncoder:
        if cfg.timm_pretrained:
            raise UdaError(
                "model.timm_pretrained: timm's pvt_v2 weights are PVTv2's, not SegFormer's MiT; "
                f"set model.pretrained to SegFormer's {cfg.encoder}.pth instead"
            )
        return constructor(drop_path_rate=cfg.drop_path_rate)

    return build


ENCODERS: dict[str, Callable[[ModelConfig], TimmEncoder]] = {
    "mit_b0": _mit(mit_b0),
    "mit_b1": _mit(mit_b1),
    "mit_b2": _mit(mit_b2),
    "mit_b3": _mit(mit_b3),
    "mit_b4": _mit(mit_b4),
    "mit_b5": _mit(mit_b5),
    "resnet101": lambda cfg: resnet101(pretrained=cfg.timm_pretrained),
    "resnet101_v1c": lambda cfg: resnet101_v1c(pretrained=cfg.timm_pretrained),
}


def build_encoder(cfg: ModelConfig) -> TimmEncoder:
    """The encoder named by ``cfg.encoder`` (``ENCODERS`` or any timm model), weights loaded."""
    if cfg.encoder in ENCODERS:
        encoder = ENCODERS[cfg.encoder](cfg)
    elif timm.is_model(cfg.encoder):
        encoder = TimmEncoder(cfg.encoder, pretrained=cfg.timm_pretrained)
    else:
        raise UdaError(
            f"model.encoder: {cfg.encoder!r} is not a timm model nor one of "
            f"{', '.join(ENCODERS)}; see timm.list_models()"
        )
    if cfg.pretrained is not None:
        encoder.load_pretrained(cfg.pretrained)
    if cfg.style_hallucination is not None:
        attach_style_hallucination(encoder, cfg.style_hallucination)
    return encoder


def _light(cfg: ModelConfig, num_classes: int) -> nn.Module:
    encoder = build_encoder(cfg)
    decoder = LightDecoder(encoder.channels, num_classes, cfg.channels or 128, cfg.dropout)
    return Segmenter(encoder, decoder)


def _daformer(cfg: ModelConfig, num_classes: int) -> nn.Module:
    encoder = build_encoder(cfg)
    decoder = DAFormerDecoder(
        encoder.channels, num_classes, cfg.channels or 256, cfg.dropout, init=cfg.decoder_init
    )
    return Segmenter(encoder, decoder)


def _deeplabv2(cfg: ModelConfig, num_classes: int) -> nn.Module:
    if cfg.channels is not None:
        raise UdaError(
            "model.channels: deeplabv2 has no decoder width (it classifies the encoder's "
            "last map); leave it unset"
        )
    encoder = build_encoder(cfg)
    decoder = DeepLabV2Decoder(encoder.channels, num_classes, cfg.deeplabv2_dilations)
    return Segmenter(encoder, decoder)


DECODERS: dict[str, Callable[[ModelConfig, int], nn.Module]] = {
    "light": _light,
    "daformer": _daformer,
    "deeplabv2": _deeplabv2,
}


def _unknown(kind: str, name: str, known) -> UdaError:
    listed = ", ".join(sorted(known)) or "none installed"
    return UdaError(f"unknown {kind} {name!r}; available: {listed}")


MIC_ON: dict[str, type[Method]] = {
    "hrda": MIC,
    "daformer": MIC,
    "advseg": MICAdvSeg,
    "minent": MICMinEnt,
}
"""``--method mic`` by ``method.mic_base``: MIC's class for each method it extends."""


def method_class(name: str, mic_base: str = "hrda") -> type[Method]:
    """The class of ``--method name`` (for ``mic``, the one extending ``mic_base``)."""
    if name not in METHODS:
        raise _unknown("method", name, METHODS)
    return MIC_ON[mic_base] if name == "mic" else METHODS[name]


def build_model(cfg: ModelConfig, num_classes: int) -> nn.Module:
    """The model named by ``cfg.encoder`` + ``cfg.decoder``, its encoder weights loaded."""
    if cfg.decoder not in DECODERS:
        raise _unknown("decoder", cfg.decoder, DECODERS)
    if cfg.pretrained is not None and cfg.timm_pretrained:
        raise UdaError("model.pretrained and model.timm_pretrained: set one source of weights")
    return DECODERS[cfg.decoder](cfg, num_classes)


def build_method_model(cfg: ModelConfig, method: MethodConfig, num_classes: int) -> nn.Module:
    """``build_model``, wrapped in HRDA's multi-resolution model when the method trains one;
    with ``method.style_images: process-share``, each process keeps its own base styles."""
    model = build_model(cfg, num_classes)
    if method.multi_resolution:
        model = _multi_resolution(model, cfg, method, num_classes)
    if method.style_images == "process-share":
        keep_styles_per_process(model)
    return model


def _multi_resolution(
    model: nn.Module, cfg: ModelConfig, method: MethodConfig, num_classes: int
) -> HRDASegmenter:
    attention = None
    if cfg.decoder == "deeplabv2":
        out = num_classes if method.hrda_attention_classwise else 1
        attention = DeepLabV2Attention(model.encoder.channels, out, cfg.deeplabv2_dilations)
    return HRDASegmenter(
        model,
        num_classes,
        context_scale=method.hrda_context_scale,
        detail_crop=method.hrda_detail_crop,
        attention_channels=method.hrda_attention_channels,
        attention_classwise=method.hrda_attention_classwise,
        slide_stride=method.hrda_slide_stride,
        batched_slide=method.hrda_batched_slide,
        shared_encoder_pass=method.hrda_shared_encoder_pass,
        dropout=cfg.dropout,
        fusion=method.hrda_fusion,
        aux_fusion=method.hrda_aux_fusion,
        attention_init="pytorch" if cfg.decoder_init == "pytorch" else "mmcv",
        attention=attention,
    )

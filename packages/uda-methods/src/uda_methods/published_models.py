"""The published DAFormer, HRDA, MIC and dispersion checkpoints as our models.

The published files (lhoyer/DAFormer, lhoyer/HRDA, lhoyer/MIC, uda-segmentation/Dispersion;
mmsegmentation 0.x) hold the segmentor's state under mmseg's names. Here:

- ``published_state_to_ours(state, family, model, plugins)`` renames a segmentor state (its
  keys without the top-level ``model.``) to ``model``'s keys by the explicit rules below, every
  key and shape checked;
- ``published_run_config(family, encoder, dataset)`` is the run config whose model is the
  published network of that family and whose eval settings are the reference test path's;
- ``published_test_logits(model, image, cfg)`` is the reference test path itself (``test.py``
  -> ``EncoderDecoder.inference``) for one normalized image: logits before the softmax at the
  image's size.

Families: ``daformer``, ``hrda`` (MIC has HRDA's keys), ``dispersion_daformer`` and
``dispersion_hrda`` (Dispersion's ``DispDAFormerHead``, alone or as HRDA's head).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from uda_core.config import merge, validate
from uda_core.errors import UdaError
from uda_core.evaluation import predict_logits
from uda_methods.config import RunConfig
from uda_methods.models.mit import SEGFORMER_KEYS
from uda_methods.models.weights import KeyRule, rename
from uda_methods.presets import plugin_profile, preset
from uda_methods.run import with_plugins

Family = Literal["daformer", "hrda", "dispersion_daformer", "dispersion_hrda"]
FAMILIES: tuple[str, ...] = ("daformer", "hrda", "dispersion_daformer", "dispersion_hrda")

DAFORMER_HEAD_KEYS: tuple[KeyRule, ...] = (
    KeyRule("embed_layers.{i}.proj.{p}", "embed.{i}.{p}"),
    KeyRule("fuse_layer.aspp_modules.0.conv.{p}", "aspp.branches.0.0.{p}"),
    KeyRule("fuse_layer.aspp_modules.0.bn.{p}", "aspp.branches.0.1.{p}"),
    KeyRule("fuse_layer.aspp_modules.{i}.depthwise_conv.conv.{p}", "aspp.branches.{i}.0.0.{p}"),
    KeyRule("fuse_layer.aspp_modules.{i}.depthwise_conv.bn.{p}", "aspp.branches.{i}.0.1.{p}"),
    KeyRule("fuse_layer.aspp_modules.{i}.pointwise_conv.conv.{p}", "aspp.branches.{i}.1.0.{p}"),
    KeyRule("fuse_layer.aspp_modules.{i}.pointwise_conv.bn.{p}", "aspp.branches.{i}.1.1.{p}"),
    KeyRule("fuse_layer.bottleneck.conv.{p}", "aspp.bottleneck.0.{p}"),
    KeyRule("fuse_layer.bottleneck.bn.{p}", "aspp.bottleneck.1.{p}"),
    KeyRule("conv_seg.{p}", "classifier.{p}"),
)
"""``DAFormerHead`` (and the host part of ``DispDAFormerHead``) -> ``DAFormerDecoder``: the
level embeddings, the separable ASPP (branch 0 a 1x1 ``ConvModule``, branches 1-3 depthwise +
pointwise ``ConvModule``s), its 3x3 bottleneck, and ``conv_seg``. In the dispersion head
``conv_seg`` exists but is unused; it fills our decoder's classifier, which is unused there
too."""

SCALE_ATTENTION_KEYS: tuple[KeyRule, ...] = (
    KeyRule("embed_layers.{i}.proj.{p}", "embed.{i}.{p}"),
    KeyRule("fuse_layer.conv.{p}", "fuse.0.{p}"),
    KeyRule("fuse_layer.bn.{p}", "fuse.1.{p}"),
    KeyRule("conv_seg.{p}", "classifier.{p}"),
)
"""HRDA's scale attention (a ``DAFormerHead`` with a 1x1 ``ConvModule`` fusion) ->
``ScaleAttentionHead``."""

DISPERSION_HEAD_PARTS = ("initial_task_prediction_heads.", "multi_modal_distillation.", "heads.")
"""Keys of ``DispDAFormerHead`` that belong to the dispersion plugin's head; the plugin's
``published_head_state`` renames them (relative to the ``DispDAFormerHead``)."""

PLUGIN_HEAD_PREFIX = "heads.dispersion."
SKIPPED_PREFIXES = ("auxiliary_net.",)
"""Keys the test path never reads: the dispersion files' frozen auxiliary network."""

_BACKBONE = ("backbone.", "encoder.body.", SEGFORMER_KEYS)


def _parts(family: str) -> tuple[tuple[str, str, tuple[KeyRule, ...]], ...]:
    """(published prefix, our prefix, rules) of each part of the family's segmentor."""
    if family in ("daformer", "dispersion_daformer"):
        return (_BACKBONE, ("decode_head.", "decoder.", DAFORMER_HEAD_KEYS))
    return (
        _BACKBONE,
        ("decode_head.head.", "decoder.", DAFORMER_HEAD_KEYS),
        ("decode_head.scale_attention.", "scale_attention.", SCALE_ATTENTION_KEYS),
    )


def _our_key(key: str, parts) -> str | None:
    for theirs, ours, rules in parts:
        if key.startswith(theirs):
            renamed = rename(key[len(theirs) :], rules)
            return None if renamed is None else ours + renamed
    return None


def _published_key(key: str, parts) -> str | None:
    for theirs, ours, rules in parts:
        if key.startswith(ours):
            renamed = rename(key[len(ours) :], rules, inverse=True)
            return None if renamed is None else theirs + renamed
    return None


def _check(where: str, name: str, ours: str, value: torch.Tensor, expected) -> None:
    """``name``: the published tensor as the message shows it."""
    if ours not in expected:
        raise UdaError(
            f"{where}: {name} would be our {ours!r}, which this model lacks; the file is of "
            "another model (family, encoder size, number of classes)"
        )
    if tuple(value.shape) != tuple(expected[ours].shape):
        raise UdaError(
            f"{where}: {name} has shape {list(value.shape)}, expected "
            f"{list(expected[ours].shape)} (our {ours!r}); the file is of another encoder size "
            "or number of classes"
        )


def _counter_shape(ours: str, value: torch.Tensor, expected) -> torch.Tensor:
    """A BatchNorm counter as our scalar: files written from numpy can hold it as shape [1]."""
    if ours.endswith("num_batches_tracked") and ours in expected and value.numel() == 1:
        return value.reshape(expected[ours].shape)
    return value


def published_state_to_ours(
    state: Mapping[str, torch.Tensor],
    family: str,
    model: nn.Module,
    plugins: Mapping[str, object] | None = None,
    where: str = "published checkpoint",
) -> dict[str, torch.Tensor]:
    """``model``'s state dict from a published segmentor ``state`` (keys without ``model.``).

    Every key of ``state`` must fit a rule of the family and the key and shape of ``model``
    it names (``auxiliary_net.*`` is skipped); every key of ``model`` must be filled (a missing
    BatchNorm ``num_batches_tracked``, which the test path never reads, counts 0). For the
    dispersion families the head's keys go through ``plugins["dispersion"]``'s
    ``published_head_state``. Raises ``UdaError`` naming the first key that does not fit.
    """
    if family not in FAMILIES:
        raise UdaError(f"{where}: unknown family {family!r}; one of {', '.join(FAMILIES)}")
    parts = _parts(family)
    expected = model.state_dict()
    head_prefix = "decode_head." if family == "dispersion_daformer" else "decode_head.head."
    dispersion = family.startswith("dispersion")
    out: dict[str, torch.Tensor] = {}
    plugin_state: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.startswith(SKIPPED_PREFIXES):
            continue
        relative = key[len(head_prefix) :] if key.startswith(head_prefix) else ""
        if dispersion and relative.startswith(DISPERSION_HEAD_PARTS):
            plugin_state[relative] = value
            continue
        ours = _our_key(key, parts)
        if ours is None:
            prefixes = ", ".join(f"{theirs}*" for theirs, _, _ in parts)
            if dispersion:
                prefixes += ", " + ", ".join(f"{head_prefix}{p}*" for p in DISPERSION_HEAD_PARTS)
            raise UdaError(
                f"{where}: {key!r} is no tensor of a published {family} model "
                f"(expected {prefixes} under mmseg's names)"
            )
        value = _counter_shape(ours, value, expected)
        _check(where, repr(key), ours, value, expected)
        out[ours] = value
    if dispersion:
        plugin = (plugins or {}).get("dispersion")
        if plugin is None or not hasattr(plugin, "published_head_state"):
            raise UdaError(
                f"{where}: a {family} model needs the dispersion plugin "
                "(uda-dispersion, with published_head_state) to load its head"
            )
        for key, value in plugin.published_head_state(plugin_state).items():
            value = _counter_shape(PLUGIN_HEAD_PREFIX + key, value, expected)
            _check(
                where, f"the dispersion head's {key!r}", PLUGIN_HEAD_PREFIX + key, value, expected
            )
            out[PLUGIN_HEAD_PREFIX + key] = value
    for key, value in expected.items():
        if key in out:
            continue
        if key.endswith("num_batches_tracked"):
            out[key] = torch.zeros_like(value, device="cpu")
            continue
        theirs = _published_key(key, parts)
        name = "the dispersion head's tensor" if theirs is None else repr(theirs)
        raise UdaError(
            f"{where}: lacks {name} (shape {list(value.shape)}, our {key!r}); "
            f"the file is not a complete {family} model"
        )
    return {key: out[key] for key in expected}


_PRESETS = {
    ("daformer", "gta"): "gta2cs-daformer",
    ("hrda", "gta"): "gta2cs-hrda",
    ("daformer", "synthia"): "synthia2cs-daformer",
    ("hrda", "synthia"): "synthia2cs-hrda",
}


def published_run_config(
    family: str, encoder: str = "mit_b5", dataset: Literal["gta", "synthia"] = "gta"
) -> RunConfig:
    """The published preset of ``family`` (``gta2cs-daformer`` ...; MIC's test path is HRDA's)
    with ``encoder`` and, for the dispersion families, ``--plugin dispersion``: the model is
    the published network and the eval settings the reference test path's (DAFormer: whole
    image at the (1024, 512) scale; HRDA/MIC: slide windows of 1024 at stride 512 at the
    (2048, 1024) scale)."""
    if family not in FAMILIES:
        raise UdaError(f"unknown family {family!r}; one of {', '.join(FAMILIES)}")
    host = family.removeprefix("dispersion_")
    if (host, dataset) not in _PRESETS:
        raise UdaError(f"unknown dataset {dataset!r}; gta or synthia")
    name = _PRESETS[host, dataset]
    data = preset(name).model_dump(mode="json") | {"preset": name}
    data["model"]["encoder"] = encoder
    plugins = ["dispersion"] if family.startswith("dispersion") else []
    for plugin in plugins:
        data.setdefault("plugins", {})[plugin] = {}
    return with_plugins(validate(RunConfig, merge(data, plugin_profile(name, plugins))))


def scaled_input_size(height: int, width: int, scale: tuple[int, int] | None) -> tuple[int, int]:
    """(height, width) of the network input for an image of that size, as the test pipeline's
    ``Resize(keep_ratio=True)`` makes it (mmcv ``rescale_size``): factor min(long scale side
    / long image side, short / short), each side ``int(side * factor + 0.5)``."""
    if scale is None:
        return height, width
    factor = min(max(scale) / max(height, width), min(scale) / min(height, width))
    return int(height * factor + 0.5), int(width * factor + 0.5)


@torch.no_grad()
def published_test_logits(
    model: nn.Module,
    image: torch.Tensor,
    cfg: RunConfig,
    original_size: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Float32 logits (1 x C x H x W, before the softmax) as the reference test path computes
    them (``EncoderDecoder.inference``, MIC ``encoder_decoder.py:282-372``).

    ``image`` is 1 x 3 x h x w, normalized. Without ``original_size`` it is the image at its
    own size, and it is first resized to the test scale (``cfg.data.val_resize``, keeping its
    ratio: ``scaled_input_size``) bilinearly; the reference resizes the 8-bit image with OpenCV
    before normalizing, so where that resize is not the identity, resize the 8-bit image
    yourself and pass it with ``original_size`` for the closest match. The network runs as
    ``cfg.eval`` says (whole: logits resized to the network input, ``encode_decode``; slide:
    windows shifted inward, each window's logits resized to it, summed and divided by the
    count), then the logits are resized bilinearly to ``original_size`` (``rescale``).
    """
    was_training = model.training
    model.eval()
    height, width = image.shape[-2:]
    if original_size is None:
        original_size = (height, width)
        size = scaled_input_size(height, width, cfg.data.val_resize)
        if size != (height, width):
            image = F.interpolate(image, size, mode="bilinear", align_corners=False)
    logits = predict_logits(model, image, cfg.eval)
    if tuple(logits.shape[-2:]) != tuple(original_size):
        logits = F.interpolate(logits, original_size, mode="bilinear", align_corners=False)
    model.train(was_training)
    return logits.float()

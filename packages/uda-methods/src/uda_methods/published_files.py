"""Checkpoint files of any kind: ours, and the published DAFormer, HRDA, MIC and dispersion ones.

``read_checkpoint_file(path, copy)`` tells by the content alone what a file is:

- ``uda``: ours (``{'model', 'config', ...}``, from ``uda train`` or ``uda checkpoint import``);
- ``published``: what the reference ``tools/publish_model.py`` leaves, ``{'state_dict':
  {'model.*' [, 'auxiliary_net.*']}}``, with or without ``meta``;
- ``training``: mmcv's checkpoint of the UDA wrapper, ``{'meta', 'state_dict': {'model.*',
  'ema_model.*', 'imnet_model.*' [, 'auxiliary_net.*']} [, 'optimizer']}``;
- ``aux-raw`` / ``aux-wrapped``: the published auxiliary networks (``gta_auxiliary.pth``), a
  bare state dict or ``{'model': ...}``; ``uda-auxiliary``: ours (``uda dispersion pretrain``).

Of a segmentor it takes one copy: the student ``model.*`` by default, which is what the
reference ``tools/test.py`` evaluates (its ``revise_keys`` turn ``ema_model.*`` and
``imnet_model.*`` into unexpected keys that ``strict=False`` ignores), the EMA teacher
``ema_model.*`` or the ImageNet copy ``imnet_model.*`` on request. The family comes from the
decode head's keys, the MiT size from the stage widths and block counts, MIC and the source
dataset from the config text in ``meta`` when the file has one.

``load_segmentation_model`` builds our network for such a file, with the family's published
settings (``published_run_config``) unless told otherwise, and loads its weights. Files are
read by ``uda_core.checkpoint.read_weights_only`` (``torch.load(weights_only=True)``):
tensors and plain containers only, so reading a file never runs code from it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from uda_core.checkpoint import read_weights_only
from uda_core.config import merge
from uda_core.engine import load_model_weights
from uda_core.errors import UdaError
from uda_core.plugin import load_plugins
from uda_methods.config import RunConfig
from uda_methods.presets import DEFAULT_PRESET
from uda_methods.published_models import published_state_to_ours
from uda_methods.run import build_full_model, config_of_checkpoint, resolve_config

Copy = Literal["student", "teacher", "imagenet"]
COPIES: dict[str, str] = {"student": "model.", "teacher": "ema_model.", "imagenet": "imnet_model."}
"""The segmentor copies of a reference training checkpoint, by their top-level prefix."""
AUXILIARY_PREFIX = "auxiliary_net."
TOP_PREFIXES = (*COPIES.values(), AUXILIARY_PREFIX)

MIT_SIZES: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    "mit_b0": ((32, 64, 160, 256), (2, 2, 2, 2)),
    "mit_b1": ((64, 128, 320, 512), (2, 2, 2, 2)),
    "mit_b2": ((64, 128, 320, 512), (3, 4, 6, 3)),
    "mit_b3": ((64, 128, 320, 512), (3, 4, 18, 3)),
    "mit_b4": ((64, 128, 320, 512), (3, 8, 27, 3)),
    "mit_b5": ((64, 128, 320, 512), (3, 6, 40, 3)),
}
"""MiT-B0..B5 (SegFormer): stage widths and block counts, which the keys reveal."""

_BACKBONE = r"backbone\.(patch_embed[1-4]|block[1-4]\.\d+|norm[1-4])\."
_DAFORMER_HEAD = r"(embed_layers|fuse_layer|conv_seg)\."
_DISPERSION_HEAD = r"(initial_task_prediction_heads|multi_modal_distillation|heads)\."
_GRAMMARS: dict[str, tuple[str, ...]] = {
    "daformer": (_BACKBONE, r"decode_head\." + _DAFORMER_HEAD),
    "hrda": (_BACKBONE, r"decode_head\.(head|scale_attention)\." + _DAFORMER_HEAD),
    "dispersion_daformer": (
        _BACKBONE,
        r"decode_head\." + _DAFORMER_HEAD,
        r"decode_head\." + _DISPERSION_HEAD,
    ),
    "dispersion_hrda": (
        _BACKBONE,
        r"decode_head\.(head|scale_attention)\." + _DAFORMER_HEAD,
        r"decode_head\.head\." + _DISPERSION_HEAD,
    ),
}
"""The key prefixes of each published family's segmentor (without the top-level ``model.``)."""
_EXPECTED: dict[str, str] = {
    "daformer": "backbone.{patch_embed,block,norm}N.* and decode_head.{embed_layers,"
    "fuse_layer,conv_seg}.*",
    "hrda": "backbone.{patch_embed,block,norm}N.* and decode_head.{head,scale_attention}."
    "{embed_layers,fuse_layer,conv_seg}.*",
    "dispersion_daformer": "backbone.{patch_embed,block,norm}N.* and decode_head.{embed_layers,"
    "fuse_layer,conv_seg,initial_task_prediction_heads,multi_modal_distillation,heads}.*",
    "dispersion_hrda": "backbone.{patch_embed,block,norm}N.*, decode_head.scale_attention."
    "{embed_layers,fuse_layer,conv_seg}.* and decode_head.head.{embed_layers,fuse_layer,"
    "conv_seg,initial_task_prediction_heads,multi_modal_distillation,heads}.*",
}
_AUXILIARY = r"(encoder\.[0-7]|decoder[1-4]|final_conv)\."

PRESETS: dict[tuple[str, str], str] = {
    ("daformer", "gta"): "gta2cs-daformer",
    ("hrda", "gta"): "gta2cs-hrda",
    ("mic", "gta"): "gta2cs-mic",
    ("daformer", "synthia"): "synthia2cs-daformer",
    ("hrda", "synthia"): "synthia2cs-hrda",
    ("mic", "synthia"): "synthia2cs-mic",
}
"""The preset of each published (method, source dataset): the family's published settings."""


@dataclass
class CheckpointFile:
    """What ``read_checkpoint_file`` found in a file, and the tensors of the chosen copy."""

    path: Path
    layout: str
    """uda, published, training, aux-raw, aux-wrapped or uda-auxiliary."""
    family: str
    """A published family (daformer, hrda, dispersion_daformer, dispersion_hrda), auxiliary,
    or uda (ours: see ``config``)."""
    encoder: str | None
    copy: str
    state: dict[str, torch.Tensor]
    """The chosen copy: the segmentor's keys without the top-level prefix (published), our
    model's keys (ours), or the auxiliary network's."""
    prefixes: dict[str, int]
    """Tensors in the file by top-level prefix ('' for keys without one)."""
    tensors: int
    parameters: int
    """Elements of all tensors in the file."""
    method: str | None = None
    """daformer, hrda or mic: the method that trained it (MIC only known from ``meta``)."""
    dataset: str | None = None
    """gta or synthia, from ``meta``'s config; None when the file does not say."""
    config: dict[str, Any] | None = None
    """Our run config (ours, imported ones included)."""
    config_text: str | None = None
    """The reference config the file carries (``meta['config']``), if any."""
    meta: dict[str, Any] = field(default_factory=dict)
    content: dict[str, Any] = field(default_factory=dict)
    """Our checkpoint as loaded (empty for other layouts)."""

    @property
    def published(self) -> bool:
        """A reference segmentor file, or our checkpoint imported from one."""
        return self.layout in ("published", "training") or "imported" in self.content

    @property
    def has_auxiliary(self) -> bool:
        return self.prefixes.get(AUXILIARY_PREFIX, 0) > 0


def _flat_tensors(value: Any) -> bool:
    return isinstance(value, Mapping) and all(isinstance(v, torch.Tensor) for v in value.values())


def _count(state: Mapping[str, torch.Tensor]) -> int:
    return sum(t.numel() for t in state.values())


def read_checkpoint_file(path: Path | str, copy: Copy = "student") -> CheckpointFile:
    """Recognise ``path`` (layout, family, encoder) and take its ``copy``; one-line
    ``UdaError`` for a missing, unreadable or unrecognised file, or a copy it lacks."""
    path = Path(path)
    if copy not in COPIES:
        raise UdaError(f"unknown copy {copy!r}; one of {', '.join(COPIES)}")
    content = read_weights_only(path)
    if not isinstance(content, Mapping) or not content:
        raise UdaError(
            f"checkpoint {path} is not a checkpoint: expected a dict of weights, got "
            f"{type(content).__name__}"
        )
    if "model" in content and "config" in content:
        return _ours(path, dict(content), copy)
    if str(content.get("format", "")).startswith("uda-dispersion-auxiliary"):
        return _auxiliary(path, content["model"], "uda-auxiliary", copy)
    if isinstance(content.get("state_dict"), Mapping):
        return _segmentor(path, content, copy)
    if isinstance(content.get("model"), Mapping) and _flat_tensors(content["model"]):
        return _auxiliary(path, content["model"], "aux-wrapped", copy)
    if _flat_tensors(content):
        if any(str(k).startswith(TOP_PREFIXES) for k in content):
            return _segmentor(path, {"state_dict": content}, copy)
        if any(re.match(_BACKBONE, str(k)) for k in content):
            return _segmentor(path, {"state_dict": content}, copy)
        return _auxiliary(path, content, "aux-raw", copy)
    keys = ", ".join(map(repr, list(content)[:6]))
    raise UdaError(
        f"checkpoint {path} is of no known layout (top-level keys {keys}): expected ours "
        "(model, config), the published {'state_dict': ...} or mmcv's training checkpoint "
        "(meta, state_dict), or an auxiliary network's state dict"
    )


def _ours(path: Path, content: dict[str, Any], copy: str) -> CheckpointFile:
    if copy == "student":
        state = content["model"]
    elif copy == "teacher":
        state = (content.get("method") or {}).get("teacher")
        if state is None:
            raise UdaError(
                f"checkpoint {path} holds no EMA teacher (only periodic checkpoints of "
                "self-training methods do); drop --copy teacher"
            )
    else:
        raise UdaError(
            f"checkpoint {path} is ours and keeps no full ImageNet copy of the network; "
            "--copy imagenet applies to the reference training checkpoints"
        )
    config = content["config"]
    model = config.get("model", {}) if isinstance(config, Mapping) else {}
    imported = content.get("imported") or {}
    return CheckpointFile(
        path=path,
        layout="uda",
        family=imported.get("family", "uda"),
        encoder=model.get("encoder"),
        copy=copy,
        state=dict(state),
        prefixes={"": len(content["model"])},
        tensors=len(content["model"]),
        parameters=_count(content["model"]),
        method=(config.get("method") or {}).get("name"),
        dataset=imported.get("dataset"),
        config=config,
        config_text=(imported.get("meta") or {}).get("config"),
        meta={k: v for k, v in content.items() if k in ("iteration", "best", "metrics")},
        content=content,
    )


def _auxiliary(path: Path, state: Mapping[str, Any], layout: str, copy: str) -> CheckpointFile:
    if copy != "student":
        raise UdaError(f"{path} is an auxiliary network, which has no {copy} copy")
    bad = next((k for k in state if not re.match(_AUXILIARY, str(k))), None)
    if bad is not None and layout != "uda-auxiliary":  # ours may be another network
        raise UdaError(
            f"checkpoint {path}: {bad!r} fits no known model: expected a segmentor "
            "(model.backbone.*, model.decode_head.*) or an AuxiliaryResNet50 (encoder.N.*, "
            "decoderN.*, final_conv.*)"
        )
    state = dict(state)
    return CheckpointFile(
        path=path,
        layout=layout,
        family="auxiliary",
        encoder="resnet50" if layout != "uda-auxiliary" else None,
        copy=copy,
        state=state,
        prefixes={"": len(state)},
        tensors=len(state),
        parameters=_count(state),
    )


def _segmentor(path: Path, content: Mapping[str, Any], copy: str) -> CheckpointFile:
    flat = content["state_dict"]
    meta = content.get("meta") if isinstance(content.get("meta"), Mapping) else {}
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in flat.items():
        key = str(key).removeprefix("module.")
        top = next((p for p in TOP_PREFIXES if key.startswith(p)), "")
        if top == "" and not key.startswith(("backbone.", "decode_head.")):
            raise UdaError(
                f"checkpoint {path}: {key!r} fits no published layout (expected "
                f"{', '.join(p + '*' for p in TOP_PREFIXES)} under state_dict)"
            )
        if not isinstance(value, torch.Tensor):
            raise UdaError(f"checkpoint {path}: {key!r} is no tensor ({type(value).__name__})")
        parts.setdefault(top, {})[key[len(top) :]] = value
    if "" in parts:  # a bare mmseg segmentor: its keys are the student's
        if "model." in parts:
            key = next(iter(parts[""]))
            raise UdaError(f"checkpoint {path}: {key!r} lacks the model. prefix of its others")
        parts["model."] = parts.pop("")
    prefix = COPIES[copy]
    if prefix not in parts:
        has = ", ".join(p + "*" for p in parts)
        raise UdaError(
            f"checkpoint {path} has no {copy} copy ({prefix}*; it holds {has}): published files "
            "keep the student only; --copy teacher and imagenet need the training checkpoint"
        )
    state = parts[prefix]
    where = f"checkpoint {path} ({prefix}*)"
    family = segmentor_family(state, where)
    encoder = mit_encoder(state, where)
    config_text = meta.get("config") if isinstance(meta.get("config"), str) else None
    method, dataset = method_and_dataset(family, config_text)
    return CheckpointFile(
        path=path,
        layout="training" if "ema_model." in parts or "imnet_model." in parts else "published",
        family=family,
        encoder=encoder,
        copy=copy,
        state=state,
        prefixes={p: len(v) for p, v in parts.items()},
        tensors=len(flat),
        parameters=sum(_count(v) for v in parts.values()),
        method=method,
        dataset=dataset,
        config_text=config_text,
        meta={k: v for k, v in meta.items() if k != "config"},
    )


def segmentor_family(state: Mapping[str, Any], where: str = "checkpoint") -> str:
    """The published family of a segmentor state (keys without ``model.``): HRDA's heads
    are ``decode_head.head`` and ``decode_head.scale_attention``, the dispersion head adds
    ``multi_modal_distillation`` and its companions; every key must fit the family."""
    keys = [str(k) for k in state]
    hrda = any(k.startswith(("decode_head.head.", "decode_head.scale_attention.")) for k in keys)
    dispersion = any(".multi_modal_distillation." in f".{k}" for k in keys)
    family = ("dispersion_" if dispersion else "") + ("hrda" if hrda else "daformer")
    if not any(k.startswith("decode_head.") for k in keys):
        bad = next((k for k in keys if not re.match(_BACKBONE, k)), keys[0] if keys else "")
        raise UdaError(
            f"{where}: {bad!r} fits no published family (DAFormer, HRDA/MIC, dispersion): "
            f"expected {_EXPECTED['daformer']}, or HRDA's decode_head.head.* and "
            "decode_head.scale_attention.*"
        )
    grammar = [re.compile(p) for p in _GRAMMARS[family]]
    for key in keys:
        if not any(g.match(key) for g in grammar):
            raise UdaError(
                f"{where}: {key!r} does not fit a published {family} model: expected "
                f"{_EXPECTED[family]}"
            )
    return family


def mit_encoder(state: Mapping[str, Any], where: str = "checkpoint") -> str:
    """mit_b0..mit_b5 from the stage widths (``patch_embedN.proj``) and block counts."""
    widths, depths = [], []
    for stage in (1, 2, 3, 4):
        key = f"backbone.patch_embed{stage}.proj.weight"
        if key not in state:
            raise UdaError(f"{where}: lacks {key!r}, which every MiT encoder has")
        widths.append(int(state[key].shape[0]))
        blocks = {
            int(m.group(1))
            for k in state
            if (m := re.match(rf"backbone\.block{stage}\.(\d+)\.", str(k)))
        }
        if blocks != set(range(len(blocks))) or not blocks:
            raise UdaError(f"{where}: the blocks of stage {stage} are {sorted(blocks)}, not 0..N-1")
        depths.append(len(blocks))
    for name, size in MIT_SIZES.items():
        if size == (tuple(widths), tuple(depths)):
            return name
    sizes = "; ".join(f"{n}: {list(w)}, {list(d)}" for n, (w, d) in MIT_SIZES.items())
    raise UdaError(
        f"{where}: an encoder with stage widths {widths} and depths {depths} is no MiT size "
        f"({sizes})"
    )


def method_and_dataset(family: str, config_text: str | None) -> tuple[str, str | None]:
    """The method (MIC when the config sets a ``mask_mode``) and source dataset of a file."""
    host = family.removeprefix("dispersion_")
    if config_text is None:
        return host, None
    method = "mic" if re.search(r"\bmask_mode\s*=\s*'", config_text) else host
    if "SynthiaDataset" in config_text or "data/synthia" in config_text:
        return method, "synthia"
    return method, "gta" if "GTADataset" in config_text or "data/gta" in config_text else None


def default_preset(file: CheckpointFile) -> str:
    """The preset whose model and test settings are those of a published file."""
    return PRESETS[file.method or file.family.removeprefix("dispersion_"), file.dataset or "gta"]


def published_config(
    file: CheckpointFile,
    overrides: Sequence[str] = (),
    preset: str | None = None,
    flags: Mapping[str, Any] | None = None,
    config_file: Path | None = None,
    data_root: Path | None = None,
) -> RunConfig:
    """The run config of a published file: the family's published preset (``default_preset``,
    or ``preset``) with the file's encoder and, for the dispersion families, the dispersion
    plugin, whose auxiliary network comes from the file when it carries one; then the config
    file, ``flags`` and ``overrides`` as ``resolve_config`` layers them. Without any of these
    it equals ``published_run_config`` of the family (for MIC, the MIC preset's)."""
    own: dict[str, Any] = {"model": {"encoder": file.encoder}}
    plugins = dict((flags or {}).get("plugins") or {})
    if file.family.startswith("dispersion"):
        plugins.setdefault("dispersion", {})
    if "dispersion" in plugins and file.has_auxiliary:
        plugins["dispersion"] = {"auxiliary": {"checkpoint": str(file.path.resolve())}}
    if plugins:
        own["plugins"] = plugins
    layered = merge(own, {k: v for k, v in (flags or {}).items() if k != "plugins"})
    return resolve_config(
        preset or default_preset(file), config_file, layered, list(overrides), data_root
    )


def init_config(
    file: CheckpointFile,
    preset: str | None,
    config_file: Path | None,
    flags: Mapping[str, Any],
    overrides: Sequence[str],
    data_root: Path | None = None,
) -> RunConfig:
    """The config of ``uda train --init-from FILE``: without ``preset``, the file's own (ours:
    the saved one, less its run name, as this is a new run; published: ``published_config``),
    else the preset's; the config file, flags and overrides over it."""
    _check_segmentor(file)
    if file.layout != "uda":
        return published_config(file, overrides, preset, flags, config_file, data_root)
    base = None
    if preset is None:
        base = merge(file.config, {"runtime": {"name": None}})
    name = preset or (file.config or {}).get("preset") or DEFAULT_PRESET
    return resolve_config(name, config_file, dict(flags), list(overrides), data_root, base)


def _check_segmentor(file: CheckpointFile) -> None:
    if file.family == "auxiliary":
        raise UdaError(
            f"{file.path} is an auxiliary network, not a segmentation model: give it as --set "
            "plugins.dispersion.auxiliary.checkpoint=FILE (Python: uda_dispersion.load_auxiliary)"
        )


@dataclass
class LoadedModel:
    model: nn.Module
    cfg: RunConfig
    file: CheckpointFile


def model_weights(file: CheckpointFile, cfg: RunConfig) -> tuple[nn.Module, dict]:
    """``cfg``'s network with the file's weights in it, and those weights in our names."""
    _check_segmentor(file)
    plugins = load_plugins(cfg.plugins)
    model = build_full_model(cfg, plugins)
    if file.layout == "uda":
        load_model_weights(model, file.state, f"checkpoint {file.path}")
        return model, file.state
    where = f"checkpoint {file.path} ({COPIES[file.copy]}*)"
    weights = published_state_to_ours(file.state, file.family, model, plugins, where=where)
    model.load_state_dict(weights)
    return model, weights


def load_segmentation_model(
    path: Path | str,
    overrides: Sequence[str] = (),
    copy: Copy = "student",
    preset: str | None = None,
) -> LoadedModel:
    """Our network for any segmentation checkpoint, its weights loaded, and its run config:
    ours carries it; a published file gets ``published_config``. ``overrides`` (``--set``)
    apply to either."""
    return model_of_file(read_checkpoint_file(path, copy), overrides, preset)


def model_of_file(
    file: CheckpointFile, overrides: Sequence[str] = (), preset: str | None = None
) -> LoadedModel:
    """``load_segmentation_model`` of a file already read."""
    if file.layout == "uda":
        if preset is not None:
            raise UdaError(f"--preset: {file.path} carries its config; change it with --set")
        cfg = config_of_checkpoint(file.content, file.path, list(overrides))
    else:
        _check_segmentor(file)
        cfg = published_config(file, overrides, preset)
    model, _ = model_weights(file, cfg)
    return LoadedModel(model, cfg, file)


def imported_checkpoint(loaded: LoadedModel) -> dict[str, Any]:
    """Our checkpoint of a published file: the weights in our names and the full run config,
    with a record of where they came from (``imported``)."""
    file = loaded.file
    return {
        "model": loaded.model.state_dict(),
        "config": loaded.cfg.model_dump(mode="json"),
        "iteration": file.meta.get("iter"),
        "imported": {
            "file": str(file.path.resolve()),
            "layout": file.layout,
            "family": file.family,
            "encoder": file.encoder,
            "copy": file.copy,
            "method": file.method,
            "dataset": file.dataset,
            "meta": {**file.meta, **({"config": file.config_text} if file.config_text else {})},
        },
    }

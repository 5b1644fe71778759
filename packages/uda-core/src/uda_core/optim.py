"""AdamW with parameter groups, and the warm-up + poly learning-rate schedule."""

from __future__ import annotations

import torch
from torch import nn

from uda_core.config import OptimConfig, ScheduleConfig

_NORM_TYPES = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm, nn.InstanceNorm2d)
_POSITION_KEYS = ("pos_embed", "pos_block", "position")


def _no_decay_names(model: nn.Module, encoder_only: bool) -> set[str]:
    names = set()
    for module_name, module in model.named_modules():
        if encoder_only and not module_name.startswith("encoder."):
            continue
        if isinstance(module, _NORM_TYPES):
            names.update(
                f"{module_name}.{p}" if module_name else p
                for p, _ in module.named_parameters(recurse=False)
            )
    names.update(
        n
        for n, _ in model.named_parameters()
        if any(k in n for k in _POSITION_KEYS) and (n.startswith("encoder.") or not encoder_only)
    )
    return names


def parameter_groups(model: nn.Module, cfg: OptimConfig) -> list[dict]:
    """Groups by (encoder or decoder) x (decay or not).

    Parameters under ``model.encoder`` train at the base rate; every other parameter belongs to
    a head and trains at ``lr * decoder_lr_mult``. Norm layers and position embeddings get no
    weight decay (``no_decay_norm_and_pos``), in the encoder only (``no_decay_scope: encoder``,
    the reference's ``custom_keys`` head / pos_block / norm, where the longer key ``pos_block``
    wins, then ``head`` over ``norm`` in alphabetical order: mmcv 1.3
    ``DefaultOptimizerConstructor.add_params``) or everywhere (``all``).
    """
    no_decay = (
        _no_decay_names(model, encoder_only=cfg.no_decay_scope == "encoder")
        if cfg.no_decay_norm_and_pos
        else set()
    )
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        key = (name.startswith("encoder."), name in no_decay)
        groups.setdefault(key, []).append(param)
    out = []
    for (is_encoder, skip_decay), params in sorted(groups.items()):
        name = ("encoder" if is_encoder else "decoder") + ("_no_decay" if skip_decay else "")
        out.append(
            {
                "params": params,
                "lr": cfg.lr * (1.0 if is_encoder else cfg.decoder_lr_mult),
                "weight_decay": 0.0 if skip_decay else cfg.weight_decay,
                "name": name,
            }
        )
    return out


def build_optimizer(
    model: nn.Module, cfg: OptimConfig, device: torch.device | None = None
) -> torch.optim.Optimizer:
    """AdamW (``optim.kind: sgd``: SGD with momentum and coupled weight decay, PyTorch's and
    mmcv's ``SGD``) over ``parameter_groups``, in the implementation ``optim.implementation``
    names.

    ``auto``: the fused kernel (one per group and step, step counters on the device) where
    this PyTorch has one for the parameters' device and ``device`` (the one they will train
    on, if they are still elsewhere): CPU and CUDA since PyTorch 2.4; else the multi-tensor
    (``foreach``) one. ``for-loop`` is PyTorch's per-tensor loop (the reference's PyTorch 1.7
    had no other). They compute the same update within float rounding.
    """
    groups = parameter_groups(model, cfg)
    kind = cfg.implementation
    if kind == "auto":
        devices = {p.device.type for g in groups for p in g["params"]}
        devices |= {torch.device(device).type} if device is not None else set()
        kind = "fused" if devices <= _fused_devices() else "foreach"
    options = {
        "for-loop": {"foreach": False},
        "foreach": {"foreach": True},
        "fused": {"fused": True},
    }
    if cfg.kind == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, **options[kind])
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, **options[kind])


def _fused_devices() -> set[str]:
    """Device types with PyTorch's fused optimiser kernels (none where it cannot say)."""
    try:
        from torch.utils._foreach_utils import _get_fused_kernels_supported_devices
    except ImportError:
        return set()
    return set(_get_fused_kernels_supported_devices())


def lr_factor(iteration: int, total: int, cfg: ScheduleConfig) -> float:
    """Learning-rate factor at ``iteration``: linear warm-up from ``warmup_ratio``, then poly."""
    poly = (1.0 - iteration / total) ** cfg.power * (1.0 - cfg.min_lr_ratio) + cfg.min_lr_ratio
    if iteration < cfg.warmup_iters:
        k = (1.0 - iteration / cfg.warmup_iters) * (1.0 - cfg.warmup_ratio)
        return (1.0 - k) * poly
    return poly


def build_scheduler(
    optimizer: torch.optim.Optimizer, total: int, cfg: ScheduleConfig
) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: lr_factor(it, total, cfg))

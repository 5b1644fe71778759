"""The run config: every section, composed. A saved run config is enough to rerun the run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field

from uda_core.config import EvalConfig, OptimConfig, RuntimeConfig, ScheduleConfig, Section
from uda_data.config import DataConfig


class ModelConfig(Section):
    """The segmentation network, by the names in ``uda_methods.registry``."""

    encoder: str = Field(
        "resnet18",
        min_length=1,
        description="Encoder: mit_b0..mit_b5, resnet101 (dilated) or a timm features_only name.",
    )
    decoder: str = Field("light", min_length=1, description="Decoder: light, daformer, deeplabv2.")
    channels: int | None = Field(
        None, ge=8, description="Decoder width; None: the decoder's own (light 128, daformer 256)."
    )
    dropout: float = Field(0.1, ge=0, lt=1, description="Dropout before the classifier.")
    drop_path_rate: float = Field(
        0.1, ge=0, lt=1, description="Stochastic depth of MiT encoders (SegFormer: 0.1)."
    )
    pretrained: Path | None = Field(
        None, description="Local file of ImageNet encoder weights (MiT: SegFormer's mit_bN.pth)."
    )
    timm_pretrained: bool = Field(
        False, description="Download timm's ImageNet weights (needs a hub; not for MiT)."
    )


class MethodConfig(Section):
    """The UDA strategy and its self-training settings (DACS/DAFormer defaults)."""

    name: str = Field(
        "source-only", min_length=1, description="Method name (see `uda train --help`)."
    )
    ema_alpha: float = Field(0.999, ge=0, lt=1, description="EMA teacher momentum.")
    pseudo_threshold: float = Field(
        0.968, gt=0, le=1, description="Confidence counted in the pseudo-label weight."
    )
    pseudo_ignore_top: int = Field(15, ge=0, description="Rows at the top of a crop with weight 0.")
    pseudo_ignore_bottom: int = Field(120, ge=0, description="Rows at the bottom with weight 0.")
    color_jitter_strength: float = Field(
        0.2, ge=0, le=0.5, description="Strength s of the colour jitter."
    )
    color_jitter_p: float = Field(0.2, ge=0, le=1, description="DACS p: jitter when U(0,1) > p.")
    blur: bool = Field(True, description="Gaussian blur in the strong augmentation.")
    fd_lambda: float = Field(
        0.005, ge=0, description="ImageNet feature-distance weight (DAFormer)."
    )
    fd_classes: tuple[int, ...] = Field(
        (6, 7, 11, 12, 13, 14, 15, 16, 17, 18), description="Classes the feature distance covers."
    )
    fd_min_ratio: float = Field(0.75, gt=0, le=1, description="Min class share of a feature cell.")


class RunConfig(Section):
    """Everything one training run needs."""

    data: DataConfig
    model: ModelConfig = Field(default_factory=ModelConfig)
    method: MethodConfig = Field(default_factory=MethodConfig)
    plugins: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="Plugins by name, in order, each with its own settings."
    )
    optim: OptimConfig = Field(default_factory=OptimConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)

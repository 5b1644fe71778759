"""The run config: every section, composed. A saved run config is enough to rerun the run."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from uda_core.config import EvalConfig, OptimConfig, RuntimeConfig, ScheduleConfig, Section
from uda_data.config import DataConfig


class ModelConfig(Section):
    """The segmentation network, by the names in ``uda_methods.registry``."""

    encoder: str = Field(
        "resnet18", min_length=1, description="Encoder (any timm features_only name)."
    )
    decoder: str = Field("light", min_length=1, description="Decoder name.")
    channels: int = Field(128, ge=8, description="Decoder width.")
    dropout: float = Field(0.1, ge=0, lt=1, description="Dropout before the classifier.")
    pretrained: Path | None = Field(None, description="Local file of ImageNet encoder weights.")


class MethodConfig(Section):
    """The UDA strategy."""

    name: str = Field(
        "source-only", min_length=1, description="Method name (see `uda train --help`)."
    )


class RunConfig(Section):
    """Everything one training run needs."""

    data: DataConfig
    model: ModelConfig = Field(default_factory=ModelConfig)
    method: MethodConfig = Field(default_factory=MethodConfig)
    plugins: list[str] = Field(default_factory=list, description="Plugins by name, in order.")
    optim: OptimConfig = Field(default_factory=OptimConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)

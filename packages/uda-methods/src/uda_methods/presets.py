"""Presets: plain functions returning a complete run config. No config inheritance."""

from __future__ import annotations

from collections.abc import Callable

from uda_core.config import EvalConfig, OptimConfig, RuntimeConfig, ScheduleConfig
from uda_core.errors import UdaError
from uda_data.config import DataConfig, DatasetConfig
from uda_methods.config import MethodConfig, ModelConfig, RunConfig


def quick() -> RunConfig:
    """The embedded synthetic domains at CPU scale: trains in a few minutes on two cores.

    Images are generated at 512x256 and resized to 256x128 (as the real benchmarks resize
    GTA and Cityscapes), with 256x128 crops; a ResNet-18 with a light decoder, from scratch.
    """
    return RunConfig(
        data=DataConfig(
            source=DatasetConfig(layout="gta", root="@synthetic/source"),
            target=DatasetConfig(layout="cityscapes", root="@synthetic/target", split="train"),
            val=DatasetConfig(layout="cityscapes", root="@synthetic/target", split="val"),
            source_resize=(256, 128),
            target_resize=(256, 128),
            val_resize=(256, 128),
            crop=(256, 128),
            batch_size=4,
            workers=1,
        ),
        model=ModelConfig(encoder="resnet18", decoder="light", channels=96),
        method=MethodConfig(name="source-only"),
        optim=OptimConfig(lr=1e-3, decoder_lr_mult=1.0),
        schedule=ScheduleConfig(warmup_iters=50),
        runtime=RuntimeConfig(
            iterations=1000, eval_interval=500, checkpoint_interval=250, log_interval=25
        ),
        eval=EvalConfig(mode="whole", batch_size=8),
    )


PRESETS: dict[str, Callable[[], RunConfig]] = {
    "quick": quick,
}
DEFAULT_PRESET = "quick"


def preset(name: str) -> RunConfig:
    if name not in PRESETS:
        raise UdaError(f"unknown preset {name!r}; available: {', '.join(sorted(PRESETS))}")
    return PRESETS[name]()

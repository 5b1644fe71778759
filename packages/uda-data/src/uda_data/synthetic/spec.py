"""What to generate: the size and seed of the synthetic source and target domains."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class SynthSpec(BaseModel):
    """Size and seed of the embedded synthetic source (GTA-style) and target (Cityscapes-style)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    seed: int = Field(0, ge=0, description="Seed from which every scene is derived.")
    width: int = Field(512, ge=32, le=2048, description="Image width in pixels.")
    height: int = Field(256, ge=16, le=1024, description="Image height in pixels.")
    num_source: int = Field(400, ge=1, le=100_000, description="Images in the source domain.")
    num_target_train: int = Field(
        300, ge=1, le=100_000, description="Images in the target domain's train split."
    )
    num_target_val: int = Field(
        100, ge=1, le=100_000, description="Images in the target domain's val split."
    )

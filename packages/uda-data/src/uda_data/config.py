"""The data section of a run config, and building datasets from it."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from uda_data.datasets import (
    EvalSet,
    SegmentationFolder,
    TrainPipeline,
    cityscapes_folder,
    gta_folder,
)
from uda_data.depth import DepthEncoding
from uda_data.synthetic import SynthSpec, ensure_synthetic

SYNTHETIC_PREFIX = "@synthetic/"


def default_cache_dir() -> Path:
    """``$UDA_CACHE_DIR``, else ``~/.cache/uda``."""
    return Path(os.environ.get("UDA_CACHE_DIR", Path.home() / ".cache" / "uda"))


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DatasetConfig(_Section):
    """One dataset split on disk."""

    layout: Literal["gta", "cityscapes"] = Field(description="Directory layout of the release.")
    root: str = Field(
        min_length=1,
        description="Dataset root; '@synthetic/source' or '@synthetic/target': embedded domains.",
    )
    split: str = Field("train", description="Split folder (Cityscapes layout).")
    depth_encoding: DepthEncoding = Field(
        "depth_anything_png", description="How depth maps are stored."
    )


class DataConfig(_Section):
    """Source, target and validation data and their transforms. Sizes are (width, height)."""

    source: DatasetConfig = Field(description="Labelled source domain.")
    target: DatasetConfig = Field(description="Unlabelled target domain (training split).")
    val: DatasetConfig = Field(description="Labelled target validation split.")
    synthetic: SynthSpec = Field(
        default_factory=SynthSpec, description="Embedded domains, if used."
    )
    cache_dir: Path = Field(
        default_factory=default_cache_dir, description="Where generated data is kept."
    )
    source_resize: tuple[int, int] | None = Field(None, description="Resize source images first.")
    target_resize: tuple[int, int] | None = Field(None, description="Resize target images first.")
    val_resize: tuple[int, int] | None = Field(None, description="Resize val images for inference.")
    crop: tuple[int, int] = Field((512, 512), description="Training crop (width, height).")
    cat_max_ratio: float = Field(
        0.75, gt=0, le=1, description="Max share of one class in a source crop."
    )
    flip_prob: float = Field(0.5, ge=0, le=1, description="Probability of a horizontal flip.")
    batch_size: int = Field(
        2, ge=1, description="Source (and target) images per iteration and process."
    )
    workers: int = Field(2, ge=0, description="Data-loading worker processes.")
    load_depth: bool = Field(
        False, description="Load depth maps (plugins that need depth set this)."
    )

    def uses_synthetic(self) -> bool:
        return any(
            d.root.startswith(SYNTHETIC_PREFIX) for d in (self.source, self.target, self.val)
        )

    def synthetic_root(self) -> Path:
        """The cache folder of the embedded domains of this spec."""
        key = hashlib.sha1(self.synthetic.model_dump_json().encode()).hexdigest()[:10]
        return self.cache_dir / f"synthetic-{key}"

    def resolve_root(self, dataset: DatasetConfig, progress=None) -> Path:
        """The folder of a dataset, generating the embedded domains on first use."""
        if not dataset.root.startswith(SYNTHETIC_PREFIX):
            return Path(dataset.root).expanduser()
        root = ensure_synthetic(self.synthetic_root(), self.synthetic, progress)
        return root / dataset.root.removeprefix(SYNTHETIC_PREFIX)


def open_folder(
    data: DataConfig, which: DatasetConfig, *, with_labels: bool, with_depth: bool, progress=None
) -> SegmentationFolder:
    root = data.resolve_root(which, progress)
    if which.layout == "gta":
        return gta_folder(
            root,
            with_labels=with_labels,
            with_depth=with_depth,
            depth_encoding=which.depth_encoding,
        )
    return cityscapes_folder(
        root,
        which.split,
        with_labels=with_labels,
        with_depth=with_depth,
        depth_encoding=which.depth_encoding,
    )


def source_pipeline(data: DataConfig) -> TrainPipeline:
    return TrainPipeline(data.crop, data.source_resize, data.cat_max_ratio, data.flip_prob)


def target_pipeline(data: DataConfig) -> TrainPipeline:
    return TrainPipeline(data.crop, data.target_resize, 1.0, data.flip_prob)


def val_set(data: DataConfig, progress=None) -> EvalSet:
    folder = open_folder(data, data.val, with_labels=True, with_depth=False, progress=progress)
    return EvalSet(folder, data.val_resize)

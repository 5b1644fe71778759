"""The data section of a run config, and building datasets from it."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator

from uda_data.datasets import EvalSet, SegmentationFolder, TrainPipeline, open_layout
from uda_data.depth import DepthEncoding
from uda_data.layouts import LAYOUTS, LayoutName
from uda_data.rcs import Progress, RareClassSampler, class_stats_path, load_or_compute
from uda_data.synthetic import SynthSpec, ensure_synthetic
from uda_data.transforms import PhotoMetricDistortion, ResizeMode

SYNTHETIC_PREFIX = "@synthetic/"
Pixels = Annotated[int, Field(gt=0)]
Margin = Annotated[int, Field(ge=0)]


def default_cache_dir() -> Path:
    """``$UDA_CACHE_DIR``, else ``~/.cache/uda``."""
    return Path(os.environ.get("UDA_CACHE_DIR", Path.home() / ".cache" / "uda"))


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class DatasetConfig(_Section):
    """One dataset split on disk."""

    layout: LayoutName = Field(
        description="Directory layout of the release: gta, synthia, cityscapes, acdc,"
        " darkzurich, bdd100k or mapillary."
    )
    root: str = Field(
        min_length=1,
        description="Dataset root; '@synthetic/source' or '@synthetic/target': embedded domains.",
    )
    split: str = Field(
        "train",
        description="Split folder (layouts with splits; Mapillary: training, validation).",
    )
    conditions: tuple[str, ...] | None = Field(
        None,
        description="ACDC (fog, night, rain, snow) or Dark Zurich (day, twilight, night)"
        " conditions used together; default: the reference's (all four; night).",
    )
    depth_encoding: DepthEncoding = Field(
        "depth_anything_png", description="How depth maps are stored."
    )

    @model_validator(mode="after")
    def _known_conditions(self) -> DatasetConfig:
        LAYOUTS[self.layout].choose_conditions(self.conditions)
        return self


class RCSConfig(_Section):
    """Rare class sampling of source images (DAFormer); the section's presence enables it."""

    temperature: float = Field(
        0.01, gt=0, description="Temperature T of P(c) = softmax((1 - f_c) / T)."
    )
    min_pixels: int = Field(
        3000,
        ge=0,
        description="Pixels of c a full-resolution source label needs to be drawn for c.",
    )
    min_crop_ratio: float = Field(
        0.5,
        ge=0,
        description="Re-crop until the crop holds > min_pixels x this of c (HRDA/MIC 2.0; 0: off).",
    )

    @property
    def min_crop_pixels(self) -> int:
        """The crop threshold as an integer (``n > floor(x)`` equals ``n > x`` for counts)."""
        return int(self.min_pixels * self.min_crop_ratio)


class DataConfig(_Section):
    """Source, target and validation data and their transforms. Sizes are (width, height)."""

    source: DatasetConfig = Field(description="Labelled source domain.")
    target: DatasetConfig = Field(description="Unlabelled target domain (training split).")
    val: DatasetConfig = Field(description="Labelled target validation split.")
    extra_val: list[DatasetConfig] = Field(
        default_factory=list,
        description="Further labelled val splits `uda eval` scores beside val, each resized like"
        " it, with the mean mIoU of all (domain generalisation: BDD100K, Mapillary).",
    )
    synthetic: SynthSpec = Field(
        default_factory=SynthSpec, description="Embedded domains, if used."
    )
    cache_dir: Path = Field(
        default_factory=default_cache_dir, description="Where generated data is kept."
    )
    source_resize: tuple[Pixels, Pixels] | None = Field(
        None, description="Resize source images first."
    )
    target_resize: tuple[Pixels, Pixels] | None = Field(
        None, description="Resize target images first."
    )
    val_resize: tuple[Pixels, Pixels] | None = Field(
        None, description="Resize val images for inference."
    )
    resize_mode: ResizeMode = Field(
        "keep_ratio",
        description="How the source, target and val resizes read their (width, height):"
        " keep_ratio (published, mmcv Resize(keep_ratio=True)): as large as fits it, aspect ratio"
        " kept (GTA 1914x1052 -> 1280x704 for 1280x720); stretch (ours): exactly that size."
        " Both resize with OpenCV (bilinear, labels nearest) as the reference.",
    )
    crop: tuple[Pixels, Pixels] = Field((512, 512), description="Training crop (width, height).")
    cat_max_ratio: float = Field(
        0.75, gt=0, le=1, description="Max share of one class in a source crop."
    )
    flip_prob: float = Field(0.5, ge=0, le=1, description="Probability of a horizontal flip.")
    source_photometric: bool = Field(
        False,
        description="mmseg's PhotoMetricDistortion on each source crop (brightness, contrast,"
        " saturation, hue; the DG branch's gtaCAug pipelines, gta-dg presets).",
    )
    batch_size: int = Field(
        2, ge=1, description="Source (and target) images per iteration and process."
    )
    workers: int = Field(2, ge=0, description="Data-loading worker processes.")
    load_depth: bool = Field(
        False, description="Load depth maps (plugins that need depth set this)."
    )
    rcs: RCSConfig | None = Field(
        None, description="Rare class sampling of the source; absent: uniform source images."
    )
    pseudo_margins: tuple[Margin, Margin, Margin, Margin] | None = Field(
        None,
        description="(top, bottom, left, right) px of each resized target image whose "
        "pseudo-labels get weight 0, masked before cropping; hrda and mic on hrda use it.",
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
    return open_layout(
        which.layout,
        data.resolve_root(which, progress),
        which.split,
        conditions=which.conditions,
        with_labels=with_labels,
        with_depth=with_depth,
        depth_encoding=which.depth_encoding,
    )


def source_sampler(
    data: DataConfig, folder: SegmentationFolder, progress: Progress | None = None
) -> RareClassSampler | None:
    """The rare class sampler of the source, if enabled, from statistics computed on first use
    and cached by ``class_stats_path`` (beside the dataset, else under ``data.cache_dir``)."""
    if data.rcs is None:
        return None
    source = data.source
    path = class_stats_path(
        data.resolve_root(source),
        LAYOUTS[source.layout].stats_key(source.split, source.conditions),
        data.cache_dir,
    )
    stats = load_or_compute(folder, path, progress, workers=max(data.workers, 1))
    return RareClassSampler(stats, data.rcs.temperature, data.rcs.min_pixels)


def source_pipeline(data: DataConfig) -> TrainPipeline:
    return TrainPipeline(
        data.crop,
        data.source_resize,
        data.cat_max_ratio,
        data.flip_prob,
        resize_mode=data.resize_mode,
        photometric=PhotoMetricDistortion() if data.source_photometric else None,
    )


def target_pipeline(data: DataConfig, margins: bool = False) -> TrainPipeline:
    """The target's transforms; with ``margins``, a ``valid`` map of ``data.pseudo_margins``."""
    valid = data.pseudo_margins if margins else None
    return TrainPipeline(
        data.crop, data.target_resize, 1.0, data.flip_prob, valid, data.resize_mode
    )


def val_set(data: DataConfig, progress=None) -> EvalSet:
    folder = open_folder(data, data.val, with_labels=True, with_depth=False, progress=progress)
    return EvalSet(folder, data.val_resize, data.resize_mode)

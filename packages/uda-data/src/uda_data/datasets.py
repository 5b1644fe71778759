"""Datasets in the layouts of the real releases, and the views training and evaluation use.

The layouts (GTA, Synthia, Cityscapes, ACDC, Dark Zurich, BDD100K, Mapillary Vistas) are
described in ``uda_data.layouts``. Labels are trainId PNGs (run ``uda data convert`` on the
original releases). Depth is read only when asked for. Files are read by the rule of
``uda_data.files``; every problem is a DataError that names the file, also when raised in a
DataLoader worker.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from uda_data.depth import DepthEncoding
from uda_data.errors import DataError
from uda_data.files import read_depth, read_image, read_label
from uda_data.layouts import CITYSCAPES, GTA, LAYOUTS, SYNTHIA, Folders, Layout
from uda_data.transforms import (
    PhotoMetricDistortion,
    ResizeMode,
    Sample,
    Size,
    normalize,
    pad,
    random_crop,
    random_flip,
    resize_to_scale,
    to_tensors,
)

if TYPE_CHECKING:
    from uda_data.rcs import RareClassSampler


@dataclass(frozen=True)
class Item:
    image: Path
    label: Path | None
    depth: Path | None


class SegmentationFolder(torch.utils.data.Dataset):
    """Raw (image, label, depth) samples of one dataset split, validated as they load."""

    def __init__(
        self, name: str, items: list[Item], depth_encoding: DepthEncoding = "depth_anything_png"
    ):
        if not items:
            raise DataError(f"{name}: no images found; check the dataset root")
        self.name = name
        self.items = items
        self.depth_encoding = depth_encoding

    def __len__(self) -> int:
        return len(self.items)

    def load(self, index: int) -> Sample:
        item = self.items[index]
        image = read_image(item.image)
        dense = {}
        if item.label is not None:
            dense["label"] = read_label(item.label)
        if item.depth is not None:
            dense["depth"] = read_depth(item.depth, self.depth_encoding)
        height, width = image.shape[:2]
        for key, value in dense.items():
            if value.shape != (height, width):
                path = item.label if key == "label" else item.depth
                raise DataError(
                    f"{path}: {key} is {value.shape[1]}x{value.shape[0]} but its image"
                    f" {item.image.name} is {width}x{height}; regenerate or resize the {key} map"
                )
        return Sample(image, dense, item.image.name)


def _require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise DataError(f"{what}: folder {path} does not exist; check the dataset root")
    return path


def _absent(path: Path) -> str:
    if path.is_symlink():
        return f"{path} is a symbolic link to {os.readlink(path)}, which does not exist"
    return f"{path} is missing"


def _pair(
    folders: list[Folders],
    name: str,
    with_labels: bool,
    with_depth: bool,
    depth_encoding: DepthEncoding,
) -> list[Item]:
    items = []
    missing_labels, missing_depth = [], []
    for where in folders:
        for image in where.find_images():
            label = where.label_of(image) if with_labels else None
            depth = where.depth_of(image, depth_encoding) if with_depth else None
            if label is not None and not label.is_file():
                missing_labels.append(label)
            if depth is not None and not depth.is_file():
                missing_depth.append(depth)
            items.append(Item(image, label, depth))
    if missing_labels:
        raise DataError(
            f"{name}: {len(missing_labels)} images have no label,"
            f" e.g. {_absent(missing_labels[0])};"
            " convert the labels or remove those images"
        )
    if missing_depth:
        raise DataError(
            f"{name}: {len(missing_depth)} images have no depth map,"
            f" e.g. {_absent(missing_depth[0])};"
            " generate depth with `uda data depth` or disable what needs it"
        )
    return items


def _unpaired_label(folders: list[Folders], items: list[Item]) -> tuple[int, str]:
    """How many trainId labels have no image, and a line naming the first."""
    paired = {item.label for item in items}
    unpaired = [(w, label) for w in folders for label in w.find_labels() if label not in paired]
    if not unpaired:
        return 0, ""
    where, label = unpaired[0]
    return len(unpaired), f"{label} has no {where.image_of(label)}"


def open_layout(
    layout: Layout | str,
    root: Path,
    split: str | None = None,
    *,
    conditions: Sequence[str] | None = None,
    with_labels: bool = True,
    with_depth: bool = False,
    depth_encoding: DepthEncoding = "depth_anything_png",
) -> SegmentationFolder:
    """A dataset (one split of it, for layouts with splits) in one of the release layouts;
    ``conditions``: the ACDC or Dark Zurich conditions to use together (default: the
    layout's)."""
    layout = LAYOUTS[layout] if isinstance(layout, str) else layout
    root = Path(root)
    folders = layout.folders(root, split, conditions)
    what = f"{layout.title} layout"
    for where in folders:
        _require_dir(where.images, what)
        if with_labels:
            _require_dir(where.labels, what)
    split = folders[0].split
    chosen = "+".join(w.condition for w in folders if w.condition)
    scope = ", ".join(part for part in (split, chosen) if part)
    name = f"{what} at {root}" + (f" ({scope})" if scope else "")
    items = _pair(folders, name, with_labels, with_depth, depth_encoding)
    count, example = _unpaired_label(folders, items) if with_labels else (0, "")
    if count:
        raise DataError(
            f"{name}: {count} labels have no image, e.g. {example};"
            " restore the images or remove those labels"
        )
    return SegmentationFolder(name, items, depth_encoding)


def gta_folder(root: Path, **options) -> SegmentationFolder:
    """A dataset in the GTA layout (options: those of ``open_layout``)."""
    return open_layout(GTA, root, **options)


def synthia_folder(root: Path, **options) -> SegmentationFolder:
    """A dataset in the Synthia RAND-CITYSCAPES layout (options: those of ``open_layout``)."""
    return open_layout(SYNTHIA, root, **options)


def cityscapes_folder(root: Path, split: str, **options) -> SegmentationFolder:
    """A split of a dataset in the Cityscapes layout (options: those of ``open_layout``)."""
    return open_layout(CITYSCAPES, root, split, **options)


RCS_REDRAWS = 10
"""Rare class sampling re-runs the pipeline of the drawn image up to 10 times while its crop
holds too few pixels of the class: 11 crops at most, the last kept unchecked
(MIC ``uda_dataset.py:123-138``)."""


def margin_mask(size: Size, margins: tuple[int, int, int, int]) -> np.ndarray:
    """H x W uint8: 0 within (top, bottom, left, right) pixels of the border, 1 inside."""
    width, height = size
    top, bottom, left, right = margins
    mask = np.zeros((height, width), np.uint8)
    mask[top : max(height - bottom, top), left : max(width - right, left)] = 1
    return mask


@dataclass(frozen=True)
class TrainPipeline:
    """Resize, random crop, flip, normalise, pad: the training transforms of one domain, in
    the reference's order (``Normalize`` before ``Pad``, so padded pixels are the mean colour).

    With a ``rare_class`` (rare class sampling) and ``min_class_pixels > 0``, the crop and flip
    are drawn again, up to ``RCS_REDRAWS`` times, until the crop holds more than
    ``min_class_pixels`` pixels of that class (counted after the resize); the last draw is kept
    unchecked. Each draw is a full ``cat_max_ratio`` crop, as DAFormer re-runs its pipeline.
    """

    crop: Size
    resize: Size | None = None
    cat_max_ratio: float = 1.0
    flip_prob: float = 0.5
    valid_margins: tuple[int, int, int, int] | None = None
    """(top, bottom, left, right): adds a ``valid`` map, 0 on these borders of the resized
    image and 1 inside, that crops and flips with the image and is padded with 255, as the
    reference pads its ``valid_pseudo_mask`` (HRDA's pseudo-label margins)."""
    resize_mode: ResizeMode = "keep_ratio"
    """How ``resize`` is read (``uda_data.transforms.ResizeMode``)."""
    photometric: PhotoMetricDistortion | None = None
    """Colour distortion of the final crop, before normalising (the DG branch's source)."""

    def _crop_and_flip(self, sample: Sample, rng: np.random.Generator) -> Sample:
        cropped = random_crop(sample, self.crop, rng, self.cat_max_ratio)
        return random_flip(cropped, rng, self.flip_prob)

    def __call__(
        self,
        sample: Sample,
        rng: np.random.Generator,
        rare_class: int | None = None,
        min_class_pixels: int = 0,
    ) -> dict[str, torch.Tensor]:
        if self.resize is not None:
            sample = resize_to_scale(sample, self.resize, self.resize_mode)
        if self.valid_margins is not None:
            valid = margin_mask(sample.size, self.valid_margins)
            sample = Sample(sample.image, {**sample.dense, "valid": valid}, sample.name)
        out = self._crop_and_flip(sample, rng)
        if rare_class is not None and min_class_pixels > 0:
            for _ in range(RCS_REDRAWS):
                if (out.dense["label"] == rare_class).sum() > min_class_pixels:
                    break
                out = self._crop_and_flip(sample, rng)
        if self.photometric is not None:
            out = self.photometric(out, rng)
        return to_tensors(pad(normalize(out), self.crop))


class UDATrainSet(torch.utils.data.Dataset):
    """Draw number n -> one source sample and (optionally) one target sample.

    Each draw's randomness comes only from (seed, rank, n), so the stream of batches is the
    same with any number of loader workers and restarts exactly where a run stopped.

    With a ``source_sampler`` (rare class sampling) the source image comes from
    ``source_sampler.draw`` instead of uniformly, and its crop is re-drawn until it holds more
    than ``min_crop_pixels`` pixels of the drawn class (see ``TrainPipeline``).
    """

    def __init__(
        self,
        source: SegmentationFolder,
        source_pipeline: TrainPipeline,
        target: SegmentationFolder | None = None,
        target_pipeline: TrainPipeline | None = None,
        *,
        seed: int = 0,
        rank: int = 0,
        source_sampler: RareClassSampler | None = None,
        min_crop_pixels: int = 0,
    ) -> None:
        self.source, self.source_pipeline = source, source_pipeline
        self.target, self.target_pipeline = target, target_pipeline
        self.seed, self.rank = seed, rank
        self.source_sampler, self.min_crop_pixels = source_sampler, min_crop_pixels

    def __len__(self) -> int:
        return 2**62

    def __getitem__(self, n: int) -> dict[str, dict[str, torch.Tensor]]:
        rng = np.random.default_rng([self.seed, self.rank, n])
        if self.source_sampler is None:
            index, rare_class = int(rng.integers(len(self.source))), None
        else:
            index, rare_class = self.source_sampler.draw(rng)
        source = self.source.load(index)
        out = {"source": self.source_pipeline(source, rng, rare_class, self.min_crop_pixels)}
        if self.target is not None:
            out["target"] = self.target_pipeline(
                self.target.load(int(rng.integers(len(self.target)))), rng
            )
        return out


class EvalSet(torch.utils.data.Dataset):
    """Images resized for the network as ``resize_mode`` says (the reference's test pipeline:
    ``Resize(keep_ratio=True)`` with OpenCV on the 8-bit image, then ``Normalize``); labels at
    their original resolution, as scored."""

    def __init__(
        self,
        folder: SegmentationFolder,
        resize_to: Size | None = None,
        resize_mode: ResizeMode = "keep_ratio",
    ) -> None:
        self.folder = folder
        self.resize_to = resize_to
        self.resize_mode = resize_mode

    def __len__(self) -> int:
        return len(self.folder)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | str]:
        sample = self.folder.load(index)
        label = sample.dense.pop("label")
        if self.resize_to is not None:
            sample = resize_to_scale(sample, self.resize_to, self.resize_mode)
        out = to_tensors(sample)
        out["label"] = torch.from_numpy(label.astype(np.int64))
        out["name"] = sample.name
        return out

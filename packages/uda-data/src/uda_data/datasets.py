"""Datasets in the layouts of the real releases, and the views training and evaluation use.

The layouts (GTA, Synthia, Cityscapes) are described in ``uda_data.layouts``. Labels are
trainId PNGs (run ``uda data convert`` on the original releases). Depth is read only when
asked for.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image

from uda_data.classes import IGNORE_INDEX, NUM_CLASSES
from uda_data.depth import DepthEncoding, decode_depth_anything
from uda_data.errors import DataError
from uda_data.layouts import CITYSCAPES, GTA, LAYOUTS, SYNTHIA, Layout
from uda_data.transforms import Sample, Size, pad, random_crop, random_flip, resize, to_tensors

if TYPE_CHECKING:
    from uda_data.rcs import RareClassSampler


@dataclass(frozen=True)
class Item:
    image: Path
    label: Path | None
    depth: Path | None


def _read_png(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as img:
            return np.array(img)
    except (OSError, ValueError) as exc:
        raise DataError(
            f"{path}: cannot be read as an image ({exc}); replace or remove the file"
        ) from None


def read_label(path: Path) -> np.ndarray:
    """A uint8 trainId label map; other values raise a DataError that names the file."""
    label = _read_png(path)
    if label.ndim == 3:
        label = label[..., 0]
    values = np.unique(label)
    bad = values[(values >= NUM_CLASSES) & (values != IGNORE_INDEX)]
    if len(bad):
        raise DataError(
            f"{path}: label values {bad[:5].tolist()} are not trainIds (0-{NUM_CLASSES - 1} or"
            f" {IGNORE_INDEX}); convert the labels with `uda data convert`"
        )
    return label.astype(np.uint8)


def read_depth(path: Path, encoding: DepthEncoding) -> np.ndarray:
    """A float32 depth map from a file in the given encoding."""
    if encoding == "float_npy":
        if not path.is_file():
            raise DataError(f"{path}: depth file is missing")
        depth = np.load(path).astype(np.float32)
    else:
        raw = _read_png(path)
        if raw.ndim == 3:
            raw = raw[..., 0]
        expected = np.uint8 if encoding == "depth_anything_png" else np.uint16
        if raw.dtype != expected:
            bits = 8 * np.dtype(expected).itemsize
            raise DataError(
                f"{path}: {encoding} depth is a {bits}-bit PNG, this one holds {raw.dtype};"
                " set depth_encoding to how the maps were written"
            )
        if encoding == "depth_anything_png":
            depth = decode_depth_anything(raw)
        else:
            depth = raw.astype(np.float32) / 1000.0
    if not np.isfinite(depth).all():
        raise DataError(f"{path}: depth holds NaN or infinite values; regenerate it")
    return depth


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
        image = _read_png(item.image)
        if image.ndim == 2:
            image = np.repeat(image[..., None], 3, axis=2)
        image = image[..., :3]
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


def _pair(
    images: list[Path], label_of, depth_of, name: str, with_labels: bool, with_depth: bool
) -> list[Item]:
    items = []
    missing_labels, missing_depth = [], []
    for image in images:
        label = label_of(image) if with_labels else None
        depth = depth_of(image) if with_depth else None
        if label is not None and not label.is_file():
            missing_labels.append(label)
        if depth is not None and not depth.is_file():
            missing_depth.append(depth)
        items.append(Item(image, label, depth))
    if missing_labels:
        raise DataError(
            f"{name}: {len(missing_labels)} images have no label,"
            f" e.g. {missing_labels[0]} is missing;"
            " convert the labels or remove those images"
        )
    if missing_depth:
        raise DataError(
            f"{name}: {len(missing_depth)} images have no depth map,"
            f" e.g. {missing_depth[0]} is missing;"
            " generate depth with `uda data depth` or disable what needs it"
        )
    return items


def open_layout(
    layout: Layout | str,
    root: Path,
    split: str | None = None,
    *,
    with_labels: bool = True,
    with_depth: bool = False,
    depth_encoding: DepthEncoding = "depth_anything_png",
) -> SegmentationFolder:
    """A dataset (one split of it, for Cityscapes) in one of the release layouts."""
    layout = LAYOUTS[layout] if isinstance(layout, str) else layout
    root = Path(root)
    split = split if layout.has_splits else None
    what = f"{layout.title} layout"
    _require_dir(layout.image_dir(root, split), what)
    if with_labels:
        _require_dir(layout.label_dir(root, split), what)
    name = f"{what} at {root}" + (f" ({split})" if split else "")
    items = _pair(
        layout.find_images(root, split),
        lambda p: layout.label_of(root, split, p),
        lambda p: layout.depth_of(root, split, p, depth_encoding),
        name,
        with_labels,
        with_depth,
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


RCS_CROP_TRIES = 10


def margin_mask(size: Size, margins: tuple[int, int, int, int]) -> np.ndarray:
    """H x W uint8: 0 within (top, bottom, left, right) pixels of the border, 1 inside."""
    width, height = size
    top, bottom, left, right = margins
    mask = np.zeros((height, width), np.uint8)
    mask[top : max(height - bottom, top), left : max(width - right, left)] = 1
    return mask


@dataclass(frozen=True)
class TrainPipeline:
    """Resize, random crop, flip, pad, normalise: the training transforms of one domain.

    With a ``rare_class`` (rare class sampling) and ``min_class_pixels > 0``, the crop is
    drawn again, up to ``RCS_CROP_TRIES`` times in all, until it holds more than
    ``min_class_pixels`` pixels of that class (counted after the resize); the last crop is kept
    if none does. Each try is a full ``cat_max_ratio`` crop, as DAFormer re-runs its pipeline.
    """

    crop: Size
    resize: Size | None = None
    cat_max_ratio: float = 1.0
    flip_prob: float = 0.5
    valid_margins: tuple[int, int, int, int] | None = None
    """(top, bottom, left, right): adds a ``valid`` map, 0 on these borders of the resized
    image and 1 inside, that crops, flips and pads with the image (HRDA's pseudo-label margins)."""

    def __call__(
        self,
        sample: Sample,
        rng: np.random.Generator,
        rare_class: int | None = None,
        min_class_pixels: int = 0,
    ) -> dict[str, torch.Tensor]:
        if self.resize is not None:
            sample = resize(sample, self.resize)
        if self.valid_margins is not None:
            valid = margin_mask(sample.size, self.valid_margins)
            sample = Sample(sample.image, {**sample.dense, "valid": valid}, sample.name)
        focus = rare_class is not None and min_class_pixels > 0
        for _ in range(RCS_CROP_TRIES if focus else 1):
            cropped = random_crop(sample, self.crop, rng, self.cat_max_ratio)
            if not focus or (cropped.dense["label"] == rare_class).sum() > min_class_pixels:
                break
        sample = random_flip(cropped, rng, self.flip_prob)
        return to_tensors(pad(sample, self.crop))


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
    """Images resized for the network; labels at their original resolution, as scored."""

    def __init__(self, folder: SegmentationFolder, resize_to: Size | None = None) -> None:
        self.folder = folder
        self.resize_to = resize_to

    def __len__(self) -> int:
        return len(self.folder)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | str]:
        sample = self.folder.load(index)
        label = sample.dense.pop("label")
        if self.resize_to is not None:
            sample = resize(sample, self.resize_to)
        out = to_tensors(sample)
        out["label"] = torch.from_numpy(label.astype(np.int64))
        out["name"] = sample.name
        return out

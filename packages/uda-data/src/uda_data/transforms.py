"""Joint transforms: an image and its dense maps (label, depth, ...) move together.

Sizes are (width, height), as datasets are described ("GTA resized to 1280x720").
Every transform that draws randomness takes a ``numpy.random.Generator`` so that a sample is
a pure function of its seed (resumable, identical across worker counts).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from PIL import Image

from uda_data.classes import IGNORE_INDEX

Size = tuple[int, int]

IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)


@dataclass(frozen=True)
class DenseKind:
    """How a dense map is resampled and what fills pixels it does not cover."""

    interpolation: Literal["nearest", "bilinear"]
    fill: float


DENSE_KINDS: dict[str, DenseKind] = {
    "label": DenseKind("nearest", IGNORE_INDEX),
    "depth": DenseKind("bilinear", 0.0),
    "valid": DenseKind("nearest", 0),
}


@dataclass
class Sample:
    """An H x W x 3 uint8 image and dense maps of the same H x W, by name."""

    image: np.ndarray
    dense: dict[str, np.ndarray] = field(default_factory=dict)
    name: str = ""

    @property
    def size(self) -> Size:
        return self.image.shape[1], self.image.shape[0]


def _resize_map(values: np.ndarray, size: Size, kind: DenseKind) -> np.ndarray:
    mode = Image.NEAREST if kind.interpolation == "nearest" else Image.BILINEAR
    if values.dtype == np.uint8:
        return np.array(Image.fromarray(values).resize(size, mode))
    resized = Image.fromarray(values.astype(np.float32)).resize(size, mode)
    return np.asarray(resized).astype(values.dtype)


def resize(sample: Sample, size: Size, dense: bool = True) -> Sample:
    """Resize the image bilinearly and, if ``dense``, each map by its own rule."""
    if sample.size == tuple(size):
        return sample
    image = np.array(Image.fromarray(sample.image).resize(tuple(size), Image.BILINEAR))
    maps = dict(sample.dense)
    if dense:
        maps = {k: _resize_map(v, tuple(size), DENSE_KINDS[k]) for k, v in maps.items()}
    return Sample(image, maps, sample.name)


def crop(sample: Sample, left: int, top: int, size: Size) -> Sample:
    w, h = size
    return Sample(
        sample.image[top : top + h, left : left + w],
        {k: v[top : top + h, left : left + w] for k, v in sample.dense.items()},
        sample.name,
    )


def random_crop(
    sample: Sample, size: Size, rng: np.random.Generator, cat_max_ratio: float = 1.0
) -> Sample:
    """A random crop of ``size`` (clipped to the image); with ``cat_max_ratio < 1``, up to ten
    draws to find one where no single class covers more than that share of labelled pixels."""
    w = min(size[0], sample.size[0])
    h = min(size[1], sample.size[1])
    for _ in range(10 if cat_max_ratio < 1.0 else 1):
        left = int(rng.integers(0, sample.size[0] - w + 1))
        top = int(rng.integers(0, sample.size[1] - h + 1))
        out = crop(sample, left, top, (w, h))
        if cat_max_ratio >= 1.0 or "label" not in out.dense:
            return out
        counts = np.bincount(out.dense["label"].ravel(), minlength=256)[:IGNORE_INDEX]
        counts = counts[counts > 0]
        if len(counts) > 1 and counts.max() / counts.sum() < cat_max_ratio:
            return out
    return out


def random_flip(sample: Sample, rng: np.random.Generator, prob: float = 0.5) -> Sample:
    if rng.random() >= prob:
        return sample
    return Sample(
        np.ascontiguousarray(sample.image[:, ::-1]),
        {k: np.ascontiguousarray(v[:, ::-1]) for k, v in sample.dense.items()},
        sample.name,
    )


def pad(sample: Sample, size: Size) -> Sample:
    """Pad bottom and right up to ``size``: image with 0, each map with its fill value."""
    w, h = size
    pw, ph = max(w - sample.size[0], 0), max(h - sample.size[1], 0)
    if pw == 0 and ph == 0:
        return sample
    image = np.pad(sample.image, ((0, ph), (0, pw), (0, 0)))
    maps = {
        k: np.pad(v, ((0, ph), (0, pw)), constant_values=DENSE_KINDS[k].fill)
        for k, v in sample.dense.items()
    }
    return Sample(image, maps, sample.name)


def to_tensors(sample: Sample) -> dict[str, torch.Tensor]:
    """Normalised CHW float image plus the dense maps (labels as int64)."""
    image = torch.from_numpy(np.ascontiguousarray(sample.image)).permute(2, 0, 1).float()
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    out = {"image": (image - mean) / std}
    for key, value in sample.dense.items():
        tensor = torch.from_numpy(np.ascontiguousarray(value))
        out[key] = tensor.long() if key == "label" else tensor.float()
    return out

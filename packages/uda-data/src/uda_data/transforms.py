"""Joint transforms: an image and its dense maps (label, depth, ...) move together.

Sizes are (width, height), as datasets are described ("GTA resized to 1280x720").
Every transform that draws randomness takes a ``numpy.random.Generator`` so that a sample is
a pure function of its seed (resumable, identical across worker counts).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import cv2
import numpy as np
import torch

from uda_data.classes import IGNORE_INDEX

Size = tuple[int, int]

IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)


ResizeMode = Literal["keep_ratio", "stretch"]
"""``keep_ratio``: as large as fits the scale, aspect ratio kept (the reference's
``Resize(keep_ratio=True)``); ``stretch``: exactly the scale's width and height (ours)."""


@dataclass(frozen=True)
class DenseKind:
    """How a dense map is resampled and what fills pixels it does not cover."""

    interpolation: Literal["nearest", "bilinear"]
    fill: float


DENSE_KINDS: dict[str, DenseKind] = {
    "label": DenseKind("nearest", IGNORE_INDEX),
    "depth": DenseKind("bilinear", 0.0),
    "valid": DenseKind("nearest", IGNORE_INDEX),
}
"""The reference pads every segmentation field (label, valid pseudo-label mask) with 255
(``Pad(seg_pad_val=255)``, MIC ``transforms.py:301-369``) and depth with 0 (dispersion
``transforms.py:369-375``)."""

_CV2_INTERPOLATION = {"nearest": cv2.INTER_NEAREST, "bilinear": cv2.INTER_LINEAR}


@dataclass
class Sample:
    """An H x W x 3 image (uint8, float32 once normalised) and dense maps of the same H x W."""

    image: np.ndarray
    dense: dict[str, np.ndarray] = field(default_factory=dict)
    name: str = ""

    @property
    def size(self) -> Size:
        return self.image.shape[1], self.image.shape[0]


def rescale_size(size: Size, scale: Size) -> Size:
    """The size of an image of ``size`` rescaled as large as fits ``scale``, aspect ratio kept,
    as mmcv's ``rescale_size`` computes it (mmcv 1.3.7 ``image/geometric.py:117-146``): factor
    min(long scale side / long side, short / short), each side ``int(side * factor + 0.5)``."""
    factor = min(max(scale) / max(size), min(scale) / min(size))
    return int(size[0] * factor + 0.5), int(size[1] * factor + 0.5)


def resize_size(size: Size, scale: Size, mode: ResizeMode = "keep_ratio") -> Size:
    """The size a resize to ``scale`` gives an image of ``size`` in that mode."""
    return rescale_size(size, scale) if mode == "keep_ratio" else tuple(scale)


def _resize_map(values: np.ndarray, size: Size, interpolation: str) -> np.ndarray:
    """``cv2.resize`` as mmcv's ``imresize`` calls it: bilinear without antialiasing, nearest
    sampling source pixel floor(i * source / target); uint8 stays uint8, others float32."""
    dtype = values.dtype
    if dtype != np.uint8:
        values = values.astype(np.float32)
    out = cv2.resize(values, tuple(size), interpolation=_CV2_INTERPOLATION[interpolation])
    return out if dtype == np.uint8 else out.astype(dtype, copy=False)


def resize(sample: Sample, size: Size, dense: bool = True) -> Sample:
    """Resize to exactly ``size``: the image bilinearly and, if ``dense``, each map by its own
    rule (labels nearest, depth bilinear), all with OpenCV as the reference does."""
    size = tuple(size)
    if sample.size == size:
        return sample
    image = _resize_map(sample.image, size, "bilinear")
    maps = dict(sample.dense)
    if dense:
        maps = {k: _resize_map(v, size, DENSE_KINDS[k].interpolation) for k, v in maps.items()}
    return Sample(image, maps, sample.name)


def resize_to_scale(
    sample: Sample, scale: Size, mode: ResizeMode = "keep_ratio", dense: bool = True
) -> Sample:
    """Resize to ``scale`` as ``mode`` says (see ``ResizeMode``)."""
    return resize(sample, resize_size(sample.size, scale, mode), dense)


def crop(sample: Sample, left: int, top: int, size: Size) -> Sample:
    w, h = size
    return Sample(
        sample.image[top : top + h, left : left + w],
        {k: v[top : top + h, left : left + w] for k, v in sample.dense.items()},
        sample.name,
    )


CAT_MAX_REDRAWS = 10
"""``RandomCrop`` with ``cat_max_ratio < 1`` draws a box, then re-draws it up to 10 times
while one class covers too much of it: 11 draws, the last kept unchecked."""


def _balanced(label: np.ndarray, cat_max_ratio: float) -> bool:
    counts = np.bincount(label.ravel(), minlength=256)[:IGNORE_INDEX]
    counts = counts[counts > 0]
    return len(counts) > 1 and counts.max() / counts.sum() < cat_max_ratio


def random_crop(
    sample: Sample, size: Size, rng: np.random.Generator, cat_max_ratio: float = 1.0
) -> Sample:
    """A random crop of ``size`` (clipped to the image), as mmseg's ``RandomCrop``
    (MIC ``transforms.py:505-575``): the top offset drawn, then the left, each uniformly in
    0..margin; with ``cat_max_ratio < 1`` and a label, re-drawn (``CAT_MAX_REDRAWS``) until
    more than one class is labelled and none covers ``cat_max_ratio`` of the labelled pixels."""
    w = min(size[0], sample.size[0])
    h = min(size[1], sample.size[1])

    def draw() -> Sample:
        top = int(rng.integers(0, sample.size[1] - h + 1))
        left = int(rng.integers(0, sample.size[0] - w + 1))
        return crop(sample, left, top, (w, h))

    out = draw()
    if cat_max_ratio < 1.0 and "label" in sample.dense:
        for _ in range(CAT_MAX_REDRAWS):
            if _balanced(out.dense["label"], cat_max_ratio):
                break
            out = draw()
    return out


def random_flip(sample: Sample, rng: np.random.Generator, prob: float = 0.5) -> Sample:
    if rng.random() >= prob:
        return sample
    return Sample(
        np.ascontiguousarray(sample.image[:, ::-1]),
        {k: np.ascontiguousarray(v[:, ::-1]) for k, v in sample.dense.items()},
        sample.name,
    )


def normalize(sample: Sample) -> Sample:
    """The image as float32 (x - mean) / std, as mmcv's ``imnormalize`` computes it
    (mmcv 1.3.7 ``image/photometric.py:24-44``, with mmseg's float32 mean and std): minus the mean,
    times 1/std taken in float64, rounded to float32 once."""
    mean = np.float32(IMAGENET_MEAN)
    inverse_std = 1.0 / np.float32(IMAGENET_STD).astype(np.float64)
    image = ((sample.image.astype(np.float32) - mean) * inverse_std).astype(np.float32)
    return Sample(image, sample.dense, sample.name)


def pad(sample: Sample, size: Size) -> Sample:
    """Pad bottom and right up to ``size``: the image with 0 and each map with its fill value.
    After ``normalize``, as the reference pipeline pads (``Normalize`` before ``Pad``), the
    image's 0 is the mean colour."""
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
    """A CHW float image (normalised here unless ``normalize`` ran) plus the dense maps
    (labels as int64)."""
    if sample.image.dtype == np.uint8:
        sample = normalize(sample)
    out = {"image": torch.from_numpy(np.ascontiguousarray(sample.image.transpose(2, 0, 1)))}
    for key, value in sample.dense.items():
        tensor = torch.from_numpy(np.ascontiguousarray(value))
        out[key] = tensor.long() if key == "label" else tensor.float()
    return out


@dataclass(frozen=True)
class PhotoMetricDistortion:
    """mmseg's ``PhotoMetricDistortion`` with its defaults (HRDA ``dg`` branch
    ``mmseg/datasets/pipelines/transforms.py:781-887``), which the DG branch's ``gtaCAug``
    source pipelines run after the crop and flip (``uda_gtaCAug_to_cityscapes_512x512.py:18``).

    Each step runs when ``randint(2)`` draws 1, on the uint8 image (``convert``: float32
    ``x * alpha + beta``, clipped to [0, 255], truncated to uint8): brightness ``beta ~
    U(-32, 32)``; then a mode ``randint(2)``: 1 puts the contrast (``alpha ~ U(0.5, 1.5)``)
    here, 0 after the hue; saturation (OpenCV HSV, S channel ``convert``-ed with ``alpha ~
    U(0.5, 1.5)``); hue (H plus ``randint(-18, 18)``, upper bound excluded, modulo 180).
    Ours takes RGB images: OpenCV's RGB<->HSV on them equals the reference's BGR<->HSV on
    BGR images.
    """

    brightness_delta: int = 32
    contrast_range: tuple[float, float] = (0.5, 1.5)
    saturation_range: tuple[float, float] = (0.5, 1.5)
    hue_delta: int = 18

    @staticmethod
    def convert(image: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
        """``x * alpha + beta`` in float32, clipped to [0, 255], truncated to uint8."""
        out = image.astype(np.float32) * np.float32(alpha) + np.float32(beta)
        return np.clip(out, 0, 255).astype(np.uint8)

    def _brightness(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if rng.integers(2):
            delta = self.brightness_delta
            return self.convert(image, beta=rng.uniform(-delta, delta))
        return image

    def _contrast(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if rng.integers(2):
            return self.convert(image, alpha=rng.uniform(*self.contrast_range))
        return image

    def _saturation(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if rng.integers(2):
            hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)
            hsv[:, :, 1] = self.convert(hsv[:, :, 1], alpha=rng.uniform(*self.saturation_range))
            return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
        return image

    def _hue(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if rng.integers(2):
            hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)
            shift = int(rng.integers(-self.hue_delta, self.hue_delta))
            hsv[:, :, 0] = (hsv[:, :, 0].astype(int) + shift) % 180
            return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
        return image

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        image = self._brightness(sample.image, rng)
        contrast_first = rng.integers(2) == 1
        if contrast_first:
            image = self._contrast(image, rng)
        image = self._hue(self._saturation(image, rng), rng)
        if not contrast_first:
            image = self._contrast(image, rng)
        return Sample(image, sample.dense, sample.name)

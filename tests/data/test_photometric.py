"""mmseg's PhotoMetricDistortion (HRDA dg ``mmseg/datasets/pipelines/transforms.py:781-887``)
against the reference's formulas, replayed on BGR images as mmseg holds them."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from uda_data.config import DataConfig, DatasetConfig, source_pipeline, target_pipeline
from uda_data.datasets import TrainPipeline
from uda_data.transforms import PhotoMetricDistortion, Sample


class ScriptedRng:
    """Returns scripted draws and records each call's arguments."""

    def __init__(self, integers: list[int], uniforms: list[float]) -> None:
        self._integers, self._uniforms = list(integers), list(uniforms)
        self.calls: list[tuple] = []

    def integers(self, *args):
        self.calls.append(("integers", *args))
        return self._integers.pop(0)

    def uniform(self, *args):
        self.calls.append(("uniform", *args))
        return self._uniforms.pop(0)


def _convert(img, alpha=1.0, beta=0.0):
    """``transforms.py:812-816``."""
    img = img.astype(np.float32) * alpha + beta
    return np.clip(img, 0, 255).astype(np.uint8)


def _reference(bgr, brightness, mode, contrast, saturation, hue):
    """``transforms.py:856-887`` with the draws given (None: gate closed), on a BGR image."""
    img = bgr if brightness is None else _convert(bgr, beta=brightness)
    if mode == 1 and contrast is not None:
        img = _convert(img, alpha=contrast)
    if saturation is not None:
        hsv = cv2.cvtColor(img, cv2.COLOR_BGR2HSV)
        hsv[:, :, 1] = _convert(hsv[:, :, 1], alpha=saturation)
        img = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)
    if hue is not None:
        hsv = cv2.cvtColor(img, cv2.COLOR_BGR2HSV)
        hsv[:, :, 0] = (hsv[:, :, 0].astype(int) + hue) % 180
        img = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)
    if mode == 0 and contrast is not None:
        img = _convert(img, alpha=contrast)
    return img


def _image(seed=0, size=(24, 16)):
    return np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)


@pytest.mark.parametrize("mode", [0, 1])
def test_photometric_distortion_matches_the_reference_with_every_step_on(mode):
    """All four gates open (``randint(2) == 1``): brightness + 20.5, contrast x 1.3 first
    (mode 1) or last (mode 0), saturation x 0.7 in HSV, hue + 170 modulo 180; the result is
    the reference's on the BGR image, as RGB."""
    rgb = _image()
    label = np.ones(rgb.shape[:2], np.uint8)
    if mode == 1:
        integers, uniforms = [1, 1, 1, 1, 1, 170], [20.5, 1.3, 0.7]
    else:
        integers, uniforms = [1, 0, 1, 1, 170, 1], [20.5, 0.7, 1.3]
    out = PhotoMetricDistortion()(Sample(rgb, {"label": label}), ScriptedRng(integers, uniforms))
    expected = _reference(rgb[..., ::-1].copy(), 20.5, mode, 1.3, 0.7, 170)[..., ::-1]
    np.testing.assert_array_equal(out.image, expected)
    assert out.dense["label"] is label


def test_photometric_distortion_draws_in_the_reference_order_and_ranges():
    """``transforms.py:818-854``: gate ``randint(2)`` then brightness ``uniform(-32, 32)``;
    mode ``randint(2)``; contrast ``uniform(0.5, 1.5)``; saturation ``uniform(0.5, 1.5)``;
    hue ``randint(-18, 18)`` (upper bound excluded)."""
    rng = ScriptedRng([1, 1, 1, 1, 1, 3], [0.0, 1.0, 1.0])
    PhotoMetricDistortion()(Sample(_image()), rng)
    assert rng.calls == [
        ("integers", 2),
        ("uniform", -32, 32),
        ("integers", 2),
        ("integers", 2),
        ("uniform", 0.5, 1.5),
        ("integers", 2),
        ("uniform", 0.5, 1.5),
        ("integers", 2),
        ("integers", -18, 18),
    ]


def test_photometric_distortion_with_every_gate_closed_leaves_the_image():
    """Each step runs only when ``randint(2)`` draws 1."""
    rgb = _image(1)
    out = PhotoMetricDistortion()(Sample(rgb), ScriptedRng([0, 0, 0, 0, 0], []))
    np.testing.assert_array_equal(out.image, rgb)


def test_photometric_distortion_clips_then_truncates_to_uint8():
    """``convert``: ``np.clip(x * alpha + beta, 0, 255).astype(np.uint8)`` (truncation)."""
    values = np.array([[[0, 100, 250]]], np.uint8)
    out = PhotoMetricDistortion.convert(values, alpha=1.0, beta=10.7)
    np.testing.assert_array_equal(out, [[[10, 110, 255]]])
    assert PhotoMetricDistortion.convert(values, beta=-30.2)[0, 0, 0] == 0


def test_source_photometric_distorts_the_source_crop_only():
    """The DG branch puts ``PhotoMetricDistortion`` in the GTA pipeline alone
    (``uda_gtaCAug_to_cityscapes_512x512.py:18``; ``:30`` leaves it out of Cityscapes)."""
    data = DataConfig(
        source=DatasetConfig(layout="gta", root="g"),
        target=DatasetConfig(layout="cityscapes", root="c"),
        val=DatasetConfig(layout="cityscapes", root="c", split="val"),
        source_photometric=True,
    )
    assert source_pipeline(data).photometric == PhotoMetricDistortion()
    assert target_pipeline(data).photometric is None
    sample = Sample(_image(2, (32, 32)), {"label": np.zeros((32, 32), np.uint8)})
    plain = TrainPipeline(crop=(16, 16), flip_prob=0.0)
    distorted = TrainPipeline(crop=(16, 16), flip_prob=0.0, photometric=PhotoMetricDistortion())
    changed = [
        not np.array_equal(
            plain(sample, np.random.default_rng(seed))["image"].numpy(),
            distorted(sample, np.random.default_rng(seed))["image"].numpy(),
        )
        for seed in range(8)
    ]
    assert any(changed)

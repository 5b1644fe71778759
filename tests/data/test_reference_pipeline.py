"""The data pipeline as the reference computes it (lhoyer/MIC ``seg/mmseg/datasets``, mmcv
1.3.7 ``mmcv/image``, the dispersion repo's depth loading): each test names the reference
lines it checks."""

from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from uda_data.classes import IGNORE_INDEX
from uda_data.datasets import EvalSet, TrainPipeline, cityscapes_folder
from uda_data.transforms import (
    Sample,
    normalize,
    random_crop,
    rescale_size,
    resize,
    resize_to_scale,
)

GTA_FRAME = (1914, 1052)


def mmcv_rescale_size(size, scale):
    """mmcv 1.3.7 ``image/geometric.py:15-26`` (``_scale_size``) and ``:117-146``."""
    w, h = size
    factor = min(max(scale) / max(h, w), min(scale) / min(h, w))
    return int(w * float(factor) + 0.5), int(h * float(factor) + 0.5)


class CountingRng:
    """A Generator whose ``integers`` calls are counted."""

    def __init__(self, seed: int = 0) -> None:
        self.rng, self.integer_calls, self.random_calls = np.random.default_rng(seed), 0, 0

    def integers(self, *args, **kwargs):
        self.integer_calls += 1
        return self.rng.integers(*args, **kwargs)

    def random(self, *args, **kwargs):
        self.random_calls += 1
        return self.rng.random(*args, **kwargs)


@pytest.mark.parametrize(
    ("scale", "expected"),
    [
        ((1280, 720), (1280, 704)),
        ((2560, 1440), (2560, 1407)),
        ((1024, 512), (932, 512)),
        ((2048, 1024), (1863, 1024)),
    ],
)
def test_keep_ratio_resize_of_a_gta_frame_is_mmcv_rescale_size(scale, expected):
    """mmseg ``Resize(keep_ratio=True)`` (MIC ``transforms.py:185-205``) sizes the image by
    mmcv's ``rescale_size`` (``geometric.py:117-146``): 1914x1052 -> 1280x704, 2560x1407,
    932x512, 1863x1024."""
    assert rescale_size(GTA_FRAME, scale) == mmcv_rescale_size(GTA_FRAME, scale) == expected
    sample = Sample(np.zeros((64, 117, 3), np.uint8), {"label": np.zeros((64, 117), np.uint8)})
    out = resize_to_scale(sample, (80, 40))
    assert out.size == mmcv_rescale_size((117, 64), (80, 40)) == (73, 40)
    assert out.dense["label"].shape == (40, 73)


def test_stretch_resize_mode_gives_exactly_the_scale():
    """Ours, ``resize_mode="stretch"``: exactly (width, height), where the reference's
    ``keep_ratio=False`` calls ``imresize`` to the scale (MIC ``transforms.py:185-205``)."""
    sample = Sample(np.zeros((1052 // 8, 1914 // 8, 3), np.uint8))
    assert resize_to_scale(sample, (160, 90), "stretch").size == (160, 90)


def test_image_resize_is_opencv_bilinear_without_antialiasing():
    """mmcv ``imresize`` resizes with ``cv2.resize(..., INTER_LINEAR)`` (mmcv 1.3.7
    ``geometric.py:85``) on the 8-bit image: half-pixel centres, the two nearest source
    pixels per axis and no antialiasing (within 1 of the float formula: OpenCV's 11-bit
    fixed-point weights)."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (53, 96, 3), dtype=np.uint8)
    out = resize(Sample(image), (41, 17)).image
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, cv2.resize(image, (41, 17), interpolation=cv2.INTER_LINEAR))

    def taps(dst: int, src: int):
        x = np.maximum((np.arange(dst) + 0.5) * (src / dst) - 0.5, 0)
        lo = np.minimum(np.floor(x).astype(int), src - 1)
        return lo, np.minimum(lo + 1, src - 1), x - lo

    y0, y1, fy = taps(17, 53)
    x0, x1, fx = taps(41, 96)
    img = image.astype(np.float64)
    rows = img[y0] * (1 - fy)[:, None, None] + img[y1] * fy[:, None, None]
    formula = rows[:, x0] * (1 - fx)[None, :, None] + rows[:, x1] * fx[None, :, None]
    assert np.abs(out - formula).max() <= 1.0


def test_label_resize_takes_source_pixel_floor_i_times_scale():
    """Labels resize with ``cv2.resize(..., INTER_NEAREST)`` (MIC ``transforms.py:207-216``,
    mmcv ``geometric.py:85``): output pixel i reads source pixel floor(i * source / target)
    on each axis, here for a GTA frame resized for DAFormer (1914x1052 -> 1280x704)."""
    rng = np.random.default_rng(1)
    label = rng.integers(0, 19, GTA_FRAME[::-1], dtype=np.uint8)
    sample = Sample(np.zeros((*GTA_FRAME[::-1], 3), np.uint8), {"label": label})
    out = resize_to_scale(sample, (1280, 720)).dense["label"]

    def source_index(dst: int, src: int) -> np.ndarray:
        return np.minimum(np.floor(np.arange(dst) * (1.0 / (dst / src))).astype(int), src - 1)

    rows, cols = source_index(704, GTA_FRAME[1]), source_index(1280, GTA_FRAME[0])
    np.testing.assert_array_equal(out, label[np.ix_(rows, cols)])


def test_depth_resizes_bilinearly_as_float32_as_the_dispersion_code():
    """The dispersion repo decodes depth to float32 on loading (``loading.py:199-207``) and
    resizes it with ``imrescale(..., interpolation='bilinear')`` (``transforms.py:220-229``):
    ``cv2.resize`` INTER_LINEAR on the float map."""
    rng = np.random.default_rng(2)
    depth = rng.random((52, 95)).astype(np.float32) * 255
    sample = Sample(np.zeros((52, 95, 3), np.uint8), {"depth": depth})
    out = resize_to_scale(sample, (64, 32)).dense["depth"]
    size = mmcv_rescale_size((95, 52), (64, 32))
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, cv2.resize(depth, size, interpolation=cv2.INTER_LINEAR))


def test_cat_max_ratio_draws_eleven_boxes_and_keeps_the_last_unchecked():
    """``RandomCrop`` with ``cat_max_ratio < 1`` (MIC ``transforms.py:537-559``) draws a box,
    then up to 10 more while the crop has one labelled class or one class covers
    ``cat_max_ratio``: 11 draws (top offset, then left) for a one-class label."""
    sample = Sample(np.zeros((40, 60, 3), np.uint8), {"label": np.full((40, 60), 3, np.uint8)})
    rng = CountingRng()
    random_crop(sample, (20, 20), rng, cat_max_ratio=0.75)
    assert rng.integer_calls == 2 * 11


def test_cat_max_ratio_keeps_the_first_balanced_box():
    """The re-draws stop at the first crop where more than one class is labelled and none
    covers ``cat_max_ratio`` of the labelled pixels (MIC ``transforms.py:549-559``)."""
    label = np.zeros((40, 60), np.uint8)
    label[:, 1::2] = 1
    sample = Sample(np.zeros((40, 60, 3), np.uint8), {"label": label})
    rng = CountingRng()
    random_crop(sample, (20, 20), rng, cat_max_ratio=0.75)
    assert rng.integer_calls == 2


def test_rare_class_sampling_redraws_the_crop_ten_times_at_most():
    """DAFormer's ``get_rare_class_sample`` (MIC ``uda_dataset.py:123-138``) runs the
    source pipeline once, then again up to 10 times while the crop holds no more than
    ``min_pixels * min_crop_ratio`` pixels of the class: 11 crops and flips, the last kept
    unchecked."""
    sample = Sample(np.zeros((40, 60, 3), np.uint8), {"label": np.zeros((40, 60), np.uint8)})
    rng = CountingRng()
    TrainPipeline(crop=(20, 20))(sample, rng, rare_class=5, min_class_pixels=10)
    assert (rng.integer_calls, rng.random_calls) == (2 * 11, 11)


def test_padding_follows_normalisation_label_and_valid_mask_padded_with_255():
    """The reference pipeline normalises, then pads (``Normalize`` before ``Pad(pad_val=0,
    seg_pad_val=255)`` in ``configs/_base_/datasets/*``; MIC ``transforms.py:301-369``): the
    padded image is 0 after normalisation (the mean colour), every segmentation field (label,
    ``valid_pseudo_mask``, MIC ``cityscapes.py:49-67``) 255, depth 0 (dispersion
    ``transforms.py:369-375``)."""
    sample = Sample(
        np.full((10, 12, 3), 7, np.uint8),
        {"label": np.ones((10, 12), np.uint8), "depth": np.ones((10, 12), np.float32)},
    )
    out = TrainPipeline(crop=(16, 14), flip_prob=0.0, valid_margins=(0, 0, 0, 0))(
        sample, np.random.default_rng(0)
    )
    assert (out["image"][:, 10:, :] == 0).all() and (out["image"][:, :, 12:] == 0).all()
    assert (out["image"][:, :10, :12] != 0).all()
    for key, fill in (("label", IGNORE_INDEX), ("valid", IGNORE_INDEX), ("depth", 0)):
        assert (out[key][10:] == fill).all() and (out[key][:, 12:] == fill).all(), key
        assert (out[key][:10, :12] == 1).all(), key


def test_normalisation_is_mmcv_imnormalize():
    """mmseg's ``Normalize`` (MIC ``transforms.py:372-411``, float32 mean and std) calls
    mmcv's ``imnormalize_`` (mmcv 1.3.7 ``photometric.py:24-44``): ``cv2.subtract`` of the
    mean, ``cv2.multiply`` by 1/std in float64, into float32."""
    image = np.random.default_rng(3).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    mean = np.float64(np.array([123.675, 116.28, 103.53], np.float32).reshape(1, -1))
    std = np.array([58.395, 57.12, 57.375], np.float32)
    expected = image.astype(np.float32)
    cv2.subtract(expected, mean, expected)
    cv2.multiply(expected, 1 / np.float64(std.reshape(1, -1)), expected)
    np.testing.assert_array_equal(normalize(Sample(image)).image, expected)


class _Folder:
    def __init__(self, sample: Sample) -> None:
        self.sample = sample

    def __len__(self) -> int:
        return 1

    def load(self, index: int) -> Sample:
        return Sample(self.sample.image, dict(self.sample.dense), "frame.png")


def test_eval_input_is_the_reference_test_pipeline():
    """The val image as the reference's test pipeline feeds it (MIC
    ``configs/_base_/datasets/uda_gta_to_cityscapes_512x512.py``: ``Resize(keep_ratio=True)``
    to the test scale, ``Normalize``): ``cv2.resize`` INTER_LINEAR of the 8-bit image to
    ``rescale_size``, then ``imnormalize``; the label stays at full size."""
    rng = np.random.default_rng(4)
    image = rng.integers(0, 256, (100, 200, 3), dtype=np.uint8)
    label = rng.integers(0, 19, (100, 200), dtype=np.uint8)
    out = EvalSet(_Folder(Sample(image, {"label": label})), (96, 40))[0]
    resized = cv2.resize(image, mmcv_rescale_size((200, 100), (96, 40)), cv2.INTER_LINEAR)
    expected = normalize(Sample(resized)).image.transpose(2, 0, 1)
    np.testing.assert_array_equal(out["image"].numpy(), expected)
    assert out["image"].shape == (3, 40, 80) and out["label"].shape == (100, 200)


def _cityscapes_tree(root: Path, depth_name: str) -> Path:
    base = "aachen_000000_000019"
    for folder, name, array in (
        ("leftImg8bit/train/aachen", f"{base}_leftImg8bit.png", np.zeros((8, 16, 3), np.uint8)),
        ("gtFine/train/aachen", f"{base}_gtFine_labelTrainIds.png", np.zeros((8, 16), np.uint8)),
        ("depth/train/aachen", depth_name.format(base=base), np.full((8, 16), 9, np.uint8)),
    ):
        (root / folder).mkdir(parents=True, exist_ok=True)
        Image.fromarray(array).save(root / folder / name)
    return root


def test_cityscapes_depth_is_read_by_its_published_name(tmp_path):
    """The dispersion repo's Cityscapes depth maps are ``depth/<split>/<city>/<name>_depth.png``
    (``depth_suffix='_depth.png'``, dispersion ``cityscapes.py:41``, paired by
    ``custom.py:181``)."""
    root = _cityscapes_tree(tmp_path, "{base}_depth.png")
    folder = cityscapes_folder(root, "train", with_depth=True)
    assert folder.items[0].depth == root / "depth/train/aachen/aachen_000000_000019_depth.png"
    assert (folder.load(0).dense["depth"] > 0).all()


def test_cityscapes_depth_named_after_the_image_is_still_read(tmp_path):
    """Ours, for the embedded domains and maps written before: a Cityscapes depth map named
    after its image (``NAME_leftImg8bit.png``) is read where no ``NAME_depth.png`` exists."""
    root = _cityscapes_tree(tmp_path, "{base}_leftImg8bit.png")
    folder = cityscapes_folder(root, "train", with_depth=True)
    assert folder.items[0].depth.name == "aachen_000000_000019_leftImg8bit.png"


def test_published_presets_resize_keeping_the_ratio():
    """The published DAFormer, HRDA and MIC presets resize as the reference configs
    (``Resize(img_scale=...)``, keep_ratio True by default, MIC ``transforms.py:47-53``)."""
    from uda_methods.presets import preset

    for name in ("gta2cs-daformer", "gta2cs-hrda", "gta2cs-mic", "synthia2cs-mic"):
        assert preset(name).data.resize_mode == "keep_ratio", name
    data = preset("gta2cs-hrda").data
    assert rescale_size(GTA_FRAME, data.source_resize) == (2560, 1407)

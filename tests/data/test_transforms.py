import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from uda_data.classes import IGNORE_INDEX
from uda_data.datasets import TrainPipeline
from uda_data.transforms import Sample, pad, random_crop, random_flip, resize, to_tensors


def coded_sample(width: int, height: int) -> Sample:
    """Image, label and depth that all encode the pixel's column and row."""
    cols, rows = np.meshgrid(np.arange(width), np.arange(height))
    label = ((cols // 4 + rows // 4) % 19).astype(np.uint8)
    image = np.stack([label * 10, label * 10, label * 10], axis=-1).astype(np.uint8)
    depth = (cols * 1000 + rows).astype(np.float32)
    return Sample(image, {"label": label, "depth": depth})


def assert_aligned(sample: Sample) -> None:
    label = sample.dense["label"]
    valid = label != IGNORE_INDEX
    assert np.array_equal(sample.image[..., 0][valid], (label[valid] * 10).astype(np.uint8))


@settings(max_examples=40, deadline=None)
@given(
    width=st.integers(8, 80),
    height=st.integers(8, 80),
    crop_w=st.integers(4, 96),
    crop_h=st.integers(4, 96),
    seed=st.integers(0, 2**32 - 1),
)
def test_crop_flip_pad_keep_label_and_depth_aligned(width, height, crop_w, crop_h, seed):
    rng = np.random.default_rng(seed)
    sample = coded_sample(width, height)
    out = random_crop(sample, (crop_w, crop_h), rng, cat_max_ratio=0.75)
    assert out.size == (min(crop_w, width), min(crop_h, height))
    out = random_flip(out, rng, 0.5)
    # the depth code says where each pixel came from; the label there must match
    cols = (out.dense["depth"] // 1000).astype(int)
    rows = (out.dense["depth"] % 1000).astype(int)
    assert np.array_equal(out.dense["label"], sample.dense["label"][rows, cols])
    assert_aligned(out)
    padded = pad(out, (crop_w, crop_h))
    assert padded.size == (max(crop_w, out.size[0]), max(crop_h, out.size[1]))
    assert (padded.dense["label"][out.size[1] :, :] == IGNORE_INDEX).all()
    assert (padded.dense["depth"][:, out.size[0] :] == 0).all()


def test_resize_uses_nearest_for_labels_and_keeps_alignment():
    cols, rows = np.meshgrid(np.arange(64), np.arange(32))
    label = ((cols // 8 + 3 * (rows // 8)) % 19).astype(np.uint8)
    sample = Sample(
        np.repeat(label[..., None] * 10, 3, axis=2), {"label": label, "depth": label * 1.0}
    )
    out = resize(sample, (32, 16))
    assert out.size == (32, 16) and out.dense["depth"].shape == (16, 32)
    assert set(np.unique(out.dense["label"])) <= set(np.unique(label))
    centre = np.zeros((16, 32), bool)
    centre[1::4, 1::4] = centre[2::4, 2::4] = True  # well inside each 4x4 block
    assert np.array_equal(out.dense["label"][centre], label[::2, ::2][centre])
    assert np.array_equal(out.image[..., 0][centre], (label[::2, ::2] * 10)[centre])
    assert np.allclose(out.dense["depth"][centre], label[::2, ::2][centre])


def test_flip_mirrors_every_map():
    sample = coded_sample(10, 6)
    out = random_flip(sample, np.random.default_rng(0), prob=1.0)
    assert np.array_equal(out.dense["label"], sample.dense["label"][:, ::-1])
    assert np.array_equal(out.image, sample.image[:, ::-1])


def test_cat_max_ratio_avoids_crops_dominated_by_one_class():
    label = np.zeros((100, 100), np.uint8)
    label[:, 90:] = 1
    sample = Sample(np.zeros((100, 100, 3), np.uint8), {"label": label})
    hits = 0
    for seed in range(30):
        out = random_crop(sample, (20, 20), np.random.default_rng(seed), cat_max_ratio=0.75)
        counts = np.bincount(out.dense["label"].ravel(), minlength=2)
        hits += counts.max() / counts.sum() < 0.75
    # one draw satisfies it with probability 5/81, ten draws with about 0.47
    assert hits >= 8


def test_pipeline_is_a_pure_function_of_the_seed():
    sample = coded_sample(64, 48)
    pipe = TrainPipeline(crop=(32, 32), resize=(48, 36))
    a = pipe(sample, np.random.default_rng(7))
    b = pipe(sample, np.random.default_rng(7))
    assert all(np.array_equal(a[k], b[k]) for k in a)
    tensors = to_tensors(sample)
    assert (
        tensors["image"].shape == (3, 48, 64) and tensors["label"].dtype.is_floating_point is False
    )

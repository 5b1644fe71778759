import shutil

import numpy as np
import pytest
from PIL import Image

from uda_data.datasets import EvalSet, TrainPipeline, UDATrainSet, cityscapes_folder, gta_folder
from uda_data.depth import decode_depth_anything
from uda_data.errors import DataError


def test_gta_layout_loads_image_label_and_depth_aligned(synthetic_root):
    folder = gta_folder(synthetic_root / "source", with_depth=True)
    assert len(folder) == 16
    sample = folder.load(0)
    assert sample.image.shape == (64, 128, 3) and sample.image.dtype == np.uint8
    assert sample.dense["label"].shape == (64, 128) and sample.dense["depth"].shape == (64, 128)
    raw = np.asarray(Image.open(synthetic_root / "source" / "depth" / "00000.png"))
    assert np.allclose(sample.dense["depth"], decode_depth_anything(raw))
    sky = sample.dense["label"] == 10
    assert sky.any() and (sample.dense["depth"][sky] == 0).all()


def test_depth_is_only_loaded_when_asked(synthetic_root):
    assert "depth" not in gta_folder(synthetic_root / "source").load(0).dense


def test_cityscapes_layout_splits(synthetic_root):
    train = cityscapes_folder(
        synthetic_root / "target", "train", with_labels=False, with_depth=True
    )
    val = cityscapes_folder(synthetic_root / "target", "val")
    assert (len(train), len(val)) == (8, 6)
    assert "label" not in train.load(0).dense and "label" in val.load(0).dense


def test_uda_train_set_is_deterministic_per_draw(synthetic_root):
    source = gta_folder(synthetic_root / "source")
    target = cityscapes_folder(synthetic_root / "target", "train", with_labels=False)
    pipe = TrainPipeline(crop=(64, 32))
    ds = UDATrainSet(source, pipe, target, pipe, seed=1)
    a, b, c = ds[5], ds[5], ds[6]
    assert np.array_equal(a["source"]["image"], b["source"]["image"])
    assert not np.array_equal(a["source"]["image"], c["source"]["image"])
    assert a["source"]["image"].shape == (3, 32, 64) and a["target"]["image"].shape == (3, 32, 64)
    assert "label" not in a["target"]


def test_eval_set_keeps_labels_at_full_resolution(synthetic_root):
    ds = EvalSet(cityscapes_folder(synthetic_root / "target", "val"), resize_to=(64, 32))
    item = ds[0]
    assert item["image"].shape == (3, 32, 64) and item["label"].shape == (64, 128)


@pytest.fixture
def gta_copy(synthetic_root, tmp_path):
    root = tmp_path / "gta"
    shutil.copytree(synthetic_root / "source", root)
    return root


def test_missing_folder_is_named(tmp_path):
    with pytest.raises(DataError, match=r"images does not exist"):
        gta_folder(tmp_path / "nowhere")


def test_image_without_label_is_named(gta_copy):
    (gta_copy / "labels" / "00003_labelTrainIds.png").unlink()
    with pytest.raises(
        DataError, match=r"1 images have no label, e\.g\. .*00003_labelTrainIds\.png"
    ):
        gta_folder(gta_copy)


def test_missing_depth_is_named(gta_copy):
    (gta_copy / "depth" / "00002.png").unlink()
    gta_folder(gta_copy)  # fine without depth
    with pytest.raises(DataError, match=r"no depth map, e\.g\. .*00002\.png"):
        gta_folder(gta_copy, with_depth=True)


def test_size_mismatch_names_the_file(gta_copy):
    Image.new("L", (10, 10)).save(gta_copy / "labels" / "00001_labelTrainIds.png")
    folder = gta_folder(gta_copy)
    with pytest.raises(DataError, match=r"00001_labelTrainIds\.png: label is 10x10 but its image"):
        folder.load(1)


def test_label_values_outside_the_class_set_are_rejected(gta_copy):
    path = gta_copy / "labels" / "00000_labelTrainIds.png"
    label = np.array(Image.open(path))
    label[0, 0] = 33
    Image.fromarray(label).save(path)
    with pytest.raises(DataError, match=r"label values \[33\] are not trainIds"):
        gta_folder(gta_copy).load(0)


def test_nan_depth_is_rejected(gta_copy):
    for png in (gta_copy / "depth").glob("*.png"):
        np.save(png.with_suffix(".npy"), np.full((64, 128), np.nan, np.float32))
    with pytest.raises(DataError, match="NaN or infinite"):
        gta_folder(gta_copy, with_depth=True, depth_encoding="float_npy").load(0)


def test_unreadable_image_is_named(gta_copy):
    (gta_copy / "images" / "00000.png").write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"00000\.png: cannot be read"):
        gta_folder(gta_copy).load(0)

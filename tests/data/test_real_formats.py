"""The loaders on trees in the formats of the real releases, after conversion: every layout,
the conditions of ACDC and Dark Zurich, every depth encoding, the layout in the run config, and
layout detection."""

import numpy as np
import pytest
from PIL import Image

from tests.data.release_trees import (
    ACDC_SEQUENCES,
    CITYSCAPES_SCENE,
    CITYSCAPES_TRAIN_IDS,
    MAPILLARY_SCENE,
    MAPILLARY_TRAIN_IDS,
    SYNTHIA_SCENE,
    SYNTHIA_TRAIN_IDS,
    WRITERS,
    depth_png,
    scene_ids,
    train_ids_of,
    write_gta,
    write_synthia,
)
from uda_data.config import DataConfig, DatasetConfig, open_folder
from uda_data.convert import convert_labels, plan_conversion
from uda_data.datasets import cityscapes_folder, gta_folder, open_layout, synthia_folder
from uda_data.depth import decode_depth_anything, encode_inverse_depth, encode_relative_depth
from uda_data.errors import DataError
from uda_data.layouts import GTA, LAYOUTS, detect_layout


@pytest.fixture(scope="module")
def trees(tmp_path_factory):
    root = tmp_path_factory.mktemp("releases")
    found = {name: write(root / name) for name, write in WRITERS.items()}
    for name, layout in LAYOUTS.items():
        convert_labels(plan_conversion(found[name], layout), nproc=1)
    return found


def test_synthia_folder_reads_converted_labels_and_depth(trees):
    folder = synthia_folder(trees["synthia"], with_depth=True)
    assert len(folder) == 4 and folder.name.startswith("Synthia layout at")
    sample = folder.load(1)
    expected = train_ids_of(scene_ids(1, SYNTHIA_SCENE), SYNTHIA_TRAIN_IDS)
    np.testing.assert_array_equal(sample.dense["label"], expected)
    np.testing.assert_allclose(sample.dense["depth"], decode_depth_anything(depth_png(1)))


def test_gta_and_cityscapes_folders_read_the_converted_trees(trees):
    gta = gta_folder(trees["gta"], with_depth=True)
    expected = train_ids_of(scene_ids(2, CITYSCAPES_SCENE), CITYSCAPES_TRAIN_IDS)
    np.testing.assert_array_equal(gta.load(2).dense["label"], expected)
    train = cityscapes_folder(trees["cityscapes"], "train", with_depth=True)
    test = cityscapes_folder(trees["cityscapes"], "test", with_labels=False, with_depth=True)
    assert (len(train), len(test)) == (4, 2)
    assert train.items[0].label.name == "aachen_000000_000000_gtFine_labelTrainIds.png"
    assert "label" not in test.load(0).dense and "depth" in test.load(0).dense


def test_acdc_opens_the_four_conditions_together_or_those_chosen(trees):
    train = open_layout("acdc", trees["acdc"], "train", with_depth=True)
    conditions = [item.image.parts[-4] for item in train.items]
    assert conditions == list(ACDC_SEQUENCES) and train.name.endswith(
        "(train, fog+night+rain+snow)"
    )
    assert train.items[0].label.name == "GOPR0475_frame_000000_gt_labelTrainIds.png"
    sample = train.load(1)  # night: the second image written
    expected = train_ids_of(scene_ids(3, CITYSCAPES_SCENE), CITYSCAPES_TRAIN_IDS)
    np.testing.assert_array_equal(sample.dense["label"], expected)
    np.testing.assert_allclose(sample.dense["depth"], decode_depth_anything(depth_png(3)))
    night = open_layout("acdc", trees["acdc"], "val", conditions=["night"])
    assert [item.image.parts[-4:-2] for item in night.items] == [("night", "val")]
    test = open_layout("acdc", trees["acdc"], "test", with_labels=False)
    assert len(test) == 4 and all("_ref" not in str(item.image) for item in test.items)
    with pytest.raises(DataError, match="unknown condition sunny; choose from fog, night"):
        open_layout("acdc", trees["acdc"], "train", conditions=["sunny"])


def test_dark_zurich_trains_on_night_unless_told_otherwise(trees):
    root = trees["darkzurich"]
    train = open_layout("darkzurich", root, "train", with_labels=False)
    assert [item.image.parts[-3] for item in train.items] == ["night", "night"]
    every = ["day", "twilight", "night"]
    assert len(open_layout("darkzurich", root, "train", conditions=every, with_labels=False)) == 6
    val = open_layout("darkzurich", root, "val", with_depth=True)
    assert [item.label.name for item in val.items] == [
        "GOPR0356_000000_gt_labelTrainIds.png",
        "GOPR0356_000001_gt_labelTrainIds.png",
    ]
    expected = train_ids_of(scene_ids(6, CITYSCAPES_SCENE), CITYSCAPES_TRAIN_IDS)
    np.testing.assert_array_equal(val.load(0).dense["label"], expected)
    with pytest.raises(DataError, match=r"Dark Zurich layout: folder .*gt/train/night"):
        open_layout("darkzurich", root, "train")


def test_bdd100k_and_mapillary_read_jpeg_images_and_trainid_labels(trees):
    bdd = open_layout("bdd100k", trees["bdd100k"], "val", with_depth=True)
    assert [item.image.suffix for item in bdd.items] == [".jpg", ".jpg"]
    assert bdd.items[0].depth.name == "7d2f7975-e0c1c5a7.png"
    expected = train_ids_of(scene_ids(2, CITYSCAPES_SCENE), CITYSCAPES_TRAIN_IDS)
    sample = bdd.load(0)
    assert sample.image.shape == (32, 64, 3)
    np.testing.assert_array_equal(sample.dense["label"], expected)
    mapillary = open_layout("mapillary", trees["mapillary"], "validation", with_depth=True)
    assert len(mapillary) == 3
    assert mapillary.items[0].label.name == "--2R6EaCOmt1xNyyo_vRuRg_labelTrainIds.png"
    expected = train_ids_of(scene_ids(2, MAPILLARY_SCENE), MAPILLARY_TRAIN_IDS)
    np.testing.assert_array_equal(mapillary.load(0).dense["label"], expected)


def test_run_config_opens_every_layout(trees, tmp_path):
    def dataset(layout, split="train", **options):
        return DatasetConfig(layout=layout, root=str(trees[layout]), split=split, **options)

    data = DataConfig(
        source=dataset("synthia"),
        target=dataset("cityscapes"),
        val=dataset("cityscapes", "val"),
        cache_dir=tmp_path,
    )
    assert len(open_folder(data, data.source, with_labels=True, with_depth=True)) == 4
    assert len(open_folder(data, data.val, with_labels=True, with_depth=False)) == 2
    opened = {
        ("acdc", "train", ("fog", "snow")): 2,
        ("darkzurich", "train", None): 2,
        ("darkzurich", "val", None): 2,
        ("bdd100k", "val", None): 2,
        ("mapillary", "validation", None): 3,
    }
    for (layout, split, conditions), count in opened.items():
        data.val = dataset(layout, split, conditions=conditions)
        assert len(open_folder(data, data.val, with_labels=split != "train", with_depth=True)) == (
            count
        )
    with pytest.raises(ValueError, match="'darkzurich', 'bdd100k' or 'mapillary'"):
        DatasetConfig(layout="kitti", root="x")
    with pytest.raises(ValueError, match=r"Dark Zurich layout: unknown condition fog"):
        DatasetConfig(layout="darkzurich", root="x", conditions=["fog"])
    with pytest.raises(ValueError, match=r"Cityscapes layout: has no conditions"):
        DatasetConfig(layout="cityscapes", root="x", conditions=["night"])


def test_16_bit_millimetre_and_npy_depth(tmp_path):
    root = write_gta(tmp_path / "gta", count=1)
    convert_labels(plan_conversion(root, GTA), nproc=1)
    millimetres = np.full((32, 64), 12_345, dtype=np.uint16)
    Image.fromarray(millimetres).save(root / "depth" / "00001.png")
    folder = gta_folder(root, with_depth=True, depth_encoding="uint16_mm")
    np.testing.assert_allclose(folder.load(0).dense["depth"], 12.345)
    metres = np.linspace(1, 80, 64 * 32, dtype=np.float32).reshape(32, 64)
    np.save(root / "depth" / "00001.npy", metres)
    folder = gta_folder(root, with_depth=True, depth_encoding="float_npy")
    np.testing.assert_array_equal(folder.load(0).dense["depth"], metres)


def test_depth_of_another_bit_depth_names_the_file_and_the_setting(trees):
    folder = gta_folder(trees["gta"], with_depth=True, depth_encoding="uint16_mm")
    expected = r"00001\.png: uint16_mm depth maps are 16-bit .* an 8-bit grey PNG"
    with pytest.raises(DataError, match=expected):
        folder.load(0)


def test_depth_anything_encoding_is_the_inverse_of_what_the_loader_reads():
    inverse_depth = np.array([[0.0, 0.5], [1.0, 2.0]])  # near is large
    png = encode_relative_depth(inverse_depth)
    assert png.tolist() == [[0, 64], [128, 255]]
    decoded = decode_depth_anything(png)
    assert decoded[0, 0] == 0 and (np.diff(decoded.ravel()) > 0).all()
    metric = np.array([[np.inf, 2.0], [1.0, 0.5]])
    np.testing.assert_array_equal(encode_inverse_depth(metric), png)
    assert encode_relative_depth(np.ones((2, 2))).tolist() == [[0, 0], [0, 0]]


def test_layouts_are_detected_from_their_folders(trees, tmp_path):
    assert [detect_layout(trees[n]).name for n in trees] == list(WRITERS)
    with pytest.raises(DataError, match=r"cannot tell the layout .* found none\); pass --layout"):
        detect_layout(tmp_path)
    with pytest.raises(DataError, match=r"folder does not exist"):
        detect_layout(tmp_path / "missing")


def test_missing_synthia_labels_name_the_folder(tmp_path):
    root = write_synthia(tmp_path / "synthia", count=1)
    with pytest.raises(DataError, match=r"1 images have no label, e\.g\. .*0000000_labelTrainIds"):
        open_layout("synthia", root)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("crop", (0, 64)),
        ("crop", (64, -1)),
        ("val_resize", (0, 32)),
        ("pseudo_margins", (0, -1, 0, 0)),
    ],
)
def test_data_sizes_and_margins_are_bounded_at_load_time(field, value):
    dataset = DatasetConfig(layout="gta", root="x")
    with pytest.raises(ValueError, match=rf"{field}\.\d"):
        DataConfig(source=dataset, target=dataset, val=dataset, **{field: value})

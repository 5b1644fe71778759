"""Label conversion to trainIds: the tables, the 16-bit Synthia labels, the trainIds that ACDC,
Dark Zurich and BDD100K ship, Mapillary's 66 classes, resuming, the quirks."""

import os

import numpy as np
import pytest
from cityscapesscripts.helpers.labels import labels as official_labels
from PIL import Image

from tests.data.release_trees import (
    CITYSCAPES_SCENE,
    CITYSCAPES_TRAIN_IDS,
    MAPILLARY_NAMES,
    MAPILLARY_SCENE,
    MAPILLARY_TRAIN_IDS,
    SYNTHIA_SCENE,
    SYNTHIA_TRAIN_IDS,
    scene_ids,
    train_ids_of,
    write_acdc,
    write_bdd100k,
    write_dark_zurich,
    write_gta,
    write_mapillary,
    write_png16,
    write_synthia,
)
from uda_data.classes import CLASSES
from uda_data.convert import (
    CITYSCAPES_IDS,
    MAPILLARY_AS_CITYSCAPES,
    MAPILLARY_IDS,
    SYNTHIA_CLASSES,
    SYNTHIA_IDS,
    convert_labels,
    plan_conversion,
    read_ids,
)
from uda_data.errors import DataError
from uda_data.layouts import ACDC, BDD100K, DARK_ZURICH, GTA, MAPILLARY, SYNTHIA


def test_cityscapes_table_is_the_official_definition():
    for label in official_labels:
        if label.id < 0:
            continue
        expected = label.trainId if 0 <= label.trainId < len(CLASSES) else 255
        assert CITYSCAPES_IDS.train_ids[label.id] == expected, label.name
        if expected != 255:
            assert CLASSES[expected] == label.name
    mapped = {i: int(t) for i, t in enumerate(CITYSCAPES_IDS.train_ids) if t != 255}
    assert mapped == CITYSCAPES_TRAIN_IDS


def test_synthia_table_maps_ids_as_daformer_does():
    mapped = {i: int(t) for i, t in enumerate(SYNTHIA_IDS.train_ids) if t != 255}
    assert mapped == SYNTHIA_TRAIN_IDS
    ignored = [SYNTHIA_CLASSES[i] for i, t in enumerate(SYNTHIA_IDS.train_ids) if t == 255]
    assert ignored == ["void", "parking-slot", "road-work", "lanemarking"]


def test_mapillary_table_maps_the_66_classes_as_hrda_does():
    assert len(MAPILLARY_IDS.train_ids) == 66
    mapped = {i: int(t) for i, t in enumerate(MAPILLARY_IDS.train_ids) if t != 255}
    assert mapped == MAPILLARY_TRAIN_IDS
    names = {name for name, _ in MAPILLARY_AS_CITYSCAPES.values()}
    assert {"construction--flat--road", "object--vehicle--on-rails", "nature--sky"} <= names
    assert MAPILLARY_IDS.apply(np.array([[65, 66]]))[1] == (66,)  # unlabeled is known, 66 not


def test_unknown_ids_become_ignore_and_are_reported():
    ids = np.array([[7, 26], [40, 34]], dtype=np.uint8)
    train_ids, unknown = CITYSCAPES_IDS.apply(ids)
    assert train_ids.tolist() == [[0, 13], [255, 255]] and unknown == (34, 40)


def test_synthia_ids_are_read_from_the_first_channel_of_16_bit_labels(tmp_path):
    ids = np.array([[3, 8, 10], [21, 1, 0]], dtype=np.uint16)
    instances = np.full_like(ids, 1000)
    write_png16(tmp_path / "label.png", np.stack([ids, instances, instances], axis=2))
    np.testing.assert_array_equal(read_ids(tmp_path / "label.png"), ids)


def test_colour_labels_are_rejected_with_the_file(tmp_path):
    Image.new("RGB", (4, 4)).save(tmp_path / "colour.png")
    with pytest.raises(DataError, match=r"colour\.png: an 8-bit RGB picture of colours"):
        read_ids(tmp_path / "colour.png")


@pytest.mark.parametrize(
    ("write", "layout", "scene", "table"),
    [
        (write_gta, GTA, CITYSCAPES_SCENE, CITYSCAPES_TRAIN_IDS),
        (write_synthia, SYNTHIA, SYNTHIA_SCENE, SYNTHIA_TRAIN_IDS),
    ],
    ids=["gta", "synthia"],
)
def test_labels_are_converted_beside_the_originals(tmp_path, write, layout, scene, table):
    root = write(tmp_path / layout.name, count=3)
    plan = plan_conversion(root, layout)
    assert len(plan.jobs) == 3 and plan.splits == [None]
    results = convert_labels(plan, nproc=1)
    assert all(r.written and not r.error and not r.unknown_ids for r in results)
    for i, job in enumerate(plan.jobs):
        assert job.output.name == f"{job.label.stem}_labelTrainIds.png"
        written = np.array(Image.open(job.output))
        np.testing.assert_array_equal(written, train_ids_of(scene_ids(i, scene), table))


def test_conversion_resumes_and_redoes_labels_changed_since(tmp_path):
    root = write_gta(tmp_path / "gta", count=3)
    convert_labels(plan_conversion(root, GTA), nproc=1)
    again = plan_conversion(root, GTA)
    assert (again.jobs, again.up_to_date) == ([], 3)
    original = root / "labels" / "00002.png"
    later = (root / "labels" / "00002_labelTrainIds.png").stat().st_mtime_ns + 10**9
    os.utime(original, ns=(later, later))
    assert [job.label for job in plan_conversion(root, GTA).jobs] == [original]


def test_conversion_runs_in_several_processes(tmp_path):
    root = write_gta(tmp_path / "gta", count=4)
    plan = plan_conversion(root, GTA)
    results = convert_labels(plan, nproc=2)
    assert [r.job for r in results] == plan.jobs and all(r.written for r in results)


def test_labels_of_another_size_are_resized_or_skipped(tmp_path):
    root = write_gta(tmp_path / "gta", count=2)
    small = scene_ids(0, CITYSCAPES_SCENE, size=(32, 16)).astype(np.uint8)
    Image.fromarray(small).save(root / "labels" / "00001.png")
    (resized, _) = convert_labels(plan_conversion(root, GTA), nproc=1)
    assert resized.written and resized.size_mismatch == "label 32x16, image 64x32"
    assert Image.open(resized.job.output).size == (64, 32)
    resized.job.output.unlink()
    (skipped,) = convert_labels(plan_conversion(root, GTA), nproc=1, size_mismatch="skip")
    assert not skipped.written and not skipped.job.output.exists()


def test_unreadable_labels_are_results_not_exceptions(tmp_path):
    root = write_gta(tmp_path / "gta", count=2)
    (root / "labels" / "00002.png").write_bytes(b"not a png")
    results = convert_labels(plan_conversion(root, GTA), nproc=1)
    assert results[0].written and not results[1].written
    assert results[1].error.startswith(f"{root / 'labels' / '00002.png'}: cannot be read")


def test_a_root_without_the_layout_is_named(tmp_path):
    with pytest.raises(DataError, match=r"no RGB/ folder, so not the Synthia layout"):
        plan_conversion(tmp_path, SYNTHIA)


def test_mapillary_labels_are_mapped_beside_the_originals_split_by_split(tmp_path):
    root = write_mapillary(tmp_path / "mapillary")
    plan = plan_conversion(root, MAPILLARY, splits=["validation"])
    assert plan.splits == ["validation"] and len(plan.jobs) == 3
    results = convert_labels(plan, nproc=1)
    assert all(r.written and not r.unknown_ids for r in results)
    for i, name in enumerate(MAPILLARY_NAMES["validation"]):
        written = np.array(Image.open(root / "validation" / "labels" / f"{name}_labelTrainIds.png"))
        expected = train_ids_of(scene_ids(2 + i, MAPILLARY_SCENE), MAPILLARY_TRAIN_IDS)
        np.testing.assert_array_equal(written, expected)
    assert not list((root / "training" / "labels").glob("*_labelTrainIds.png"))
    assert len(plan_conversion(root, MAPILLARY).jobs) == 2  # training is still to do
    with pytest.raises(DataError, match=r"no split val in the Mapillary Vistas layout \(found"):
        plan_conversion(root, MAPILLARY, splits=["val"])


@pytest.mark.parametrize("write", [write_acdc, write_dark_zurich], ids=["acdc", "darkzurich"])
def test_shipped_trainid_labels_are_kept_and_missing_ones_made_from_label_ids(tmp_path, write):
    root = write(tmp_path / "release")
    layout = ACDC if write is write_acdc else DARK_ZURICH
    shipped = sorted(root.glob("gt/**/*_gt_labelTrainIds.png"))
    plan = plan_conversion(root, layout)
    assert (plan.jobs, plan.up_to_date) == ([], 8 if layout is ACDC else 2)
    for ids in root.glob("gt/**/*_gt_labelIds.png"):  # label ids newer than the shipped trainIds
        os.utime(ids, ns=(2 * 10**18, 2 * 10**18))
    assert plan_conversion(root, layout).jobs == []
    removed = shipped[0]
    expected = np.array(Image.open(removed))
    removed.unlink()
    (job,) = plan_conversion(root, layout).jobs
    assert job.output == removed and job.label.name.endswith("_gt_labelIds.png")
    (result,) = convert_labels(plan_conversion(root, layout), nproc=1)
    assert result.written
    np.testing.assert_array_equal(np.array(Image.open(removed)), expected)


def test_bdd100k_ships_trainids_and_has_nothing_to_convert(tmp_path):
    root = write_bdd100k(tmp_path / "bdd100k")
    plan = plan_conversion(root, BDD100K)
    assert (plan.jobs, plan.up_to_date, plan.splits) == ([], 4, ["train", "val"])
    assert plan.skipped_splits == ["test: the release has no labels for it, skipped"]
    (root / "labels" / "sem_seg" / "masks" / "val" / "7d2f7975-e0c1c5a7.png").unlink()
    (missing,) = plan_conversion(root, BDD100K).missing
    assert missing.name == "7d2f7975-e0c1c5a7.png"

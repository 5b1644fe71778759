"""`uda data convert`, `check` and `depth` on trees in the formats of the real releases, then
training and evaluation on them; every problem is one line that names the file."""

import json
import re
import shutil
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from tests.conftest import tiny_overrides
from tests.data.faults import fill_disk, truncate
from tests.data.release_trees import (
    CITYSCAPES_SCENE,
    CITYSCAPES_TRAIN_IDS,
    MAPILLARY_NAMES,
    SYNTHIA_SCENE,
    SYNTHIA_TRAIN_IDS,
    WRITERS,
    image,
    scene_ids,
    train_ids_of,
    write_acdc,
    write_bdd100k,
    write_cityscapes,
    write_dark_zurich,
    write_gta,
    write_mapillary,
    write_png16,
    write_synthia,
)
from uda_cli.main import app
from uda_data.datasets import gta_folder, open_layout
from uda_data.depth import decode_depth_anything, encode_relative_depth
from uda_data.errors import DataError
from uda_data.layouts import LAYOUTS
from uda_data.rcs import ClassStats

runner = CliRunner()


def uda(*args):
    return runner.invoke(app, [str(a) for a in args])


def line_with(output: str, text: str) -> str:
    """The one line of the output that holds ``text``."""
    found = [line for line in output.splitlines() if text in line]
    assert len(found) == 1, output
    return found[0]


@pytest.fixture(scope="module")
def releases(tmp_path_factory):
    """Each release converted by the CLI: {layout: (root, output of convert)}."""
    base = tmp_path_factory.mktemp("releases")
    out = {}
    for layout, write in WRITERS.items():
        root = write(base / layout)
        result = uda("data", "convert", layout, root, "--nproc", 1)
        assert result.exit_code == 0, result.output
        out[layout] = root, result.output
    return out


@pytest.mark.parametrize("layout", list(WRITERS))
def test_convert_then_check_passes(releases, layout):
    root, output = releases[layout]
    assert "converted to trainIds" in output and "class statistics written" in output
    result = uda("data", "check", root)
    assert result.exit_code == 0, result.output
    assert f"the {LAYOUTS[layout].title} dataset is ready" in result.output
    assert "up to date" in result.output and "(8-bit" in result.output  # the column may wrap


def test_cityscapes_test_split_is_skipped_and_said_so(releases):
    root, output = releases["cityscapes"]
    assert "test: the release has no labels for it, skipped" in output
    assert not (root / "gtFine" / "test").exists()
    assert (root / "uda_class_stats_train.json").is_file()
    check = uda("data", "check", root, "--layout", "cityscapes").output
    assert "test: no public labels" in check


def test_check_covers_the_conditions_of_the_reference_or_those_chosen(releases, tmp_path):
    report = tmp_path / "check.json"

    def counts(layout, *conditions):
        chosen = [a for c in conditions for a in ("--condition", c)]
        result = uda(
            "data", "check", releases[layout][0], "--workers", 1, "--json", report, *chosen
        )
        assert result.exit_code == 0, result.output
        splits = json.loads(report.read_text())["splits"]
        return {s["split"]: (s["images"], s["labels"]) for s in splits}, result.output

    assert counts("acdc")[0] == {"test": (4, None), "train": (4, 4), "val": (4, 4)}
    assert counts("acdc", "fog", "snow")[0] == {"test": (2, None), "train": (2, 2), "val": (2, 2)}
    found, output = counts("darkzurich")
    assert found == {"test": (1, None), "train": (2, None), "val": (2, 2)}
    assert "train: no public labels, not scored" in output
    found, output = counts("darkzurich", "day", "night")
    assert found["train"] == (4, None) and "val: no day folder" in output
    unknown = uda("data", "check", releases["acdc"][0], "--condition", "sunny")
    assert unknown.exit_code == 2
    assert "unknown condition sunny; choose from fog, night, rain, snow" in unknown.output


def test_shipped_trainids_are_kept_and_bdd100k_has_nothing_to_convert(releases):
    for layout in ("acdc", "darkzurich", "bdd100k"):
        output = releases[layout][1]
        assert line_with(output, "converted to trainIds").split()[-2] == "0"
    assert line_with(releases["acdc"][1], "already converted").split()[-2] == "8"
    bdd = releases["bdd100k"][1]
    assert "BDD100K labels are trainIds as released: nothing to convert" in bdd
    assert (releases["bdd100k"][0] / "uda_class_stats_val.json").is_file()


def test_mapillary_convert_resumes_and_converts_the_splits_asked_for(tmp_path):
    root = write_mapillary(tmp_path / "mapillary")
    first = uda("data", "convert", "mapillary", root, "--split", "validation", "--nproc", 1)
    assert first.exit_code == 0, first.output
    assert line_with(first.output, "converted to trainIds").split()[-2] == "3"
    assert (root / "uda_class_stats_validation.json").is_file()
    assert not list((root / "training" / "labels").glob("*_labelTrainIds.png"))
    name = MAPILLARY_NAMES["validation"][1]
    (root / "validation" / "labels" / f"{name}_labelTrainIds.png").unlink()
    again = uda("data", "convert", "mapillary", root, "--nproc", 1)
    assert again.exit_code == 0, again.output
    assert line_with(again.output, "converted to trainIds").split()[-2] == "3"  # 1 + 2 training
    assert line_with(again.output, "already converted").split()[-2] == "2"
    assert "testing: the release has no labels for it, skipped" in again.output
    assert uda("data", "check", root, "--workers", 1).exit_code == 0
    unknown = uda("data", "convert", "mapillary", root, "--split", "val")
    assert (
        unknown.exit_code == 2 and "no split val in the Mapillary Vistas layout" in unknown.output
    )


@pytest.mark.parametrize(
    ("layout", "scene", "table"),
    [
        ("gta", CITYSCAPES_SCENE, CITYSCAPES_TRAIN_IDS),
        ("synthia", SYNTHIA_SCENE, SYNTHIA_TRAIN_IDS),
    ],
)
def test_class_statistics_equal_a_direct_count(releases, layout, scene, table):
    root, _ = releases[layout]
    stats = ClassStats.load(root / "uda_class_stats.json")
    direct = [
        np.bincount(train_ids_of(scene_ids(i, scene), table).ravel(), minlength=256)[:19]
        for i in range(len(stats.files))
    ]
    np.testing.assert_array_equal(stats.counts, np.array(direct))


def test_converting_again_keeps_what_is_done(releases):
    root, _ = releases["synthia"]
    result = uda("data", "convert", "synthia", root, "--nproc", 1)
    assert result.exit_code == 0, result.output
    assert "already converted (kept)" in line_with(result.output, "already converted")
    assert line_with(result.output, "already converted").split()[-2] == "4"
    assert "class statistics up to date" in result.output


def test_an_unreadable_label_fails_the_conversion(tmp_path):
    root = write_gta(tmp_path / "gta", count=2)
    (root / "labels" / "00002.png").write_bytes(b"garbage")
    result = uda("data", "convert", "gta", root, "--nproc", 1)
    assert result.exit_code == 1
    assert "cannot be read as an image" in line_with(result.output, "00002.png")
    assert "1 label file(s) could not be converted" in result.output
    assert "Traceback" not in result.output


def test_an_image_without_label_fails_the_conversion(tmp_path):
    root = write_synthia(tmp_path / "synthia", count=2)
    (root / "GT" / "LABELS" / "0000001.png").unlink()
    result = uda("data", "convert", "synthia", root, "--nproc", 1)
    assert result.exit_code == 1
    assert str(root / "GT" / "LABELS" / "0000001.png") in result.output
    assert "1 image(s) have no label" in result.output


def test_unknown_ids_are_ignored_and_reported(tmp_path):
    root = write_gta(tmp_path / "gta", count=2)
    path = root / "labels" / "00001.png"
    ids = np.array(Image.open(path))
    ids[0, :3] = 40
    Image.fromarray(ids).save(path)
    result = uda("data", "convert", "gta", root, "--nproc", 1)
    assert result.exit_code == 0, result.output
    assert "unknown ids [40], set to 255 (ignored)" in result.output
    assert f"{path}: [40]" in result.output
    assert (np.array(Image.open(root / "labels" / "00001_labelTrainIds.png"))[0, :3] == 255).all()


def test_labels_of_another_size_are_resized_or_left_for_check_to_name(tmp_path):
    root = write_gta(tmp_path / "gta", count=2)
    label = root / "labels" / "00002.png"
    Image.fromarray(scene_ids(1, CITYSCAPES_SCENE, size=(32, 16)).astype(np.uint8)).save(label)
    skipped = uda("data", "convert", "gta", root, "--nproc", 1, "--size-mismatch", "skip")
    assert skipped.exit_code == 0, skipped.output
    assert f"{label}: label 32x16, image 64x32" in skipped.output
    assert "left unconverted" in skipped.output and "not counted" in skipped.output
    check = uda("data", "check", root)
    assert check.exit_code == 1
    assert "not converted to 00002_labelTrainIds.png" in line_with(check.output, str(label))
    resized = uda("data", "convert", "gta", root, "--nproc", 1)
    assert resized.exit_code == 0 and "resized (nearest neighbour)" in resized.output
    assert Image.open(root / "labels" / "00002_labelTrainIds.png").size == (64, 32)
    assert uda("data", "check", root).exit_code == 0


def test_convert_of_a_root_in_another_layout_is_one_line(tmp_path):
    root = write_gta(tmp_path / "gta", count=1)
    result = uda("data", "convert", "cityscapes", root)
    assert result.exit_code == 2
    assert "no leftImg8bit/SPLIT/ folder, so not the Cityscapes layout" in result.output


@pytest.fixture
def gta(tmp_path):
    root = write_gta(tmp_path / "gta", count=3)
    assert uda("data", "convert", "gta", root, "--nproc", 1).exit_code == 0
    return root


def test_check_names_unconverted_labels(tmp_path):
    root = write_cityscapes(tmp_path / "cityscapes", per_city=1)
    result = uda("data", "check", root)
    assert result.exit_code == 1
    line = line_with(result.output, "aachen_000000_000000_gtFine_labelIds.png")
    assert "not converted" in line and f"uda data convert cityscapes {root}" in line
    assert "fix them before training" in result.output


def test_check_names_a_missing_depth_map(gta):
    (gta / "depth" / "00002.png").unlink()
    result = uda("data", "check", gta)
    assert result.exit_code == 1
    line = line_with(result.output, str(gta / "depth" / "00002.png"))
    assert "no depth map" in line and "uda data depth" in line


def test_check_names_a_depth_map_of_another_size(gta):
    Image.new("L", (10, 10)).save(gta / "depth" / "00003.png")
    result = uda("data", "check", gta)
    assert result.exit_code == 1
    assert "depth is 10x10 but its image is 64x32" in line_with(result.output, "00003.png")


def test_check_names_stale_class_statistics(gta):
    label = gta / "labels" / "00001_labelTrainIds.png"
    Image.fromarray(np.zeros((32, 64), np.uint8)).save(label)
    result = uda("data", "check", gta)
    assert result.exit_code == 1
    assert "class statistics are stale" in line_with(result.output, "uda_class_stats.json:")


def test_check_names_an_unreadable_image(gta):
    (gta / "images" / "00002.png").write_bytes(b"garbage")
    result = uda("data", "check", gta)
    assert result.exit_code == 1
    assert "cannot be read as an image" in line_with(result.output, "images/00002.png")


def test_check_names_a_source_without_labels(tmp_path):
    root = write_synthia(tmp_path / "synthia", count=2)
    shutil.rmtree(root / "GT")
    result = uda("data", "check", root)
    assert result.exit_code == 1
    line = line_with(result.output, "RGB/0000000.png")
    assert "no label (expected" in line and "(2 files, the first shown)" in line


def test_check_without_a_known_layout_is_one_line(tmp_path):
    result = uda("data", "check", tmp_path)
    assert result.exit_code == 2 and "cannot tell the layout" in result.output
    assert len(result.output.strip().splitlines()) == 1


def _save(path, array, **options):
    path.unlink(missing_ok=True)
    Image.fromarray(array).save(path, **options)


def _relink(path):
    path.unlink()
    path.symlink_to(path.with_name("gone.png"))


def _set_label(root, value=33):
    path = root / "labels" / "00002_labelTrainIds.png"
    label = np.array(Image.open(path))
    label[0, 0] = value
    _save(path, label)


def _depth_as_npy(root):
    for png in sorted((root / "depth").glob("*.png")):
        np.save(png.with_suffix(".npy"), decode_depth_anything(np.array(Image.open(png))))
        png.unlink()


IMAGE, LABEL = "images/00002.png", "labels/00002_labelTrainIds.png"
DEPTH, NPY = "depth/00002.png", "depth/00002.npy"
# case: (how to break the converted tree, the file named, what is said, depth encoding)
BROKEN = {
    "truncated image": (lambda r: truncate(r / IMAGE), IMAGE, "cannot be read as an image"),
    "empty image": (lambda r: (r / IMAGE).write_bytes(b""), IMAGE, "empty file (0 bytes)"),
    "dangling image link": (lambda r: _relink(r / IMAGE), IMAGE, "a symbolic link to"),
    "truncated label": (lambda r: truncate(r / LABEL), LABEL, "cannot be read as an image"),
    "empty label": (lambda r: (r / LABEL).write_bytes(b""), LABEL, "empty file (0 bytes)"),
    "dangling label link": (lambda r: _relink(r / LABEL), LABEL, "a symbolic link to"),
    "id outside the class set": (_set_label, LABEL, "label values [33] are not trainIds"),
    "16-bit label": (
        lambda r: _save(r / LABEL, np.zeros((32, 64), np.uint16)),
        LABEL,
        "a 16-bit grey PNG, but a trainId label is a single-channel 8-bit PNG",
    ),
    "RGB label": (
        lambda r: _save(r / LABEL, np.zeros((32, 64, 3), np.uint8)),
        LABEL,
        "an 8-bit RGB PNG, but a trainId label",
    ),
    "JPEG label": (
        lambda r: _save(r / LABEL, np.zeros((32, 64), np.uint8), format="JPEG"),
        LABEL,
        "a JPEG file, but a trainId label",
    ),
    "label of another size": (
        lambda r: _save(r / LABEL, np.zeros((10, 10), np.uint8)),
        LABEL,
        "label is 10x10 but its image is 64x32",
    ),
    "image without label": (
        lambda r: [(r / p).unlink() for p in (LABEL, "labels/00002.png")],
        IMAGE,
        "no label (expected",
    ),
    "label without image": (lambda r: (r / IMAGE).unlink(), LABEL, "no image (expected"),
    "truncated depth": (lambda r: truncate(r / DEPTH), DEPTH, "cannot be read as an image"),
    "depth of another size": (
        lambda r: _save(r / DEPTH, np.zeros((10, 10), np.uint8)),
        DEPTH,
        "depth is 10x10 but its image is 64x32",
    ),
    "colour depth": (
        lambda r: _save(r / DEPTH, image(0)),
        DEPTH,
        "an 8-bit RGB PNG of colours, not a single-channel depth map",
    ),
    "NaN depth": (
        lambda r: np.save(r / NPY, np.full((32, 64), np.nan)),
        NPY,
        "depth holds 2048 NaN or infinite values",
    ),
    "infinite depth": (
        lambda r: np.save(r / NPY, np.full((32, 64), np.inf)),
        NPY,
        "NaN or infinite values",
    ),
    "3-D depth": (
        lambda r: np.save(r / NPY, np.ones((32, 64, 3))),
        NPY,
        "holds a 32x64x3 array, but a depth map is H x W",
    ),
    "corrupt depth": (
        lambda r: (r / NPY).write_bytes(b"\x93NUMPY\x01\x00garbage"),
        NPY,
        "cannot be read as a .npy array",
    ),
}


@pytest.fixture(scope="module")
def converted_gta(tmp_path_factory):
    root = write_gta(tmp_path_factory.mktemp("pristine") / "gta", count=3)
    assert uda("data", "convert", "gta", root, "--nproc", 1).exit_code == 0
    return root


@pytest.mark.parametrize("case", list(BROKEN))
def test_check_names_the_file_of_every_broken_tree_that_training_would_trip_on(
    converted_gta, tmp_path, case
):
    root = shutil.copytree(converted_gta, tmp_path / "gta", symlinks=True)
    breaks, name, said = BROKEN[case]
    encoding = "float_npy" if name == NPY else "depth_anything_png"
    if encoding == "float_npy":
        _depth_as_npy(root)
    breaks(root)
    result = uda("data", "check", root, "--workers", 1)
    assert result.exit_code == 1, result.output
    assert said in line_with(result.output, str(root / name))
    assert "Traceback" not in result.output
    with pytest.raises(DataError) as raised:
        folder = gta_folder(root, with_depth=True, depth_encoding=encoding)
        for index in range(len(folder)):
            folder.load(index)
    assert "00002" in str(raised.value) and "\n" not in str(raised.value)


def test_check_warns_of_what_is_read_with_a_conversion(converted_gta, tmp_path):
    root = shutil.copytree(converted_gta, tmp_path / "gta")
    write_png16(root / "images" / "00001.png", np.full((32, 64, 3), 40000, np.uint16))
    _save(root / "images" / "00003.png", image(2), format="JPEG")
    result = uda("data", "check", root, "--workers", 1)
    assert result.exit_code == 0, result.output
    assert "16-bit, scaled to 8 bits" in line_with(result.output, "images/00001.png")
    assert "a JPEG file named .png" in line_with(result.output, "images/00003.png")
    assert gta_folder(root).load(0).image.max() == 156  # round(40000 * 255 / 65535)


def test_check_json_lists_every_file_for_scripts(converted_gta, tmp_path):
    root = shutil.copytree(converted_gta, tmp_path / "gta")
    for name in ("00001", "00003"):
        (root / "images" / f"{name}.png").write_bytes(b"")
    out = tmp_path / "report" / "check.json"
    result = uda("data", "check", root, "--workers", 1, "--json", out)
    assert result.exit_code == 1
    report = json.loads(out.read_text())
    assert report["ok"] is False and report["layout"] == "gta"
    empty = [p["file"] for p in report["problems"] if p["kind"] == "image unreadable"]
    assert empty == [str(root / "images" / f"{n}.png") for n in ("00001", "00003")]
    assert report["splits"][0]["images"] == 3 and report["splits"][0]["labels"] == 1
    ok = uda("data", "check", converted_gta, "--workers", 1, "--json", out)
    assert ok.exit_code == 0 and json.loads(out.read_text())["ok"] is True
    blocked = uda("data", "check", root, "--json", root / "images" / "00002.png" / "x.json")
    assert blocked.exit_code == 2 and "cannot be written (a file is in the way)" in blocked.output


def test_check_decodes_in_parallel_with_the_same_result(converted_gta):
    from uda_data.check import check_dataset
    from uda_data.layouts import GTA

    serial = check_dataset(converted_gta, GTA, cache_dir=converted_gta, workers=1)
    parallel = check_dataset(converted_gta, GTA, cache_dir=converted_gta, workers=2)
    assert serial.to_json() == parallel.to_json() and serial.to_json()["ok"]


def test_check_says_nothing_of_statistics_rare_class_sampling_never_reads(releases, tmp_path):
    cityscapes = shutil.copytree(releases["cityscapes"][0], tmp_path / "cityscapes")
    for stats in cityscapes.glob("uda_class_stats_*.json"):
        stats.unlink()
    result = uda("data", "check", cityscapes, "--workers", 1)
    assert result.exit_code == 0 and "class statistics" not in result.output
    gta = shutil.copytree(releases["gta"][0], tmp_path / "gta")
    (gta / "uda_class_stats.json").unlink()
    note = uda("data", "check", gta, "--workers", 1).output
    assert "no class statistics for rare class sampling yet" in note


def test_synth_refuses_a_folder_holding_a_users_dataset(converted_gta, tmp_path):
    root = shutil.copytree(converted_gta, tmp_path / "gta")
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    result = uda("data", "synth", "--root", root, "--num-source", 1)
    assert result.exit_code == 2
    assert "not written by `uda data synth`" in line_with(result.output, str(root))
    assert len(result.output.strip().splitlines()) == 1
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before
    (tmp_path / "notes.txt").write_text("mine")
    result = uda("data", "synth", "--root", tmp_path / "notes.txt")
    assert result.exit_code == 2 and "an existing file, not a folder" in result.output
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_stats_on_a_full_disk_is_one_line_and_keeps_the_old_file(
    converted_gta, tmp_path, monkeypatch
):
    root = shutil.copytree(converted_gta, tmp_path / "gta")
    stats = root / "uda_class_stats.json"
    before = stats.read_bytes()
    fill_disk(monkeypatch)
    result = uda("data", "stats", root, "--force", "--workers", 1)
    assert result.exit_code == 2
    assert "cannot be written (no space left on device)" in line_with(result.output, str(stats))
    assert stats.read_bytes() == before and not list(root.glob(".*.tmp"))
    monkeypatch.undo()
    stats.unlink()
    stats.mkdir()
    result = uda("data", "stats", root, "--force", "--workers", 1)
    assert result.exit_code == 2 and "a folder is in the way" in line_with(
        result.output, str(stats)
    )


def test_convert_on_a_full_disk_is_one_line_and_leaves_no_half_file(tmp_path, monkeypatch):
    root = write_gta(tmp_path / "gta", count=2)
    fill_disk(monkeypatch)
    result = uda("data", "convert", "gta", root, "--nproc", 1)
    assert result.exit_code == 2
    assert "cannot be written (no space left on device)" in line_with(result.output, "00001")
    assert not list((root / "labels").glob("*_labelTrainIds.png"))
    assert not list((root / "labels").glob(".*"))


def test_a_broken_file_in_a_loader_worker_is_one_line_in_training(releases, tmp_path):
    synthia = shutil.copytree(releases["synthia"][0], tmp_path / "synthia")
    for picture in (synthia / "RGB").glob("*.png"):
        truncate(picture)
    sets = {
        "data.source.layout": "synthia",
        "data.source.root": synthia,
        "data.workers": 1,
    }
    args = [a for key, value in sets.items() for a in ("--set", f"{key}={value}")]
    result = uda("train", "--name", "broken", *tiny_overrides(tmp_path, 2), *args)
    assert result.exit_code == 2, result.output
    line = line_with(result.output, str(synthia / "RGB"))
    assert "cannot be read as an image" in line and "Traceback" not in result.output


def test_train_and_eval_on_the_real_formats(releases, tmp_path):
    """Synthia (with depth and rare class sampling) -> Cityscapes; the embedded domains already
    train from the GTA layout."""
    cityscapes = releases["cityscapes"][0]
    sets = {
        "data.source.layout": "synthia",
        "data.source.root": releases["synthia"][0],
        "data.target.layout": "cityscapes",
        "data.target.root": cityscapes,
        "data.val.layout": "cityscapes",
        "data.val.root": cityscapes,
        "data.load_depth": "true",
        "data.rcs.min_pixels": 50,
    }
    args = [a for key, value in sets.items() for a in ("--set", f"{key}={value}")]
    result = uda("train", "--name", "synthia", *tiny_overrides(tmp_path, 2), *args)
    assert result.exit_code == 0, result.output
    assert "target mIoU" in result.output
    checkpoint = tmp_path / "synthia" / "checkpoints" / "iter_000002.pt"
    evaluated = uda("eval", checkpoint, "--output", tmp_path / "eval.json")
    assert evaluated.exit_code == 0, evaluated.output
    assert 0 <= json.loads((tmp_path / "eval.json").read_text())["mIoU"] <= 1


def test_train_from_cityscapes_to_acdc_then_eval_on_the_other_targets(releases, tmp_path):
    """Cityscapes -> ACDC (two conditions), then the checkpoint scored on Dark Zurich, BDD100K
    and Mapillary Vistas val."""
    cityscapes, acdc = releases["cityscapes"][0], releases["acdc"][0]
    sets = {
        "data.source.layout": "cityscapes",
        "data.source.root": cityscapes,
        "data.target.layout": "acdc",
        "data.target.root": acdc,
        "data.target.conditions": "[fog, night]",
        "data.val.layout": "acdc",
        "data.val.root": acdc,
        "data.val.split": "val",
    }
    args = [a for key, value in sets.items() for a in ("--set", f"{key}={value}")]
    result = uda("train", "--name", "acdc", *tiny_overrides(tmp_path, 2), *args)
    assert result.exit_code == 0, result.output
    assert "target mIoU" in result.output
    saved = json.loads((tmp_path / "acdc" / "config.json").read_text())["data"]["target"]
    assert saved["conditions"] == ["fog", "night"]
    checkpoint = tmp_path / "acdc" / "checkpoints" / "iter_000002.pt"
    for layout, split in (("darkzurich", "val"), ("bdd100k", "val"), ("mapillary", "validation")):
        val = {"layout": layout, "root": releases[layout][0], "split": split}
        overrides = [a for key, value in val.items() for a in ("--set", f"data.val.{key}={value}")]
        output = tmp_path / f"{layout}.json"
        evaluated = uda("eval", checkpoint, *overrides, "--output", output)
        assert evaluated.exit_code == 0, evaluated.output
        assert 0 <= json.loads(output.read_text())["mIoU"] <= 1


@pytest.fixture(scope="module")
def depth_model(tmp_path_factory):
    """A randomly initialised Depth Anything model with a tiny backbone, saved like the hub's."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    backbone = transformers.Dinov2Config(
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        patch_size=14,
        image_size=56,
        out_features=["stage1", "stage2"],
        reshape_hidden_states=False,
    )
    config = transformers.DepthAnythingConfig(
        backbone_config=backbone,
        reassemble_hidden_size=16,
        patch_size=14,
        neck_hidden_sizes=[8, 16],
        reassemble_factors=[2, 1],
        fusion_hidden_size=8,
        head_hidden_size=8,
    )
    model = transformers.DepthAnythingForDepthEstimation(config)
    for parameter in model.parameters():  # default init predicts all zeros
        torch.nn.init.normal_(parameter, std=0.5)
    path = tmp_path_factory.mktemp("models") / "tiny-depth-anything"
    model.save_pretrained(path)
    transformers.DPTImageProcessor(
        size={"height": 28, "width": 28},
        keep_aspect_ratio=True,
        ensure_multiple_of=14,
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
    ).save_pretrained(path)
    return path


def test_depth_writes_the_maps_the_loaders_read_and_resumes(gta, depth_model):
    from uda_data.depth_anything import DepthEstimator

    shutil.rmtree(gta / "depth")
    Image.fromarray(image(1, size=(48, 24))).save(gta / "images" / "00002.png")
    Image.fromarray(np.zeros((24, 48), np.uint8)).save(gta / "labels" / "00002_labelTrainIds.png")
    args = ("data", "depth", gta, "--model", depth_model, "--batch-size", 2, "--workers", 0)
    result = uda(*args, "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert "wrote 3 depth maps" in result.output
    estimator = DepthEstimator(str(depth_model), "cpu")
    for i, size in enumerate([(64, 32), (48, 24), (64, 32)]):
        written = np.array(Image.open(gta / "depth" / f"{i + 1:05d}.png"))
        assert written.dtype == np.uint8 and written.shape == (size[1], size[0])
        picture = np.array(Image.open(gta / "images" / f"{i + 1:05d}.png"))
        expected = encode_relative_depth(estimator([picture])[0])
        assert np.abs(written.astype(int) - expected).max() <= 1
        assert written.min() == 0 and written.max() == 255
    sample = gta_folder(gta, with_depth=True).load(0)
    raw = np.array(Image.open(gta / "depth" / "00001.png"))
    np.testing.assert_array_equal(sample.dense["depth"], decode_depth_anything(raw))
    (gta / "depth" / "00003.png").unlink()
    again = uda(*args)
    assert again.exit_code == 0 and "wrote 1 depth maps" in again.output
    assert "2 existed already" in again.output
    assert "nothing to do" in uda(*args).output


def test_depth_mirrors_the_image_trees_of_acdc_dark_zurich_and_bdd100k(tmp_path, depth_model):
    args = ("--model", depth_model, "--workers", 0, "--device", "cpu")
    acdc = write_acdc(tmp_path / "acdc", depth=False)
    result = uda("data", "depth", acdc, *args)
    assert result.exit_code == 0 and "wrote 12 depth maps" in result.output, result.output
    written = acdc / "depth" / "fog" / "train" / "GOPR0475" / "GOPR0475_frame_000000_rgb_anon.png"
    assert written.is_file() and not list((acdc / "depth").glob("*/*_ref"))
    check = uda("data", "check", acdc, "--workers", 1)
    assert check.exit_code == 0 and "(8-bit" in check.output, check.output
    dark_zurich = write_dark_zurich(tmp_path / "darkzurich", depth=False)
    night = uda("data", "depth", dark_zurich, *args)
    assert night.exit_code == 0 and "wrote 5 depth maps" in night.output  # train, val, test
    assert not (dark_zurich / "depth" / "train" / "day").exists()
    day = uda("data", "depth", dark_zurich, "--condition", "day", *args)
    assert "wrote 2 depth maps" in day.output
    bdd = write_bdd100k(tmp_path / "bdd100k", depth=False)
    assert "wrote 5 depth maps" in uda("data", "depth", bdd, *args).output
    sample = open_layout("bdd100k", bdd, "val", with_depth=True).load(0)
    raw = np.array(Image.open(bdd / "depth" / "10k" / "val" / "7d2f7975-e0c1c5a7.png"))
    np.testing.assert_array_equal(sample.dense["depth"], decode_depth_anything(raw))


def test_depth_names_an_unreadable_image_and_writes_the_others(gta, depth_model):
    shutil.rmtree(gta / "depth")
    (gta / "images" / "00003.png").write_bytes(b"garbage")
    result = uda("data", "depth", gta, "--model", depth_model, "--workers", 0)
    assert result.exit_code == 1
    assert "cannot be read as an image" in line_with(result.output, "00003.png")
    assert sorted(p.name for p in (gta / "depth").iterdir()) == ["00001.png", "00002.png"]


def test_depth_without_transformers_says_how_to_install_it(gta, monkeypatch):
    from uda_data.depth_anything import DepthEstimator

    (gta / "depth" / "00001.png").unlink()
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(DataError, match=re.escape("pip install 'uda-data[depth]'")):
        DepthEstimator("any")
    result = uda("data", "depth", gta, "--model", "any")
    assert result.exit_code == 2
    assert "pip install 'uda-data" in line_with(result.output, "needs Hugging Face transformers")


def test_depth_with_a_folder_that_holds_no_model_is_one_line(gta, tmp_path):
    pytest.importorskip("transformers")
    (gta / "depth" / "00001.png").unlink()
    result = uda("data", "depth", gta, "--model", tmp_path)
    assert result.exit_code == 2
    assert "cannot load a depth model" in line_with(result.output, str(tmp_path))


def test_depth_with_a_hub_model_it_cannot_get_fails_at_once(gta, monkeypatch):
    pytest.importorskip("transformers")
    import uda_data.depth_anything

    (gta / "depth" / "00001.png").unlink()
    model = "depth-anything/not-cached-here"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    offline = uda("data", "depth", gta, "--model", model)
    assert offline.exit_code == 2
    assert "not in the local Hugging Face cache" in line_with(offline.output, "HF_HUB_OFFLINE")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(uda_data.depth_anything, "_hub_reachable", lambda: False)
    unreachable = uda("data", "depth", gta, "--model", model)
    assert unreachable.exit_code == 2
    assert "hub cannot be reached" in line_with(unreachable.output, "--local-dir")
    missing = uda("data", "depth", gta, "--model", gta / "no-model")
    assert missing.exit_code == 2 and "no such folder" in missing.output

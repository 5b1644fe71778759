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
from tests.data.release_trees import (
    CITYSCAPES_SCENE,
    CITYSCAPES_TRAIN_IDS,
    SYNTHIA_SCENE,
    SYNTHIA_TRAIN_IDS,
    image,
    scene_ids,
    train_ids_of,
    write_cityscapes,
    write_gta,
    write_synthia,
)
from uda_cli.main import app
from uda_data.datasets import gta_folder
from uda_data.depth import decode_depth_anything, encode_relative_depth
from uda_data.errors import DataError
from uda_data.rcs import ClassStats

runner = CliRunner()
WRITERS = {"gta": write_gta, "synthia": write_synthia, "cityscapes": write_cityscapes}


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
    assert f"the {layout.capitalize() if layout != 'gta' else 'GTA'} dataset is ready" in (
        result.output
    )
    assert "up to date" in result.output and "8-bit PNG" in result.output


def test_cityscapes_test_split_is_skipped_and_said_so(releases):
    root, output = releases["cityscapes"]
    assert "test: the test split has no public labels, skipped" in output
    assert not (root / "gtFine" / "test").exists()
    assert (root / "uda_class_stats_train.json").is_file()
    check = uda("data", "check", root, "--layout", "cityscapes").output
    assert "test: no public labels" in check


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
    assert "no leftImg8bit/ folder, so not the Cityscapes layout" in result.output


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

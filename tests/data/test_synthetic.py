"""The embedded synthetic domains: layout on disk, determinism, geometry and domain gap."""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydantic import ValidationError

from uda_data.classes import IGNORE_INDEX, NUM_CLASSES, TRAIN_ID
from uda_data.depth import encode_inverse_depth
from uda_data.errors import DataError
from uda_data.synthetic import (
    GENERATOR_VERSION,
    MANIFEST,
    TRAIN_CITIES,
    VAL_CITIES,
    SynthSpec,
    ensure_synthetic,
    is_complete,
    render_scene,
    synthesize,
)
from uda_data.synthetic.camera import Camera
from uda_data.synthetic.layout import Box, sample_layout
from uda_data.synthetic.materials import Material
from uda_data.synthetic.raycast import render_gbuffer

SMALL = SynthSpec(width=128, height=64, num_source=12, num_target_train=8, num_target_val=4)
SCENE = SynthSpec(width=256, height=128)


def _digests(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*.png"))
    }


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthesize(tmp_path_factory.mktemp("synth") / "data", SMALL, workers=1)


def test_same_seed_gives_identical_bytes_for_any_worker_count(dataset: Path, tmp_path: Path):
    again = synthesize(tmp_path / "again", SMALL, workers=2)
    assert _digests(again) == _digests(dataset)


def test_different_seed_gives_different_images(dataset: Path, tmp_path: Path):
    other = synthesize(tmp_path / "other", SMALL.model_copy(update={"seed": 1}), workers=1)
    a, b = _digests(dataset), _digests(other)
    assert a.keys() == b.keys()
    assert a["source/images/00000.png"] != b["source/images/00000.png"]


def test_source_uses_gta_layout_and_formats(dataset: Path):
    for i in range(SMALL.num_source):
        image = Image.open(dataset / f"source/images/{i:05d}.png")
        label = Image.open(dataset / f"source/labels/{i:05d}_labelTrainIds.png")
        depth = Image.open(dataset / f"source/depth/{i:05d}.png")
        assert (image.mode, label.mode, depth.mode) == ("RGB", "L", "L")
        assert image.size == label.size == depth.size == (SMALL.width, SMALL.height)
        values = set(np.unique(np.asarray(label)).tolist())
        assert values <= set(range(NUM_CLASSES)) | {IGNORE_INDEX}
    assert len(list((dataset / "source/images").iterdir())) == SMALL.num_source


def test_target_uses_cityscapes_layout_and_formats(dataset: Path):
    for split, count, cities in (
        ("train", SMALL.num_target_train, TRAIN_CITIES),
        ("val", SMALL.num_target_val, VAL_CITIES),
    ):
        images = sorted((dataset / "target/leftImg8bit" / split).glob("*/*_leftImg8bit.png"))
        assert len(images) == count
        for path in images:
            city = path.parent.name
            assert city in cities and path.name.startswith(f"{city}_")
            stem = path.name.removesuffix("_leftImg8bit.png")
            label = dataset / "target/gtFine" / split / city / f"{stem}_gtFine_labelTrainIds.png"
            depth = dataset / "target/depth" / split / city / path.name
            assert Image.open(path).mode == "RGB"
            assert Image.open(label).mode == "L" and Image.open(depth).mode == "L"
            assert Image.open(depth).size == (SMALL.width, SMALL.height)
            values = set(np.unique(np.asarray(Image.open(label))).tolist())
            assert values <= set(range(NUM_CLASSES)) | {IGNORE_INDEX}
    assert not set(TRAIN_CITIES) & set(VAL_CITIES)


def test_manifest_records_spec_version_and_counts(dataset: Path):
    manifest = json.loads((dataset / MANIFEST).read_text())
    assert manifest["generator_version"] == GENERATOR_VERSION
    assert SynthSpec(**manifest["spec"]) == SMALL
    assert manifest["files"] == {"source": 12, "target_train": 8, "target_val": 4}


@pytest.mark.parametrize("domain", ["source", "target"])
def test_sky_is_exactly_the_infinite_depth_and_zero_in_the_depth_png(domain):
    for index in range(3):
        scene = render_scene(index, domain, SCENE)
        sky = scene.label == TRAIN_ID["sky"]
        assert sky.any()
        np.testing.assert_array_equal(sky, np.isinf(scene.depth))
        np.testing.assert_array_equal(sky, np.isinf(scene.depth_estimate))
        png = encode_inverse_depth(scene.depth_estimate)
        assert (png[sky] == 0).all() and (png[~sky] > 0).mean() > 0.99


def test_source_depth_is_exact_and_target_depth_a_degraded_estimate():
    source = render_scene(0, "source", SCENE)
    np.testing.assert_array_equal(source.depth_estimate, source.depth)
    target = render_scene(0, "target", SCENE)
    finite = np.isfinite(target.depth)
    true_inv, est_inv = 1 / target.depth[finite], 1 / target.depth_estimate[finite]
    assert not np.allclose(true_inv, est_inv)
    assert np.corrcoef(true_inv, est_inv)[0, 1] > 0.8


def test_road_gets_farther_toward_the_horizon():
    for index in range(3):
        scene = render_scene(index, "source", SCENE)
        road = scene.label == TRAIN_ID["road"]
        rows = [r for r in range(SCENE.height) if road[r].sum() > 5]
        medians = np.array([np.median(scene.depth[r][road[r]]) for r in rows])
        assert (np.diff(medians) < 0).mean() > 0.95


def _level_layout(boxes: list[Box]):
    layout = sample_layout(np.random.default_rng(0), 256, 128)
    camera = Camera(width=256, height=128, focal=200.0, elevation=1.5, pitch=0.0, roll=0.0)
    return dataclasses.replace(
        layout, camera=camera, rows=[], far_wall=None, boxes=boxes, spheres=[]
    )


def test_object_image_height_follows_its_depth_and_nearer_objects_occlude():
    car = TRAIN_ID["car"]
    near = Box((-1.0, 0.0, 10.0), (1.0, 1.5, 14.0), car, Material.CAR_BODY, 0.0)
    far = Box((-0.5, 0.0, 20.0), (1.5, 3.0, 24.0), TRAIN_ID["bus"], Material.BUS, 0.0)
    gb = render_gbuffer(_level_layout([near, far]))
    column = gb.label[:, 128]
    car_rows = np.flatnonzero(column == car)
    # Pinhole model: the near box's front face (z = 10) spans focal * 1.5 / 10 = 30 rows.
    assert abs(len(car_rows) - 200.0 * 1.5 / 10.0) <= 2
    np.testing.assert_allclose(gb.depth[car_rows, 128], 10.0, rtol=1e-4)
    # The bus is taller, so it shows above the car but is hidden behind it.
    bus_rows = np.flatnonzero(column == TRAIN_ID["bus"])
    assert bus_rows.size and bus_rows.max() < car_rows.min()
    alone = render_gbuffer(_level_layout([far]))
    hidden = (alone.label == TRAIN_ID["bus"]) & (gb.label == car)
    assert hidden.sum() > 100
    assert (gb.depth[hidden] < alone.depth[hidden]).all()


def test_scenes_cover_the_main_street_classes():
    seen = set()
    for index in range(12):
        seen |= set(np.unique(render_scene(index, "source", SCENE).label).tolist())
    wanted = (
        "road",
        "sidewalk",
        "building",
        "vegetation",
        "sky",
        "pole",
        "traffic sign",
        "person",
        "car",
    )
    assert {TRAIN_ID[n] for n in wanted} <= seen


def test_unlabelled_pixels_are_rare():
    ignored = [(render_scene(i, "target", SCENE).label == IGNORE_INDEX).mean() for i in range(8)]
    assert max(ignored) < 0.08


def test_domains_paint_the_same_class_in_different_colours():
    def mean_colours(domain: str) -> dict[int, np.ndarray]:
        scenes = [render_scene(i, domain, SCENE) for i in range(6)]
        return {
            c: np.concatenate([s.image[s.label == c] for s in scenes]).astype(float).mean(axis=0)
            for c in (TRAIN_ID["sky"], TRAIN_ID["vegetation"], TRAIN_ID["sidewalk"])
        }

    source, target = mean_colours("source"), mean_colours("target")
    for c in source:
        assert np.linalg.norm(source[c] - target[c]) > 25.0


def test_ensure_synthetic_skips_an_identical_dataset(dataset: Path, tmp_path: Path):
    root = synthesize(tmp_path / "data", SMALL, workers=1)
    marker = root / "marker"
    marker.write_text("kept")
    assert ensure_synthetic(root, SMALL) == root
    assert marker.exists()


def test_ensure_synthetic_regenerates_its_own_stale_dataset(tmp_path: Path):
    root = synthesize(tmp_path / "data", SMALL, workers=1)
    (root / "source" / "uda_class_stats.json").write_text("{}")  # what training writes there
    bigger = SMALL.model_copy(update={"num_source": 13})
    ensure_synthetic(root, bigger, workers=1)
    assert not (root / "source" / "uda_class_stats.json").exists()
    assert (root / "source/images/00012.png").exists()
    assert json.loads((root / MANIFEST).read_text())["spec"]["num_source"] == 13
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


@pytest.fixture
def gta_copy(tmp_path: Path) -> Path:
    """A folder holding a user's dataset that ``synth`` must not touch."""
    root = tmp_path / "gta"
    for folder in ("images", "labels"):
        (root / folder).mkdir(parents=True)
        (root / folder / "00001.png").write_bytes(b"the user's file")
    (root / "uda_class_stats.json").write_text("{}")
    return root


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_synthesize_refuses_a_folder_it_did_not_write(gta_copy: Path):
    before = _tree(gta_copy)
    with pytest.raises(DataError, match=r"gta: not empty and not written by `uda data synth`"):
        synthesize(gta_copy, SMALL, workers=1)
    with pytest.raises(DataError, match="not written by"):
        ensure_synthetic(gta_copy, SMALL, workers=1)
    assert _tree(gta_copy) == before
    assert sorted(p.name for p in gta_copy.parent.iterdir()) == ["gta"]


def test_synthesize_refuses_its_own_tree_once_it_holds_a_users_file(tmp_path: Path):
    root = synthesize(tmp_path / "data", SMALL, workers=1)
    (root / "source" / "images" / "mine.png").write_bytes(b"kept")
    with pytest.raises(DataError, match=r"it holds .*source/images/mine\.png"):
        synthesize(root, SMALL.model_copy(update={"seed": 1}), workers=1)
    assert (root / "source" / "images" / "mine.png").read_bytes() == b"kept"
    assert json.loads((root / MANIFEST).read_text())["spec"]["seed"] == SMALL.seed


def test_synthesize_refuses_a_file_or_a_link_and_accepts_an_empty_folder(tmp_path: Path):
    (tmp_path / "file").write_text("mine")
    with pytest.raises(DataError, match=r"file: an existing file, not a folder"):
        synthesize(tmp_path / "file", SMALL, workers=1)
    assert (tmp_path / "file").read_text() == "mine"
    (tmp_path / "link").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(DataError, match=r"link: a symbolic link"):
        synthesize(tmp_path / "link", SMALL, workers=1)
    (tmp_path / "empty").mkdir()
    assert is_complete(synthesize(tmp_path / "empty", SMALL, workers=1), SMALL)


def test_an_unwritable_root_is_one_line_and_leaves_nothing(tmp_path: Path):
    (tmp_path / "file").write_text("mine")
    with pytest.raises(DataError, match=r"file/data: cannot be written \(a file is in the way\)"):
        synthesize(tmp_path / "file" / "data", SMALL, workers=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_a_full_disk_leaves_no_partial_tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    written = []

    def save(self, path, *args, **kwargs):
        if len(written) == 5:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        written.append(path)

    monkeypatch.setattr(Image.Image, "save", save)
    with pytest.raises(DataError, match=r"data: cannot be written \(no space left on device\)"):
        synthesize(tmp_path / "data", SMALL, workers=1)
    assert list(tmp_path.iterdir()) == []


def test_spec_is_frozen_and_validated():
    with pytest.raises(ValidationError):
        SynthSpec(width=0)
    with pytest.raises(ValidationError):
        SynthSpec(num_sources=3)
    with pytest.raises(ValidationError):
        SMALL.seed = 3

"""Rare class sampling: class statistics, their cache and validation, the sampler, the crop."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
from PIL import Image

from uda_data.classes import NUM_CLASSES
from uda_data.config import DataConfig, source_sampler
from uda_data.datasets import TrainPipeline, UDATrainSet, gta_folder
from uda_data.errors import DataError
from uda_data.rcs import (
    ClassStats,
    RareClassSampler,
    class_stats_path,
    compute_class_stats,
    load_or_compute,
)

MIN_PIXELS = 50  # the embedded images are 128x64


@pytest.fixture
def gta_copy(synthetic_root, tmp_path):
    root = tmp_path / "gta"
    shutil.copytree(synthetic_root / "source", root)
    return root


@pytest.fixture(scope="module")
def source_stats(synthetic_root) -> ClassStats:
    return compute_class_stats(gta_folder(synthetic_root / "source"), workers=1)


def hand_made_stats(counts: list[list[int]]) -> ClassStats:
    counts = np.array(counts, dtype=np.int64)
    n = len(counts)
    return ClassStats(
        tuple(f"{i}.png" for i in range(n)), np.zeros(n, np.int64), np.zeros(n, np.int64), counts
    )


def test_stats_equal_a_direct_bincount(synthetic_root, source_stats):
    labels = sorted((synthetic_root / "source" / "labels").glob("*.png"))
    expected = [
        np.bincount(np.asarray(Image.open(p)).ravel(), minlength=256)[:NUM_CLASSES] for p in labels
    ]
    assert source_stats.files == tuple(p.name for p in labels)
    assert np.array_equal(source_stats.counts, np.array(expected))
    assert source_stats.frequencies.sum() == pytest.approx(1.0)


def test_parallel_counting_matches_serial(synthetic_root, source_stats):
    progress = []
    stats = compute_class_stats(
        gta_folder(synthetic_root / "source"),
        workers=2,
        progress=lambda done, total: progress.append((done, total)),
    )
    assert np.array_equal(stats.counts, source_stats.counts)
    assert progress[-1] == (16, 16)


def test_saved_stats_load_back_equal(source_stats, tmp_path):
    path = tmp_path / "deep" / "stats.json"
    source_stats.save(path)
    loaded = ClassStats.load(path)
    assert loaded.files == source_stats.files
    for field in ("sizes", "mtimes", "counts"):
        assert np.array_equal(getattr(loaded, field), getattr(source_stats, field))
    assert [p.name for p in path.parent.iterdir()] == ["stats.json"]


def test_missing_stats_are_computed_and_cached(gta_copy):
    folder = gta_folder(gta_copy)
    path = class_stats_path(gta_copy, None, gta_copy / "unused-cache")
    assert path == gta_copy.resolve() / "uda_class_stats.json"
    stats = load_or_compute(folder, path, workers=1)
    assert path.is_file()
    assert np.array_equal(load_or_compute(folder, path).counts, stats.counts)


@pytest.mark.parametrize(
    ("text", "message"),
    [("", "is empty"), ("{", "not a valid"), ('[{"0": 5, "file": "x.png"}]', "not a valid")],
)
def test_empty_or_corrupt_stats_are_an_error(gta_copy, text, message):
    path = gta_copy / "uda_class_stats.json"
    path.write_text(text)
    with pytest.raises(DataError, match=message) as info:
        load_or_compute(gta_folder(gta_copy), path)
    assert str(path) in str(info.value) and "--force" in str(info.value)


def test_stale_stats_name_the_file_and_the_changed_label(gta_copy):
    path = gta_copy / "uda_class_stats.json"
    load_or_compute(gta_folder(gta_copy), path, workers=1)
    label = gta_copy / "labels" / "00003_labelTrainIds.png"
    Image.fromarray(np.zeros((64, 128), np.uint8)).save(label)
    with pytest.raises(DataError, match="stale") as info:
        load_or_compute(gta_folder(gta_copy), path)
    assert str(path) in str(info.value) and label.name in str(info.value)


def test_stats_of_another_file_list_are_stale(gta_copy):
    path = gta_copy / "uda_class_stats.json"
    load_or_compute(gta_folder(gta_copy), path, workers=1)
    (gta_copy / "images" / "00015.png").unlink()
    (gta_copy / "labels" / "00015_labelTrainIds.png").unlink()
    with pytest.raises(DataError, match="counts 16 label files, the dataset has 15"):
        load_or_compute(gta_folder(gta_copy), path)


def test_stats_go_to_the_cache_when_the_root_is_read_only(gta_copy, tmp_path, monkeypatch):
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    path = class_stats_path(gta_copy, "train", tmp_path / "cache")
    assert path.parent == tmp_path / "cache" / "stats" and path.suffix == ".json"


def test_sampler_class_frequencies_match_softmax():
    counts = np.zeros((6, NUM_CLASSES), np.int64)
    counts[:, 0] = 5000  # common
    counts[:3, 1] = 2000
    counts[0, 3] = 600
    counts[4, 5] = 300
    counts[5, 5] = 60
    counts[2, 7] = 40  # present, but never with more than min_pixels: cannot be drawn
    stats = hand_made_stats(counts.tolist())
    temperature = 0.1
    sampler = RareClassSampler(stats, temperature, min_pixels=MIN_PIXELS)

    freq = counts.sum(0) / counts.sum()
    drawable = [0, 1, 3, 5]
    logits = (1 - freq[drawable]) / temperature
    expected = np.zeros(NUM_CLASSES)
    expected[drawable] = np.exp(logits) / np.exp(logits).sum()
    assert np.allclose(sampler.probabilities, expected, atol=1e-12)
    assert (expected > 0.05).sum() >= 3

    rng = np.random.default_rng(0)
    draws = [sampler.draw(rng) for _ in range(20000)]
    classes = np.array([c for _, c in draws])
    observed = np.bincount(classes, minlength=NUM_CLASSES) / len(draws)
    assert np.abs(observed - expected).max() < 0.015
    assert all(counts[i, c] > MIN_PIXELS for i, c in draws)
    assert {i for i, c in draws if c == 5} == {4, 5}


def test_sampler_without_drawable_class_is_an_error():
    with pytest.raises(DataError, match="min_pixels"):
        RareClassSampler(hand_made_stats([[10] * NUM_CLASSES]), min_pixels=MIN_PIXELS)


def test_rcs_crop_holds_the_rare_class(synthetic_root, source_stats):
    folder = gta_folder(synthetic_root / "source")
    sampler = RareClassSampler(source_stats, temperature=0.01, min_pixels=MIN_PIXELS)
    pipe = TrainPipeline(crop=(32, 32), cat_max_ratio=0.75)
    min_crop_pixels = MIN_PIXELS // 2
    rng = np.random.default_rng(0)
    focused, plain = [], []
    for _ in range(60):
        index, c = sampler.draw(rng)
        sample = folder.load(index)
        focused.append((pipe(sample, rng, c, min_crop_pixels)["label"] == c).sum())
        plain.append((pipe(sample, rng)["label"] == c).sum())
    hits = np.mean(np.array(focused) > min_crop_pixels)
    assert hits >= 0.8 and hits > np.mean(np.array(plain) > min_crop_pixels)


def test_rcs_draws_are_deterministic_per_draw_number(synthetic_root, source_stats):
    sampler = RareClassSampler(source_stats, min_pixels=MIN_PIXELS)
    pipe = TrainPipeline(crop=(64, 32))
    ds = UDATrainSet(
        gta_folder(synthetic_root / "source"),
        pipe,
        seed=1,
        source_sampler=sampler,
        min_crop_pixels=25,
    )
    a, b, c = ds[5], ds[5], ds[6]
    assert np.array_equal(a["source"]["image"], b["source"]["image"])
    assert np.array_equal(a["source"]["label"], b["source"]["label"])
    assert not np.array_equal(a["source"]["image"], c["source"]["image"])


def test_source_sampler_follows_the_config(gta_copy, tmp_path):
    dataset = {"layout": "gta", "root": str(gta_copy)}
    data = DataConfig(
        source=dataset, target=dataset, val=dataset, cache_dir=tmp_path / "cache", workers=0
    )
    folder = gta_folder(gta_copy)
    assert source_sampler(data, folder) is None
    data.rcs = {"min_pixels": MIN_PIXELS, "min_crop_ratio": 2.0}
    assert data.rcs.min_crop_pixels == 2 * MIN_PIXELS and data.rcs.temperature == 0.01
    sampler = source_sampler(data, folder)
    assert sampler.min_pixels == MIN_PIXELS and sampler.probabilities.sum() == pytest.approx(1)
    assert (gta_copy / "uda_class_stats.json").is_file()
    with pytest.raises(ValueError, match="temperature"):
        data.rcs = {"temperature": 0}


def test_cli_stats_writes_the_file_and_prints_the_table(gta_copy):
    from typer.testing import CliRunner

    from uda_cli.main import app

    runner = CliRunner()
    args = ["data", "stats", str(gta_copy), "--layout", "gta", "--workers", "1"]
    result = runner.invoke(app, [*args, "--min-pixels", str(MIN_PIXELS)])
    assert result.exit_code == 0, result.output
    assert (gta_copy / "uda_class_stats.json").is_file()
    assert "P(c) %" in result.output and "traffic light" in result.output
    assert "cannot be sampled" in result.output

    missing = runner.invoke(app, ["data", "stats", str(gta_copy / "nowhere")])
    assert missing.exit_code == 2
    assert len(missing.output.strip().splitlines()) == 1 and "does not exist" in missing.output

"""The native CPU backend computes the definition: it matches the NumPy reference."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from uda_dispersion import dispersion_map, instances, reference

IGNORE = 255


@st.composite
def scenes(draw, max_side: int = 24):
    """Label and depth batches: blocky or pixel-noise labels, some ignored pixels, random,
    constant or integer-valued depth."""
    b = draw(st.integers(1, 2))
    h, w = draw(st.integers(1, max_side)), draw(st.integers(1, max_side))
    classes = draw(st.integers(1, 5))
    block = draw(st.sampled_from([1, 2, 4]))
    ignored = draw(st.sampled_from([0.0, 0.1, 0.4, 1.0]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    coarse = rng.integers(0, classes, (b, -(-h // block), -(-w // block)))
    labels = coarse.repeat(block, 1).repeat(block, 2)[:, :h, :w]
    labels[rng.random(labels.shape) < ignored] = IGNORE
    kind = draw(st.sampled_from(["random", "constant", "integer"]))
    depth = {
        "random": rng.random((b, h, w)),
        "constant": np.full((b, h, w), 3.0),
        "integer": rng.integers(0, 256, (b, h, w)).astype(float),
    }[kind].astype(np.float32)
    return labels, depth


options = st.fixed_dictionaries(
    {
        "connectivity": st.sampled_from([4, 8]),
        "min_area": st.integers(0, 6),
        "depth_weight": st.sampled_from([0.0, 0.5, 1.0, 3.0]),
        "weighting": st.sampled_from(["uniform", "area", "sqrt_area"]),
        "fill": st.sampled_from([-1.0, 0.0]),
    }
)


def assert_matches_reference(labels, depth, **kwargs):
    got = instances(labels, depth, **kwargs)
    ids, table = reference.instances(labels, depth, **kwargs)
    np.testing.assert_array_equal(got.ids, ids)
    t = got.table
    np.testing.assert_array_equal(t.batch, table[:, 0])
    np.testing.assert_array_equal(t.class_id, table[:, 1])
    np.testing.assert_array_equal(t.area, table[:, 2])
    np.testing.assert_allclose(t.centroid, table[:, 3:6], rtol=0, atol=1e-9)
    np.testing.assert_allclose(t.dispersion, table[:, 6], rtol=0, atol=1e-5)
    np.testing.assert_allclose(
        dispersion_map(labels, depth, **kwargs),
        reference.dispersion_map(labels, depth, **kwargs),
        rtol=0,
        atol=1e-5,
    )


@settings(max_examples=600, deadline=None)
@given(scenes(), options)
def test_cpu_matches_reference_on_random_maps(scene, kwargs):
    assert_matches_reference(*scene, **kwargs)


def checkerboard(h, w):
    return (np.indices((h, w)).sum(0) % 2).astype(np.int64)


def edge_cases():
    rng = np.random.default_rng(7)
    huge = np.zeros((256, 256), np.int64)
    huge[100:110, 40:60] = 1
    tiny = rng.integers(0, 2, (40, 40)) * 3 + rng.integers(0, 3, (40, 40))
    return {
        "all_ignore": np.full((9, 9), IGNORE),
        "one_class": np.ones((12, 10), np.int64),
        "one_pixel": np.zeros((1, 1), np.int64),
        "checkerboard": checkerboard(16, 16),
        "many_tiny_components": tiny,
        "one_huge_instance": huge,
        "non_square": rng.integers(0, 3, (7, 50)).repeat(2, 0),
    }


@pytest.mark.parametrize("name", list(edge_cases()))
@pytest.mark.parametrize("connectivity", [4, 8])
@pytest.mark.parametrize("min_area", [0, 1, 16])
def test_cpu_matches_reference_on_edge_cases(name, connectivity, min_area):
    labels = edge_cases()[name]
    depth = np.random.default_rng(1).random(labels.shape).astype(np.float32)
    assert_matches_reference(labels, depth, connectivity=connectivity, min_area=min_area)


def test_checkerboard_with_4_connectivity_makes_every_pixel_an_instance():
    labels = checkerboard(16, 16)
    got = instances(labels, np.zeros(labels.shape, np.float32), connectivity=4, min_area=1)
    assert len(got.table.area) == labels.size
    assert (got.table.dispersion >= 0).all()


def test_undefined_pixels_hold_fill():
    labels = np.zeros((20, 20), np.int64)
    labels[:, 10:] = 1
    labels[0, 0] = IGNORE
    labels[5, 15] = 2  # a one-pixel instance, below min_area
    out = dispersion_map(labels, np.zeros(labels.shape, np.float32), fill=-7.0)[0, 0]
    assert out[0, 0] == -7.0 and out[5, 15] == -7.0
    assert dispersion_map(np.ones((8, 8), np.int64), np.zeros((8, 8)), fill=-7.0).max() == -7.0


@pytest.mark.parametrize("weighting", ["uniform", "sqrt_area"])
def test_pair_step_split_into_row_blocks_matches_reference(weighting):
    """About 2,800 instances per image: the pair step runs as several blocks of rows, shared
    by the threads."""
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 8, (2, 64, 64))
    depth = rng.random(labels.shape).astype(np.float32)
    kwargs = {"min_area": 1, "connectivity": 4, "weighting": weighting, "max_instances": None}
    assert len(instances(labels, depth, **kwargs).table.area) > 2 * 1500
    reference_kwargs = {k: v for k, v in kwargs.items() if k != "max_instances"}
    _, table = reference.instances(labels, depth, **reference_kwargs)
    np.testing.assert_allclose(
        instances(labels, depth, **kwargs).table.dispersion, table[:, 6], rtol=0, atol=1e-5
    )


def test_thread_count_does_not_change_a_single_bit():
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 5, (3, 64, 64))
    depth = rng.random(labels.shape).astype(np.float32)
    threads = torch.get_num_threads()
    maps = []
    for n in (1, 3):
        torch.set_num_threads(n)
        try:
            maps.append(instances(labels, depth, min_area=1, max_instances=None).table.dispersion)
        finally:
            torch.set_num_threads(threads)
    np.testing.assert_array_equal(maps[0], maps[1])

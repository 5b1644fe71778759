"""Geometric properties of the definition: what must not change the map, and the two
extremes of the spread of supporters."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from uda_dispersion import dispersion_map

IGNORE = 255


@st.composite
def blocky_scenes(draw):
    h, w = draw(st.integers(4, 40)), draw(st.integers(4, 40))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    labels = rng.integers(0, 4, (2, -(-h // 3), -(-w // 3))).repeat(3, 1).repeat(3, 2)
    labels = labels[:, :h, :w]
    labels[rng.random(labels.shape) < 0.1] = IGNORE
    depth = rng.integers(0, 256, labels.shape).astype(np.float32)
    return labels, depth


@settings(max_examples=200, deadline=None)
@given(blocky_scenes(), st.permutations(range(4)))
def test_permuting_class_ids_leaves_the_map_unchanged(scene, permutation):
    labels, depth = scene
    renamed = np.where(labels == IGNORE, IGNORE, np.array([*permutation, 0])[labels % 255])
    np.testing.assert_array_equal(
        dispersion_map(renamed, depth, min_area=3), dispersion_map(labels, depth, min_area=3)
    )


@settings(max_examples=200, deadline=None)
@given(blocky_scenes(), st.sampled_from([-1, -2, (-2, -1)]), st.sampled_from([4, 8]))
def test_flipping_the_inputs_flips_the_map(scene, axes, connectivity):
    labels, depth = scene
    flipped = dispersion_map(
        np.flip(labels, axes), np.flip(depth, axes), min_area=3, connectivity=connectivity
    )
    expected = np.flip(dispersion_map(labels, depth, min_area=3, connectivity=connectivity), axes)
    np.testing.assert_allclose(flipped, expected, rtol=0, atol=1e-5)


@settings(max_examples=200, deadline=None)
@given(blocky_scenes(), st.integers(-4, 4), st.integers(-1000, 1000))
def test_affine_change_of_depth_leaves_the_map_unchanged(scene, log2_scale, shift):
    # Power-of-two scales and integer shifts of integer depths are exact in float32, so any
    # difference would come from the definition, not from rounding.
    labels, depth = scene
    moved = depth * np.float32(2.0**log2_scale) + np.float32(shift)
    np.testing.assert_allclose(
        dispersion_map(labels, moved, min_area=3),
        dispersion_map(labels, depth, min_area=3),
        rtol=0,
        atol=1e-6,
    )


def target_with_supporters(centres, size=61, half=3):
    """Class 0 square in the middle, class 1 squares centred at the given (row, col)."""
    labels = np.full((size, size), IGNORE)
    middle = size // 2
    labels[middle - half : middle + half + 1, middle - half : middle + half + 1] = 0
    for r, c in centres:
        labels[r - half : r + half + 1, c - half : c + half + 1] = 1
    return labels, middle


def test_supporters_spread_evenly_around_give_one():
    for angles in (np.arange(4) * np.pi / 2, np.arange(8) * np.pi / 4):
        centres = [(30 + round(20 * np.sin(a)), 30 + round(20 * np.cos(a))) for a in angles]
        labels, middle = target_with_supporters(centres)
        out = dispersion_map(labels, np.ones(labels.shape, np.float32), min_area=1)[0, 0]
        np.testing.assert_allclose(out[middle, middle], 1.0, atol=1e-6)


def test_supporters_on_one_side_give_zero():
    labels, middle = target_with_supporters([(30, 40), (30, 50), (30, 58)], size=61, half=2)
    out = dispersion_map(labels, np.ones(labels.shape, np.float32), min_area=1)[0, 0]
    np.testing.assert_allclose(out[middle, middle], 0.0, atol=1e-7)
    # Each supporter sees only the target, so it gets zero as well.
    np.testing.assert_allclose(out[30, 50], 0.0, atol=1e-7)

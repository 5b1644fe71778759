"""Depth maps as the published dispersion code stores and reads them.

The published maps are 8-bit PNGs written from Depth Anything v2, a relative *inverse* depth
normalised per image to 0..255 (near is bright, sky is 0). On loading, the value p is mapped
to ``255 - 255 * exp(-6 p / 256)``, a monotone stretch of the near range. Our loaders apply
that transform to 8-bit maps, so a model sees the same depth values as the published code.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

DepthEncoding = Literal["depth_anything_png", "uint16_mm", "float_npy"]
"""How depth maps are stored: ``depth_anything_png``, 8-bit PNGs in the published encoding
(``uda data depth`` writes them); ``uint16_mm``, 16-bit PNGs of metric depth in millimetres;
``float_npy``, ``.npy`` arrays of float depth (any unit), used as they are."""


def decode_depth_anything(png: np.ndarray) -> np.ndarray:
    """Published transform of an 8-bit Depth Anything map to the float depth the model sees."""
    p = png.astype(np.float32)
    return (255.0 - 255.0 * np.exp(-6.0 * p / 256.0)).astype(np.float32)


def encode_relative_depth(inverse_depth: np.ndarray) -> np.ndarray:
    """8-bit PNG values of a relative inverse depth map, as Depth Anything v2 predicts it.

    The image's own range is stretched to 0..255, so the nearest pixel is 255 and the farthest
    (sky) 0: the values ``decode_depth_anything`` expects. A constant map gives zeros.
    """
    inv = np.asarray(inverse_depth, dtype=np.float64)
    lo, hi = inv.min(), inv.max()
    if not hi > lo:
        return np.zeros(inv.shape, dtype=np.uint8)
    return np.round(255.0 * (inv - lo) / (hi - lo)).astype(np.uint8)


def encode_inverse_depth(depth: np.ndarray) -> np.ndarray:
    """8-bit PNG values of a metric depth map, in the Depth Anything v2 convention.

    Inverse depth normalised to the image's own range; infinite depth (sky) maps to 0.
    """
    inv = np.zeros(depth.shape, dtype=np.float64)
    finite = np.isfinite(depth) & (depth > 0)
    inv[finite] = 1.0 / depth[finite]
    return encode_relative_depth(inv)

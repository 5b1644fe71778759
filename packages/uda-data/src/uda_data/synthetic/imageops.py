"""Small numpy image operations used by the appearance and depth models."""

from __future__ import annotations

from functools import lru_cache

import numpy as np


def gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur over the first two axes, edges replicated."""
    radius = max(int(np.ceil(3.0 * sigma)), 1)
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps = (taps / taps.sum()).astype(np.float32)
    out = image.astype(np.float32)
    for axis in (0, 1):
        pad = [(0, 0)] * out.ndim
        pad[axis] = (radius, radius)
        padded = np.pad(out, pad, mode="edge")
        n = out.shape[axis]
        acc = np.zeros_like(out)
        for k, weight in enumerate(taps):
            acc += weight * np.take(padded, np.arange(k, k + n), axis=axis)
        out = acc
    return out


@lru_cache(maxsize=1)
def noise_tile(size: int = 256) -> np.ndarray:
    """A fixed, tileable fractal value-noise texture in about [-1, 1] (same in every process)."""
    rng = np.random.default_rng(12345)
    tile = np.zeros((size, size), dtype=np.float32)
    for octave in range(1, 6):
        cells = 2**octave * 2
        grid = rng.standard_normal((cells, cells)).astype(np.float32)
        reps = size // cells
        coarse = np.kron(grid, np.ones((reps, reps), dtype=np.float32))
        # Smooth the blocky upsampling with a wrap-around blur.
        shifted = sum(
            np.roll(np.roll(coarse, dy, 0), dx, 1)
            for dy in range(-reps // 2, reps // 2 + 1, max(reps // 4, 1))
            for dx in range(-reps // 2, reps // 2 + 1, max(reps // 4, 1))
        )
        shifted /= np.abs(shifted).max()
        tile += shifted / octave
    return tile / np.abs(tile).max()


def sample_noise(u: np.ndarray, v: np.ndarray, scale: float) -> np.ndarray:
    """The noise tile at surface coordinates (metres) times ``scale`` texels per metre."""
    tile = noise_tile()
    n = tile.shape[0]
    iu = np.floor(u * scale).astype(np.int64) % n
    iv = np.floor(v * scale).astype(np.int64) % n
    return tile[iv, iu]

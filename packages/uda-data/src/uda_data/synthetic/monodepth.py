"""A monocular depth estimate degraded from exact depth, as the target domain ships it.

Real target depth comes from a monocular network (Depth Anything): relative, smooth across
object boundaries, biased and noisy. We mimic that in inverse depth: a random non-linear
bias, a random scale and shift, low-frequency and per-pixel noise, and Gaussian smoothing.
"""

from __future__ import annotations

import numpy as np

from uda_data.synthetic.imageops import gaussian_blur, sample_noise


def degrade_depth(depth: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A float32 depth estimate (metres, roughly scaled; inf where the true depth is)."""
    finite = np.isfinite(depth)
    inv = np.where(finite, 1.0 / np.where(finite, depth, 1.0), 0.0)
    inv_max = max(float(inv.max()), 1e-6)
    rel = (inv / inv_max) ** rng.uniform(0.75, 1.3)
    h, w = depth.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    ou, ov = rng.uniform(0, 100, size=2)
    rel = rel * (1.0 + 0.08 * sample_noise(xx / w + ou, yy / w + ov, 6.0))
    rel = gaussian_blur(rel, rng.uniform(1.0, 2.5))
    rel = rel * rng.uniform(0.85, 1.15) + rng.uniform(0.0, 0.03)
    rel = np.maximum(rel + rng.normal(0.0, 0.008, size=rel.shape), 1e-3)
    estimate = 1.0 / (rel * inv_max * rng.uniform(0.8, 1.25))
    return np.where(finite, estimate, np.inf).astype(np.float32)

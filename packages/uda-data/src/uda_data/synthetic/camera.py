"""A pinhole camera above a flat ground, and the rays it casts.

World frame: X to the right, Y up, Z forward along the street; the ground is Y = 0 and the
camera sits at (0, height, 0). Ray directions are scaled so that their component along the
optical axis is 1, so the ray parameter at a hit is the camera-frame depth.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FOCAL_PER_WIDTH = 0.8


@dataclass(frozen=True)
class Camera:
    width: int
    height: int
    focal: float
    elevation: float
    pitch: float
    roll: float

    @classmethod
    def sample(cls, rng: np.random.Generator, width: int, height: int) -> Camera:
        """A dashboard camera about 1.5 m high with a little pitch and roll."""
        return cls(
            width=width,
            height=height,
            focal=FOCAL_PER_WIDTH * width,
            elevation=float(rng.uniform(1.35, 1.65)),
            pitch=float(np.deg2rad(rng.uniform(-1.5, 2.5))),
            roll=float(np.deg2rad(rng.uniform(-1.0, 1.0))),
        )

    @property
    def origin(self) -> np.ndarray:
        return np.array([0.0, self.elevation, 0.0])

    @property
    def rotation(self) -> np.ndarray:
        """Camera-to-world rotation: roll about the optical axis, then pitch (down is positive)."""
        cp, sp = np.cos(self.pitch), np.sin(self.pitch)
        cr, sr = np.cos(self.roll), np.sin(self.roll)
        pitch = np.array([[1.0, 0.0, 0.0], [0.0, cp, -sp], [0.0, sp, cp]])
        roll = np.array([[cr, -sr, 0.0], [sr, cr, 0.0], [0.0, 0.0, 1.0]])
        return pitch @ roll

    def rays(self) -> np.ndarray:
        """World directions (3, H, W) through pixel centres, unit depth along the optical axis."""
        u = (np.arange(self.width) + 0.5 - self.width / 2) / self.focal
        v = (np.arange(self.height) + 0.5 - self.height / 2) / self.focal
        cam = np.stack(
            [
                np.broadcast_to(u[None, :], (self.height, self.width)),
                np.broadcast_to(-v[:, None], (self.height, self.width)),
                np.ones((self.height, self.width)),
            ]
        )
        return np.einsum("ij,jhw->ihw", self.rotation, cam).astype(np.float32)

    def project(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Pixel columns, rows and depths of world points (N, 3)."""
        cam = (points - self.origin) @ self.rotation
        z = cam[:, 2]
        safe = np.where(np.abs(z) < 1e-6, 1e-6, z)
        u = self.width / 2 + self.focal * cam[:, 0] / safe
        v = self.height / 2 - self.focal * cam[:, 1] / safe
        return u, v, z

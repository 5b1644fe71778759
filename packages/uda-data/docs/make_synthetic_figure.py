"""Draws docs/synthetic_examples.png: source and target views of two synthetic scenes.

Each row shows image, colourised labels and the depth map as written (8-bit inverse depth).
Run from the repository root:

    PYTHONPATH=packages/uda-data/src python packages/uda-data/docs/make_synthetic_figure.py
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from uda_data.classes import colorize
from uda_data.depth import encode_inverse_depth
from uda_data.synthetic import SynthSpec, render_scene

SPEC = SynthSpec(width=288, height=144)
SCENES = {"source": (0, 3), "target": (1, 4)}
OUT = Path(__file__).with_name("synthetic_examples.png")


def figure_row(index: int, domain: str) -> np.ndarray:
    scene = render_scene(index, domain, SPEC)
    depth = np.repeat(encode_inverse_depth(scene.depth_estimate)[..., None], 3, axis=2)
    gap = np.full((SPEC.height, 4, 3), 255, dtype=np.uint8)
    return np.concatenate([scene.image, gap, colorize(scene.label), gap, depth], axis=1)


def main() -> None:
    rows = []
    for k in range(2):
        for domain, indices in SCENES.items():
            rows.append(figure_row(indices[k], domain))
            rows.append(np.full((4, rows[-1].shape[1], 3), 255, dtype=np.uint8))
    Image.fromarray(np.concatenate(rows[:-1], axis=0)).save(OUT, optimize=True)
    print(f"wrote {OUT} ({OUT.stat().st_size // 1024} KB)")


if __name__ == "__main__":
    main()

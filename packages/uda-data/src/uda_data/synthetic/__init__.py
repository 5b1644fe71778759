"""Embedded synthetic domains: procedural street scenes in a game-like source look and a
camera-like target look, written in the GTA and Cityscapes layouts. See SYNTHETIC.md.

    from uda_data.synthetic import SynthSpec, ensure_synthetic, render_scene

    root = ensure_synthetic(Path("data/synthetic"), SynthSpec(num_source=64))
    scene = render_scene(0, "target", SynthSpec(width=256, height=128))
"""

from uda_data.synthetic.render import Scene, render_scene
from uda_data.synthetic.spec import SynthSpec
from uda_data.synthetic.writer import (
    GENERATOR_VERSION,
    MANIFEST,
    TRAIN_CITIES,
    VAL_CITIES,
    ensure_synthetic,
    is_complete,
    synthesize,
)

__all__ = [
    "GENERATOR_VERSION",
    "MANIFEST",
    "TRAIN_CITIES",
    "VAL_CITIES",
    "Scene",
    "SynthSpec",
    "ensure_synthetic",
    "is_complete",
    "render_scene",
    "synthesize",
]

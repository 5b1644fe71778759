"""One synthetic scene in one domain: image, labels, exact depth and the depth written."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from uda_data.synthetic.appearance import Domain, paint
from uda_data.synthetic.layout import sample_layout
from uda_data.synthetic.monodepth import degrade_depth
from uda_data.synthetic.raycast import render_gbuffer
from uda_data.synthetic.spec import SynthSpec

DOMAIN_CODE = {"source": 0, "target": 1}
GEOMETRY, APPEARANCE, DEPTH = range(3)


@dataclass(frozen=True)
class Scene:
    image: np.ndarray  # H x W x 3 uint8
    label: np.ndarray  # H x W uint8 trainIds, 255 unlabelled
    depth: np.ndarray  # H x W float32 exact metric depth, inf for sky
    depth_estimate: np.ndarray  # H x W float32 depth as written (== depth for the source)


def scene_rng(seed: int, domain: Domain, index: int, stream: int) -> np.random.Generator:
    """The random stream of one part of one scene, independent of every other scene."""
    return np.random.default_rng([seed, DOMAIN_CODE[domain], index, stream])


def render_scene(index: int, domain: Domain, spec: SynthSpec = SynthSpec()) -> Scene:
    """Renders scene ``index`` of a domain; target indices run over train, then val."""
    layout = sample_layout(scene_rng(spec.seed, domain, index, GEOMETRY), spec.width, spec.height)
    gb = render_gbuffer(layout)
    image = paint(gb, layout, domain, scene_rng(spec.seed, domain, index, APPEARANCE))
    if domain == "source":
        estimate = gb.depth
    else:
        estimate = degrade_depth(gb.depth, scene_rng(spec.seed, domain, index, DEPTH))
    return Scene(image=image, label=gb.label, depth=gb.depth, depth_estimate=estimate)

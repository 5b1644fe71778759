"""Our models on the compact published-checkpoint fixture (``../shared/published``).

``predict`` is the callable that ``check.py --callable tests.methods.published_fixture:predict``
runs once per model and layout: it reads the file check.py built, converts the student
(``model.*``) and returns the reference test path's logits for the fixture input.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from tests.published.fixture import FIXTURE, ROOT  # noqa: F401  (re-exported)
from uda_core.plugin import load_plugins
from uda_methods.published_models import (
    published_run_config,
    published_state_to_ours,
    published_test_logits,
)
from uda_methods.run import build_full_model

FAMILIES = {
    "daformer_b0": "daformer",
    "hrda_b0": "hrda",
    "dispersion_daformer_b0": "dispersion_daformer",
    "dispersion_hrda_b0": "dispersion_hrda",
}


def student_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The segmentor's tensors of a published or training-layout file, ``model.`` removed."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    state = checkpoint.get("state_dict", checkpoint)
    return {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")}


def published_model(path: str | Path, family: str, encoder: str = "mit_b0"):
    """(model in eval mode with the file's student loaded, its published run config)."""
    cfg = published_run_config(family, encoder)
    plugins = load_plugins(cfg.plugins)
    model = build_full_model(cfg, plugins)
    model.load_state_dict(published_state_to_ours(student_state(path), family, model, plugins))
    return model.eval(), cfg


def predict(checkpoint: str, model: str, input: np.ndarray) -> np.ndarray:
    """check.py's callable: logits 1 x 19 x H x W for the fixture input of ``model``."""
    net, cfg = published_model(checkpoint, FAMILIES[model])
    return published_test_logits(net, torch.from_numpy(input), cfg).numpy()

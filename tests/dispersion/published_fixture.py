"""The compact published-checkpoint fixture (``../shared/published``) for the dispersion tests:
where it is, its builder, and the callables that ``check.py --callable`` runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from tests.published.fixture import (  # noqa: F401  (re-exported for the dispersion tests)
    FIXTURE,
    auxiliary_logits,
    builder,
    checker,
    key_list,
    manifest,
    needs_fixture,
)
from tests.published.fixture import run_check as _run_check
from tests.published.fixture import segmentor_input as _segmentor_input


def formula_state(model: str, prefix: str) -> dict[str, torch.Tensor]:
    """The formula's tensors of ``model`` under ``prefix`` (e.g. ``model.decode_head.``), keys
    relative to it, without building the whole checkpoint."""
    spec, build = key_list(model), builder()
    seed, phase = spec["formula"]["seed"], spec["formula"]["phase"]
    out = {}
    for key, shape, dtype in spec["keys"]:
        if key.startswith(prefix):
            _, rel = build.split_key(key)
            values = build.tensor_values(rel, shape, dtype, seed, phase)
            out[key[len(prefix) :]] = torch.from_numpy(np.array(values).reshape(shape))
    return out


def assert_matches_debug(model: str, name: str, out: torch.Tensor) -> None:
    """``out`` (B x C x h x w) is the reference's intermediate ``name`` of ``model`` at the 8
    positions ``debug.npz`` records (float noise grows with the values: atol scales)."""
    debug = np.load(FIXTURE / "expected" / model / "debug.npz")
    assert list(out.shape) == debug[f"{name}.shape"].tolist(), name
    y, x = debug[f"{name}.yx"].T
    expected = debug[f"{name}.values"]
    atol = 1e-5 * max(1.0, float(np.abs(expected).max()))
    got = out[:, :, y, x].detach().numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=atol, err_msg=f"{model} {name}")


def run_check(models: list[str], layouts: list[str], callable_: str, tmp_path: Path) -> dict:
    """``check.py`` on ``models`` x ``layouts`` through ``callable_`` (logits within 1e-4,
    argmax agreement at least 99.9 %); returns its JSON report."""
    return _run_check(models, layouts, tmp_path, callable_=callable_)


def segmentor_input(model: str) -> torch.Tensor:
    """The normalized 1 x 3 x H x W input of a segmentor ``model``, as check.py makes it."""
    return torch.from_numpy(np.ascontiguousarray(_segmentor_input(model)))

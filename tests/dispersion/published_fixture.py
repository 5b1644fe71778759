"""The compact published-checkpoint fixture (``../shared/published``) for the dispersion tests:
where it is, its builder, and the callables that ``check.py --callable`` runs."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from functools import cache
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch

FIXTURE = Path(
    os.environ.get("UDA_PUBLISHED_FIXTURE", Path(__file__).parents[3] / "shared" / "published")
)

needs_fixture = pytest.mark.skipif(
    not (FIXTURE / "check.py").is_file(), reason=f"no published-checkpoint fixture at {FIXTURE}"
)


@cache
def builder() -> ModuleType:
    """The fixture's ``build_checkpoint.py`` as a module."""
    path = FIXTURE / "build_checkpoint.py"
    spec = importlib.util.spec_from_file_location("build_checkpoint", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def key_list(model: str) -> dict:
    return json.loads((FIXTURE / "keys" / f"{model}.json").read_text())


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


def run_check(
    models: list[str], layouts: list[str], callable_: str, tmp_path: Path, atol: float = 1e-4
) -> dict:
    """``check.py`` on ``models`` x ``layouts`` with ``callable_``, logits within ``atol`` and
    argmax agreement at least 99.9 %; returns its JSON report."""
    report = tmp_path / "report.json"
    root = Path(__file__).parents[2]
    command = [sys.executable, str(FIXTURE / "check.py"), "--models", *models]
    command += ["--layouts", *layouts, "--callable", callable_, "--json", str(report)]
    command += ["--atol", str(atol), "--min-agreement", "0.999"]
    paths = [str(root), os.environ.get("PYTHONPATH", "")]
    env = os.environ | {"PYTHONPATH": os.pathsep.join(paths)}
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=root)
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(report.read_text())


def auxiliary_logits(checkpoint: str, input: np.ndarray) -> np.ndarray:
    """``check.py`` callable: ``uda_dispersion.load_auxiliary`` on the fixture's input."""
    from uda_dispersion import load_auxiliary

    net = load_auxiliary(checkpoint)
    with torch.no_grad():
        return net(torch.from_numpy(input)).numpy()


@cache
def checker() -> ModuleType:
    """The fixture's ``check.py`` as a module (its PNG decoding and normalization)."""
    path = FIXTURE / "check.py"
    spec = importlib.util.spec_from_file_location("published_check", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def segmentor_input(model: str) -> torch.Tensor:
    """The normalized 1 x 3 x H x W input of a segmentor ``model``, as check.py makes it."""
    manifest = json.loads((FIXTURE / "manifest.json").read_text())
    spec = manifest["inputs"][manifest["models"][model]["input"]]
    check = checker()
    x = check.normalize(check.read_png(str(FIXTURE / spec["png"])), spec["normalization"])
    return torch.from_numpy(np.ascontiguousarray(x))


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

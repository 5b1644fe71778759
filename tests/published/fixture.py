"""The compact published-checkpoint fixture (``../shared/published``): where it is, its files
built once per session, ``check.py`` runs, and the callables ``check.py --callable`` imports."""

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

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = Path(os.environ.get("UDA_PUBLISHED_FIXTURE", ROOT.parent / "shared" / "published"))
SEGMENTORS = ("daformer_b0", "hrda_b0", "dispersion_daformer_b0", "dispersion_hrda_b0")
UDA = Path(sys.executable).with_name("uda")

needs_fixture = pytest.mark.skipif(
    not (FIXTURE / "check.py").is_file() and not os.environ.get("CI"),
    reason=f"no published-checkpoint fixture at {FIXTURE}",
)
"""Skips the fixture's tests where ``../shared/published`` is absent, except in CI (which
always has it beside the clone), where they then fail instead of passing unseen."""


def _module(name: str, file: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, FIXTURE / file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@cache
def builder() -> ModuleType:
    """The fixture's ``build_checkpoint.py``."""
    return _module("build_checkpoint", "build_checkpoint.py")


@cache
def checker() -> ModuleType:
    """The fixture's ``check.py`` (PNG decoding, normalization)."""
    return _module("published_check", "check.py")


@cache
def manifest() -> dict:
    return json.loads((FIXTURE / "manifest.json").read_text())


def key_list(model: str) -> dict:
    return json.loads((FIXTURE / "keys" / f"{model}.json").read_text())


def image_of(model: str) -> Path:
    """The 8-bit RGB PNG a segmentor of the fixture is run on."""
    spec = manifest()["inputs"][manifest()["models"][model]["input"]]
    return FIXTURE / spec["png"]


def expected(model: str) -> dict[str, np.ndarray]:
    """The reference's outputs: ``yx`` and ``logits`` at the sampled pixels, ``pred``."""
    sampled = np.load(FIXTURE / "expected" / model / "sampled.npz")
    pred = checker().read_png(str(FIXTURE / "expected" / model / "pred.png"))
    return {"yx": sampled["yx"], "logits": sampled["logits"], "pred": pred}


def sampled(logits: np.ndarray, yx: np.ndarray) -> np.ndarray:
    """N x C: ``logits`` (1 x C x H x W) at the (row, column) pairs ``yx``."""
    return logits[0][:, yx[:, 0], yx[:, 1]].T


def built_files(tmp_path_factory) -> Path:
    """One folder per test session for ``build``'s files, whichever module asks first."""
    folder = tmp_path_factory.getbasetemp() / "published-files"
    folder.mkdir(exist_ok=True)
    return folder


def build(model: str, layout: str, folder: Path) -> Path:
    """The fixture's checkpoint of ``model`` in ``layout`` under ``folder`` (built once)."""
    path = folder / f"{model}.{layout}.pth"
    if not path.is_file():
        partial = path.with_suffix(".partial")
        torch.save(builder().build(model, layout, str(FIXTURE)), partial)
        partial.replace(path)
    return path


def segmentor_input(model: str) -> np.ndarray:
    """The normalized 1 x 3 x H x W input of a segmentor, as check.py makes it."""
    spec = manifest()["inputs"][manifest()["models"][model]["input"]]
    check = checker()
    return check.normalize(check.read_png(str(FIXTURE / spec["png"])), spec["normalization"])


def meta_state(model: str) -> dict[str, torch.Tensor]:
    """A key list as tensors on the meta device: every key and shape, no values."""
    dtypes = {"float32": torch.float32, "int64": torch.int64}
    return {
        key: torch.empty(shape, dtype=dtypes[dtype], device="meta")
        for key, shape, dtype in key_list(model)["keys"]
    }


def run_check(
    models: list[str],
    layouts: list[str],
    tmp_path: Path,
    cmd: str | None = None,
    callable_: str | None = None,
) -> dict:
    """``check.py`` on ``models`` x ``layouts`` through ``cmd`` or ``callable_``: logits at the
    sampled pixels within 1e-4 and argmax agreement at least 99.9 % (it exits 1 otherwise);
    returns its JSON report, with its table printed (``pytest -s`` shows it)."""
    report = tmp_path / "report.json"
    command = [sys.executable, "-B", str(FIXTURE / "check.py"), "--models", *models]
    command += ["--layouts", *layouts, "--json", str(report), "--atol", "1e-4"]
    command += ["--min-agreement", "0.999"]
    command += ["--cmd", cmd] if cmd else ["--callable", callable_]
    paths = [str(ROOT), os.environ.get("PYTHONPATH", "")]
    env = os.environ | {"PYTHONPATH": os.pathsep.join(paths)}
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path)
    print(result.stdout)
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(report.read_text())


def predict_command(out: Path, extra: str = "") -> str:
    """check.py's ``--cmd`` template: ``uda predict FILE IMAGE --save-logits``, the logits file
    copied to where check.py reads it."""
    folder = f"{out}/{{model}}.{{layout}}"
    logits = f"{folder}/$(basename {{image}} .png)_logits.npy"
    return (
        f"{UDA} predict {{checkpoint}} {{image}} --out {folder} --save-logits {extra}"
        f" && cp {logits} {{output}}"
    )


def cli_logits(checkpoint: str, image: str) -> np.ndarray:
    """check.py's callable: what ``uda predict CHECKPOINT IMAGE --save-logits`` writes, in this
    process (loading and the reference pipeline exactly as the command runs them)."""
    from uda_cli.predict import Pipeline, predict_image
    from uda_methods.published_files import load_segmentation_model

    loaded = load_segmentation_model(checkpoint)
    out = Path(checkpoint).with_suffix("")
    predict_image(loaded.model.eval(), loaded.cfg, Path(image), out, 0.5, Pipeline.reference, True)
    return np.load(out.with_name(f"{out.name}_logits.npy"))


def auxiliary_logits(checkpoint: str, input: np.ndarray) -> np.ndarray:
    """check.py's callable: ``uda_dispersion.load_auxiliary`` on the fixture's input."""
    from uda_dispersion import load_auxiliary

    with torch.no_grad():
        return load_auxiliary(checkpoint)(torch.from_numpy(input)).numpy()

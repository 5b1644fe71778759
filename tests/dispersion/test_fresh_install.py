"""`pip install packages/uda-dispersion` into a fresh virtual environment that holds only
torch (and what torch needs) builds the extension, with its CUDA backend where nvcc is on
PATH, and passes a smoke test."""

import importlib.metadata as metadata
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from tests.test_readmes import python_blocks

PACKAGE = Path(__file__).parents[2] / "packages" / "uda-dispersion"

SMOKE = textwrap.dedent(
    """
    import importlib.util, sys
    import numpy as np, torch
    import uda_dispersion
    from uda_dispersion import dispersion_map, reference
    assert sys.prefix != sys.base_prefix and uda_dispersion.__file__.startswith(sys.prefix)
    for name in ("uda_core", "uda_data", "uda_methods", "uda_cli"):
        assert importlib.util.find_spec(name) is None, name + " is visible"
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, (2, 12, 8)).repeat(4, 1).repeat(4, 2)
    depth = rng.random(labels.shape).astype(np.float32)
    out = dispersion_map(torch.from_numpy(labels), torch.from_numpy(depth), min_area=4)
    np.testing.assert_allclose(
        out.numpy(), reference.dispersion_map(labels, depth, min_area=4), atol=1e-5
    )
    print("smoke ok, cuda built:", uda_dispersion.cuda_built())
    """
)


def torch_closure() -> set[str]:
    """Distributions torch and numpy need at run time, found from their metadata."""
    found, todo = set(), ["torch", "numpy"]
    while todo:
        name = todo.pop()
        dist = metadata.distribution(name)
        key = dist.metadata["Name"].lower().replace("_", "-")
        if key in found:
            continue
        found.add(key)
        for line in dist.requires or []:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(requirement.name)
    return found


def link_distributions(names: set[str], target: Path) -> None:
    """Symlinks each distribution's top-level modules and metadata folder into `target`."""
    target.mkdir()
    for name in names:
        dist = metadata.distribution(name)
        tops = {Path(f).parts[0] for f in dist.files or [] if not str(f).startswith("..")}
        for top in tops:
            source = Path(dist.locate_file(top))
            link = target / top
            if source.exists() and not link.exists():
                link.symlink_to(source)


@pytest.mark.slow
def test_pip_install_into_a_fresh_venv_holding_only_torch(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    link_distributions(torch_closure(), tmp_path / "torch-only")
    (Path(site) / "torch_only.pth").write_text(str(tmp_path / "torch-only") + "\n")

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    install = subprocess.run(
        [python, "-m", "pip", "install", "--no-cache-dir", str(PACKAGE)],
        env=env,
        capture_output=True,
        text=True,
    )
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]
    smoke = subprocess.run(
        [python, "-c", SMOKE], env=env, cwd=tmp_path, capture_output=True, text=True
    )
    assert smoke.returncode == 0, smoke.stdout + smoke.stderr
    assert "smoke ok" in smoke.stdout
    # the README's examples, the method's parts in a plain training step included
    for n, block in enumerate(python_blocks(PACKAGE / "README.md")):
        example = subprocess.run(
            [python, "-c", block], env=env, cwd=tmp_path, capture_output=True, text=True
        )
        assert example.returncode == 0, f"README example {n}:\n{example.stderr}"
    if shutil.which("nvcc"):
        assert "cuda built: True" in smoke.stdout, "nvcc is on PATH: the CUDA backend must build"

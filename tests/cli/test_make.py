"""The README's `make train` runs the main job through the same Makefile CI uses."""

import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import tiny_overrides

ROOT = Path(__file__).resolve().parents[2]


def test_make_train_runs_the_main_job(tmp_path, synthetic_root):
    venv = Path(sys.prefix)
    if not (venv / ".installed").exists():
        pytest.skip("needs the environment that `make setup` created")
    tiny_aux = ["--set", "plugins.dispersion.auxiliary.iterations=2"]
    tiny_aux += ["--set", "method.hrda_detail_crop=[32, 32]"]  # within the tiny 64 px crop
    args = shlex.join(["--name", "make", *tiny_overrides(tmp_path, 2), *tiny_aux])
    result = subprocess.run(
        ["make", "-C", str(ROOT), "train", f"VENV={venv}", f"ARGS={args}"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "target mIoU" in result.stdout
    assert "pre-training one on the source" in result.stdout  # mic + dispersion by default
    assert (tmp_path / "make" / "checkpoints" / "iter_000002.pt").is_file()

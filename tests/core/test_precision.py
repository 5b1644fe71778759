"""Mixed precision for every method and the dispersion plugin; channels-last and compiled
students keep their checkpoints."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch
from typer.testing import CliRunner

from tests.conftest import tiny_overrides
from tests.dispersion.test_plugin_cli import TINY_AUX
from tests.methods.test_hrda import HRDA_TINY
from uda_cli.main import app

runner = CliRunner()

# Accelerate fixes the precision once per process, so each precision trains in a process of
# its own that runs several `uda train` command lines.
RUN_COMMANDS = """
import json, sys
from typer.testing import CliRunner
from uda_cli.main import app
runner = CliRunner()
for args in json.loads(sys.argv[1]):
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
"""

RUNS = {
    "daformer": ["--method", "daformer"],
    "hrda": ["--method", "hrda", *HRDA_TINY, "--set", "runtime.channels_last=true"],
    "mic-dispersion": ["--method", "mic", "--plugin", "dispersion", *HRDA_TINY, *TINY_AUX],
}


@pytest.mark.parametrize(
    "precision",
    [
        "bf16",
        pytest.param(
            "fp16",
            marks=[
                pytest.mark.gpu,
                pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
            ],
        ),
    ],
)
def test_every_method_and_the_plugin_train_with_finite_losses(precision, tmp_path, synthetic_root):
    runs = [
        ["train", "--precision", precision, "--name", name, *args, *tiny_overrides(tmp_path, 2)]
        for name, args in RUNS.items()
    ]
    command = [sys.executable, "-c", RUN_COMMANDS, json.dumps(runs)]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    for name in RUNS:
        config = json.loads((tmp_path / name / "config.json").read_text())
        assert config["runtime"]["precision"] == precision
        lines = (tmp_path / name / "metrics.jsonl").read_text().splitlines()
        train = [json.loads(line) for line in lines if '"src.seg"' in line]
        assert len(train) == 2
        losses = [v for r in train for k, v in r.items() if k.startswith(("src.", "mix."))]
        assert losses and all(math.isfinite(v) for v in losses), name
    mic = (tmp_path / "mic-dispersion" / "metrics.jsonl").read_text()
    assert '"mask.dispersion.disp"' in mic


def test_compiled_student_keeps_the_state_dict_keys(tmp_path, synthetic_root, monkeypatch):
    """``runtime.compile`` compiles the student, the EMA teacher and the ImageNet encoder (a
    DAFormer run's three networks) in place: every saved state dict keeps its keys."""
    compile_module = torch.nn.Module.compile
    compiled = []

    def eager_compile(self, **_):
        compiled.append(type(self).__name__)
        compile_module(self, backend="eager")

    # inductor builds C++ kernels for minutes on a CPU; dynamo's tracing is what is tested
    monkeypatch.setattr(torch.nn.Module, "compile", eager_compile)
    args = ["train", "--method", "daformer", "--name", "compiled", *tiny_overrides(tmp_path, 2)]
    sets = ["--set", "runtime.compile=true", "--set", "method.fd_lambda=0.005"]
    result = runner.invoke(app, [*args, *sets])
    assert result.exit_code == 0, result.output
    saved = tmp_path / "compiled" / "checkpoints" / "iter_000002.pt"
    state = torch.load(saved, weights_only=False)
    assert list(state["model"]) == list(state["method"]["teacher"])  # the uncompiled copy's
    assert not any("_orig_mod" in key for key in state["model"])
    assert not any("_orig_mod" in key for key in state["method"]["imagenet_encoder"])
    assert len(compiled) == 3 and compiled[0] == compiled[1] != compiled[2]
    result = runner.invoke(app, ["eval", str(saved)])
    assert result.exit_code == 0, result.output

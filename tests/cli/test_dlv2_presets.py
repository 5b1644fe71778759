"""The DeepLabV2 presets and the AdvSeg / MinEnt methods from the command line: each preset
validates, trains two iterations on the embedded domains (tiny sizes) and evaluates; an AdvSeg
run resumes with its discriminator."""

from __future__ import annotations

import shutil

import pytest
import torch
from typer.testing import CliRunner

from tests.conftest import tiny_overrides
from uda_cli.main import app
from uda_methods.presets import DLV2_PRESETS, preset
from uda_methods.published import published_line, published_result

runner = CliRunner()

TINY_DLV2 = {
    "data.source.root": "@synthetic/source",
    "data.target.root": "@synthetic/target",
    "data.val.root": "@synthetic/target",
    "data.rcs.min_pixels": 20,
    "data.pseudo_margins": "[2,8,2,2]",
    "model.encoder": "resnet10t",
    "method.hrda_detail_crop": "[32,32]",
    "method.mic_mask_block": 8,
    "eval.crop_size": "[64,64]",
    "eval.stride": "[32,32]",
}
"""A DeepLabV2 preset on the session's embedded domains, its ResNet-101 swapped for timm's
ResNet-10-T (also a deep stem), windows and blocks shrunk to the 64x64 crops."""

FAST = ("gta2cs-dlv2-advseg", "gta2cs-dlv2-minent-mic")
"""Trained in the fast suite: AdvSeg (the discriminator) and MIC on MinEnt (the baseline with
MIC's own teacher); the other presets train in the slow one."""


def preset_args(name: str, work, iterations: int = 2) -> list[str]:
    """``tiny_overrides`` without its decoder width (deeplabv2 has none), then ``TINY_DLV2``."""
    sets = tiny_overrides(work, iterations)
    pairs = [(f, v) for f, v in zip(sets[::2], sets[1::2], strict=True)]
    args = ["train", "--preset", name]
    for flag, value in pairs:
        if not value.startswith("model.channels="):
            args += [flag, value]
    for key, value in TINY_DLV2.items():
        args += ["--set", f"{key}={value}"]
    return args


@pytest.mark.parametrize("name", list(DLV2_PRESETS))
def test_dlv2_preset_validates_with_dry_run(name, tmp_path, synthetic_root):
    result = runner.invoke(app, [*preset_args(name, tmp_path), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "deeplabv2" in result.output


@pytest.mark.parametrize(
    "name",
    [n if n in FAST else pytest.param(n, marks=pytest.mark.slow) for n in DLV2_PRESETS],
)
def test_dlv2_preset_trains_two_iterations_and_evaluates(name, tmp_path, synthetic_root):
    result = runner.invoke(app, [*preset_args(name, tmp_path), "--name", "run"])
    assert result.exit_code == 0, result.output
    assert "target mIoU" in result.output
    state = torch.load(tmp_path / "run" / "checkpoints" / "iter_000002.pt", weights_only=True)
    assert ("discriminator" in state["method"]) == ("advseg" in name)
    # AdvSeg and MinEnt alone have no EMA teacher; MIC on them and the self-training presets do
    plain = name in ("gta2cs-dlv2-advseg", "gta2cs-dlv2-minent")
    assert ("teacher" in state["method"]) == (not plain)


def test_mic_on_advseg_from_the_method_flag(tmp_path, synthetic_root):
    """``--method mic --set method.mic_base=advseg`` on the quick preset."""
    args = [
        *["train", "--method", "mic", "--name", "m", *tiny_overrides(tmp_path, 2)],
        *["--set", "method.mic_base=advseg", "--set", "method.mic_mask_block=8"],
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    state = torch.load(tmp_path / "m" / "checkpoints" / "iter_000002.pt", weights_only=True)
    assert {"discriminator", "discriminator_optimizer", "teacher"} <= state["method"].keys()


def test_resumed_advseg_run_continues_with_its_discriminator(tmp_path, synthetic_root):
    """A run resumed from its first checkpoint ends with the same discriminator and Adam state
    as the uninterrupted run: both are checkpointed and restored."""
    args = [
        *["train", "--method", "advseg", "--name", "a", *tiny_overrides(tmp_path, 2)],
        *["--set", "runtime.checkpoint_interval=1", "--set", "runtime.eval_interval=2"],
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    checkpoints = tmp_path / "a" / "checkpoints"
    shutil.copy(checkpoints / "iter_000002.pt", tmp_path / "straight.pt")
    first = torch.load(checkpoints / "iter_000001.pt", weights_only=True)["method"]
    result = runner.invoke(app, ["train", "--resume", str(checkpoints / "iter_000001.pt")])
    assert result.exit_code == 0, result.output
    straight = torch.load(tmp_path / "straight.pt", weights_only=True)["method"]
    resumed = torch.load(checkpoints / "iter_000002.pt", weights_only=True)["method"]
    for key, value in straight["discriminator"].items():
        assert torch.equal(resumed["discriminator"][key], value), key
        assert not torch.equal(first["discriminator"][key], value), key
    adam, adam_resumed = (
        straight["discriminator_optimizer"]["state"],
        resumed["discriminator_optimizer"]["state"],
    )
    assert all(int(adam[k]["step"]) == 2 for k in adam)
    assert all(torch.equal(adam[k]["exp_avg_sq"], adam_resumed[k]["exp_avg_sq"]) for k in adam)


@pytest.mark.parametrize("name", list(DLV2_PRESETS))
def test_dlv2_presets_print_no_published_number(name):
    """The reference repositories publish no DeepLabV2 result (their READMEs list MiT-B5 runs
    only; the numbers are in the MIC, HRDA and DAFormer papers' tables), so a DLV2 run names
    none, with or without a plugin."""
    method = preset(name).method.name
    assert published_result(name, method, []) is None
    assert published_line(name, method, ["dispersion"], {"mIoU": 0.5}) is None

"""The twelve published experiments, each one command on a data root in the real formats."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from tests.data.release_trees import write_cityscapes, write_gta, write_synthia
from tests.dispersion.test_plugin_cli import TINY_AUX
from uda_cli.main import app

runner = CliRunner()

SHRUNK = {
    "data.source_resize": "[128,64]",
    "data.target_resize": "[128,64]",
    "data.val_resize": "[128,64]",
    "data.crop": "[64,64]",
    "data.workers": 0,
    "data.rcs.min_pixels": 20,
    "data.pseudo_margins": "[2,8,2,2]",
    "model.encoder": "resnet10t",
    "model.channels": 16,
    "method.hrda_detail_crop": "[32,32]",
    "method.hrda_attention_channels": 16,
    "method.mic_mask_block": 8,
    "runtime.eval_interval": 2,
    "runtime.checkpoint_interval": 2,
    "eval.crop_size": "[64,64]",
    "eval.stride": "[32,32]",
}
"""Every preset at test size: a small encoder, small images, crops and windows."""


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    """``data/`` as the README lays it out: gta, synthia and cityscapes, converted."""
    root = tmp_path_factory.mktemp("data")
    for layout, write in (("gta", write_gta), ("synthia", write_synthia)):
        write(root / layout)
        result = runner.invoke(app, ["data", "convert", layout, str(root / layout), "--nproc", "1"])
        assert result.exit_code == 0, result.output
    write_cityscapes(root / "cityscapes")
    result = runner.invoke(app, ["data", "convert", "cityscapes", str(root / "cityscapes")])
    assert result.exit_code == 0, result.output
    return root


@pytest.mark.parametrize("plugin", [[], ["--plugin", "dispersion"]], ids=["", "dispersion"])
@pytest.mark.parametrize("source", ["gta2cs", "synthia2cs"])
@pytest.mark.parametrize("method", ["daformer", "hrda", "mic"])
def test_published_preset_trains_from_a_data_root_and_names_its_published_result(
    data_root, tmp_path, source, method, plugin
):
    preset = f"{source}-{method}"
    args = ["train", "--preset", preset, *plugin, "--data-root", str(data_root), "--iters", "2"]
    args += ["--work-dir", str(tmp_path), "--name", "run"]
    for key, value in SHRUNK.items():
        args += ["--set", f"{key}={value}"]
    result = runner.invoke(app, [*args, *(TINY_AUX if plugin else [])])
    assert result.exit_code == 0, result.output
    metric = "mIoU16" if source == "synthia2cs" else "mIoU"
    assert f"{metric} " in result.output and "; published " in result.output
    evaluated = runner.invoke(app, ["eval", str(tmp_path / "run" / "checkpoints" / "best.pt")])
    assert evaluated.exit_code == 0, evaluated.output
    assert "; published " in evaluated.output

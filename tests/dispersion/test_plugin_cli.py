"""`uda train --plugin dispersion` and `uda dispersion pretrain` from the command line."""

from __future__ import annotations

import json

import torch
from typer.testing import CliRunner

from tests.conftest import tiny_overrides
from tests.methods.test_hrda import HRDA_TINY
from uda_cli.main import app

runner = CliRunner()

TINY_AUX = [
    "--set",
    "plugins.dispersion.auxiliary.iterations=3",
    "--set",
    "plugins.dispersion.auxiliary.batch_size=2",
    "--set",
    "plugins.dispersion.auxiliary.input_size=[64,32]",
    "--set",
    "plugins.dispersion.auxiliary.architecture=timm",
    "--set",
    "plugins.dispersion.auxiliary.backbone=resnet10t",
    "--set",
    "plugins.dispersion.head_width=8",
]


def records(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_mic_with_dispersion_pretrains_caches_trains_and_evaluates(tmp_path, synthetic_root):
    args = ["train", "--method", "mic", "--plugin", "dispersion", *HRDA_TINY, *TINY_AUX]
    sets = [*tiny_overrides(tmp_path, 4), "--set", "runtime.debug_interval=2"]
    # settings no other test uses, so that the session's cache holds no such network yet
    sets += ["--set", "plugins.dispersion.auxiliary.lr=0.00123"]
    result = runner.invoke(app, [*args, "--name", "first", *sets])
    assert result.exit_code == 0, result.output
    assert "pre-training one on the source for 3 iterations" in result.output
    assert "target val mIoU" in result.output  # the auxiliary network's, for information
    first = records(tmp_path / "first")
    assert {"mask.dispersion.disp", "mix.detail.dispersion.seg_init", "dispersion.agreement"} <= (
        first[0].keys()
    )
    assert (tmp_path / "first" / "debug" / "iter_000002.png").is_file()
    config = json.loads((tmp_path / "first" / "config.json").read_text())
    assert config["plugins"]["dispersion"]["beta"] == 0.6 and config["data"]["load_depth"]
    state = torch.load(tmp_path / "first" / "checkpoints" / "iter_000004.pt", weights_only=False)
    assert any(k.startswith("heads.dispersion.disp_final") for k in state["model"])

    result = runner.invoke(app, [*args, "--name", "second", *sets])
    assert result.exit_code == 0, result.output
    assert "auxiliary network from the cache" in result.output
    assert "pre-training" not in result.output
    # same data, seed and auxiliary network: the same run
    assert records(tmp_path / "second")[0]["src.seg"] == first[0]["src.seg"]

    result = runner.invoke(app, ["eval", str(tmp_path / "first" / "checkpoints" / "best.pt")])
    assert result.exit_code == 0, result.output


def test_pretrain_command_writes_a_checkpoint_that_training_loads(tmp_path, synthetic_root):
    out = tmp_path / "aux.pt"
    sets = tiny_overrides(tmp_path, 2)
    result = runner.invoke(app, ["dispersion", "pretrain", "--out", str(out), *sets, *TINY_AUX])
    assert result.exit_code == 0, result.output
    assert out.is_file() and f"plugins.dispersion.auxiliary.checkpoint={out}" in result.output
    result = runner.invoke(app, ["dispersion", "pretrain", "--out", str(out), *sets, *TINY_AUX])
    assert result.exit_code == 2 and "already exists" in result.output
    args = ["train", "--method", "daformer", "--plugin", "dispersion", "--name", "d", *sets]
    use = ["--set", f"plugins.dispersion.auxiliary.checkpoint={out}"]
    result = runner.invoke(app, [*args, *TINY_AUX, *use])
    assert result.exit_code == 0, result.output
    assert "pre-training" not in result.output
    assert "dispersion.agreement" in records(tmp_path / "d")[0]


def test_training_uses_a_published_auxiliary_file_and_the_published_head(tmp_path, synthetic_root):
    """``--set plugins.dispersion.auxiliary.checkpoint=gta_auxiliary.pth`` (a bare
    AuxiliaryResNet50 state dict, ``dacs.py:128-130``): nothing is pre-trained, the weight hook
    runs the published network with batch statistics; the head makes the segmentation."""
    from uda_dispersion.auxiliary import AuxiliaryResNet50

    torch.manual_seed(0)
    path = tmp_path / "gta_auxiliary.pth"
    torch.save(AuxiliaryResNet50(19).state_dict(), path)
    args = ["train", "--method", "daformer", "--plugin", "dispersion", "--name", "p"]
    sets = [*tiny_overrides(tmp_path, 2), *TINY_AUX]
    sets += ["--set", f"plugins.dispersion.auxiliary.checkpoint={path}"]
    for key, value in {
        "auxiliary.batchnorm": "batch",
        "final_segmentation": "head",
        "classifier_branches": "first_two",
        "head_init": "normal",
    }.items():
        sets += ["--set", f"plugins.dispersion.{key}={value}"]
    result = runner.invoke(app, [*args, *sets])
    assert result.exit_code == 0, result.output
    assert "pre-training" not in result.output
    assert "dispersion.agreement" in records(tmp_path / "p")[0]
    state = torch.load(tmp_path / "p" / "checkpoints" / "iter_000002.pt", weights_only=False)
    assert any(k.startswith("heads.dispersion.seg_final") for k in state["model"])


def test_missing_or_foreign_auxiliary_checkpoint_is_one_clear_error(tmp_path, synthetic_root):
    args = ["train", "--plugin", "dispersion", *tiny_overrides(tmp_path, 2), *TINY_AUX]
    missing = tmp_path / "nope.pt"
    result = runner.invoke(
        app, [*args, "--set", f"plugins.dispersion.auxiliary.checkpoint={missing}"]
    )
    assert result.exit_code == 2
    assert f"plugin dispersion: auxiliary network checkpoint {missing} does not exist" in (
        result.output
    )
    foreign = tmp_path / "foreign.pt"
    torch.save({"model": {}}, foreign)
    result = runner.invoke(
        app, [*args, "--set", f"plugins.dispersion.auxiliary.checkpoint={foreign}"]
    )
    assert result.exit_code == 2 and "uda dispersion pretrain" in result.output
    result = runner.invoke(app, [*args, "--set", "plugins.dispersion.alpha=-1", "--dry-run"])
    assert result.exit_code == 2 and "plugins.dispersion.alpha" in result.output


def test_quick_profile_of_the_plugin_sits_under_the_users_settings(tmp_path):
    from uda_methods.run import resolve_config

    cfg = resolve_config("quick", None, {"plugins": {"dispersion": {}}}, [])
    aux = cfg.plugins["dispersion"]["auxiliary"]
    assert aux["backbone"] == "resnet10t" and aux["iterations"] == 200
    assert cfg.plugins["dispersion"]["head_width"] == 32
    assert cfg.plugins["dispersion"]["dilations"] == [1, 2, 3, 4]
    assert cfg.method.hrda_plugin_losses == "per-branch"  # quick takes our losses too
    assert cfg.plugins["dispersion"]["seg_init_mean"] == "valid"
    assert cfg.plugins["dispersion"]["berhu_detach_threshold"] is True
    cfg = resolve_config(
        "quick",
        None,
        {"plugins": {"dispersion": {}}},
        ["plugins.dispersion.auxiliary.iterations=7"],
    )
    assert cfg.plugins["dispersion"]["auxiliary"]["iterations"] == 7
    published = resolve_config("gta2cs-mic", None, {"plugins": {"dispersion": {}}}, [])
    assert published.runtime.iterations == 60000 and published.runtime.seed == 2
    assert published.plugins["dispersion"]["auxiliary"]["architecture"] == "published"
    assert resolve_config("gta2cs-mic", None, {}, []).runtime.iterations == 40000
    flags = {"plugins": {"dispersion": {}}, "runtime": {"iterations": 5}}
    assert resolve_config("gta2cs-mic", None, flags, []).runtime.iterations == 5

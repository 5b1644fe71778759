"""Bad input as a new user meets it: a command line click cannot parse, NaN or infinite
numbers in the config, and a checkpoint trained on a machine whose cache folder is not here.
Each is one line saying what, where and how to fix it, with exit status 2 and no traceback."""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
import sys
import types
import typing

import numpy as np
import pytest
import torch
from PIL import Image
from pydantic import BaseModel
from typer.testing import CliRunner

from tests.conftest import tiny_overrides
from uda_cli.main import app
from uda_core.checkpoint import load_checkpoint
from uda_core.config import merge, validate
from uda_core.errors import UdaError
from uda_dispersion.plugin import DispersionConfig
from uda_methods import presets
from uda_methods.config import RunConfig
from uda_methods.run import config_to_resume, resolve_config

BOX = "╭│╰"


@pytest.mark.parametrize(
    ("args", "where", "what"),
    [
        (["train", "--itrs", "3"], "uda train", "no such option: --itrs"),
        (["train", "--iters"], "uda train", "option '--iters' requires an argument"),
        (["train", "--iters", "many"], "uda train", "invalid value for '--iters'"),
        (["train", "extra"], "uda train", "got unexpected extra argument"),
        (["eval"], "uda eval", "missing argument 'checkpoint'"),
        (
            ["eval", "x.pt", "--mode", "fast"],
            "uda eval",
            "invalid value for '--mode': 'fast' is not one",
        ),
        (["predict"], "uda predict", "missing argument 'checkpoint'"),
        (["data", "check", "--bogus"], "uda data check", "no such option: --bogus"),
        (["data", "bogus"], "uda data", "no such command 'bogus'"),
        (["trian"], "uda", "no such command 'trian'"),
    ],
)
def test_a_command_line_click_cannot_parse_is_one_line_with_exit_status_2(args, where, what):
    """Unknown options and commands, missing arguments and bad option values, in every command
    of the app: one line naming the command, the problem and where help is; no rich box."""
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert result.output.startswith(f"error: {where}: {what}"), result.output
    assert result.output.endswith(f" see {where} --help\n") and result.output.count("\n") == 1
    assert not any(c in result.output for c in BOX)


def test_the_uda_program_prints_a_usage_error_in_one_line_on_stderr():
    """The program itself (not only the test runner): one line on stderr, exit status 2."""
    result = subprocess.run(
        [sys.executable, "-m", "uda_cli.main", "train", "--itrs", "3"],
        capture_output=True,
        text=True,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.endswith("see python -m uda_cli.main train --help\n"), result.stderr
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert "no such option: --itrs" in result.stderr and not result.stdout


def _float_fields(model: type[BaseModel], prefix: str = "") -> list[tuple[str, typing.Any]]:
    """(dotted path, a value of its type holding ``nan``) of every float field of ``model``
    and its sections."""
    found = []
    for name, field in model.model_fields.items():
        found += _with_float(field.annotation, f"{prefix}{name}")
    return found


def _with_float(annotation: typing.Any, path: str) -> list[tuple[str, typing.Any]]:
    if annotation is float:
        return [(path, math.nan)]
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return _float_fields(annotation, f"{path}.")
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is tuple and args and all(a is float for a in args):
        return [(path, [math.nan] * len(args))]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return [found for a in args for found in _with_float(a, path)]
    return []


def _nested(path: str, value: typing.Any) -> dict:
    out: typing.Any = value
    for part in reversed(path.split(".")):
        out = {part: out}
    return out


@pytest.fixture(scope="module")
def saved_config() -> dict:
    return resolve_config(presets.DEFAULT_PRESET, None, {}, [], None).model_dump(mode="json")


RUN_FLOATS = _float_fields(RunConfig)


def test_the_run_config_has_float_fields_in_every_section():
    """The walk below finds the fields it must check (so that it cannot pass by finding none)."""
    sections = {path.split(".")[0] for path, _ in RUN_FLOATS}
    assert {"optim", "schedule", "method", "model", "data"} <= sections
    assert ("optim.betas", [math.nan, math.nan]) in [(p, v) for p, v in RUN_FLOATS if p[0] == "o"]


@pytest.mark.parametrize(("path", "value"), RUN_FLOATS, ids=[p for p, _ in RUN_FLOATS])
@pytest.mark.parametrize("bad", ["nan", "inf", "-inf"])
def test_nan_and_inf_fail_at_load_time_naming_the_field(saved_config, path, value, bad):
    """Every float field of the run config refuses NaN and +-inf when the config is loaded,
    with the field's dotted path (before: ``optim.weight_decay=inf`` passed the dry run)."""
    value = [float(bad)] * len(value) if isinstance(value, list) else float(bad)
    with pytest.raises(UdaError, match=rf"{path}(\.0)?: Input should be a finite number"):
        validate(RunConfig, merge(saved_config, _nested(path, value)))


PLUGIN_FLOATS = _float_fields(DispersionConfig)


@pytest.mark.parametrize(("path", "value"), PLUGIN_FLOATS, ids=[p for p, _ in PLUGIN_FLOATS])
def test_nan_fails_at_load_time_in_the_dispersion_plugins_float_fields(path, value):
    with pytest.raises(ValueError, match="Input should be a finite number"):
        DispersionConfig.model_validate(_nested(path, value))


def test_set_lr_nan_fails_the_dry_run_in_one_line():
    result = CliRunner().invoke(app, ["train", "--dry-run", "--set", "optim.lr=nan"])
    assert result.exit_code == 2, result.output
    assert result.output == "error: config: optim.lr: Input should be a finite number (got nan)\n"


def test_a_non_boolean_shared_encoder_pass_fails_the_dry_run_in_one_line():
    args = ["train", "--dry-run", "--method", "mic", "--set", "method.hrda_shared_encoder_pass=x"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: config: method.hrda_shared_encoder_pass: ")
    assert result.output.count("\n") == 1 and "valid boolean" in result.output


@pytest.fixture
def from_elsewhere(checkpoint, tmp_path):
    """The shared checkpoint as if trained on a machine whose ``UDA_CACHE_DIR`` cannot exist
    here (a folder under a regular file)."""
    state = load_checkpoint(checkpoint)
    (tmp_path / "file").write_text("")
    elsewhere = tmp_path / "file" / "cache"
    state["config"]["data"]["cache_dir"] = str(elsewhere)
    path = tmp_path / "p" / "checkpoints" / "iter_000002.pt"
    path.parent.mkdir(parents=True)
    torch.save(state, path)
    return path, elsewhere


def test_eval_uses_this_machines_cache_dir_not_the_training_runs(from_elsewhere, cache_dir):
    """`uda eval` of a checkpoint whose saved ``data.cache_dir`` does not exist here reads the
    embedded val domain from this machine's ``UDA_CACHE_DIR``."""
    path, elsewhere = from_elsewhere
    result = CliRunner().invoke(app, ["eval", str(path)])
    assert result.exit_code == 0, result.output
    assert "mIoU" in result.output and not elsewhere.exists()


def test_eval_with_an_unwritable_cache_dir_fails_in_one_line(from_elsewhere, tmp_path, monkeypatch):
    """This machine's cache cannot hold the embedded domains: one line naming it, exit 2."""
    path, elsewhere = from_elsewhere
    monkeypatch.setenv("UDA_CACHE_DIR", str(elsewhere))
    result = CliRunner().invoke(app, ["eval", str(path)])
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: ") and result.output.count("\n") == 1
    assert str(tmp_path / "file") in result.output


def test_resume_takes_this_machines_cache_dir_and_says_so(from_elsewhere, cache_dir):
    path, elsewhere = from_elsewhere
    state = load_checkpoint(path)
    cfg, changes = config_to_resume(state, path, None, {}, [])
    assert cfg.data.cache_dir == cache_dir
    assert changes == [f"data.cache_dir: {str(elsewhere)!r} -> {str(cache_dir)!r}"]


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (
            ["auxiliary.architecture=timm", "auxiliary.backbone=resnet_nope"],
            r"auxiliary\.backbone: Value error, 'resnet_nope' is not a timm model",
        ),
        (
            ["auxiliary.input_size=[0, 64]"],
            r"plugins\.dispersion\.auxiliary\.input_size\.0: Input should be greater than or",
        ),
    ],
)
def test_the_dry_run_refuses_an_auxiliary_network_that_cannot_be_built(tmp_path, sets, message):
    """An unknown timm backbone or a zero input size of the auxiliary network fails at load
    time, not when pre-training starts after the data is prepared."""
    args = ["train", "--dry-run", *tiny_overrides(tmp_path), "--plugin", "dispersion"]
    for item in sets:
        args += ["--set", f"plugins.dispersion.{item}"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert re.search(message, result.output) and result.output.count("\n") == 1, result.output


def test_dispersion_map_of_a_npy_depth_names_the_encoding_to_pass(tmp_path):
    """A raw .npy depth with the default (Depth Anything PNG) encoding: the line says to pass
    --depth-encoding raw (before: 'cannot be read as an image')."""
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "labels.png")
    np.save(tmp_path / "depth.npy", np.ones((8, 8), np.float32))
    args = ["dispersion", "map", "--labels", str(tmp_path / "labels.png")]
    args += ["--depth", str(tmp_path / "depth.npy"), "--out", str(tmp_path / "m.png")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert result.output.endswith("pass --depth-encoding raw\n") and result.output.count("\n") == 1
    assert CliRunner().invoke(app, [*args, "--depth-encoding", "raw"]).exit_code == 0


def test_dispersion_map_out_under_a_file_says_it_is_a_file(tmp_path):
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "labels.png")
    (tmp_path / "depth.png").write_bytes((tmp_path / "labels.png").read_bytes())
    (tmp_path / "taken").write_text("")
    paths = ["--labels", tmp_path / "labels.png", "--depth", tmp_path / "depth.png"]
    paths += ["--out", tmp_path / "taken" / "m.png"]
    result = CliRunner().invoke(app, ["dispersion", "map", *map(str, paths)])
    assert result.exit_code == 2, result.output
    assert (
        result.output
        == f"error: {tmp_path / 'taken'} is a file, not a folder; pick another --out\n"
    )


def test_dispersion_pretrain_checks_out_before_opening_the_data(tmp_path, monkeypatch):
    """--out that cannot be written fails in one line before the source is opened (or the
    embedded domains generated) and before any progress bar."""

    def opened(*args, **kwargs):
        raise AssertionError("the data was opened before --out was checked")

    monkeypatch.setattr("uda_cli.dispersion.open_folder", opened)
    (tmp_path / "taken").write_text("")
    out = tmp_path / "taken" / "aux.pt"
    result = CliRunner().invoke(app, ["dispersion", "pretrain", "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert result.output == f"error: {out}: cannot be written (a file is in the way)\n"


def test_a_final_evaluation_that_fails_keeps_the_final_checkpoint(tmp_path, synthetic_root):
    """A val image that cannot be read fails the evaluation at the end of training: one line
    naming the file and where the trained weights are, exit 2; the last iteration's checkpoint
    was written first, so nothing trained is lost."""
    val = tmp_path / "val"
    shutil.copytree(synthetic_root / "target", val)
    bad = sorted((val / "leftImg8bit" / "val").rglob("*.png"))[0]
    bad.write_bytes(bad.read_bytes()[:100])
    sets = [*tiny_overrides(tmp_path, 2), "--set", f"data.val.root={val}"]
    sets += ["--set", "runtime.eval_interval=100", "--set", "runtime.checkpoint_interval=100"]
    result = CliRunner().invoke(app, ["train", "--method", "source-only", "--name", "e", *sets])
    final = tmp_path / "e" / "checkpoints" / "iter_000002.pt"
    assert result.exit_code == 2, result.output
    last = result.output.splitlines()[-1]
    assert last.startswith(f"error: {bad}: cannot be read as an image"), last
    assert last.endswith(f"; the trained weights are kept in {final}") and final.is_file()
    assert load_checkpoint(final)["iteration"] == 2
